"""``python -m gpt2jax.scaling SUBCOMMAND`` (also ``gpt2jax-scaling``): the scaling-law tools.

Each subcommand is a module here with ``HELP``, ``add_arguments(parser)`` and ``run(args)``;
adding one is a new module and one line in ``SUBCOMMANDS``.
"""

from __future__ import annotations

from gpt2jax import cli
from gpt2jax.cli import backtest, budget, fit, multiplier, plot, report, sweep

SUBCOMMANDS = {
    "sweep": sweep,
    "fit": fit,
    "backtest": backtest,
    "plot": plot,
    "report": report,
    "budget": budget,
    "multiplier": multiplier,
}


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m gpt2jax.scaling", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="subcommand", required=True)
    for name, module in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    args.run(args)


def entry(argv: list[str] | None = None) -> None:
    cli.run_argparse(main, argv)


if __name__ == "__main__":
    entry()
