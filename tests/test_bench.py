import json
import os
import subprocess
import sys

import pytest

from gpt2jax import flops
from gpt2jax.benchmark import benchmark
from tests.helpers import REPO, tiny_config


def test_benchmark_reports_consistent_figures():
    config = tiny_config("unused")
    result = benchmark(config, steps=2)
    tokens_per_step = 8 * 16
    assert result["tokens_per_step"] == tokens_per_step
    assert result["tokens_per_s"] == pytest.approx(tokens_per_step / (result["step_ms"] / 1e3))
    per_token = flops.flops_per_token_palm(flops.Shape(2, 4, 32, 50257, 16))
    assert result["model_flops_per_s"] == pytest.approx(per_token * result["tokens_per_s"])
    assert result["mfu"] == pytest.approx(result["model_flops_per_s"] / result["peak_flops_per_s"])
    assert result["n_devices"] == 8 and result["mesh"]["fsdp"] == 8
    assert result["compile_s"] > 0 and result["peak_memory_bytes"] > 0
    assert 0 < result["final_loss"] < 11.5


def test_bench_cli_prints_json():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2jax.cli.bench",
            "--config",
            "configs/tiny.py",
            "--steps",
            "1",
            "--json",
            "--config.model.n_embd=32",
            "--config.model.block_size=16",
            "--config.train.batch_size=8",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"tokens_per_s", "step_ms", "compile_s", "mfu", "peak_memory_bytes"} <= report.keys()
