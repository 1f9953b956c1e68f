"""The files of a training workdir and of a sweep workdir, named in one place, and their readers and writers.

A training workdir (``--workdir`` of ``gpt2jax.main``) holds
  config.json             the config it trains with (a change on resume is recorded first, see below)
  config_changes.jsonl    one line per resume that changed the config: the differences and the step
  data.json               the prepared data it trains on: its path and meta.json
  metrics.jsonl           one JSON object per log line
  run.lock                held by the run training in it (see ``locks``)
  checkpoints/            Orbax steps (see ``checkpoint``)
  checkpoints_set_aside/  step folders a run found uncommitted or unreadable and moved out of its way
  tensorboard/            events, with train.tensorboard=True

A sweep workdir (``--workdir`` of ``python -m gpt2jax.scaling sweep``) holds
  sweep.json      the sweep config, its points and the data's meta.json
  points/RUN/     each point's (and each trunk's) training workdir
  locks/JOB.lock  held by the worker running that job
  locks/sweep.json.lock  held while a sweep checks its sweep.json and writes it
  results.csv     one row per finished point
  sessions.jsonl  one line per invocation of a worker

Appended files (the .jsonl ones) survive a crash mid-line: the next append first removes
the cut line, which would otherwise swallow the record written after it. Whole files are
replaced atomically, so a reader sees the old one or the new one.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from gpt2jax.files.atomic import write_atomically

CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
DATA_FILE = "data.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = "run.lock"
CHECKPOINTS_DIR = "checkpoints"
SET_ASIDE_DIR = "checkpoints_set_aside"
TENSORBOARD_DIR = "tensorboard"

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.csv"
SESSIONS_FILE = "sessions.jsonl"
POINTS_DIR = "points"
LOCKS_DIR = "locks"
COMPILATION_CACHE_DIR = "jax_cache"  # JAX's persistent compilation cache, which a resumed sweep reads
SWEEP_LOCK = "sweep.json.lock"


def read_json(path: str | Path, remedy: str = "restore it or remove it") -> dict:
    """The JSON object in ``path`` (every file these read holds one); anything else is one sentence naming the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {remedy}.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; {remedy}.")
    return value


def load_run_config(workdir: str | Path):
    """The config a training workdir was trained with."""
    import ml_collections

    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{workdir} holds no {CONFIG_FILE}: is it a gpt2jax workdir (--workdir of a training run)?"
        )
    return ml_collections.ConfigDict(read_json(path))


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a .jsonl file; a line that is not a JSON object (cut by a kill mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _is_step(value) -> bool:
    return type(value) is int and value >= 0


def read_metrics(workdir: str | Path) -> list[dict]:
    """A run's metrics.jsonl, one record per step.

    A resume removes the records of the steps it trains again (``drop_records_after``); of
    two records of one step (a file written before it did), the later is the one the run
    continued from.
    """
    by_step = {
        record["step"]: record for record in read_jsonl(Path(workdir) / METRICS_FILE) if _is_step(record.get("step"))
    }
    return [by_step[step] for step in sorted(by_step)]


def remove_cut_line(path: str | Path) -> int:
    """Truncates ``path`` after its last newline when a crash or a full disk cut its last line; the bytes removed."""
    path = Path(path)
    try:
        with path.open("rb+") as file:
            size = file.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            file.seek(size - 1)
            if file.read(1) == b"\n":
                return 0
            keep, chunk = size - 1, 1 << 16
            while keep > 0:
                start = max(0, keep - chunk)
                file.seek(start)
                newline = file.read(keep - start).rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                keep = start
            file.truncate(keep)
            return size - keep
    except FileNotFoundError:
        return 0


def _remove_cut_line_saying_so(path: Path) -> None:
    cut = remove_cut_line(path)
    if cut:
        warnings.warn(f"{path} ended in a line cut short ({cut} bytes, left by a crash); removed it.")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Appends ``record`` as one line, after removing a line a crash cut (with a warning)."""
    path = Path(path)
    try:
        _remove_cut_line_saying_so(path)
        with path.open("a") as file:
            file.write(json.dumps(record) + "\n")
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error


def drop_records_after(path: str | Path, step: int) -> int:
    """Removes from a metrics.jsonl the records of steps after ``step``, which a run resumed at ``step`` trains
    again, so that the file holds one record per step; the number removed.

    A run killed after its last checkpoint (SIGKILL, a crash, a full disk) logged steps it
    then trains again; their old records described a state no checkpoint kept.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    _remove_cut_line_saying_so(path)
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not _is_step(_step_of(line)) or _step_of(line) <= step]
    if len(kept) < len(lines):
        write_atomically(path, "".join(kept))
    return len(lines) - len(kept)


def _step_of(line: str):
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("step") if isinstance(record, dict) else None


def results_path(sweep_workdir: str | Path) -> Path:
    """A sweep workdir's results.csv, which must exist."""
    path = Path(sweep_workdir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{sweep_workdir} holds no {RESULTS_FILE}; run python -m gpt2jax.scaling sweep "
            f"--workdir {sweep_workdir} first."
        )
    return path
