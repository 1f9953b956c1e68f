"""``python -m gpt2jax.scaling budget``: what one GPU's time buys (drives ``scaling.budget``).

``python -m gpt2jax.scaling budget --gpu rtx-4070-ti --days 365 --utilization 0.9 [--precision fp32|tf32|bf16]
[--mfu 0.4 | --bench bench/records.jsonl] [--corpus fineweb-edu-10BT|DIR|TOKENS] [--fit fit.json]
[--optimizer adamw|muon [--multiplier FILE]] [--json]``

Without ``--mfu`` the MFU is the last record for the card in ``--bench``, a JSON-lines file of
``python -m gpt2jax.cli.bench --json`` outputs (append one with ``>> bench/records.jsonl``).
"""

from __future__ import annotations

import argparse
import json

HELP = "what one GPU's time buys, against GPT-2's original budget and the compute-optimal one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gpt2jax import flops
    from gpt2jax.scaling.budget import BENCH_RECORDS, DEFAULT_CORPUS, DEFAULT_MFU, MULTIPLIER_FILE, NAMED_CORPORA

    parser.add_argument("--gpu", default="rtx-4070-ti", help=f"one of {', '.join(sorted(flops.DEVICE_PEAKS))}")
    parser.add_argument("--days", type=float, default=365.0, help="days the GPU runs")
    parser.add_argument(
        "--utilization",
        type=float,
        default=0.9,
        help="share of the time the card runs, which the question's premise and the laws' budget count",
    )
    parser.add_argument(
        "--precision",
        choices=flops.PRECISIONS,
        default="bf16",
        help="the peak the budget counts: fp32 (the question's premise), tf32, or bf16 tensor cores",
    )
    parser.add_argument(
        "--mfu",
        type=float,
        help=f"fraction of peak a training run achieves; default: the card's last --bench record, else {DEFAULT_MFU}",
    )
    parser.add_argument("--bench", default=str(BENCH_RECORDS), help="JSON lines of `bench --json` records")
    parser.add_argument(
        "--corpus",
        default=DEFAULT_CORPUS,
        help=f"the data the tokens come from: {', '.join(NAMED_CORPORA)}, a prepared data directory, or a token count",
    )
    parser.add_argument("--fit", help="JSON from python -m gpt2jax.scaling fit --json, to add the project's own law")
    parser.add_argument(
        "--optimizer",
        choices=("adamw", "muon"),
        default="adamw",
        help="muon: the days divided by Muon's measured compute multiplier, if one was measured",
    )
    parser.add_argument("--multiplier", default=str(MULTIPLIER_FILE), help="the Muon experiment's multiplier.json")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> None:
    from gpt2jax.scaling.budget import budget_report, format_report, load_fit_law, optimizer_lines, optimizer_section

    fit = load_fit_law(args.fit) if args.fit else None
    report = budget_report(
        args.gpu,
        args.days,
        args.utilization,
        args.mfu,
        fit,
        precision=args.precision,
        bench_records=args.bench,
        corpus=args.corpus,
    )
    optimizer = optimizer_section(report, args.optimizer, args.multiplier)
    if args.json:
        print(json.dumps(dict(report, **({"optimizer": optimizer} if optimizer else {})), indent=2))
    else:
        print("\n".join([format_report(report), *([""] + optimizer_lines(optimizer) if optimizer else [])]))


if __name__ == "__main__":
    from gpt2jax import cli

    cli.run_as_scaling_subcommand(__spec__.name)
