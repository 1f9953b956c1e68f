"""``python -m gpt2jax.scaling plot --workdir runs/X [--out DIR]``: a sweep's figures (drives ``scaling.plot``).

``--bootstrap`` and ``--seed`` are ``fit``'s: the allocation figure withholds approach 3 when the
same bootstrap that ``fit`` runs calls its constants unidentified."""

from __future__ import annotations

import argparse

from gpt2jax.cli.fit import add_bootstrap_options, add_start_grid_option

HELP = "plot a sweep's loss curves, IsoFLOP profiles and compute-optimal allocations as PNGs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gpt2jax.scaling.results import PARAM_COLUMNS

    parser.add_argument("--workdir", required=True, help="the sweep's --workdir (results.csv and points/)")
    parser.add_argument("--out", help="folder for the PNGs; the workdir unless given")
    parser.add_argument(
        "--params",
        choices=sorted(PARAM_COLUMNS),
        help="what N counts, for a folder without the sweep's sweep.json (a committed study); default: the sweep's",
    )
    add_bootstrap_options(parser)
    add_start_grid_option(parser)


def run(args: argparse.Namespace) -> None:
    from gpt2jax.scaling.fit import START_GRIDS
    from gpt2jax.scaling.plot import plot_sweep

    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap is {args.bootstrap}; give 0 or more resamples.")
    paths = plot_sweep(args.workdir, args.out, START_GRIDS[args.grid], args.bootstrap, args.seed, args.params)
    print("\n".join(str(path) for path in paths))


if __name__ == "__main__":
    from gpt2jax import cli

    cli.run_as_scaling_subcommand(__spec__.name)
