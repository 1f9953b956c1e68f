"""Runs a sweep's points through ``loop.run``, resumably, shared out among workers.

The sweep workdir's files are named in ``files/workdir.py``: sweep.json, points/RUN/
(each point's training workdir), locks/ (see ``locks``), results.csv (see ``results``) and
sessions.jsonl (one line per invocation of a worker: when, where, what it ran, how long).

Run again after a kill, a worker skips the points results.csv already has and resumes the
others from their checkpoints, since ``loop.run`` resumes by itself. A branched job
(``wsd_branches``) trains its constant-rate trunk in segments, to each branch's start, and
after each segment trains that branch from the trunk's checkpoint with ``init_from=
checkpoint:TRUNK@STEP``; the branch is then the WSD run of its length, step for step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from pathlib import Path

import numpy as np

from gpt2jax import flops
from gpt2jax.files.atomic import write_atomically
from gpt2jax.files.locks import STALE_AFTER_S, FileLock
from gpt2jax.files.workdir import (
    COMPILATION_CACHE_DIR,
    LOCKS_DIR,
    METRICS_FILE,
    POINTS_DIR,
    RESULTS_FILE,
    SESSIONS_FILE,
    SWEEP_FILE,
    SWEEP_LOCK,
    append_jsonl,
    read_json,
    read_metrics,
)
from gpt2jax.scaling.plan import Job, Point, SweepPlan, check_repetition, shape_name
from gpt2jax.scaling.results import read_rows, upsert_row
from gpt2jax.training.eval_tasks import task_columns


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def final_record(workdir: Path, steps: int) -> dict:
    """The metrics line of a run's last step, with its validation loss."""
    finals = [record for record in read_metrics(workdir) if record["step"] == steps and "val_loss" in record]
    if not finals:
        raise RuntimeError(f"{workdir} finished training but its {METRICS_FILE} has no val_loss at step {steps}.")
    return finals[-1]


def extends(recorded: dict | None, config: dict) -> bool:
    """Whether ``config`` is the recorded sweep's, or it with allocations added after the recorded ones:
    a prediction names its optimum only once the lower budgets are trained, and the points those
    trained are the same under either config."""
    if recorded is None:
        return False
    added = config.get("allocations", [])
    before = recorded.get("allocations", [])
    same_rest = {**recorded, "allocations": None} == {**config, "allocations": None}
    return same_rest and all(allocation in added for allocation in before)


def point_seconds(point: Point, wall_s: float, in_steps_s: float, mfu: float | None) -> dict:
    """A point's wall time split into the seconds inside train steps and those outside them (compiling,
    the data, evaluations, checkpoints, records), with its program (shape and batch) and the median MFU
    its steps logged: the sessions' record of what keeps a device idle, which ``walltime`` reads."""
    return {
        "run": point.run,
        "program": program_name(point),
        "wall_s": round(wall_s, 3),
        "in_steps_s": round(in_steps_s, 3),
        "outside_steps_s": round(wall_s - in_steps_s, 3),
        "mfu": mfu,
    }


def program_name(point: Point) -> str:
    """The compiled program a point runs: its shape and batch (schedules, rates and seeds are its inputs)."""
    return f"{shape_name(dataclasses.asdict(point))}B{point.batch_size}"


def device_name() -> str:
    """This process's device as ``flops.DEVICE_PEAKS`` names it ('cpu' on a CPU, its jax kind if unknown)."""
    import jax

    device = jax.devices()[0]
    return "cpu" if device.platform == "cpu" else flops.device_key(device.device_kind) or device.device_kind


