"""An optimizer's compute multiplier over a reference (issue 36: Muon against a tuned AdamW), from two sweeps'
results: at each budget C, the compute the reference needs to reach the candidate's loss, over C.

Each sweep trains the same shapes at the same budgets and seeds. Its frontier at a budget is its best loss
over the shapes there, one per seed. The reference's frontier is fitted by a power law in compute,
L(C) = A C^-a (a line in log-log: at three budgets and a few decades, the reducible loss's bend is not
identified, and the multiplier reads the law only between and just beyond its own points); the
multiplier at C is C_ref(L_cand(C)) / C with C_ref(L) = (L / A)^(-1/a), above 1 where the candidate
needs less compute. The estimate reads both frontiers averaged over their seeds; its interval is the
range over every pairing of one reference seed's fit with one candidate seed's losses, so it carries
both the seeds' spread and the fit's (what two seeds can say, not a calibrated confidence interval).

``prediction`` makes the same estimate for a budget not yet trained, from the budgets below it: each
frontier's power law extrapolated to it, as the CPU study predicted its top budget before training it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from gpt2jax.scaling.results import ScalingPoints


def frontiers(points: ScalingPoints) -> dict[str, dict[float, float]]:
    """{seed: {budget: the best loss over the shapes at that budget}} of one sweep's points."""
    if points.budget is None or points.seed is None:
        raise ValueError("the multiplier needs each point's budget and seed; a sweep's results.csv has both.")
    best: dict[str, dict[float, float]] = {}
    for seed, budget, loss in zip(points.seed, points.budget, points.loss, strict=True):
        by_budget = best.setdefault(str(seed), {})
        by_budget[float(budget)] = min(float(loss), by_budget.get(float(budget), math.inf))
    return best


def power_law(budgets, losses) -> tuple[float, float]:
    """(log A, a) of L = A C^-a fitted by least squares in log-log; at least two budgets."""
    budgets, losses = np.asarray(budgets, float), np.asarray(losses, float)
    if len(np.unique(budgets)) < 2:
        raise ValueError("a power law in compute needs the frontier at two budgets or more.")
    slope, intercept = np.polyfit(np.log(budgets), np.log(losses), 1)
    if slope >= 0:
        raise ValueError(
            f"the reference's best loss does not fall with compute (log-log slope {slope:+.3f}); "
            "no compute reaches a lower loss by its law."
        )
    return float(intercept), float(-slope)


def compute_to_reach(law: tuple[float, float], loss: float) -> float:
    """The compute at which ``law`` (log A, a) reaches ``loss``."""
    log_a, exponent = law
    return math.exp((log_a - math.log(loss)) / exponent)


def _mean_frontier(by_seed: dict[str, dict[float, float]], budgets) -> list[float]:
    return [float(np.mean([by_seed[seed][budget] for seed in by_seed])) for budget in budgets]


def _shared_budgets(reference: dict, candidate: dict) -> list[float]:
    """The budgets every seed of both sweeps reached."""
    sets = [set(losses) for losses in (*reference.values(), *candidate.values())]
    budgets = sorted(set.intersection(*sets))
    if len(budgets) < 2:
        raise ValueError(
            f"the two sweeps share {len(budgets)} budget(s) reached by every seed; the multiplier needs two or more."
        )
    return budgets


def multipliers(reference: ScalingPoints, candidate: ScalingPoints) -> list[dict]:
    """At each budget both sweeps reached with every seed: the multiplier and its interval over the seed pairings,
    the two frontiers' losses, and whether reaching the candidate's loss takes the reference's law beyond the
    budgets it was fitted on (an extrapolation)."""
    ref, cand = frontiers(reference), frontiers(candidate)
    budgets = _shared_budgets(ref, cand)
    law = power_law(budgets, _mean_frontier(ref, budgets))
    seed_laws = {seed: power_law(budgets, [ref[seed][b] for b in budgets]) for seed in ref}
    rows = []
    for budget, ref_loss, cand_loss in zip(budgets, _mean_frontier(ref, budgets), _mean_frontier(cand, budgets)):
        needed = compute_to_reach(law, cand_loss)
        pairings = [
            compute_to_reach(seed_laws[r], cand[c][budget]) / budget for r, c in itertools.product(seed_laws, cand)
        ]
        rows.append(
            {
                "budget": budget,
                "multiplier": needed / budget,
                "interval": [min(pairings), max(pairings)],
                "reference_loss": ref_loss,
                "candidate_loss": cand_loss,
                "extrapolated": not budgets[0] <= needed <= budgets[-1],
            }
        )
    return rows


def prediction(reference: ScalingPoints, candidate: ScalingPoints, budget: float) -> dict:
    """The multiplier at ``budget`` from the budgets below it alone: the candidate's frontier extrapolated by its own
    power law to ``budget``, and the compute the reference's law needs for that loss."""
    ref, cand = frontiers(reference), frontiers(candidate)
    below = [b for b in _shared_budgets(ref, cand) if b < budget]
    if len(below) < 2:
        raise ValueError(
            f"a prediction at {budget:.3g} needs two budgets below it with every seed; found {len(below)}."
        )
    candidate_loss = math.exp(_log_loss_at(power_law(below, _mean_frontier(cand, below)), budget))
    needed = compute_to_reach(power_law(below, _mean_frontier(ref, below)), candidate_loss)
    return {"budget": budget, "from_budgets": below, "candidate_loss": candidate_loss, "multiplier": needed / budget}


def _log_loss_at(law: tuple[float, float], budget: float) -> float:
    log_a, exponent = law
    return log_a - exponent * math.log(budget)


def summary(reference: ScalingPoints, candidate: ScalingPoints, where: str) -> dict:
    """What ``scaling budget --optimizer`` reads (``budget.MULTIPLIER_KEYS``): the multiplier at the top shared
    budget with its interval, where it was measured, and the range of parameter counts it was measured at;
    and every budget's row."""
    rows = multipliers(reference, candidate)
    top = rows[-1]
    params = np.concatenate([reference.n_params, candidate.n_params])
    return {
        "multiplier": top["multiplier"],
        "interval": top["interval"],
        "where": where,
        "params": [float(params.min()), float(params.max())],
        "budget": top["budget"],
        "by_budget": rows,
    }


def format_rows(rows: list[dict]) -> str:
    lines = ["  budget     reference loss  candidate loss  multiplier  interval (seed pairings)"]
    for row in rows:
        low, high = row["interval"]
        note = "  (the reference's law extrapolated)" if row["extrapolated"] else ""
        lines.append(
            f"  {row['budget']:9.3g}  {row['reference_loss']:14.4f}  {row['candidate_loss']:14.4f}"
            f"  {row['multiplier']:10.3f}  {low:.3f}-{high:.3f}{note}"
        )
    return "\n".join(lines)
