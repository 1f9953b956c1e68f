"""Small configs shared by the tests: full GPT-2 vocabulary, everything else tiny."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gpt2jax.config import base_config
from gpt2jax.scaling.laws import ChinchillaLaw

REPO = Path(__file__).resolve().parents[1]
# XLA:CPU's codegen level in the tests' own processes and in every process they start (tests/conftest.py).
IN_PROCESS_CODEGEN_FLAG = "--xla_backend_optimization_level=0"
CHILD_CODEGEN_FLAG = "--xla_backend_optimization_level=1"


def tiny_config(data_dir, **train_overrides):
    config = base_config()
    config.model.update(n_layer=2, n_head=4, n_embd=32, block_size=16)
    config.data.update(dir=str(data_dir), synthetic_train_tokens=50_000, synthetic_val_tokens=5_000)
    config.train.update(
        batch_size=8,
        steps=12,
        learning_rate=1e-2,
        warmup_steps=2,
        log_every=3,
        eval_every=6,
        eval_batches=2,
        checkpoint_every=6,
    )
    config.train.update(train_overrides)
    return config


COMPACT_SOURCE = "synthetic:num_states=64,support_size=8,vocabulary=compact"


def compact_config(data_dir, **train_overrides):
    """tiny_config with 1 layer and a 65-id vocabulary: checkpoints of ~300 KB, steps of a few ms."""
    config = tiny_config(data_dir, **train_overrides)
    config.model.update(n_layer=1, n_head=2, vocab_size=65, vocab_multiple=8)
    config.data.update(source=COMPACT_SOURCE, synthetic_train_tokens=20_000, synthetic_val_tokens=2_000)
    return config


def config_overrides(config) -> dict:
    """{"section.key": value} of the keys that turn configs/tiny.py into ``config``."""
    return {
        f"{section}.{key}": value for section in ("model", "data", "train") for key, value in config[section].items()
    }


def config_flags(config) -> list[str]:
    """The command-line overrides that turn configs/tiny.py into ``config``."""
    return [f"--config.{key}={value}" for key, value in config_overrides(config).items()]


def final_record(stdout: str) -> dict:
    """The JSON record a finished ``main`` prints just before its closing ``done:`` line."""
    lines = stdout.strip().splitlines()
    assert lines[-1].startswith("done: step "), lines[-1]
    return json.loads(lines[-2])


def run_main(args, timeout=300, **popen_kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "gpt2jax.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen_kwargs,
    )


def popen_with_sigint(command, sigint=signal.SIG_DFL, **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen(command)`` of a process that starts with SIGINT's disposition ``sigint``: its default, as
    from a terminal, for a test of Ctrl-C, whatever started the test run. A test run started in a script's
    background (``cmd &``) ignores SIGINT, its children inherit that, and a command keeps ignoring it."""
    previous = signal.signal(signal.SIGINT, sigint)  # a child inherits an ignored signal through exec
    try:
        return subprocess.Popen(command, **popen_kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


def tiny_sweep_config(data_dir, schedule="wsd_branches", budgets=(4096.0, 8192.0)):
    """A sweep of two 1-layer shapes on a 64-word compact synthetic source, token budgets of a few steps."""
    import ml_collections

    config = ml_collections.ConfigDict()
    base = base_config()
    base.model.update(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=65, vocab_multiple=8)
    base.data.update(
        source="synthetic:num_states=64,support_size=8,vocabulary=compact",
        dir=str(data_dir),
        synthetic_train_tokens=50_000,
        synthetic_val_tokens=5_000,
    )
    base.train.update(eval_batches=2, log_every=4)
    config.base = base
    config.shapes = [dict(n_layer=1, n_head=2, n_embd=16), dict(n_layer=1, n_head=2, n_embd=32)]
    config.grid = "tokens"
    config.budgets = list(budgets)
    config.seeds = [0]
    config.schedule = schedule
    config.rules = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-2,
            width_reference=16,
            lr_width_exponent=0.5,
            batch_size=8,
            params_reference=1e4,
            batch_params_exponent=0.0,
            min_batch_size=8,
            max_batch_size=8,
            warmup_fraction=0.0,
            min_warmup_steps=2,
        )
    )
    config.limits = ml_collections.ConfigDict(dict(min_steps=4, min_tokens_per_param=0.0, max_tokens_per_param=1e9))
    config.evals_per_run = 2
    config.checkpoints_per_run = 2
    return config


