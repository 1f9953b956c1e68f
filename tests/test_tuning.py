"""The tuning stage: the scan's points, the best rate of a scan, the rule fitted to known optima, and a
sweep that tunes first and then trains every point at the fitted rule's rate."""

import json
import math
import subprocess

import numpy as np
import pytest

from gpt2jax.scaling import plan as plan_module
from gpt2jax.scaling import report as report_module
from gpt2jax.scaling import tuning
from gpt2jax.scaling.results import read_rows
from tests.helpers import REPO, sweep_command, tiny_sweep_config

MULTIPLIERS = [0.25, 0.5, 1.0, 2.0, 4.0]


def _bowl(multiplier: float, best: float, depth: float = 3.0) -> float:
    """A loss whose minimum over the rate lies at ``best`` times the rule's, quadratic in log(rate)."""
    return depth + 0.1 * math.log(multiplier / best) ** 2


def test_the_best_rate_is_the_parabolas_vertex_and_an_edge_is_no_optimum():
    rate, bracketed = tuning.best_rate({m: _bowl(m, 1.3) for m in MULTIPLIERS}, rule_rate=0.01)
    assert bracketed and rate == pytest.approx(0.013, rel=1e-9)
    rate, bracketed = tuning.best_rate({m: 3.0 - m for m in MULTIPLIERS}, rule_rate=0.01)
    assert not bracketed and rate == pytest.approx(0.04)


def _scan_rows(rules, optimum, widths=(16, 64), multipliers=MULTIPLIERS) -> list[dict]:
    """results.csv rows of a scan whose true best rate at width w is ``optimum(w)``."""
    rows = []
    for width in widths:
        rule_rate = plan_module.learning_rate(rules, width)
        for multiplier in multipliers:
            loss = _bowl(multiplier, optimum(width) / rule_rate)
            rows.append(
                dict(
                    n_layer=1,
                    n_head=2,
                    n_embd=width,
                    lr_multiplier=multiplier,
                    learning_rate=multiplier * rule_rate,
                    loss=loss,
                )
            )
    return rows


def test_the_fitted_rule_is_the_power_law_through_the_best_rates():
    config = tiny_sweep_config("unused")
    config.rules.update(learning_rate=1e-2, width_reference=16, lr_width_exponent=0.5)
    config.update(smoke_test=True, limits=dict(config.limits, max_epochs=100.0))
    rule = tuning.fit_rule(config, _scan_rows(config.rules, lambda width: 2.4e-2 * (16 / width) ** 0.8))
    assert rule["lr_width_exponent"] == pytest.approx(0.8, rel=1e-6)
    assert rule["learning_rate"] == pytest.approx(2.4e-2, rel=1e-6)
    assert rule["bracketed"] and [s["n_embd"] for s in rule["shapes"]] == [16, 64]
    tuned = plan_module.expand(tuning.tuned_config(config, rule))
    for point in tuned.points:
        assert point.learning_rate == pytest.approx(2.4e-2 * (16 / point.n_embd) ** 0.8, rel=1e-6)


def test_an_optimum_outside_the_scan_is_refused_unless_a_smoke_test():
    config = tiny_sweep_config("unused")
    config.smoke_test = False
    rows = _scan_rows(config.rules, lambda width: 10 * plan_module.learning_rate(config.rules, width))
    with pytest.raises(ValueError, match="outside the scan; widen lr_tuning"):
        tuning.fit_rule(config, rows)
    config.smoke_test = True
    assert not tuning.fit_rule(config, rows)["bracketed"]


def test_the_scan_trains_the_smallest_and_largest_shape_at_their_lowest_budget_and_first_seed():
    config = tiny_sweep_config("unused", schedule="cosine", budgets=[4096.0, 8192.0])
    config.update(smoke_test=True, seeds=[3, 4], lr_tuning=[0.5, 1.0, 2.0])
    config.shapes.append(dict(n_layer=1, n_head=2, n_embd=24))
    plan = plan_module.expand(config)
    scan = tuning.scan_plan(plan.config, plan)
    assert sorted((p.n_embd, p.lr_multiplier) for p in scan.points) == [
        (16, 0.5), (16, 1.0), (16, 2.0), (32, 0.5), (32, 1.0), (32, 2.0)
    ]  # fmt: skip
    assert {p.seed for p in scan.points} == {3} and {scan.tokens(p) for p in scan.points} == {4096}


