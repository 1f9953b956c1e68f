"""Run a scaling sweep: ``python -m gpt2jax.sweep --config experiments/X.py --workdir runs/X [--shard i/n]``.

Run it again to resume: finished points are skipped, unfinished ones continue from their
checkpoints. ``--shard i/n`` runs worker i's share of n (e.g. a SLURM array task per GPU,
``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``); a lock per job keeps two workers
off one job. ``--plan`` prints the points and their FLOPs and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from gpt2jax import cli


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not int(index) < int(count):
        raise argparse.ArgumentTypeError(f"{text!r} is not i/n with 0 <= i < n, e.g. 0/4")
    return int(index), int(count)


def print_plan(plan, device: str | None, mfu: float) -> None:
    from gpt2jax import flops
    from gpt2jax.scaling.plan import costs

    print(f"{'run':<34}{'N':>10}{'D':>12}{'D/N':>8}{'steps':>7}{'batch':>6}{'lr':>9}{'warmup':>7}{'budget':>10}")
    for point in plan.points:
        counts = plan.accounting(point)
        print(f"{point.run:<34}{counts['n_params']:>10}{counts['n_tokens']:>12}"
              f"{counts['n_tokens'] / counts['n_params']:>8.1f}{point.steps:>7}{point.batch_size:>6}"
              f"{point.learning_rate:>9.2e}{point.warmup_steps:>7}{point.budget:>10.3g}")
    total = costs(plan)
    print(f"{total['points']} points in {total['jobs']} jobs; FLOPs (6N / 6N+attention / Chinchilla):")
    for label, key in (("each point trained alone", "flops_separate"), ("this sweep spends", "flops_spent")):
        values = total[key]
        print(f"  {label:<25}{values['6n']:.3g} / {values['6n_attention']:.3g} / {values['chinchilla']:.3g}")
    print(f"  branching saves {total['saved']:.1%}")
    if device:
        peak = flops.DEVICE_PEAKS[device]["bf16"]
        hours = total["flops_spent"]["6n_attention"] / (peak * mfu) / 3600
        print(f"  on one {device} at {mfu:.0%} MFU of its {peak:.3g} FLOP/s bf16 peak: {hours:.2f} h of training")


def main(argv: list[str] | None = None) -> None:
    from gpt2jax import flops

    parser = argparse.ArgumentParser(prog="python -m gpt2jax.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="sweep config file, optionally FILE:VARIANT")
    parser.add_argument("--workdir", help="sweep directory: points, results.csv, locks")
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: run worker i's share of n workers")
    parser.add_argument("--plan", action="store_true", help="print the points and their FLOPs; train nothing")
    parser.add_argument("--device", choices=sorted(flops.DEVICE_PEAKS), help="with --plan: estimate hours on it")
    parser.add_argument("--mfu", type=float, default=0.4, help="with --device: fraction of peak achieved")
    parser.add_argument("--stale_after", type=float, default=600.0,
                        help="seconds without a heartbeat after which another worker's lock is broken")
    args = parser.parse_args(argv)
    from gpt2jax.scaling.plan import expand, load_sweep_config

    if not 0 < args.mfu <= 1:
        raise SystemExit(f"error: --mfu is {args.mfu}; give a fraction of peak in (0, 1].")
    try:
        plan = expand(load_sweep_config(args.config))
        if args.plan:
            print_plan(plan, args.device, args.mfu)
            return
        if not args.workdir:
            raise ValueError("--workdir is required to run a sweep (or pass --plan).")
        # SLURM and kill send SIGTERM: unwind, so locks are released and checkpoints closed.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        import jax

        from gpt2jax.scaling.sweep import Sweep

        # Points of one shape compile the same init and eval steps; a resumed run, its train step.
        jax.config.update("jax_compilation_cache_dir", str((Path(args.workdir) / "jax_cache").absolute()))
        sweep = Sweep(plan, args.workdir)
        sweep.start(args.config)
        session = sweep.run(args.shard, args.stale_after)
    except cli.USER_ERRORS as error:
        raise SystemExit(f"error: {error}") from None
    print(json.dumps({key: session[key] for key in ("shard", "points_run", "skipped_locked", "elapsed_s", "completed")}))


if __name__ == "__main__":
    main()
