"""``python -m gpt2jax.scaling plot --workdir runs/X [--out DIR]``: a sweep's figures (drives ``scaling.plot``)."""

from __future__ import annotations

import argparse

from gpt2jax.cli.fit import add_start_grid_option

HELP = "plot a sweep's loss curves, IsoFLOP profiles and compute-optimal allocations as PNGs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the sweep's --workdir (results.csv and points/)")
    parser.add_argument("--out", help="folder for the PNGs; the workdir unless given")
    add_start_grid_option(parser)


def run(args: argparse.Namespace) -> None:
    from gpt2jax.scaling.fit import START_GRIDS
    from gpt2jax.scaling.plot import plot_sweep

    paths = plot_sweep(args.workdir, args.out, START_GRIDS[args.grid])
    print("\n".join(str(path) for path in paths))


if __name__ == "__main__":
    from gpt2jax import cli

    cli.run_as_scaling_subcommand(__spec__.name)
