"""Small configs shared by the tests: full GPT-2 vocabulary, everything else tiny."""

import os
import subprocess
import sys
from pathlib import Path

from gpt2jax.config import base_config

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data_dir, **train_overrides):
    config = base_config()
    config.model.update(n_layer=2, n_head=4, n_embd=32, block_size=16)
    config.data.update(dir=str(data_dir), synthetic_train_tokens=50_000, synthetic_val_tokens=5_000)
    config.train.update(batch_size=8, steps=12, learning_rate=1e-2, warmup_steps=2, log_every=3,
                        eval_every=6, eval_batches=2, checkpoint_every=6)
    config.train.update(train_overrides)
    return config


def config_flags(config) -> list[str]:
    """The command-line overrides that turn configs/tiny.py into ``config``."""
    flags = []
    for section in ("model", "data", "train"):
        for key, value in config[section].items():
            flags.append(f"--config.{section}.{key}={value}")
    return flags


def run_main(args, timeout=300, **popen_kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "gpt2jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen_kwargs)
