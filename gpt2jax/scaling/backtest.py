"""A law tested by what it predicts: fit on the budgets up to C, predict the points above, compare.

``python -m gpt2jax.scaling backtest --results CSV --train_below C`` drives it. A point belongs to
the training side when its IsoFLOP ``budget`` (or, without that column, its FLOPs) is at most C,
so a whole profile falls on one side. Then:

- approach 3 (the parametric L(N, D)) predicts every held-out point's loss; its interval is the
  central 95% of the bootstrap refits' predictions, each times the exponential of a residual
  drawn from the fit's own log residuals: a prediction interval for one new run, which is what
  an observed loss is, rather than for the law's mean alone;
- approaches 2 (IsoFLOP minima) and 3 predict N_opt at the held-out budgets, set against the
  held-out budget's own IsoFLOP minimum.

With ``targets`` (the plan's points above C, none of them trained yet) it is a prediction made
before the compute is spent, stamped with the time it was made; run again once they are trained,
the same fit (same points, same seed) meets what happened.
"""

from __future__ import annotations

import datetime
import math

import numpy as np

from gpt2jax.scaling import fit
from gpt2jax.scaling.results import ScalingPoints

CONFIDENCE = 0.95


def split(points: ScalingPoints, train_below: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held out) of ``points``, by budget if they carry one, else by FLOPs."""
    key = points.budget if points.budget is not None else points.flops
    return key <= train_below, key > train_below


def _prediction_samples(law, boot_laws, residuals, n_params, n_tokens, rng) -> np.ndarray:
    """[bootstrap, points] losses a new run could show: each refit's prediction times exp(a drawn residual).

    A refit whose predictions overflow (a resample that left the law unidentified) is left out.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        predictions = np.array([boot.loss(n_params, n_tokens) for boot in boot_laws or [law]])
    predictions = predictions[np.all(np.isfinite(predictions), axis=1)]
    if not len(predictions):
        predictions = law.loss(n_params, n_tokens)[None]
    drawn = rng.choice(residuals, size=predictions.shape)
    return predictions * np.exp(drawn)


def has_optimum(law) -> bool:
    """Whether the law's loss falls with both N and D, so that C = 6ND has a compute-optimal split."""
    return law.alpha > 0 and law.beta > 0 and law.A > 0 and law.B > 0


def _approach3_predictions(law, boot_laws, budgets) -> dict:
    if not has_optimum(law):
        return {
            "skipped": f"the fitted law has alpha = {law.alpha:.3g} and beta = {law.beta:.3g}: its loss does not fall "
            "with both N and D, so it has no compute-optimal size"
        }
    valid = [boot for boot in boot_laws if has_optimum(boot)]
    samples = np.array([[float(boot.compute_optimal(b)[0]) for b in budgets] for boot in valid])
    return {
        "n_opt": [float(law.compute_optimal(budget)[0]) for budget in budgets],
        "ci": [fit.percentile_interval(column, CONFIDENCE) for column in samples.T] if valid else [None] * len(budgets),
        "bootstrap_fits": len(valid),
    }


def _observed_n_opt(points: ScalingPoints) -> dict[float, float | None]:
    """Each budget's IsoFLOP minimum in ``points`` (None when it has no minimum inside its sizes)."""
    return {profile.budget: profile.n_opt for profile in fit.isoflop_profiles(points)}


def _approach2_predictions(train: ScalingPoints, budgets, n_bootstrap: int, rng) -> dict:
    try:
        allocation = fit.isoflop_fit(train)
    except fit.InsufficientData as reason:
        return {"skipped": str(reason)}
    samples = []
    for _ in range(n_bootstrap):
        try:
            samples.append(fit.isoflop_fit(fit._resample(train, rng)).n_opt_at(np.array(budgets)))
        except fit.InsufficientData:
            continue
    intervals = [fit.percentile_interval(column, CONFIDENCE) for column in np.array(samples).T] if samples else None
    return {
        "a": allocation.a,
        "n_opt": [float(value) for value in allocation.n_opt_at(np.array(budgets))],
        "ci": intervals or [None] * len(budgets),
        "bootstrap_fits": len(samples),
    }


