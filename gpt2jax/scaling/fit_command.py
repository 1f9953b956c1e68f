"""``python -m gpt2jax.scaling fit``: Chinchilla's three approaches on a results CSV, as a table or JSON.

python -m gpt2jax.scaling fit --results FILE.csv [--json] [--bootstrap N] [--seed S] [--grid coarse]
"""

from __future__ import annotations

import argparse
import json

from gpt2jax.scaling import fit
from gpt2jax.scaling.laws import CHINCHILLA_APPROACH_EXPONENTS
from gpt2jax.scaling.results import load_results

HELP = "fit Chinchilla's three scaling approaches to a results CSV"
START_GRIDS = {"hoffmann": fit.HOFFMANN_STARTS, "coarse": fit.COARSE_STARTS}
LAW_CONSTANTS = ("E", "A", "B", "alpha", "beta")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
            "--results", required=True, help="CSV with n_params, n_tokens, loss and optionally flops, run, budget",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--bootstrap", type=int, default=100, help="resamples for percentile intervals; 0 skips them")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument(
            "--grid", choices=sorted(START_GRIDS), default="hoffmann",
            help="approach 3's L-BFGS starts: Hoffmann et al.'s 4500 or a coarse 108 (faster)",
    )


def _interval(interval) -> str:
    return "" if interval is None else f"[{interval[0]:.4g}, {interval[1]:.4g}]"


def _exponent_cells(values: dict) -> str:
    if "skipped" in values:
        return f"skipped: {values['skipped']}"
    ci = values.get("ci", {})
    return "  ".join(f"{values[name]:.3f} {_interval(ci.get(name))}".ljust(26) for name in ("a", "b"))


def format_table(summary: dict, source: str) -> str:
    """The fit as a readable table; ``source`` names the results file."""
    intervals = (
            f"{summary['confidence']:.0%} percentile intervals from {summary['bootstrap']} bootstrap resamples"
            if summary["bootstrap"] else "no bootstrap intervals"
    )
    lines = [
            f"{source}: {summary['n_points']} final points ({summary['n_rows']} rows), {intervals}",
            "",
            f"approach 3: L(N, D) = E + A/N^alpha + B/D^beta  (summed Huber loss {summary['huber_objective']:.6g})",
    ]
    lines += [f"  {name:<6} {summary[name]:<10.4g} {_interval(summary['ci'][name])}".rstrip() for name in LAW_CONSTANTS]
    lines += ["", "compute-optimal exponents, N_opt ~ C^a and D_opt ~ C^b", f"  {'':<12}{'a':<28}b"]
    approach3 = {"a": summary["a"], "b": summary["b"], "ci": summary["ci"]}
    approaches = {"approach 1": summary["approach1"], "approach 2": summary["approach2"], "approach 3": approach3}
    for label, values in approaches.items():
        lines.append(f"  {label:<12}{_exponent_cells(values)}".rstrip())
    published = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in CHINCHILLA_APPROACH_EXPONENTS.values())
    lines.append(f"  Hoffmann et al. 2022, Table 2 (approaches 1, 2, 3): {published}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    if args.bootstrap < 0:
        raise SystemExit(f"error: --bootstrap is {args.bootstrap}; give 0 or more resamples.")
    try:
        points = load_results(args.results)
        summary = fit.fit_summary(points, n_bootstrap=args.bootstrap, seed=args.seed, starts=START_GRIDS[args.grid])
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(json.dumps(summary, indent=2) if args.json else format_table(summary, args.results))
