"""``python -m gpt2jax.scaling fit``: Chinchilla's three approaches on a results CSV (drives ``scaling.fit``)."""

from __future__ import annotations

import argparse
import json

HELP = "fit Chinchilla's three scaling approaches to a results CSV"


def add_start_grid_option(parser: argparse.ArgumentParser) -> None:
    """``--grid``: the L-BFGS starts of approach 3, for every command that fits a law."""
    from gpt2jax.scaling.fit import START_GRIDS

    parser.add_argument(
        "--grid",
        choices=sorted(START_GRIDS),
        default="hoffmann",
        help="approach 3's L-BFGS starts: Hoffmann et al.'s 4500 or a coarse 108 (faster)",
    )


def add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    """``--bootstrap`` and ``--seed``, for every command whose figures carry bootstrap intervals."""
    parser.add_argument("--bootstrap", type=int, default=100, help="resamples for percentile intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")


def require_interval_resamples(args: argparse.Namespace) -> None:
    """Refuses a ``--bootstrap`` too small for the intervals a backtest or a report prints."""
    if args.bootstrap < 2:
        raise ValueError(f"--bootstrap is {args.bootstrap}; the intervals need at least 2 resamples.")


def add_law_options(parser: argparse.ArgumentParser) -> None:
    """``--params`` and ``--flops``: which N and which C a fit reads from the results CSV."""
    from gpt2jax.scaling.results import FLOP_COUNTS, PARAM_COLUMNS

    parser.add_argument(
        "--params",
        choices=sorted(PARAM_COLUMNS),
        default="total",
        help="N: every parameter (Chinchilla) or the non-embedding ones (Kaplan)",
    )
    parser.add_argument(
        "--flops", choices=FLOP_COUNTS, default="6n", help="C: 6ND, or 6ND plus PaLM's attention term 12 L d T D"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        nargs="+",
        required=True,
        help="CSV(s) with n_params, n_tokens, loss and optionally flops, run, budget, seed",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_law_options(parser)
    add_bootstrap_options(parser)
    add_start_grid_option(parser)


def run(args: argparse.Namespace) -> None:
    from gpt2jax.scaling import fit
    from gpt2jax.scaling.results import load_results

    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap is {args.bootstrap}; give 0 or more resamples.")
    points = load_results(args.results, params=args.params, flops=args.flops)
    summary = fit.fit_summary(points, n_bootstrap=args.bootstrap, seed=args.seed, starts=fit.START_GRIDS[args.grid])
    summary.update(params=args.params, flops=args.flops)
    print(json.dumps(summary, indent=2) if args.json else fit.format_summary(summary, " ".join(args.results)))


if __name__ == "__main__":
    from gpt2jax import cli

    cli.run_as_scaling_subcommand(__spec__.name)