def backtest(
    points: ScalingPoints,
    train_below: float,
    *,
    targets: ScalingPoints | None = None,
    n_bootstrap: int = 100,
    seed: int = 0,
    starts: np.ndarray = fit.HOFFMANN_STARTS,
    labels=None,
) -> dict:
    """Fits on ``points`` up to ``train_below`` and predicts the rest (or ``targets``); a JSON-ready dict.

    ``labels``: names of the target points (default: their run ids, else their index).
    """
    final = points.final_points()
    train_mask, held_mask = split(final, train_below)
    train = final.subset(train_mask)
    held = final.subset(held_mask) if targets is None else targets
    if len(held) == 0:
        raise ValueError(f"no point has a budget above {train_below:g}; give --train_below a smaller budget.")
    try:
        parametric, boot_laws = fit.parametric_bootstrap(train, n_bootstrap, seed, starts)
    except fit.InsufficientData as reason:
        raise ValueError(f"the points up to {train_below:g} cannot be fitted: {reason}") from None
    law = parametric.law
    rng = np.random.default_rng([seed, 3])
    residuals = np.log(train.loss) - np.log(law.loss(train.n_params, train.n_tokens))
    predicted = law.loss(held.n_params, held.n_tokens)
    samples = _prediction_samples(law, boot_laws, residuals, held.n_params, held.n_tokens, rng)
    observed = None if targets is not None else held.loss
    names = labels if labels is not None else (held.run if held.run is not None else range(len(held)))
    rows = []
    for index, name in enumerate(names):
        low, high = fit.percentile_interval(samples[:, index], CONFIDENCE)
        row = {
            "run": str(name),
            "n_params": float(held.n_params[index]),
            "n_tokens": float(held.n_tokens[index]),
            "flops": float(held.flops[index]),
            "budget": float(held.budget[index]) if held.budget is not None else None,
            "predicted_loss": float(predicted[index]),
            "interval": [low, high],
            "observed_loss": None,
        }
        if observed is not None:
            loss = float(observed[index])
            row.update(
                observed_loss=loss,
                relative_error=(row["predicted_loss"] - loss) / loss,
                inside=low <= loss <= high,
            )
        rows.append(row)

    budgets = sorted(set(held.budget.tolist() if held.budget is not None else []))
    observed_n_opt = _observed_n_opt(held) if observed is not None else {}
    approach3 = _approach3_predictions(law, boot_laws, budgets)
    approach2 = _approach2_predictions(train, budgets, n_bootstrap, np.random.default_rng([seed, 4]))
    n_opt_rows = []
    for index, budget in enumerate(budgets):
        row = {"budget": budget, "observed": observed_n_opt.get(budget)}
        for name, approach in (("approach2", approach2), ("approach3", approach3)):
            if "skipped" in approach:
                row[name] = None
                continue
            value = approach["n_opt"][index]
            row[name] = {
                "predicted": value,
                "interval": approach["ci"][index],
                "ratio": value / row["observed"] if row["observed"] else None,
            }
        n_opt_rows.append(row)

    report = {
        "train_below": train_below,
        "n_train": len(train),
        "n_heldout": len(held),
        "confidence": CONFIDENCE,
        "bootstrap_fits": len(boot_laws),
        "law": {name: getattr(law, name) for name in fit.LAW_CONSTANTS},
        "exponents": dict(zip(("a", "b"), law.exponents())),
        "train_seed_spread": fit.seed_spread(train),
        "train_rms_log_residual": float(np.sqrt(np.mean(residuals**2))),
        "points": rows,
        "n_opt": n_opt_rows,
        "approach2": {key: approach2[key] for key in ("a", "skipped") if key in approach2},
        "approach3": {key: approach3[key] for key in ("skipped",) if key in approach3},
    }
    if observed is None:
        report["predicted_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        report.update(mean_abs_rel_error=None, max_abs_rel_error=None, coverage=None)
        return report
    report.update(error_summary(rows), heldout_seed_spread=fit.seed_spread(held))
    return report


def error_summary(rows: list[dict]) -> dict:
    """Over predicted points with their observed loss (``relative_error``, ``inside``): the held-out figures.

    Mean and max absolute relative error and coverage are None when no point has been observed.
    """
    errors = np.array([row["relative_error"] for row in rows])
    return {
        "mean_abs_rel_error": float(np.mean(np.abs(errors))) if len(rows) else None,
        "max_abs_rel_error": float(np.max(np.abs(errors))) if len(rows) else None,
        "coverage": float(np.mean([row["inside"] for row in rows])) if len(rows) else None,
        "over_predicted": int(np.sum(errors > 0)),
        "under_predicted": int(np.sum(errors < 0)),
    }


def plan_targets(plan, train_below: float, params: str = "total") -> tuple[ScalingPoints, list[str]]:
    """The plan's grid points above ``train_below``, as points to predict (loss unknown), and their run ids."""
    from gpt2jax.scaling.results import PARAM_COLUMNS

    chosen = [p for p in plan.points if p.budget > train_below and p.lr_multiplier == 1.0]
    if not chosen:
        raise ValueError(f"the plan has no point with a budget above {train_below:g}; nothing to predict.")
    counts = [plan.accounting(point) for point in chosen]
    n_params = [c[PARAM_COLUMNS[params]] for c in counts]
    n_tokens = [c["n_tokens"] for c in counts]
    targets = ScalingPoints.from_arrays(
        n_params,
        n_tokens,
        np.ones(len(chosen)),  # unknown until trained; never read
        budget=[p.budget for p in chosen],
        run=[p.run for p in chosen],
        seed=[p.seed for p in chosen],
    )
    return targets, [p.run for p in chosen]


def interval_text(interval, formatter=lambda value: f"{value:.4f}") -> str:
    return "n/a" if interval is None else f"[{formatter(interval[0])}, {formatter(interval[1])}]"


def format_backtest(report: dict, source: str) -> str:
    """The backtest as a readable table."""
    from gpt2jax.flops import format_count

    law = report["law"]
    lines = [
        f"{source}: fitted on {report['n_train']} points with budget <= {report['train_below']:.3g}, "
        f"{'predicting' if report['mean_abs_rel_error'] is None else 'tested on'} {report['n_heldout']} above",
        f"  approach 3: E {law['E']:.4g}, A {law['A']:.4g}, B {law['B']:.4g}, alpha {law['alpha']:.4g}, "
        f"beta {law['beta']:.4g}; N_opt ~ C^{report['exponents']['a']:.3f}; rms log residual "
        f"{report['train_rms_log_residual']:.4f}",
        f"  {fit.format_seed_spread(report['train_seed_spread'])}",
        "",
        f"  {'run':<34}{'N':>8}{'D':>8}{'budget':>10}{'predicted':>11}{'95% interval':>20}{'observed':>10}"
        f"{'error':>9}  in",
    ]
    for row in report["points"]:
        observed = row["observed_loss"]
        lines.append(
            f"  {row['run']:<34}{format_count(row['n_params']):>8}{format_count(row['n_tokens']):>8}"
            f"{row['budget'] or row['flops']:>10.3g}{row['predicted_loss']:>11.4f}{interval_text(row['interval']):>20}"
            + (
                f"{observed:>10.4f}{row['relative_error']:>+9.2%}  {'yes' if row['inside'] else 'no'}"
                if observed
                else ""
            )
        )
    if report["mean_abs_rel_error"] is not None:
        lines += [
            "",
            f"  mean |relative error| {report['mean_abs_rel_error']:.2%}, max {report['max_abs_rel_error']:.2%}; "
            f"{report['over_predicted']} over-predicted, {report['under_predicted']} under; "
            f"coverage {report['coverage']:.0%} of the {report['confidence']:.0%} intervals",
        ]
    else:
        lines += ["", f"  predicted at {report['predicted_at']}, before these points were trained"]
    lines += ["", f"  N_opt at the held-out budgets{'':<4}{'approach 2':>28}{'approach 3':>28}{'observed':>10}"]
    for row in report["n_opt"]:
        cells = []
        for name in ("approach2", "approach3"):
            cell = row[name]
            cells.append(
                "skipped".rjust(28)
                if cell is None
                else f"{format_count(cell['predicted'])} {interval_text(cell['interval'], format_count)}"
                + (f" x{cell['ratio']:.2f}" if cell["ratio"] else "")
            )
        observed = format_count(row["observed"]) if row["observed"] else "none inside"
        lines.append(f"  {row['budget']:<33.3g}{cells[0]:>28}{cells[1]:>28}  {observed:>10}")
    for name in ("approach2", "approach3"):
        if "skipped" in report.get(name, {}):
            lines.append(f"  {name.replace('approach', 'approach ')} skipped: {report[name]['skipped']}")
    return "\n".join(line.rstrip() for line in lines)


def finite_budget(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--train_below is {value}; give a positive FLOP budget.")
    return value
