"""``python -m gpt2jax.scaling multiplier``: an optimizer's compute multiplier over a reference, from two sweeps
(drives ``scaling.multiplier``).

``python -m gpt2jax.scaling multiplier --reference ADAMW_CSV --candidate MUON_CSV [--params non_embedding]
[--where TEXT] [--out multiplier.json] [--predict C]``

Without ``--predict``: a table of every budget both sweeps reached with every seed, and with ``--out`` the
file ``scaling budget --optimizer muon --multiplier FILE`` reads (the top budget's multiplier, its
interval, where and at what parameter counts it was measured). With ``--predict C``: the multiplier at
a budget C not yet trained, from the budgets below it, stamped with the time it was made (and written
to ``--out``), to hold against the measured one once C has trained.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

HELP = "an optimizer's compute multiplier over a reference, from two sweeps of the same shapes and budgets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gpt2jax.scaling.results import PARAM_COLUMNS

    parser.add_argument("--reference", nargs="+", required=True, help="the reference optimizer's results CSV(s)")
    parser.add_argument("--candidate", nargs="+", required=True, help="the candidate optimizer's results CSV(s)")
    parser.add_argument(
        "--params", choices=sorted(PARAM_COLUMNS), default="total", help="which parameter count the file states"
    )
    parser.add_argument("--where", help="where it was measured, as the budget will say it (default: the CSVs)")
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--predict", type=float, help="predict the multiplier at this budget from the budgets below")


def run(args: argparse.Namespace) -> None:
    from gpt2jax.scaling import multiplier
    from gpt2jax.scaling.results import load_results

    reference = load_results(args.reference, params=args.params)
    candidate = load_results(args.candidate, params=args.params)
    if args.predict is not None:
        result = multiplier.prediction(reference, candidate, args.predict)
        result["made_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        text = json.dumps(result, indent=2)
    else:
        where = args.where or f"{' '.join(args.candidate)} against {' '.join(args.reference)}"
        result = multiplier.summary(reference, candidate, where)
        result["params_counted"] = args.params
        text = multiplier.format_rows(result["by_budget"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    from gpt2jax import cli

    cli.run_as_scaling_subcommand(__spec__.name)