def test_the_scan_trains_the_widest_shape_where_it_meets_the_step_floor_though_the_sweep_trains_it_only_higher():
    # The fitted rule is used at every width, so it is fitted at the widest: a scan of the lowest
    # budget's widths carried a rate 1.5 seed spreads off to width 48 in cpu_english's first run.
    config = tiny_sweep_config("unused", schedule="cosine", budgets=[4096.0, 8192.0, 16384.0])
    config.update(smoke_test=True, seeds=[3, 4], lr_tuning=[0.5, 1.0, 2.0], lr_check=[0.5, 2.0])
    config.base.data.synthetic_train_tokens = 100_000
    wide = config.shapes[1]
    config.limits.min_tokens_per_param = 0.99 * 16384 / plan_module.shape_params(config, wide, "total")
    plan = plan_module.expand(config)
    grid = [point for point in plan.points if point.lr_multiplier == 1.0]
    assert {plan.tokens(p) for p in grid if p.n_embd == 32} == {16384}
    scan = tuning.scan_plan(plan.config, plan)
    assert sorted((p.n_embd, scan.tokens(p), p.lr_multiplier) for p in scan.points) == [
        (16, 4096, 0.5), (16, 4096, 1.0), (16, 4096, 2.0), (32, 4096, 0.5), (32, 4096, 1.0), (32, 4096, 2.0)
    ]  # fmt: skip
    assert {p.seed for p in scan.points} == {3}
    # The check of the final sweep stays at the lowest budget where the sweep trains each shape.
    checks = [point for point in plan.points if point.lr_multiplier != 1.0]
    assert {(p.n_embd, plan.tokens(p)) for p in checks} == {(16, 8192), (32, 16384)}
    # Below the step floor (4 steps of 128 tokens) the scan moves up a budget.
    config.limits.min_steps = 40
    plan = plan_module.expand(config)
    assert {(p.n_embd, plan.tokens(p)) for p in tuning.scan_plan(plan.config, plan).points} == {
        (16, 8192), (32, 8192)
    }  # fmt: skip


SWEEP_FILE = """
from tests.helpers import tiny_sweep_config

def get_config(variant=""):
    config = tiny_sweep_config({data_dir!r}, schedule="cosine", budgets=[2048.0, 4096.0])
    config.smoke_test = True
    config.limits.max_epochs = 100.0
    config.lr_tuning = [0.25, 1.0, 4.0]
    return config
"""


