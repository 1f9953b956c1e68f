"""Each optimizer against AdamW at one small shape: the same steps, two seeds, final validation loss.

    python bench/optimizers.py [--steps 400] [--workdir runs/optimizers]

Trains ``configs/tiny.py`` (2 layers of 128 on the synthetic source) once per (optimizer,
seed) and prints one line each, then each optimizer's mean loss minus AdamW's beside
AdamW's seed-to-seed spread, and the dry run's memory estimate of its optimizer state.
"""

import argparse
import json
import shutil
import statistics
from pathlib import Path

from gpt2jax.config import load_config_file
from gpt2jax.training import loop, memory
from gpt2jax.training.optim import OPTIMIZERS
from gpt2jax.training.trainer import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workdir", default="runs/optimizers")
    args = parser.parse_args()
    losses = {}
    for name in OPTIMIZERS:
        for seed in args.seeds:
            config = load_config_file("tiny")
            config.train.update(optimizer=name, seed=seed, steps=args.steps, checkpoint_every=args.steps)
            workdir = Path(args.workdir) / f"{name}-seed{seed}"
            shutil.rmtree(workdir, ignore_errors=True)
            final = loop.run(config, workdir)
            losses.setdefault(name, []).append(final["val_loss"])
            print(json.dumps({"optimizer": name, "seed": seed, "steps": args.steps, "val_loss": final["val_loss"]}))
    spread = statistics.stdev(losses["adamw"]) if len(args.seeds) > 1 else float("nan")
    for name, values in losses.items():
        config = load_config_file("tiny")
        config.train.optimizer = name
        state = memory.estimate(build_trainer(config))["optimizer_state"]
        print(
            f"{name:<11} mean val loss {statistics.mean(values):.4f}, minus AdamW's {statistics.mean(values) - statistics.mean(losses['adamw']):+.4f} "
            f"(AdamW's seed spread {spread:.4f}); optimizer state {state / 2**20:.2f} MiB"
        )


if __name__ == "__main__":
    main()