def use_compilation_cache(workdir: str | Path) -> None:
    """Keeps every compiled program in ``WORKDIR/jax_cache``, so that a resumed sweep compiles nothing again.

    JAX keeps only programs that took a second or more to compile by default: on a CPU a small
    model's steps take less, and were compiled again by every resumed sweep.
    """
    import jax

    jax.config.update("jax_compilation_cache_dir", str((Path(workdir) / COMPILATION_CACHE_DIR).absolute()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class Sweep:
    """A plan bound to its workdir."""

    def __init__(self, plan: SweepPlan, workdir: str | Path):
        self.plan = plan
        self.workdir = Path(workdir)

    @property
    def results_path(self) -> Path:
        return self.workdir / RESULTS_FILE

    def point_dir(self, run: str) -> Path:
        return (self.workdir / POINTS_DIR / run).absolute()

    def finished_runs(self) -> set[str]:
        return {row["run"] for row in read_rows(self.results_path)}

    def start(self, config_spec: str) -> None:
        """Writes sweep.json, preparing the data once; refuses a workdir of another sweep.

        The check and the write happen under the workdir's ``locks/sweep.lock``: two sweeps of
        different configs started together both found no sweep.json, both trained, and mixed
        their rows in results.csv.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.workdir / LOCKS_DIR / SWEEP_LOCK)
        lock.acquire(waiting=f"a sweep starting in {self.workdir}")
        try:
            self._start_locked(config_spec)
        finally:
            lock.release()

    def _start_locked(self, config_spec: str) -> None:
        from gpt2jax.data import loader

        path = self.workdir / SWEEP_FILE
        config = json.loads(self.plan.config.to_json())
        if path.is_file() and not extends(read_json(path).get("config"), config):
            raise ValueError(
                f"{self.workdir} holds another sweep (its {SWEEP_FILE} has another config); use a new --workdir."
            )
        first = self.plan.points[0]
        meta = loader.prepared_data(self.plan.train_config(first, self.point_dir)).meta
        check_repetition(self.plan, meta["train_tokens"])  # the corpus's size is known for sure only now
        description = {
            "config_spec": config_spec,
            "config": config,
            "data_meta": meta,
            "points": [dataclasses.asdict(point) for point in self.plan.points],
        }
        write_atomically(path, json.dumps(description, indent=2) + "\n")

    def unique_tokens(self) -> int | None:
        """The corpus's training tokens, from the data meta.json that ``start`` recorded."""
        path = self.workdir / SWEEP_FILE
        return read_json(path)["data_meta"]["train_tokens"] if path.is_file() else None

    def row(self, point: Point, final: dict, wall_s: float) -> dict:
        model = self.plan.config.base.model
        row = {field.name: getattr(point, field.name) for field in dataclasses.fields(point)}
        row.update(self.plan.accounting(point))
        unique = self.unique_tokens()
        if unique:
            row["epochs"] = round(self.plan.epochs(point, unique), 4)
        row.update(
            kind="branch" if point.trunk else "run",
            vocab_size=model.vocab_size,
            block_size=model.block_size,
            flops_spent=self.plan.spent_flops(point),
            train_loss=final["train_loss"],
            val_loss=final["val_loss"],
            loss=final["val_loss"],
            wall_s=round(wall_s, 2),
        )
        row.update({column: final[column] for column in task_columns() if column in final})
        return row

    def run_job(self, job: Job, finished: set[str], on_point, max_budget: float = math.inf) -> None:
        """Trains the job's unfinished points up to ``max_budget``; ``on_point(point, row, seconds)`` follows
        each one's row, with ``point_seconds``' split of its wall time."""
        from gpt2jax.training import loop

        for point in job.points:
            if point.run in finished or point.budget > max_budget:
                continue
            start = time.perf_counter()
            in_steps = 0.0
            if job.is_branched:
                # Idle when the trunk already reached this branch's start (a rerun after a kill).
                trunk = loop.run(self.plan.trunk_config(job, point.branch_step), self.point_dir(job.name))
                in_steps += trunk.get(loop.TRAIN_STEP_SECONDS, 0.0)
            workdir = self.point_dir(point.run)
            in_steps += loop.run(self.plan.train_config(point, self.point_dir), workdir).get(
                loop.TRAIN_STEP_SECONDS, 0.0
            )
            final = final_record(workdir, point.steps)
            wall_s = time.perf_counter() - start
            row = self.row(point, final, wall_s)
            upsert_row(self.results_path, row)
            mfus = [record["mfu"] for record in read_metrics(workdir) if record.get("mfu")]
            on_point(point, row, point_seconds(point, wall_s, in_steps, float(np.median(mfus)) if mfus else None))

    def run(
        self,
        shard: tuple[int, int] = (0, 1),
        stale_after: float = STALE_AFTER_S,
        log=print,
        max_budget: float = math.inf,
    ) -> dict:
        """Runs this worker's share; returns what it did. Jobs another live worker holds are skipped.

        ``max_budget``: train only the points of budgets up to it, so that a law fitted on them can
        predict the rest before they are trained; a later run without it trains the rest (a branch's
        trunk resumes where the last trained branch left it).
        """
        index, count = shard
        jobs = self.plan.shard(index, count)
        total_flops = sum(self.plan.spent_flops(point) for point in self.plan.points)
        mine = [point for job in jobs for point in job.points if point.budget <= max_budget]
        done = self.finished_runs()
        to_spend = sum(self.plan.spent_flops(point) for point in mine if point.run not in done)
        log(
            f"sweep {self.workdir}: shard {index}/{count} has {len(jobs)} job(s), {len(mine)} of "
            f"{len(self.plan.points)} point(s), {sum(p.run in done for p in mine)} done; "
            f"{to_spend:.3g} of {total_flops:.3g} FLOPs (6N) to spend"
        )
        # The load average says how much of the machine the other jobs on it took meanwhile.
        session = {
            "host": socket.gethostname(),
            "cpus": os.cpu_count(),
            "pid": os.getpid(),
            "device": device_name(),
            "shard": f"{index}/{count}",
            "started": time.time(),
            "load_average_start": os.getloadavg()[0],
            "points_run": [],
            "skipped_locked": [],
            "flops_spent": 0.0,
            "points": [],  # point_seconds of each point run
            "in_steps_s": 0.0,
            "outside_steps_s": 0.0,
        }
        clock = time.perf_counter()

        def on_point(point: Point, row: dict, seconds: dict) -> None:
            session["points_run"].append(point.run)
            session["flops_spent"] += row["flops_spent"]
            session["points"].append(seconds)
            for key in ("in_steps_s", "outside_steps_s"):
                session[key] = round(session[key] + seconds[key], 3)
            elapsed = time.perf_counter() - clock
            left = to_spend - session["flops_spent"]
            # At this worker's pace so far: FLOPs per second, compile time and all.
            estimate = duration(elapsed * left / session["flops_spent"]) if left > 0 else duration(0)
            rows = read_rows(self.results_path)
            spent_all = sum(float(done["flops_spent"]) for done in rows)
            log(
                f"sweep: {len(rows)}/{len(self.plan.points)} points done ({point.run}: loss {row['loss']:.4f}); "
                f"{spent_all:.3g}/{total_flops:.3g} FLOPs spent; {duration(elapsed)} elapsed, "
                f"about {estimate} left for this shard"
            )

        try:
            for job in jobs:
                finished = self.finished_runs()
                if all(point.run in finished or point.budget > max_budget for point in job.points):
                    continue
                lock = FileLock(self.workdir / LOCKS_DIR / f"{job.name}.lock", stale_after)
                if not lock.try_acquire():
                    session["skipped_locked"].append(job.name)
                    log(f"sweep: {job.name} is held by another worker; skipping it")
                    continue
                try:
                    # Read again under the lock: another worker may have finished it meanwhile.
                    self.run_job(job, self.finished_runs(), on_point, max_budget)
                finally:
                    lock.release()
        finally:
            session["elapsed_s"] = round(time.perf_counter() - clock, 2)
            session["load_average_end"] = os.getloadavg()[0]
            finished = self.finished_runs()
            session["remaining"] = [point.run for point in mine if point.run not in finished]
            session["completed"] = not session["remaining"]
            append_jsonl(self.workdir / SESSIONS_FILE, session)
        return session
