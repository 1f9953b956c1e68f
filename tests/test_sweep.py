"""Tests for scaling sweeps: the plan and its rules, shards, locks, results rows, the runner (killed and
resumed, WSD branches against a run from scratch), checkpoint:DIR@STEP, plots and the report."""

import collections
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from gpt2jax import flops
from gpt2jax.cli import scaling as scaling_cli
from gpt2jax.files import locks
from gpt2jax.files.workdir import read_metrics
from gpt2jax.scaling import backtest, fit, laws, tuning
from gpt2jax.scaling import plan as plan_module
from gpt2jax.scaling import report as report_module
from gpt2jax.scaling.plot import FIGURES, plot_sweep
from gpt2jax.scaling.report import write_report
from gpt2jax.scaling.results import load_results, read_rows, upsert_row
from gpt2jax.scaling.sweep import Sweep
from gpt2jax.training import loop, optim
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.training.trainer import build_trainer
from tests.helpers import REPO, TRUE_LAW, smoke_config, sweep_command, tiny_sweep_config, write_known_sweep

# Branch lengths for the runner tests: 100 and 400 steps of 8 x 16 tokens.
BRANCH_TOKENS = (12_800.0, 51_200.0)
CONFIG_FILE = """
from tests.helpers import tiny_sweep_config

def get_config(variant=""):
    config = tiny_sweep_config({data_dir!r}, schedule=variant or "wsd_branches", budgets={budgets!r})
    config.shapes = config.shapes[:1]
    config.checkpoints_per_run = 8
    config.smoke_test = True
    config.limits.max_epochs = 100.0
    return config
"""


def _tokens_per_step(plan, point):
    return point.batch_size * plan.block_size


# The plan: points, rules, shards.


def test_isoflop_points_train_on_c_over_6n_tokens():
    config = smoke_config("unused")
    config.grid, config.budgets = "isoflop", [2e9, 6e9]
    plan = plan_module.expand(config)
    assert len(plan.points) == 4 and len({point.run for point in plan.points}) == 4
    for point in plan.points:
        counts = plan.accounting(point)
        n_params = flops.count_params(flops.Shape(point.n_layer, point.n_head, point.n_embd, 65, 16))["n_params"]
        assert counts["n_params"] == n_params
        assert abs(counts["n_tokens"] - point.budget / (6 * n_params)) <= _tokens_per_step(plan, point) / 2
        assert counts["flops"] == 6 * n_params * counts["n_tokens"]
    # A smaller model trains on more tokens at the same budget.
    by_budget = collections.defaultdict(dict)
    for point in plan.points:
        by_budget[point.budget][point.n_embd] = plan.accounting(point)["n_tokens"]
    assert all(tokens[16] > tokens[32] for tokens in by_budget.values())
    config.limits.max_tokens_per_param = 20.0
    kept = plan_module.expand(config).points
    assert 0 < len(kept) < 4
    assert all(plan.accounting(point)["n_tokens"] / plan.accounting(point)["n_params"] <= 20 for point in kept)


def test_token_grid_and_the_rules():
    config = smoke_config("unused", schedule="cosine")
    plan = plan_module.expand(config)
    assert sorted(plan.accounting(point)["n_tokens"] for point in plan.points) == [4096, 4096, 8192, 8192]
    assert {point.budget for point in plan.points} == {plan.accounting(point)["flops"] for point in plan.points}
    rules = config.rules
    rules.update(lr_width_exponent=1.0, batch_params_exponent=0.5, max_batch_size=16, warmup_fraction=0.1)
    assert plan_module.learning_rate(rules, 16) == pytest.approx(1e-2)
    assert plan_module.learning_rate(rules, 64) == pytest.approx(2.5e-3)
    assert plan_module.batch_size(rules, rules.params_reference) == 8
    assert plan_module.batch_size(rules, 4 * rules.params_reference) == 16
    assert plan_module.batch_size(rules, 100 * rules.params_reference) == 16  # clipped to max_batch_size
    assert plan_module.warmup_steps(rules, 100) == 10 and plan_module.warmup_steps(rules, 5) == 2
    for point in plan_module.expand(config).points:
        assert point.learning_rate == pytest.approx(plan_module.learning_rate(rules, point.n_embd))
        assert point.warmup_steps == plan_module.warmup_steps(rules, point.steps)
    config.lr_multipliers = [0.5, 2.0]
    scan = plan_module.expand(config).points
    assert len(scan) == 2 * len(plan.points) and len({point.run for point in scan}) == len(scan)
    assert sorted(point.learning_rate / plan_module.learning_rate(rules, point.n_embd) for point in scan) == (
        pytest.approx([0.5] * len(plan.points) + [2.0] * len(plan.points))
    )


