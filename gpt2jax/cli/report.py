"""``python -m gpt2jax.scaling report --workdir runs/X [runs/Y] --out experiments/REPORT.md`` (drives ``scaling.report``).

``--prediction`` and ``--figures`` pair with the workdirs in order: the JSON ``scaling backtest
--predict --json`` wrote before the sweep's held-out points were trained, and the folder of its PNGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2jax.cli.fit import add_bootstrap_options, add_start_grid_option, require_interval_resamples

HELP = "write a Markdown report of a sweep's fit and what it predicts for GPT-2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gpt2jax import flops

    parser.add_argument("--workdir", nargs="+", required=True, help="the sweeps' --workdir, one section each")
    parser.add_argument("--out", required=True, help="the Markdown file to write")
    parser.add_argument("--prediction", nargs="+", help="per workdir: the backtest --predict JSON made before training")
    parser.add_argument("--preamble", help="a Markdown file to place after the title")
    parser.add_argument("--compare", help="workdir of a sweep of separate runs to set the first's WSD branches against")
    parser.add_argument("--figures", nargs="+", help="per workdir: folder of its PNGs (scaling plot --out)")
    add_bootstrap_options(parser)
    add_start_grid_option(parser)
    parser.add_argument(
        "--gpu",
        default="rtx-4070-ti",
        choices=sorted(flops.DEVICE_PEAKS),
        help="with --days and --utilization: the one-GPU budget to compare allocations at",
    )
    parser.add_argument("--days", type=float, default=365.0)
    parser.add_argument("--utilization", type=float, default=0.9)


def command_line(args: argparse.Namespace) -> str:
    """The report command that reproduces ``args``, with the options that differ from their defaults."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args(["--workdir", "", "--out", ""]))
    options = [
        f"--{name} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for name, value in vars(args).items()
        if name in defaults and value is not None and value != defaults[name]
    ]
    return "python -m gpt2jax.scaling report " + " ".join(options)


def run(args: argparse.Namespace) -> None:
    from gpt2jax.scaling.fit import START_GRIDS
    from gpt2jax.scaling.report import write_report

    require_interval_resamples(args)
    write_report(
        args.workdir,
        args.out,
        predictions=args.prediction,
        preamble=Path(args.preamble).read_text() if args.preamble else "",
        compare=args.compare,
        figures=args.figures,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        starts=START_GRIDS[args.grid],
        one_gpu=(args.gpu, args.days, args.utilization),
        command=command_line(args),
    )
    print(args.out)


if __name__ == "__main__":
    from gpt2jax import cli

    cli.run_as_scaling_subcommand(__spec__.name)
