"""``python -m gpt2jax.scaling sweep``: run a scaling sweep (drives ``scaling.sweep``).

``python -m gpt2jax.scaling sweep --config experiments/X.py --workdir runs/X [--shard i/n]``.
Run it again to resume: finished points are skipped, unfinished ones continue from their
checkpoints. ``--shard i/n`` runs worker i's share of n (e.g. a SLURM array task per GPU,
``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``); a lock per job keeps two workers
off one job. ``--plan`` prints the points and their FLOPs and trains nothing. A run that
leaves points of its share untrained (their job held by another worker) exits 1 naming them.
``--workdir W --repair`` rewrites W's results.csv without the rows that are no finished point
(cut short or garbled), which the fits refuse; the next run trains those points again.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gpt2jax.errors import stopping_at_checkpoints

HELP = "run a sweep's points (resumable, shardable over workers), or print its plan"


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not int(index) < int(count):
        raise argparse.ArgumentTypeError(f"{text!r} is not i/n with 0 <= i < n, e.g. 0/4")
    return int(index), int(count)


def _device(text: str) -> str:
    """A ``flops.DEVICE_PEAKS`` key, or a name ``flops.device_key`` knows (h100 is the H100 SXM)."""
    from gpt2jax import flops

    key = text if text in flops.DEVICE_PEAKS else flops.device_key(text)
    if key is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is no device of the peak table ({', '.join(sorted(flops.DEVICE_PEAKS))})"
        )
    return key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gpt2jax import flops
    from gpt2jax.scaling import walltime

    parser.add_argument("--config", help="sweep config file, optionally FILE:VARIANT")
    parser.add_argument("--workdir", help="sweep directory: points, results.csv, locks")
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: run worker i's share of n workers")
    parser.add_argument("--plan", action="store_true", help="print the points and their FLOPs; train nothing")
    parser.add_argument(
        "--repair", action="store_true", help="with --workdir: drop the results.csv rows that are no finished point"
    )
    parser.add_argument(
        "--max_budget",
        type=float,
        default=math.inf,
        help="train only the points of budgets up to this, e.g. the ones a backtest fits before it predicts the rest",
    )
    parser.add_argument(
        "--device",
        type=_device,
        help=f"with --plan: estimate the wall time on one of it ({', '.join(sorted(flops.DEVICE_PEAKS))}, or h100)",
    )
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="with --device: fraction of peak assumed where no session measured it"
    )
    parser.add_argument(
        "--compile_s",
        type=float,
        default=walltime.ASSUMED_COMPILE_S,
        help="with --device: seconds to compile a program, assumed where no session measured it",
    )
    parser.add_argument(
        "--point_s",
        type=float,
        default=walltime.ASSUMED_POINT_S,
        help="with --device: seconds a point spends outside its steps, assumed where no session measured it",
    )
    parser.add_argument(
        "--stale_after",
        type=float,
        default=600.0,
        help="seconds without a heartbeat after which another worker's lock is broken",
    )


@stopping_at_checkpoints()  # a stop ends the sweep where its training checks it: see errors.request_stop
def run(args: argparse.Namespace) -> None:
    from gpt2jax.scaling.plan import expand, format_plan, load_sweep_config
    from gpt2jax.scaling.tuning import TUNING_DIR, TuningStage, describe, tuned_config, tunes_muon

    if args.repair:
        _repair(args.workdir)
        return
    if not args.config:
        raise ValueError("--config is required to plan or run a sweep (--repair needs only --workdir).")
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu is {args.mfu}; give a fraction of peak in (0, 1].")
    if args.compile_s < 0 or args.point_s < 0:
        raise ValueError(f"--compile_s {args.compile_s} and --point_s {args.point_s} are seconds; give numbers >= 0.")
    config = load_sweep_config(args.config)
    plan = expand(config)
    stage = TuningStage(config, plan, Path(args.workdir)) if config.lr_tuning and args.workdir else None
    rule = stage.rule() if stage else None
    if args.plan:
        if config.lr_tuning:
            scan = TuningStage(config, plan, Path(".")).scan
            print(f"tuning stage, trained first:\n{format_plan(scan)}\n")
            if tunes_muon(config):
                print(
                    "then Muon's rate: the same runs at the fitted rule, once per lr_tuning multiple of "
                    f"train.muon_learning_rate={config.base.train.muon_learning_rate:g}\n"
                )
            if rule:
                print(f"{describe(rule)}\n")
                plan = expand(tuned_config(config, rule))
            else:
                print("the sweep, its learning rates the untuned rule's until the tuning stage fits its own:")
        print(format_plan(plan))
        if args.device:
            from gpt2jax.scaling import walltime

            workdirs = [Path(args.workdir), Path(args.workdir) / TUNING_DIR] if args.workdir else []
            measured = walltime.measurements(workdirs, args.device)
            plans = [TuningStage(config, plan, Path(".")).scan, plan] if config.lr_tuning else [plan]
            found = walltime.estimate(plans, args.device, measured, args.mfu, args.compile_s, args.point_s)
            print(walltime.format_estimate(found))
        return
    if not args.workdir:
        raise ValueError("--workdir is required to run a sweep (or pass --plan).")
    from gpt2jax.scaling.sweep import Sweep, use_compilation_cache

    use_compilation_cache(args.workdir)
    if stage and rule is None:
        rule = stage.run(args.config, args.shard, args.stale_after)
        if rule is None:
            raise RuntimeError(
                "the tuning stage is not finished (other workers hold its points); run the same command again once they finish."
            )
    if rule:
        plan = expand(tuned_config(config, rule))
    sweep = Sweep(plan, args.workdir)
    sweep.start(args.config)
    session = sweep.run(args.shard, args.stale_after, max_budget=args.max_budget)
    print(
        json.dumps(
            {
                key: session[key]
                for key in ("shard", "points_run", "skipped_locked", "elapsed_s", "completed", "remaining")
            }
        )
    )
    if session["remaining"]:
        held = (
            f"; job(s) {', '.join(session['skipped_locked'])} held by another worker"
            if session["skipped_locked"]
            else ""
        )
        raise RuntimeError(
            f"the sweep in {args.workdir} left {len(session['remaining'])} point(s) of shard {session['shard']} "
            f"untrained ({', '.join(session['remaining'][:3])}{', ...' if len(session['remaining']) > 3 else ''}){held}; "
            "run the same command again once that worker is done (a dead worker's lock is broken after --stale_after)."
        )


def _repair(workdir: str | None) -> None:
    from gpt2jax.files.workdir import results_path
    from gpt2jax.scaling.results import repair

    if not workdir:
        raise ValueError("--repair needs --workdir, the sweep whose results.csv to repair.")
    path = results_path(workdir)
    dropped = repair(path)
    print(f"repaired {path}: dropped {dropped} row(s) that were no finished point; the next sweep run trains them.")


if __name__ == "__main__":
    from gpt2jax import cli

    cli.run_as_scaling_subcommand(__spec__.name)