def test_allocations_train_every_seed_at_their_budget_outside_the_limits_and_join_their_shapes_trunk():
    config = smoke_config("unused")
    config.grid, config.budgets, config.schedule = "isoflop", [2e9, 6e9], "wsd_branches"
    config.seeds, config.limits.max_tokens_per_param = [0, 1], 20.0
    grid = plan_module.expand(config)
    config.allocations = [
        dict(label="optimum", n_layer=1, n_head=2, n_embd=16, budget=2e10),  # a grid shape, beyond its limit
        dict(label="wide", n_layer=1, n_head=2, n_embd=48, budget=2e10),  # a shape the grid lacks
    ]
    plan = plan_module.expand(config)
    by_label = plan_module.allocation_points(plan)
    assert {label: sorted(p.seed for p in points) for label, points in by_label.items()} == {
        "optimum": sorted(config.seeds),
        "wide": sorted(config.seeds),
    }
    optimum, wide = by_label["optimum"][0], by_label["wide"][0]
    assert plan.accounting(optimum)["n_tokens"] / plan.accounting(optimum)["n_params"] > 20.0
    assert abs(plan.accounting(wide)["n_tokens"] - 2e10 / (6 * plan.accounting(wide)["n_params"])) <= 8 * 16
    # The grid shape's allocation is one more branch of its trunk; the new shape trains only there.
    trunk = next(job for job in plan.jobs if job.name == optimum.trunk)
    assert optimum in trunk.points and len(trunk.points) > 1
    assert all(point.n_embd != 48 or point.budget == 2e10 for point in plan.points)
    assert {p.run for p in grid.points} < {p.run for p in plan.points}
    config.allocations = [dict(label="no budget", n_layer=1, n_head=2, n_embd=16)]
    with pytest.raises(ValueError, match="lacks budget"):
        plan_module.expand(config)


def test_a_workdir_takes_its_sweep_with_allocations_added_and_refuses_any_other_change():
    from gpt2jax.scaling.sweep import extends

    gpt2 = {"label": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 36, "budget": 4e10}
    optimum = {**gpt2, "label": "optimum", "n_embd": 14}
    recorded = {"budgets": [1e9, 4e10], "seeds": [0, 1], "allocations": [gpt2]}
    assert extends(recorded, recorded)
    assert extends(recorded, {**recorded, "allocations": [optimum, gpt2]})  # named after a prediction
    assert not extends(recorded, {**recorded, "allocations": [optimum]})  # one trained allocation dropped
    assert not extends(recorded, {**recorded, "seeds": [0]})
    assert not extends(None, recorded)


def test_the_report_measures_an_allocation_gap_seed_by_seed_only_once_every_seed_is_trained():
    predicted = [
        {
            "label": "optimum",
            "runs": ["o_s0", "o_s1"],
            "n_params": 1e4,
            "n_tokens": 1e6,
            "budget": 6e10,
            "tokens_per_param": 100.0,
            "predicted_loss": 4.0,
            "interval": [3.9, 4.1],
            "gap": {"predicted": 0.0, "interval": None},
        },
        {
            "label": "gpt2",
            "runs": ["g_s0", "g_s1"],
            "n_params": 4e4,
            "n_tokens": 2.5e5,
            "budget": 6e10,
            "tokens_per_param": 6.25,
            "predicted_loss": 4.2,
            "interval": [4.0, 4.4],
            "gap": {"predicted": 0.2, "interval": [0.1, 0.3]},
        },
    ]
    half = report_module.verify_allocations(predicted, {"o_s0": 4.05, "o_s1": 3.95, "g_s0": 4.3})
    assert half[1]["measured_gap"] is None and half[1]["observed_loss"] == pytest.approx(4.3)
    assert "not measured yet" in "\n".join(report_module._allocation_lines(half))
    full = report_module.verify_allocations(predicted, {"o_s0": 4.05, "o_s1": 3.95, "g_s0": 4.3, "g_s1": 4.1})
    assert full[1]["measured_gap"]["seeds"] == pytest.approx([0.25, 0.15])
    assert full[1]["measured_gap"]["mean"] == pytest.approx(0.2)
    text = "\n".join(report_module._allocation_lines(full))
    assert "gpt2 minus optimum: predicted **+0.2000 nats" in text and "measured **+0.2000**" in text


def test_branches_share_the_trunk_warmup_and_start_where_wsd_decays():
    config = smoke_config("unused", budgets=[4096.0, 16384.0, 65536.0])
    config.rules.warmup_fraction = 0.05
    plan = plan_module.expand(config)
    for job in plan.jobs:
        shortest = min(point.steps for point in job.points)
        assert {point.warmup_steps for point in job.points} == {plan_module.warmup_steps(config.rules, shortest)}
        for point in job.points:
            assert point.trunk == job.name
            assert point.branch_step == optim.wsd_stable_end(point.steps, point.warmup_steps, 0.2)
        spent = sum(plan.spent_steps(point) for point in job.points)
        assert spent == max(p.branch_step for p in job.points) + sum(p.steps - p.branch_step for p in job.points)
    # Runs of 1, 4 and 16 units cost 21 alone; branched, a trunk of 0.8 x 16 and cooldowns of 0.2 x 21.
    assert plan_module.costs(plan)["saved"] == pytest.approx(1 - (0.8 * 16 + 0.2 * 21) / 21, abs=0.01)


