"""``python -m gpt2jax.scaling backtest``: fit on the budgets up to C, predict the rest (drives ``scaling.backtest``).

``python -m gpt2jax.scaling backtest --results CSV [CSV ...] --train_below C [--params total|non_embedding]
[--flops 6n|6n_attention] [--predict SWEEP_CONFIG] [--irreducible_scale F] [--json]``, or ``--every_cutoff`` instead of
``--train_below`` for one row per cut-off that holds out at least 10 points.

With ``--predict`` the points to predict are the sweep plan's points above C, before any of
them is trained: the JSON records when the prediction was made.
"""

from __future__ import annotations

import argparse
import json

from gpt2jax.cli.fit import add_bootstrap_options, add_law_options, add_start_grid_option, require_interval_resamples

HELP = "fit each approach on the points up to a budget and predict the points above it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", nargs="+", required=True, help="results CSV(s) of one or more sweeps")
    cut = parser.add_mutually_exclusive_group(required=True)
    cut.add_argument("--train_below", type=float, help="fit on the budgets up to this many FLOPs")
    cut.add_argument(
        "--every_cutoff", action="store_true", help="one row per cut-off that holds out at least 10 points"
    )
    parser.add_argument("--predict", help="a sweep config (FILE[:VARIANT]): predict its points above --train_below")
    parser.add_argument(
        "--irreducible_scale",
        type=float,
        default=1.0,
        help="hold E at this fraction of the fitted E and refit the rest (1: the fit as it is; docs/scaling.md)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_law_options(parser)
    add_bootstrap_options(parser)
    add_start_grid_option(parser)


def run(args: argparse.Namespace) -> None:
    from gpt2jax.scaling import backtest
    from gpt2jax.scaling.fit import START_GRIDS
    from gpt2jax.scaling.results import load_results

    require_interval_resamples(args)
    if not 0.0 < args.irreducible_scale <= 1.0:
        raise ValueError(f"--irreducible_scale is {args.irreducible_scale}; give a fraction of E in (0, 1].")
    options = dict(
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        starts=START_GRIDS[args.grid],
        irreducible_scale=args.irreducible_scale,
    )
    points = load_results(args.results, params=args.params, flops=args.flops)
    if args.every_cutoff:
        if args.predict:
            raise ValueError("--predict needs one --train_below, not --every_cutoff.")
        rows = backtest.cutoff_rows(points, **options)
        print(json.dumps(rows, indent=2) if args.json else backtest.format_cutoff_rows(rows, " ".join(args.results)))
        return
    train_below = backtest.finite_budget(args.train_below)
    targets = labels = allocations = None
    if args.predict:
        from gpt2jax.scaling.plan import expand, load_sweep_config

        plan = expand(load_sweep_config(args.predict))
        targets, labels = backtest.plan_targets(plan, train_below, args.params)
        allocations = backtest.plan_allocations(plan, args.params)
    report = backtest.backtest(
        points,
        train_below,
        targets=targets,
        labels=labels,
        allocations=allocations,
        **options,
    )
    report.update(results=args.results, params=args.params, flops=args.flops)
    print(json.dumps(report, indent=2) if args.json else backtest.format_backtest(report, " ".join(args.results)))


if __name__ == "__main__":
    from gpt2jax import cli

    cli.run_as_scaling_subcommand(__spec__.name)