def child_xla_flags(devices: int) -> str:
    """XLA_FLAGS of a child process on ``devices`` fake CPU devices, compiled as every child of the tests is
    (``CHILD_CODEGEN_FLAG``, tests/conftest.py says why)."""
    return f"--xla_force_host_platform_device_count={devices} {CHILD_CODEGEN_FLAG}"


def sweep_command(config_file, workdir) -> tuple[list[str], dict]:
    """(argv, env) of a ``scaling sweep`` process on one CPU device."""
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=child_xla_flags(1))
    argv = [sys.executable, "-m", "gpt2jax.scaling", "sweep", "--config", str(config_file), "--workdir", str(workdir)]
    return argv, env


def smoke_config(*args, **kwargs):
    """``tiny_sweep_config`` with the planner's floors lifted (a few steps a point, one seed), reading its
    50k-token corpus as often as it likes."""
    config = tiny_sweep_config(*args, **kwargs)
    config.smoke_test = True
    config.limits.max_epochs = 100.0
    return config


# The law a known sweep's losses follow.
TRUE_LAW = ChinchillaLaw(E=2.9, A=60.0, B=400.0, alpha=0.45, beta=0.4, name="truth", source="test")
# A known sweep's embedding parameters: the difference between its two counts of N.
KNOWN_EMBEDDING = 1e5


def write_known_sweep(workdir: Path, params: str = "total") -> Path:
    """A sweep workdir whose losses follow TRUE_LAW (with 0.3% noise) in the N that ``params`` counts:
    4 sizes at 4 IsoFLOP budgets, each point's training curve in points/, and both counts of N in
    results.csv (the other one off by KNOWN_EMBEDDING), so a figure that reads the wrong one shows it."""
    import numpy as np

    from gpt2jax.scaling.results import upsert_row

    config = smoke_config("unused")
    config.grid = "isoflop"
    config.params = params
    rng = np.random.default_rng(0)
    meta = {
        "source": "synthetic:vocabulary=compact",
        "train_tokens": 1000,
        "val_tokens": 100,
        "vocab_size": 65,
        "tokenizer": "none",
        "entropy_rate_nats_per_token": 2.9,
    }
    (workdir / "sweep.json").write_text(
        json.dumps({"config_spec": "experiments/known.py", "data_meta": meta, "config": json.loads(config.to_json())})
    )
    for n_params in (2e4, 5e4, 1.2e5, 3e5):
        counts = (
            {"n_params": n_params, "n_params_non_embedding": n_params / 2}
            if params == "total"
            else {"n_params": n_params + KNOWN_EMBEDDING, "n_params_non_embedding": n_params}
        )
        for budget in (3e11, 1e12, 3e12, 1e13):
            tokens = budget / (6 * n_params)
            loss = float(TRUE_LAW.loss(n_params, tokens)) * (1 + 0.003 * rng.standard_normal())
            run = f"N{n_params:.0f}_C{budget:.0e}"
            curve = [
                {
                    "step": step,
                    "tokens_seen": tokens * step / 4,
                    "flops_seen": budget * step / 4,
                    "train_loss": float(TRUE_LAW.loss(n_params, tokens * step / 4)),
                }
                for step in (1, 2, 3, 4)
            ]
            (workdir / "points" / run).mkdir(parents=True)
            (workdir / "points" / run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
            upsert_row(
                workdir / "results.csv",
                {
                    "run": run,
                    "kind": "run",
                    "n_layer": 1,
                    "n_head": 1,
                    "n_embd": int(n_params),
                    "seed": 0,
                    **counts,
                    "n_tokens": tokens,
                    "budget": budget,
                    "flops": budget,
                    "flops_6n_attention": budget,
                    "flops_spent": budget,
                    "train_loss": loss,
                    "val_loss": loss,
                    "loss": loss,
                    "wall_s": 1.0,
                    "trunk": "",
                    "branch_step": 0,
                },
            )
    return workdir