def test_shards_are_disjoint_cover_every_job_and_balance():
    config = smoke_config("unused", schedule="cosine", budgets=[4096.0 * 2**k for k in range(6)])
    plan = plan_module.expand(config)
    for count in (1, 2, 3, 5):
        shares = [plan.shard(index, count) for index in range(count)]
        names = [job.name for share in shares for job in share]
        assert sorted(names) == sorted(job.name for job in plan.jobs)
        loads = [sum(plan.job_flops(job) for job in share) for share in shares]
        assert max(loads) - min(loads) <= max(plan.job_flops(job) for job in plan.jobs)
    with pytest.raises(ValueError, match="out of range"):
        plan.shard(2, 2)


def test_bad_sweeps_are_one_sentence(capsys):
    with pytest.raises(SystemExit) as exit_info:
        scaling_cli.entry(["sweep", "--config", str(REPO / "experiments/cpu_topics.py:nope"), "--plan"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: cpu_topics has no variant 'nope'")
    config = smoke_config("unused")
    config.grid = "flops"
    with pytest.raises(ValueError, match="grid='flops' is not one of isoflop, tokens"):
        plan_module.expand(config)
    config.grid, config.limits.min_steps = "tokens", 10**6
    with pytest.raises(ValueError, match="no point of the sweep is inside its limits"):
        plan_module.expand(config)


@pytest.mark.parametrize(
    "section, key", [(None, "lr_chek"), (None, "smoke_tst"), ("rules", "learnig_rate"), ("limits", "max_epoch")]
)
def test_a_misspelt_sweep_key_is_refused_by_name(section, key):
    config = smoke_config("unused")
    (config[section] if section else config)[key] = 1.0
    where = f"the sweep config's {section}" if section else "the sweep config"
    with pytest.raises(ValueError, match=f"^{where} has unknown key\\(s\\) {key}; its keys are "):
        plan_module.checked_sweep_config(config)
    checked = plan_module.checked_sweep_config(smoke_config("unused"))
    with pytest.raises(KeyError, match="cannot be added since the config is locked"):  # nor set after the check
        (checked[section] if section else checked)[key] = 1.0


@pytest.mark.parametrize("name", ["cpu_topics.py", "cpu_english.py", "gpu_sweep.py"])
def test_shipped_sweeps_expand_with_shapes_on_both_sides_of_each_optimum(name):
    config = plan_module.load_sweep_config(str(REPO / "experiments" / name))
    plan = plan_module.expand(config)
    costs = plan_module.costs(plan)
    assert costs["points"] >= 6 and len(config.seeds) >= 2
    grid = [point for point in plan.points if point.lr_multiplier == 1.0 and point.seed == config.seeds[0]]
    budgets = sorted({point.budget for point in grid})
    assert math.log10(budgets[-1] / budgets[0]) >= 1.0
    for budget in budgets:
        sizes = [plan.accounting(point)[plan.param_count] for point in grid if point.budget == budget]
        assert len(sizes) >= 3, f"{name}: budget {budget:g} has {len(sizes)} shapes"
    if name == "gpu_sweep.py":
        # Every budget's optimum under Epoch's law lies inside its shapes, with shapes on both sides,
        # and the shapes' geometric mean within 0.05 decades of it.
        for budget in budgets:
            sizes = [plan.accounting(point)["n_params"] for point in grid if point.budget == budget]
            n_opt = float(laws.EPOCH_REFIT.compute_optimal(budget)[0])
            assert min(sizes) < n_opt < max(sizes)
            assert abs(np.mean(np.log10(sizes)) - math.log10(n_opt)) < 0.05, (budget, sizes, n_opt)
        # About 1.9 H100 hours at 40% MFU of its bf16 peak, by 6N + attention FLOPs, and 2.1 with the
        # tuning scan (the sweep's smallest and largest shape, both at 2e16, where each trains the step
        # floor); under one epoch.
        hours = costs["flops_spent"]["6n_attention"] / (0.4 * flops.DEVICE_PEAKS["h100-sxm"]["bf16"]) / 3600
        assert 1.8 < hours <= 2.0
        scan = tuning.scan_plan(plan.config, plan)
        widths = [point.n_embd for point in grid]
        assert {(point.n_embd, point.budget) for point in scan.points} == {(min(widths), 2e16), (max(widths), 2e16)}
        assert len(scan.points) == 2 * len(config.lr_tuning)
        assert 2.0 < tuning.spent_flops(config) / (0.4 * flops.DEVICE_PEAKS["h100-sxm"]["bf16"]) / 3600 <= 2.2
        assert max(plan.epochs(point, config.base.data.max_tokens) for point in plan.points) < 1.0
        assert plan.config.base.data.source == "hf:HuggingFaceFW/fineweb-edu:sample-10BT"


# Locks and results rows.


def test_a_lock_admits_one_worker_and_breaks_only_stale_locks(tmp_path):
    paths = [tmp_path / f"job{k}.lock" for k in range(20)]
    taken = collections.Counter()

    taken_locks = []

    def worker():
        for path in paths:
            lock = locks.FileLock(path)
            if lock.try_acquire():
                taken[path] += 1
                taken_locks.append(lock)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(taken[path] == 1 for path in paths)
    for lock in taken_locks:
        lock.release()  # its heartbeat thread would beat on for the rest of the test session

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = locks.FileLock(paths[0]).owner["host"]
    stale = tmp_path / "dead.lock"
    stale.write_text(json.dumps({"host": host, "pid": dead.pid}))
    assert locks.FileLock(stale).try_acquire()
    elsewhere = tmp_path / "elsewhere.lock"
    elsewhere.write_text(json.dumps({"host": "another-host", "pid": os.getpid()}))
    assert not locks.FileLock(elsewhere, stale_after=600).try_acquire()
    old = time.time() - 601
    os.utime(elsewhere, (old, old))
    assert locks.FileLock(elsewhere, stale_after=600).try_acquire()

    held = locks.FileLock(tmp_path / "beating.lock", stale_after=0.2)
    assert held.try_acquire()
    before = held.path.stat().st_mtime_ns
    time.sleep(0.3)
    assert held.path.stat().st_mtime_ns > before  # the heartbeat keeps a live lock fresh
    held.release()
    assert not held.path.exists()


def test_results_rows_are_written_whole(tmp_path):
    path = tmp_path / "results.csv"
    stop = threading.Event()
    torn = []

    def reader():
        while not stop.is_set():
            for row in read_rows(path):
                if None in row.values() or None in row:
                    torn.append(row)

    def writer(index):
        for k in range(10):
            upsert_row(path, {"run": f"w{index}-{k}", "loss": 3.0 + k, "n_params": 10, "n_tokens": 20})

    watching = threading.Thread(target=reader)
    watching.start()
    writers = [threading.Thread(target=writer, args=(index,)) for index in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    watching.join()
    rows = read_rows(path)
    assert not torn and len(rows) == 40 and len({row["run"] for row in rows}) == 40
    upsert_row(path, {"run": "w0-0", "loss": 1.5, "n_params": 10, "n_tokens": 20})
    rows = read_rows(path)
    assert len(rows) == 40 and next(row for row in rows if row["run"] == "w0-0")["loss"] == "1.5"
    assert path.read_text().count("run,kind") == 1
    assert not list(tmp_path.glob(".results.csv.*"))  # no temporary file left behind
    with pytest.raises(ValueError, match="unknown columns"):
        upsert_row(path, {"run": "x", "lossy": 1.0})


def test_two_workers_on_one_share_never_run_one_point(tmp_path, monkeypatch):
    plan = plan_module.expand(smoke_config(tmp_path / "data", schedule="cosine"))
    trained = collections.Counter()

    def fake_run(config, workdir):
        trained[Path(workdir).name] += 1
        time.sleep(0.05)
        record = {"step": config.train.steps, "train_loss": 3.0, "val_loss": 3.1, "flops_seen": 1.0}
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        return record

    monkeypatch.setattr(loop, "run", fake_run)
    sweep = Sweep(plan, tmp_path / "sweep")
    workers = [threading.Thread(target=sweep.run, kwargs=dict(log=lambda line: None)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(trained) == sorted(point.run for point in plan.points)
    assert set(trained.values()) == {1}
    assert len(read_rows(sweep.results_path)) == len(plan.points)
    assert not list((tmp_path / "sweep" / "locks").iterdir())
    sweep.run(log=lambda line: None)  # everything finished: nothing trains again
    assert set(trained.values()) == {1}


def test_two_sweeps_of_other_configs_started_together_on_one_workdir_train_only_one(tmp_path):
    """Both trained and mixed their rows in results.csv: the sweep.json check was check-then-write, unlocked."""
    config_file = tmp_path / "sweep_config.py"
    config_file.write_text(CONFIG_FILE.format(data_dir=str(tmp_path / "data"), budgets=[1024.0, 2048.0]))
    workdir = tmp_path / "sweep"
    processes = []
    for spec in (str(config_file), f"{config_file}:cosine"):
        command, env = sweep_command(spec, workdir)
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [(process.wait(timeout=600), process.stderr.read().decode()) for process in processes]
    assert sorted(code for code, _ in results) == [0, 1], results
    winner = [code for code, _ in results].index(0)
    loser_stderr = results[1 - winner][1]
    assert loser_stderr.strip().splitlines()[-1] == (
        f"error: {workdir} holds another sweep (its sweep.json has another config); use a new --workdir."
    )
    spec = json.loads((workdir / "sweep.json").read_text())["config_spec"]
    assert spec == (str(config_file), f"{config_file}:cosine")[winner]
    runs = {point.run for point in plan_module.expand(plan_module.load_sweep_config(spec)).points}
    assert {row["run"] for row in read_rows(workdir / "results.csv")} == runs  # the winner's rows, all of them


def _fake_run(trained):
    """loop.run as a finished run looks to the sweep: its final metrics record, counted in ``trained``."""

    def run(config, workdir):
        trained[Path(workdir).name] += 1
        record = {"step": config.train.steps, "train_loss": 3.0, "val_loss": 3.1, "flops_seen": 1.0}
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        return record

    return run


def test_a_garbled_results_row_is_no_point_to_the_runner_nor_the_fits_and_one_command_repairs_it(
    tmp_path, monkeypatch, capsys
):
    trained = collections.Counter()
    monkeypatch.setattr(loop, "run", _fake_run(trained))
    config_file = tmp_path / "sweep_config.py"
    config_file.write_text(CONFIG_FILE.format(data_dir=str(tmp_path / "data"), budgets=list(BRANCH_TOKENS)))
    workdir = tmp_path / "sweep"
    sweep_args = ["sweep", "--config", f"{config_file}:cosine", "--workdir", str(workdir)]
    scaling_cli.main(sweep_args)
    path = workdir / "results.csv"
    rows = list(csv.DictReader(path.open()))
    rows[1]["loss"] = "abc"  # a whole row, every column there, one value garbage
    with path.open("w") as file:
        writer = csv.DictWriter(file, fieldnames=rows[0].keys(), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.warns(
        UserWarning, match=rf"holds 1 garbled row.s. \(run '{rows[1]['run']}': loss is 'abc', not a number"
    ):
        assert len(read_rows(path)) == len(rows) - 1  # the runner: not a finished point
    with pytest.raises(SystemExit):
        scaling_cli.entry(["fit", "--results", str(path)])  # the fits: refused, with the command that repairs it
    assert capsys.readouterr().err == (
        f"error: {path} line 3: loss is 'abc', not a number; python -m gpt2jax.scaling sweep --workdir {workdir} "
        "--repair drops the rows that are no finished point, and the sweep runs those points again.\n"
    )
    scaling_cli.main(["sweep", "--workdir", str(workdir), "--repair"])
    assert "dropped 1 row(s)" in capsys.readouterr().out
    assert len(load_results(path)) == len(rows) - 1  # no warning, no refusal
    scaling_cli.main(sweep_args)  # the dropped point trains again, and only it
    assert trained[rows[1]["run"]] == 2 and sum(trained.values()) == len(rows) + 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["completed"]


def test_a_sweep_that_leaves_a_job_to_a_worker_on_another_host_exits_1_saying_what_remains(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(loop, "run", _fake_run(collections.Counter()))
    config_file = tmp_path / "sweep_config.py"
    config_file.write_text(CONFIG_FILE.format(data_dir=str(tmp_path / "data"), budgets=list(BRANCH_TOKENS)))
    plan = plan_module.expand(plan_module.load_sweep_config(f"{config_file}:cosine"))
    held = plan.shard(0, 1)[0]
    lock = tmp_path / "sweep" / "locks" / f"{held.name}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "another-host", "pid": 1, "since": time.time()}))
    with pytest.raises(SystemExit) as stop:
        scaling_cli.entry(["sweep", "--config", f"{config_file}:cosine", "--workdir", str(tmp_path / "sweep")])
    assert stop.value.code == 1
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["remaining"] == [point.run for point in held.points]
    assert err.startswith(
        f"error: the sweep in {tmp_path / 'sweep'} left {len(held.points)} point(s) of shard 0/1 untrained ("
    ) and err.endswith(
        f"; job(s) {held.name} held by another worker; run the same command again once that worker is "
        "done (a dead worker's lock is broken after --stale_after).\n"
    )


# The runner, for real: killed, resumed, and its branches against WSD from scratch.


@pytest.fixture(scope="module")
def branched_sweep(tmp_path_factory):
    """A sweep of one trunk with branches of 100 and 400 steps, SIGKILLed in its second branch and run again."""
    root = tmp_path_factory.mktemp("branched")
    config_file = root / "sweep_config.py"
    config_file.write_text(CONFIG_FILE.format(data_dir=str(root / "data"), budgets=list(BRANCH_TOKENS)))
    plan = plan_module.expand(plan_module.load_sweep_config(str(config_file)))
    workdir = root / "sweep"
    sweep = Sweep(plan, workdir)
    first, second = plan.points
    command, env = sweep_command(config_file, workdir)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = sweep.point_dir(second.run) / "checkpoints"
    deadline = time.time() + 240
    while (
        process.poll() is None
        and time.time() < deadline
        and not (checkpoints.is_dir() and any(path.name.isdigit() for path in checkpoints.iterdir()))
    ):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_rows = {row["run"] for row in read_rows(sweep.results_path)}
    killed_metrics = read_metrics(sweep.point_dir(second.run))
    killed_checkpoint = max((int(path.name) for path in checkpoints.iterdir() if path.name.isdigit()), default=None)
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return dict(
        config_file=config_file,
        plan=plan,
        sweep=sweep,
        killed_rows=killed_rows,
        killed_metrics=killed_metrics,
        killed_checkpoint=killed_checkpoint,
        rerun=json.loads(rerun.stdout.strip().splitlines()[-1]),
    )


def test_killed_sweep_skips_finished_points_and_resumes_the_rest(branched_sweep):
    first, second = branched_sweep["plan"].points
    assert branched_sweep["killed_rows"] == {first.run}, "the sweep was not killed inside its second branch"
    resumed_from = max(record["step"] for record in branched_sweep["killed_metrics"])
    assert second.branch_step < resumed_from < second.steps
    rerun = branched_sweep["rerun"]
    # The lock the killed worker left behind (its pid is dead) did not hold the job back.
    assert rerun["points_run"] == [second.run] and rerun["completed"] and not rerun["skipped_locked"]
    log = (branched_sweep["sweep"].point_dir(second.run) / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log]
    assert steps[-1] == second.steps
    # Resumed from its own last checkpoint, not from the trunk: the steps after that checkpoint,
    # which the killed worker had logged but not saved, were trained again, and the resume
    # removed their old records, so each step is logged once.
    assert steps == sorted(set(steps)) and min(steps) > second.branch_step


def test_branch_rows_account_trunk_and_cooldown_flops(branched_sweep):
    plan, sweep = branched_sweep["plan"], branched_sweep["sweep"]
    rows = {row["run"]: row for row in read_rows(sweep.results_path)}
    first, second = plan.points
    per_step = 6 * plan.accounting(first)["n_params"] * first.batch_size * plan.block_size
    assert float(rows[first.run]["flops_spent"]) == pytest.approx(per_step * first.steps)
    assert float(rows[second.run]["flops_spent"]) == pytest.approx(
        per_step * (second.branch_step - first.branch_step + second.steps - second.branch_step)
    )
    assert float(rows[second.run]["flops"]) == pytest.approx(per_step * second.steps)
    assert {rows[run]["kind"] for run in rows} == {"branch"}
    load_results(sweep.results_path)  # what `scaling fit --results` reads
    # A branch starts from its trunk's checkpoint, not its own: nothing of its config was missing.
    assert not any((sweep.point_dir(point.run) / "config_changes.jsonl").exists() for point in plan.points)


def test_branched_wsd_point_equals_wsd_from_scratch(branched_sweep, tmp_path):
    plan, sweep = branched_sweep["plan"], branched_sweep["sweep"]
    command, env = sweep_command(f"{branched_sweep['config_file']}:wsd", tmp_path / "scratch")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    scratch = {row["steps"]: row for row in read_rows(tmp_path / "scratch" / "results.csv")}
    for branched in read_rows(sweep.results_path):
        alone = scratch[branched["steps"]]
        assert alone["trunk"] == "" and alone["warmup_steps"] == branched["warmup_steps"]
        # The same parameters: the same loss on the same validation windows.
        assert float(branched["val_loss"]) == pytest.approx(float(alone["val_loss"]), abs=1e-5)
    # The branch that was not killed logged the same last window of training losses too.
    first = plan.points[0]
    branched_curve = read_metrics(sweep.point_dir(first.run))
    alone_curve = read_metrics(tmp_path / "scratch" / "points" / first.run)
    assert branched_curve[-1]["step"] == alone_curve[-1]["step"] == first.steps
    assert branched_curve[-1]["train_loss"] == pytest.approx(alone_curve[-1]["train_loss"], abs=1e-5)


def test_checkpoint_init_restores_the_whole_train_state(branched_sweep, tmp_path):
    plan, sweep = branched_sweep["plan"], branched_sweep["sweep"]
    second = plan.points[1]
    config = plan.train_config(second, sweep.point_dir)
    trainer = build_trainer(config)
    empty = Checkpointer(tmp_path / "checkpoints")
    state = loop.restore_or_init(trainer, empty)
    trunk = Checkpointer(sweep.point_dir(second.trunk) / "checkpoints")
    saved = trunk.restore(second.branch_step, trainer.abstract_state)
    assert int(state["step"]) == second.branch_step
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    missing = f"checkpoint:{sweep.point_dir(second.trunk)}@{second.branch_step + 1}"
    config.train.init_from = missing
    with pytest.raises(ValueError, match=f"has no checkpoint at step {second.branch_step + 1}; it has steps"):
        loop.restore_or_init(build_trainer(config), empty)
    config.train.init_from = f"checkpoint:{tmp_path / 'nowhere'}"
    with pytest.raises(FileNotFoundError, match="nowhere/checkpoints holds no checkpoint yet"):
        loop.restore_or_init(build_trainer(config), empty)
    for checkpointer in (empty, trunk):
        checkpointer.close()


# Plots and the report, on a sweep written from a known law.


@pytest.fixture(scope="module")
def known_sweep(tmp_path_factory):
    return write_known_sweep(tmp_path_factory.mktemp("known"))


def test_the_frontier_smooths_noisy_batch_losses():
    from gpt2jax.scaling.plot import smoothed

    noisy = 3.0 + np.where(np.arange(40) % 2, 0.2, -0.2)  # batch noise around a flat loss of 3
    assert noisy.min() == pytest.approx(2.8)
    assert smoothed(noisy)[0] == pytest.approx(noisy[0])  # bias-corrected: starts at the first value
    assert smoothed(noisy)[10:].min() > 2.9  # the minimum of the noise is not the frontier


def test_plots_are_written(known_sweep, tmp_path):
    paths = plot_sweep(known_sweep, tmp_path, starts=fit.COARSE_STARTS, n_bootstrap=8)
    assert [path.name for path in paths] == list(FIGURES)
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_a_sweep_that_scores_eval_tasks_carries_them_into_its_rows_plot_and_report(known_sweep, tmp_path):
    import shutil

    from gpt2jax.scaling.results import COLUMNS

    config = smoke_config(str(tmp_path / "data"))
    plan = plan_module.expand(config)
    point = plan.points[0]
    scores = {"hellaswag_acc": 0.31, "hellaswag_acc_norm": 0.33, "hellaswag_n": 1000}
    final = {"train_loss": 3.1, "val_loss": 3.2, **scores}
    row = Sweep(plan, tmp_path / "sweep").row(point, final, wall_s=1.0)
    assert {key: row[key] for key in scores} == scores and set(row) <= set(COLUMNS)
    unscored = Sweep(plan, tmp_path / "sweep").row(point, {"train_loss": 3.1, "val_loss": 3.2}, wall_s=1.0)
    assert not set(scores) & set(unscored)
    # A sweep workdir whose rows carry scores: the plot draws them, the report tables them.
    scored = tmp_path / "scored"
    shutil.copytree(known_sweep, scored)
    rows = read_rows(scored / "results.csv")
    for index, row in enumerate(rows):
        upsert_row(
            scored / "results.csv",
            row | {"hellaswag_acc": 0.26, "hellaswag_acc_norm": 0.25 + index / 100, "hellaswag_n": 500},
        )
    paths = plot_sweep(scored, tmp_path / "figures", starts=fit.COARSE_STARTS, n_bootstrap=8)
    assert [path.name for path in paths] == [*FIGURES, "eval_tasks.png"]
    assert paths[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = write_report(scored, tmp_path / "REPORT.md", n_bootstrap=2, starts=fit.COARSE_STARTS)
    assert "OpenAI's GPT-2 124M scores 0.2955 on the whole validation set." in text
    assert "| N20000_C3e+11 | 0 | 3e+11 | 0.260 | 0.250 | [0.214, 0.290] | 500 |" in text
    assert "### hellaswag" not in write_report(known_sweep, tmp_path / "R2.md", n_bootstrap=2, starts=fit.COARSE_STARTS)


def test_report_holds_the_fitted_law_the_entropy_check_and_the_prediction(known_sweep, tmp_path):
    out = tmp_path / "REPORT.md"
    prediction = backtest.backtest(
        load_results(known_sweep / "results.csv"), 1.5e12, n_bootstrap=8, starts=fit.COARSE_STARTS
    )
    prediction["predicted_at"] = "2026-01-01T00:00:00+00:00"
    (tmp_path / "prediction.json").write_text(json.dumps(prediction))
    text = write_report(
        known_sweep, out, predictions=[tmp_path / "prediction.json"], n_bootstrap=8, starts=fit.COARSE_STARTS
    )
    assert out.read_text() == text
    law = fit.parametric_fit(load_results(known_sweep / "results.csv"), fit.COARSE_STARTS).law
    assert abs(law.E - TRUE_LAW.E) < 0.1 and abs(law.exponents()[0] - TRUE_LAW.exponents()[0]) < 0.1
    assert f"The fitted irreducible loss E is {law.E:.4f}" in text
    assert "entropy rate is 2.9000 nats/token" in text
    assert f"| gpt2 on 10B tokens | fit: synthetic:vocabulary=compact | {6 * 124_439_808 * 1e10:.3g} |" in text
    assert f"D_opt / N_opt is {float(law.tokens_per_parameter(3e11)):.1f} at 3e+11" in text
    assert "They do not say how GPT-2 should spend a GPU-year on web text." in text
    # What bounds the fits is said from the points: their source, largest model and distance from the question.
    assert (
        "properties of their sources (`synthetic:vocabulary=compact`), of models of at most 300k parameters in all (embeddings too)"
        in text
    )
    assert "python -m gpt2jax.scaling sweep --config experiments/known.py" in text
    # The prediction made before training, met by the points trained after it: 0.3% noise on a known law.
    assert "Predicted at **2026-01-01T00:00:00+00:00**" in text
    outcome = re.search(r"Mean absolute relative error \*\*([0-9.]+)%\*\*", text)
    assert outcome and float(outcome.group(1)) < 1.0
    assert text.count("| N" + "4") == 0  # every held-out row names its run
    assert sum(f"| N{n:.0f}_C1e+13 |" in text for n in (2e4, 5e4, 1.2e5, 3e5)) == 4


def test_learning_rate_check_says_which_rate_was_best():
    rows = [
        {"n_layer": "2", "n_head": "2", "n_embd": "16", "budget": "1e11", "seed": "0", "lr_multiplier": m, "loss": loss}
        for m, loss in (("1.0", "3.10"), ("0.5", "3.20"), ("2.0", "3.05"))
    ] + [
        {"n_layer": "2", "n_head": "2", "n_embd": "32", "budget": "1e11", "seed": "0", "lr_multiplier": "", "loss": "3"}
    ]
    (check,) = report_module.lr_check(rows)
    assert check["shape"] == "L2H2W16" and check["best_multiplier"] == 2.0 and not check["rule_is_best"]
    assert check["losses"] == {0.5: 3.2, 1.0: 3.1, 2.0: 3.05}
    # The verdict holds the rule to one seed-to-seed spread of the best rate tried: 0.05 better is
    # beyond a spread of 0.04 and within one of 0.06.
    verdict = report_module._lr_lines([check], {"mean_std": 0.04})[-1]
    assert "x2 was 0.0500 nats better, more than one seed spread: the rule's rate was not the best" in verdict
    verdict = report_module._lr_lines([check], {"mean_std": 0.06})[-1]
    assert "x2 was 0.0500 nats better, within one seed spread (one seed spread: loss std 0.0600" in verdict


# The planner's floors, seeds, learning-rate check and unique tokens.


def test_the_planner_refuses_sweeps_below_its_floors():
    config = tiny_sweep_config("unused")
    with pytest.raises(ValueError) as refused:
        plan_module.expand(config)
    message = str(refused.value)
    for floor in ("limits.min_steps=4 (at least 200)", "min_tokens_per_param=0 (at least 1)", "1 seed(s) (at least 2"):
        assert floor in message
    config.update(seeds=[0, 1], smoke_test=False)
    config.limits.update(min_steps=200, min_tokens_per_param=1.0)
    config.rules.warmup_fraction = 0.2
    with pytest.raises(ValueError, match=r"rules.warmup_fraction=0.2 \(at most 0.1\)"):
        plan_module.expand(config)
    config.rules.update(warmup_fraction=0.05, min_warmup_steps=30)
    config.budgets = [200 * 128.0, 300 * 128.0]  # 200 and 300 steps of 8 x 16 tokens
    with pytest.raises(ValueError, match="warms up for 30 of its 200 steps, more than 10%"):
        plan_module.expand(config)
    config.rules.min_warmup_steps = 10
    plan = plan_module.expand(config)
    assert {point.seed for point in plan.points} == {0, 1}
    assert min(point.steps for point in plan.points) >= 200


def test_the_lr_check_branches_the_smallest_and_largest_shape_at_their_lowest_budget():
    config = smoke_config("unused", schedule="cosine", budgets=[4096.0, 8192.0])
    config.shapes.append(dict(n_layer=1, n_head=2, n_embd=24))
    config.seeds = [3, 4]
    config.lr_check = [0.5, 2.0]
    plan = plan_module.expand(config)
    checks = [point for point in plan.points if point.lr_multiplier != 1.0]
    assert sorted((p.n_embd, p.lr_multiplier) for p in checks) == [(16, 0.5), (16, 2.0), (32, 0.5), (32, 2.0)]
    assert {p.seed for p in checks} == {3} and {plan.tokens(p) for p in checks} == {4096}
    for point in checks:
        rule = plan_module.learning_rate(config.rules, point.n_embd)
        assert point.learning_rate == pytest.approx(point.lr_multiplier * rule)
    assert len({point.run for point in plan.points}) == len(plan.points)


def test_the_planner_refuses_a_grid_that_repeats_its_corpus():
    config = smoke_config("unused", budgets=[4096.0, 8192.0])
    config.base.data.synthetic_train_tokens = 6000
    config.limits.max_epochs = 1.0
    with pytest.raises(
        ValueError, match=r"reads 8,192 tokens, 1.37 epochs of the corpus's 6,000 .*limits.max_epochs=1"
    ):
        plan_module.expand(config)
    config.limits.max_epochs = 1.5
    plan = plan_module.expand(config)
    assert max(plan.epochs(point, 6000) for point in plan.points) == pytest.approx(8192 / 6000)
    # Windows are read in epochs: nothing repeats within the first, then all of a second epoch does.
    assert plan_module.repeated_fraction(0.74) == 0.0 and plan_module.repeated_fraction(1.0) == 0.0
    assert plan_module.repeated_fraction(8192 / 6000) == pytest.approx(1 - 6000 / 8192)
    assert "epochs" in plan_module.format_plan(
        plan
    ) and "the longest point reads 1.37 epochs" in plan_module.format_plan(plan)


def test_the_planner_knows_a_named_hub_corpus_before_it_is_downloaded(tmp_path):
    config = smoke_config(str(tmp_path))
    config.base.data.update(source="hf:HuggingFaceFW/fineweb-edu:sample-10BT", val_fraction=0.005, max_tokens=0)
    assert plan_module.unique_train_tokens(config) == int(10e9 * 0.995)
    config.base.data.max_tokens = 2_000_000_000  # the GPU sweep's cap: at most that many
    assert plan_module.unique_train_tokens(config) == 2_000_000_000
    config.base.data.source = "hf:someone/unknown"  # only preparing it tells
    config.base.data.max_tokens = 0
    assert plan_module.unique_train_tokens(config) is None


def test_non_embedding_sweeps_count_budgets_in_non_embedding_parameters():
    config = smoke_config("unused", budgets=[4096.0])
    config.update(params="non_embedding", grid="isoflop", budgets=[1e9])
    plan = plan_module.expand(config)
    for point in plan.points:
        counts = plan.accounting(point)
        assert abs(counts["n_tokens"] - 1e9 / (6 * counts["n_params_non_embedding"])) <= _tokens_per_step(plan, point)


def test_the_muon_study_trains_the_same_points_with_each_optimizer(capsys):
    adamw, muon = (
        plan_module.expand(plan_module.load_sweep_config(f"{REPO}/experiments/cpu_muon.py:{name}"))
        for name in ("adamw", "muon")
    )
    assert [point.run for point in adamw.points] == [point.run for point in muon.points]
    assert (adamw.config.base.train.optimizer, muon.config.base.train.optimizer) == ("adamw", "muon")
    assert adamw.config.lr_tuning and tuning.spent_flops(muon.config) > tuning.spent_flops(adamw.config)
    scaling_cli.entry(["sweep", "--config", f"{REPO}/experiments/cpu_muon.py:muon", "--plan"])
    assert "then Muon's rate: the same runs at the fitted rule" in capsys.readouterr().out
