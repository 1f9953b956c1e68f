"""``python -m gpt2jax.scaling SUBCOMMAND``: the scaling-law tools.

Each subcommand is a module with ``HELP``, ``add_arguments(parser)`` and ``run(args)``;
adding one is a new module and one line in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse

from gpt2jax.scaling import fit_command, plot, report

SUBCOMMANDS = {
        "fit": fit_command,
        "plot": plot,
        "report": report,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2jax.scaling", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="subcommand", required=True)
    for name, module in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