def test_a_sweep_tunes_first_then_trains_every_point_at_the_fitted_rate(tmp_path):
    config_file = tmp_path / "sweep.py"
    config_file.write_text(SWEEP_FILE.format(data_dir=str(tmp_path / "data")))
    workdir = tmp_path / "sweep"
    command, env = sweep_command(config_file, workdir)
    done = subprocess.run(
        command, cwd=REPO, env=env | {"JAX_LOG_COMPILES": "1"}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tuning: rule learning_rate" in done.stdout
    # One process, one train step compiled per shape for its 5 points: the rates and lengths are its inputs.
    assert done.stderr.count("Finished XLA compilation of jit(train_step)") == 2
    for stage in (workdir / tuning.TUNING_DIR, workdir):
        (session,) = [json.loads(line) for line in (stage / "sessions.jsonl").read_text().splitlines()]
        assert [point["run"] for point in session["points"]] == session["points_run"] and session["device"] == "cpu"
        for point in session["points"]:
            assert point["in_steps_s"] > 0 and point["outside_steps_s"] > 0
            assert point["in_steps_s"] + point["outside_steps_s"] == pytest.approx(point["wall_s"], abs=2e-3)
    rule = json.loads((workdir / tuning.RULE_FILE).read_text())
    scanned = read_rows(workdir / tuning.TUNING_DIR / "results.csv")
    assert sorted((int(r["n_embd"]), float(r["lr_multiplier"])) for r in scanned) == [
        (16, 0.25), (16, 1.0), (16, 4.0), (32, 0.25), (32, 1.0), (32, 4.0)
    ]  # fmt: skip
    assert rule == tuning.fit_rule(plan_module.load_sweep_config(str(config_file)), scanned)
    points = read_rows(workdir / "results.csv")
    assert len(points) == 4
    for row in points:
        expected = rule["learning_rate"] * (16 / int(row["n_embd"])) ** rule["lr_width_exponent"]
        assert float(row["learning_rate"]) == pytest.approx(expected, rel=1e-6)
    # The plan of a tuned workdir shows the fitted rates; run again, the sweep has nothing left to do.
    shown = subprocess.run([*command, "--plan"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert f"{float(points[0]['learning_rate']):>9.2e}" in shown.stdout.split("tuning: rule")[1]
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[-1])["points_run"] == []
    assert np.isfinite([float(r["loss"]) for r in points]).all()
    # The report tables the scan: each shape's losses where it was scanned, and the rule they gave.
    table = report_module.tuning_lines(workdir)
    for row in scanned:
        line = next(line for line in table if line.startswith(f"| L1H2W{row['n_embd']} |"))
        assert f"| {float(row['budget']):.3g} | {row['steps']} |" in line and f"{float(row['loss']):.4f}" in line
    assert f"learning rate {rule['learning_rate']:.3g} x (16 / n_embd)^{rule['lr_width_exponent']:.3f}" in table[-1]
    assert report_module.tuning_lines(tmp_path) == []  # an untuned sweep has no scan to report


def _muon_sweep_config():
    config = tiny_sweep_config("unused", schedule="cosine", budgets=[4096.0, 8192.0])
    config.update(smoke_test=True, lr_tuning=[0.5, 1.0, 2.0])
    config.base.train.update(optimizer="muon", muon_learning_rate=0.02)
    return plan_module.expand(config).config  # with the sweep keys' defaults


def test_muon_scans_its_own_rate_at_the_fitted_adamw_rule_and_every_point_trains_at_the_best():
    """Muon's scan: the shapes of the AdamW-rate scan, at the fitted rule, once per multiple of Muon's rate;
    Muon's rate is then the geometric mean of the shapes' best (2x at width 16, 1.5x at 32 here)."""
    config = _muon_sweep_config()
    plan = plan_module.expand(config)
    rule = tuning.fit_rule(config, _scan_rows(config.rules, lambda width: 2e-2 * (16 / width) ** 0.8, (16, 32)))
    scans = tuning.muon_scan_configs(config, rule)
    assert sorted(scans) == [0.5, 1.0, 2.0]
    adamw_scan = {(p.n_embd, plan.tokens(p)) for p in tuning.scan_plan(config, plan).points}
    for multiplier, scanned in scans.items():
        muon_scan = tuning.scan_plan(scanned, plan_module.expand(scanned))
        assert {(p.n_embd, muon_scan.tokens(p)) for p in muon_scan.points} == adamw_scan
        for point in muon_scan.points:
            train = muon_scan.train_config(point, lambda run: run).train
            assert train.muon_learning_rate == pytest.approx(multiplier * 0.02)
            assert train.learning_rate == pytest.approx(2e-2 * (16 / point.n_embd) ** 0.8, rel=1e-6)
    best = {16: 2.0, 32: 1.5}
    rows = {
        m: [dict(n_layer=1, n_head=2, n_embd=w, loss=_bowl(m, best[w])) for w in best] for m in (0.5, 1.0, 2.0, 4.0)
    }
    muon = tuning.fit_muon_rate(config, rows)
    assert [s["best_rate"] for s in muon["muon_shapes"]] == pytest.approx([0.04, 0.03], rel=1e-6)
    assert muon["muon_learning_rate"] == pytest.approx(0.02 * math.sqrt(2.0 * 1.5), rel=1e-6)
    tuned = plan_module.expand(tuning.tuned_config(config, {**rule, **muon}))
    rates = [tuned.train_config(p, lambda run: run).train.muon_learning_rate for p in tuned.points]
    assert rates == pytest.approx([muon["muon_learning_rate"]] * len(tuned.points))
    assert "Muon's rate = 0.0346 at every width (untuned: 0.02)" in tuning.describe({**rule, **muon})
    # Two scans of the same runs: the sweep's cost counts the scan twice.
    adamw_config = _muon_sweep_config()
    adamw_config.base.train.optimizer = "adamw"
    scan_flops = tuning.spent_flops(config) - tuning.spent_flops(adamw_config)
    assert scan_flops == pytest.approx(plan_module.costs(tuning.scan_plan(config, plan))["flops_spent"]["6n_attention"])


def test_a_best_muon_rate_at_the_edge_of_its_scan_is_refused():
    config = _muon_sweep_config()
    config.smoke_test = False
    rows = {m: [dict(n_layer=1, n_head=2, n_embd=16, loss=_bowl(m, 10.0))] for m in (0.5, 1.0, 2.0)}
    with pytest.raises(ValueError, match="best Muon rate for L1H2W16 is its highest multiplier"):
        tuning.fit_muon_rate(config, rows)


def test_a_muon_sweeps_tuning_stage_trains_both_scans_and_writes_both_rates(tmp_path):
    """The AdamW-rate scan, then Muon's at the rule it fitted, each multiple in its own workdir: one shape and
    one multiplier (2 runs of 8 steps; a smoke test fits an unbracketed scan), since wiring is what it checks."""
    from gpt2jax.scaling.sweep import STALE_AFTER_S

    config = tiny_sweep_config(str(tmp_path / "data"), schedule="cosine", budgets=[1024.0])
    config.update(smoke_test=True, lr_tuning=[2.0], shapes=[dict(n_layer=1, n_head=2, n_embd=16)])
    config.update(evals_per_run=1, checkpoints_per_run=1)
    config.limits.max_epochs = 100.0
    config.base.train.update(optimizer="muon", muon_learning_rate=0.02)
    plan = plan_module.expand(config)
    stage = tuning.TuningStage(plan.config, plan, tmp_path / "sweep")
    rule = stage.run("test", (0, 1), STALE_AFTER_S, log=lambda line: None)
    assert rule == stage.rule() and "muon_learning_rate" in rule and "learning_rate" in rule
    rows = {2.0: read_rows(stage.muon_scan_dir(2.0) / "results.csv")}
    assert rule["muon_learning_rate"] == tuning.fit_muon_rate(plan.config, rows)["muon_learning_rate"]
    for multiplier in rows:
        (row,) = rows[multiplier]
        # AdamW's branch at the fitted rule (2x the untuned rate, the scan's only point), Muon's at 2 x 0.02.
        assert np.isfinite(float(row["loss"])) and float(row["learning_rate"]) == pytest.approx(rule["learning_rate"])
        assert rule["learning_rate"] == pytest.approx(2 * config.rules.learning_rate)
        recorded = json.loads((stage.muon_scan_dir(multiplier) / "sweep.json").read_text())["config"]
        assert recorded["base"]["train"]["muon_learning_rate"] == pytest.approx(multiplier * 0.02)
