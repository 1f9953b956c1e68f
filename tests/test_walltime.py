"""``sweep --plan --device``: the wall time a sweep takes on a device, from the MFU and the seconds outside
train steps a previous session measured for each program there, else the assumptions it names."""

import argparse
import json

import pytest

from gpt2jax import flops
from gpt2jax.cli import sweep as sweep_cli
from gpt2jax.scaling import plan as plan_module
from gpt2jax.scaling.sweep import duration

SWEEP_FILE = """
from tests.helpers import smoke_config

def get_config(variant=""):
    return smoke_config({data_dir!r}, budgets=[4096.0, 8192.0])
"""


def _session(device: str, entries: list[tuple[str, float, float]]) -> str:
    points = [{"run": f"p{i}", "program": p, "outside_steps_s": s, "mfu": m} for i, (p, s, m) in enumerate(entries)]
    return json.dumps({"device": device, "points": points}) + "\n"


def test_the_plan_prints_the_wall_time_on_a_device_from_measured_mfu_and_seconds_else_the_assumed(tmp_path, capsys):
    config_file = tmp_path / "sweep.py"
    config_file.write_text(SWEEP_FILE.format(data_dir=str(tmp_path / "data")))
    plan = plan_module.expand(plan_module.load_sweep_config(str(config_file)))
    workdir = tmp_path / "sweep"
    workdir.mkdir()
    # The narrow shape was measured on an H100 in two sessions (its first point of each compiles); a CPU's
    # session of the wide one is no measurement for an H100.
    (workdir / "sessions.jsonl").write_text(
        _session("h100-sxm", [("L1H2W16B8", 31.0, 2e-8), ("L1H2W16B8", 4.0, 4e-8)])
        + _session("h100-sxm", [("L1H2W16B8", 29.0, 3e-8), ("L1H2W16B8", 6.0, 5e-8), ("L1H2W16B8", 5.0, 1e-8)])
        + _session("cpu", [("L1H2W32B8", 1.0, 0.5), ("L1H2W32B8", 1.0, 0.5)])
    )
    parser = argparse.ArgumentParser()
    sweep_cli.add_arguments(parser)
    argv = ["--config", str(config_file), "--workdir", str(workdir), "--plan", "--device", "h100"]
    sweep_cli.run(parser.parse_args([*argv, "--mfu", "1e-8", "--compile_s", "100", "--point_s", "7"]))
    printed = capsys.readouterr().out
    # By hand: float32 steps run at the H100 SXM's TF32 peak, 494.5 TFLOP/s (989 "with sparsity").
    assert plan.config.base.model.dtype == "float32"
    peak = 494.5e12
    narrow = [point for point in plan.points if point.n_embd == 16]
    wide = [point for point in plan.points if point.n_embd == 32]
    assert len(narrow) == len(wide) == 2

    def flops_of(points):  # PaLM's count, 6N + 12 L d T a token, of the steps each point adds
        return sum(
            flops.flops_per_token(plan.shape(p))["6n_attention"] * plan.tokens(p, plan.spent_steps(p)) for p in points
        )

    # Measured: the median MFU 3e-8; 5 s a later point (4, 6, 5); 30 - 5 s to compile (first points 31, 29).
    narrow_s = flops_of(narrow) / (peak * 3e-8) + 25.0 + 2 * 5.0
    wide_s = flops_of(wide) / (peak * 1e-8) + 100.0 + 2 * 7.0  # assumed, all three
    assert 1.0 < flops_of(narrow) / (peak * 3e-8) and 1.0 < flops_of(wide) / (peak * 1e-8)  # the steps count
    assert f"about {duration(narrow_s + wide_s)}," in printed
    assert "L1H2W16B8" in printed and "measured" in printed.split("L1H2W16B8")[1].split("\n")[0]
    assert "on h100-sxm measured them: MFU 1e-06%, 100 s to compile a program, 7 s a point outside" in printed
    with pytest.raises(SystemExit):
        parser.parse_args([*argv[:-1], "b200"])  # no such device: argparse's one line, exit 2
