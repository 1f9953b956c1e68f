"""A law tested by what it predicts: fit on the budgets up to C, predict the points above, compare.

``python -m gpt2jax.scaling backtest --results CSV --train_below C`` drives it. A point belongs to
the training side when its IsoFLOP ``budget`` (or, without that column, its FLOPs) is at most C,
so a whole profile falls on one side. Then:

- approach 3 (the parametric L(N, D)) predicts every held-out point's loss, with a prediction
  interval calibrated on the training range itself (``calibrate``): the law is refitted below
  each of several lower cut-offs and made to predict the training points above them, and the
  interval is as wide as 95% of those errors needed, grown with the distance in compute above
  the cut-off. Held-out errors are one law's bias more than independent noise, so resampling
  the training points (the bootstrap) sees too little of them: on Chinchilla's points its
  intervals covered 35 to 74% at the top, the calibrated ones 86 to 100% at every cut-off that
  holds out 10 points (docs/scaling.md); beside them, what two trivial predictors cover at the
  same widths (``trivial_coverage``), so a reader sees what the law adds;
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
from scipy import optimize

from gpt2jax.scaling import fit
from gpt2jax.scaling.results import ScalingPoints

CONFIDENCE = 0.95
# Calibration folds: cut-offs every third of a decade below the training budgets' top (or each
# lower budget when the points carry budgets), keeping only folds that fit at least a quarter of the
# training points; a fold on a smaller corner of them predicts nothing the full fit would.
FOLDS_PER_DECADE = 3
MIN_FOLD_FRACTION = 0.25
# A cut-off is scored when it holds out at least this many points and trains on at least this share.
MIN_HELDOUT = 10
MIN_TRAIN_SHARE = 0.5
# A point inside the fitted range still misses by the noise of one run: the interval's width at
# zero extrapolation is the calibrated rate times this many decades.
NOISE_DECADES = 0.25


def split(points: ScalingPoints, train_below: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held out) of ``points``, by budget if they carry one, else by FLOPs."""
    key = compute_key(points)
    return key <= train_below, key > train_below


def compute_key(points: ScalingPoints) -> np.ndarray:
    """What orders points by cost: their IsoFLOP budget when they carry one, else their FLOPs."""
    return points.budget if points.budget is not None else points.flops


def compute_decades(cut_off: float, points: ScalingPoints) -> np.ndarray:
    """How far each of ``points`` lies above the training cut-off's budget (or FLOPs), in decades (0 below).

    Distance in compute, log10(C_target / C_cut), rather than the largest step beyond the fitted
    FLOPs, N or D: with the latter the intervals covered 79% of Chinchilla's 14 points above 2e21
    (all 245 points), with compute 86% (docs/scaling.md).
    """
    return np.maximum(0.0, np.log10(compute_key(points) / cut_off))


def _fold_cuts(train: ScalingPoints) -> np.ndarray:
    key = compute_key(train)
    if train.budget is not None:
        cuts = np.unique(key)[:-1][::-1]
    else:
        cuts = key.max() / 10.0 ** (np.arange(1, 10 * FOLDS_PER_DECADE) / FOLDS_PER_DECADE)
    enough = max(fit.MIN_PARAMETRIC_POINTS, MIN_FOLD_FRACTION * len(train))
    return np.array([cut for cut in cuts if np.sum(key <= cut) >= enough and np.any(key > cut)])


def calibrate(train: ScalingPoints, optima: np.ndarray, irreducible_scale: float = 1.0) -> dict:
    """The rate at which prediction errors grow with extrapolation, measured inside the training range.

    For each fold cut-off c below the top, approach 3 is fitted on the points up to c and predicts
    the training points above it; each error |log observed - log predicted| divided by
    (NOISE_DECADES + the point's distance in compute above c, in decades) is one sample of the
    rate. The interval of a new point is exp(+-rate * (NOISE_DECADES + its distance above the
    cut-off)) around the prediction, with rate the ``CONFIDENCE`` quantile of the samples: it covers that share of
    the errors seen. Folds start from the full fit's ``optima`` and the coarse grid. Raises
    ``fit.InsufficientData`` when no fold can be fitted.
    """
    key = compute_key(train)
    rates, folds = [], 0
    fold_starts = np.vstack([optima, fit.COARSE_STARTS])
    for cut in _fold_cuts(train):
        fitted, predicted = train.subset(key <= cut), train.subset(key > cut)
        try:
            law = fit.parametric_fit(fitted, fold_starts, irreducible_scale=irreducible_scale).law
        except fit.InsufficientData:
            continue
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            errors = np.abs(np.log(predicted.loss) - np.log(law.loss(predicted.n_params, predicted.n_tokens)))
        errors[~np.isfinite(errors)] = np.inf  # a fold whose law cannot predict counts as a miss
        rates.append(errors / (NOISE_DECADES + compute_decades(cut, predicted)))
        folds += 1
    if not folds:
        raise fit.InsufficientData(
            f"no fold keeps {MIN_FOLD_FRACTION:.0%} of the {len(train)} training points below a lower cut-off"
        )
    samples = np.concatenate(rates)
    return {"rate": float(np.quantile(samples, CONFIDENCE)), "folds": folds, "samples": len(samples)}


def bootstrap_interval(law, boot_laws, residuals, points: ScalingPoints, seed: int) -> np.ndarray:
    """[points, 2] uncalibrated intervals, for points too few to calibrate on: the central 95% of each
    bootstrap refit's prediction times exp(a residual of the fit drawn at random).

    A refit whose predictions overflow (a resample that left the law unidentified) is left out.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        predictions = np.array([boot.loss(points.n_params, points.n_tokens) for boot in boot_laws or [law]])
    predictions = predictions[np.all(np.isfinite(predictions), axis=1)]
    if not len(predictions):
        predictions = law.loss(points.n_params, points.n_tokens)[None]
    samples = predictions * np.exp(np.random.default_rng([seed, 3]).choice(residuals, size=predictions.shape))
    return np.array([fit.percentile_interval(column, CONFIDENCE) for column in samples.T])


def calibrated_interval(law, calibration: dict, cut_off: float, points: ScalingPoints) -> np.ndarray:
    """[points, 2] prediction intervals of approach 3 for ``points``, as ``calibrate`` measured them."""
    predicted = law.loss(points.n_params, points.n_tokens)
    half_width = calibration["rate"] * (NOISE_DECADES + compute_decades(cut_off, points))
    return np.stack([predicted * np.exp(-half_width), predicted * np.exp(half_width)], axis=1)


def compute_law(points: ScalingPoints):
    """L = c + a * C^-b, a power law in FLOPs alone, fitted to ``points`` by least squares in log loss;
    the loss as a function of FLOPs, or None when no start converges.

    A trivial predictor to set the law beside: it knows the budget but not how it is split
    between N and D. c is held in [0, the lowest loss), so it may be as flat as the points allow.
    """
    log_c, log_loss = np.log(points.flops), np.log(points.loss)

    def residuals(params):
        log_a, b, floor = params
        return np.logaddexp(log_a - b * log_c, np.log(floor)) - log_loss

    best = None
    for floor in (0.5, 0.9):
        start = [float(np.max(log_loss) + 0.1 * np.median(log_c)), 0.1, floor * float(points.loss.min())]
        bounds = ([-np.inf, 0.0, 1e-9], [np.inf, 3.0, float(points.loss.min())])
        with np.errstate(over="ignore", invalid="ignore"):
            result = optimize.least_squares(residuals, start, bounds=bounds)
        if result.success and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        return None
    log_a, b, floor = best.x
    return lambda flops: floor + np.exp(log_a - b * np.log(flops))


def trivial_coverage(train: ScalingPoints, held: ScalingPoints, predicted, intervals) -> dict:
    """The coverage of two trivial predictors given the law's interval widths, point by point: what the law adds.

    Each held-out point keeps the law's relative distances from its prediction to the interval's
    ends, moved onto the trivial prediction: the held-out losses' median (a constant that has seen
    the answers), and ``compute_law`` fitted to the same training points. Coverage as good as the
    law's would say its intervals, not its N and D, do the covering.
    """
    below, above = np.log(predicted / intervals[:, 0]), np.log(intervals[:, 1] / predicted)

    def coverage(centre) -> float | None:
        if centre is None:
            return None
        log_ratio = np.log(held.loss / centre)
        return float(np.mean((log_ratio >= -below) & (log_ratio <= above)))

    law = compute_law(train)
    return {
        "heldout_median": coverage(np.median(held.loss)),
        "compute_law": coverage(None if law is None else law(held.flops)),
    }


def has_optimum(law) -> bool:
    """Whether the law's loss falls with both N and D, so that C = 6ND has a compute-optimal split."""
    return law.alpha > 0 and law.beta > 0 and law.A > 0 and law.B > 0


def _approach3_predictions(law, boot_laws, budgets, unknown: dict) -> dict:
    if unknown:
        return {"skipped": "the points do not identify " + "; ".join(f"{k} ({why})" for k, why in unknown.items())}
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
    allocations: list[dict] | None = None,
    irreducible_scale: float = 1.0,
) -> dict:
    """Fits on ``points`` up to ``train_below`` and predicts the rest (or ``targets``); a JSON-ready dict.

    ``labels``: names of the target points (default: their run ids, else their index).
    ``allocations``: ways to spend one budget, each a dict of label, n_params, n_tokens (and runs,
    the points that will train it): their predicted losses and each one's gap to the first.
    ``irreducible_scale``: E held at this fraction of the Huber fit's in every fit, the calibration's
    folds and the bootstrap's refits too (``fit.parametric_fit``); 1 keeps the fit's E.
    """
    final = points.final_points()
    train_mask, held_mask = split(final, train_below)
    train = final.subset(train_mask)
    held = final.subset(held_mask) if targets is None else targets
    if len(held) == 0:
        raise ValueError(f"no point has a budget above {train_below:g}; give --train_below a smaller budget.")
    try:
        parametric, boot_laws = fit.parametric_bootstrap(train, n_bootstrap, seed, starts, irreducible_scale)
    except fit.InsufficientData as reason:
        raise ValueError(f"the points up to {train_below:g} cannot be fitted: {reason}") from None
    law = parametric.law
    residuals = np.log(train.loss) - np.log(law.loss(train.n_params, train.n_tokens))
    predicted = law.loss(held.n_params, held.n_tokens)
    try:
        calibration = calibrate(train, parametric.optima, irreducible_scale)
    except fit.InsufficientData as reason:
        # Too few points to measure coverage on: the bootstrap's interval, said to be uncalibrated.
        calibration = {"skipped": f"{reason}; the intervals are the bootstrap's, uncalibrated (too narrow at the top)"}

    def interval_of(points: ScalingPoints) -> np.ndarray:
        if "skipped" in calibration:
            return bootstrap_interval(law, boot_laws, residuals, points, seed)
        return calibrated_interval(law, calibration, train_below, points)

    intervals = interval_of(held)
    observed = None if targets is not None else held.loss
    names = labels if labels is not None else (held.run if held.run is not None else range(len(held)))
    rows = []
    for index, name in enumerate(names):
        low, high = (float(value) for value in intervals[index])
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
                inside=bool(low <= loss <= high),
            )
        rows.append(row)

    budgets = sorted(set(held.budget.tolist() if held.budget is not None else []))
    observed_n_opt = _observed_n_opt(held) if observed is not None else {}
    unknown = fit.unidentified(law, boot_laws, CONFIDENCE)
    approach3 = _approach3_predictions(law, boot_laws, budgets, unknown)
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
        "allocations": allocation_gaps(law, boot_laws, interval_of, allocations) if allocations else [],
        "train_below": train_below,
        "n_train": len(train),
        "n_heldout": len(held),
        "confidence": CONFIDENCE,
        "bootstrap_fits": len(boot_laws),
        "calibration": calibration,
        "unidentified": unknown,
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
        report.update(
            mean_abs_rel_error=None,
            max_abs_rel_error=None,
            coverage=None,
            mean_interval_width=mean_interval_width(rows),
        )
        return report
    report.update(
        error_summary(rows),
        heldout_seed_spread=fit.seed_spread(held),
        trivial_coverage=trivial_coverage(train, held, predicted, intervals),
    )
    return report


def allocation_gaps(law, boot_laws, interval_of, allocations) -> list[dict]:
    """Each allocation's predicted loss and interval (``interval_of``, the backtest's own), and its gap to
    the first allocation: the law's difference, with the central 95% of the bootstrap refits' differences.

    The gap's interval is the bootstrap's, not calibrated: a bias the law carries at one budget moves
    both allocations' losses alike, and what is left is how well the points pin the law's shape.
    """
    points = ScalingPoints.from_arrays(
        [a["n_params"] for a in allocations], [a["n_tokens"] for a in allocations], np.ones(len(allocations))
    )
    predicted = law.loss(points.n_params, points.n_tokens)
    intervals = interval_of(points)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        boot = np.array([b.loss(points.n_params, points.n_tokens) for b in boot_laws]).reshape(-1, len(allocations))
    boot = boot[np.all(np.isfinite(boot), axis=1)]
    rows = []
    for index, allocation in enumerate(allocations):
        gap = float(predicted[index] - predicted[0])
        differences = boot[:, index] - boot[:, 0]
        rows.append(
            {
                **allocation,
                "tokens_per_param": allocation["n_tokens"] / allocation["n_params"],
                "predicted_loss": float(predicted[index]),
                "interval": [float(value) for value in intervals[index]],
                "gap": {
                    "predicted": gap,
                    "interval": fit.percentile_interval(differences, CONFIDENCE) if index and len(boot) else None,
                },
            }
        )
    return rows


def mean_interval_width(rows: list[dict]) -> float | None:
    """The intervals' mean width as a fraction of the predicted loss."""
    widths = [(row["interval"][1] - row["interval"][0]) / row["predicted_loss"] for row in rows]
    return float(np.mean(widths)) if widths else None


def error_summary(rows: list[dict]) -> dict:
    """Over predicted points with their observed loss (``relative_error``, ``inside``): the held-out figures.

    Mean and max absolute relative error and coverage are None when no point has been observed.
    """
    errors = np.array([row["relative_error"] for row in rows])
    return {
        "mean_abs_rel_error": float(np.mean(np.abs(errors))) if len(rows) else None,
        "max_abs_rel_error": float(np.max(np.abs(errors))) if len(rows) else None,
        "coverage": float(np.mean([row["inside"] for row in rows])) if len(rows) else None,
        # An interval as wide as the loss range covers everything and says nothing: its width goes beside it.
        "mean_interval_width": mean_interval_width(rows),
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


def plan_allocations(plan, params: str = "total") -> list[dict]:
    """The plan's ``allocations`` as ``backtest`` takes them: label, N (in ``params``' count), D, budget, runs."""
    from gpt2jax.scaling.plan import allocation_points
    from gpt2jax.scaling.results import PARAM_COLUMNS

    rows = []
    for label, points in allocation_points(plan).items():
        if not points:
            raise ValueError(f"allocation {label!r} has no point: its budget is below the step floor.")
        counts = plan.accounting(points[0])
        rows.append(
            {
                "label": label,
                "n_params": float(counts[PARAM_COLUMNS[params]]),
                "n_tokens": float(counts["n_tokens"]),
                "budget": points[0].budget,
                "runs": [point.run for point in points],
            }
        )
    return rows


def _coverage_line(report: dict) -> str:
    calibration = report["calibration"]
    covered = "" if report["coverage"] is None else f"coverage {report['coverage']:.0%} of "
    how = (
        f"uncalibrated: {calibration['skipped']}"
        if "skipped" in calibration
        else f"calibrated on {calibration['samples']} predictions of {calibration['folds']} lower fits"
    )
    return (
        f"  {covered}the {report['confidence']:.0%} intervals, {report['mean_interval_width']:.1%} of the loss wide "
        f"on average ({how})"
    )


def _trivial_line(coverage: dict) -> str:
    def cell(value):
        return "n/a (no fit)" if value is None else f"{value:.0%}"

    return (
        f"  at the same widths, the held-out losses' median covers {cell(coverage['heldout_median'])}, "
        f"a power law in FLOPs alone (L = c + a C^-b, same training points) {cell(coverage['compute_law'])}"
    )


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
            f"{report['over_predicted']} over-predicted, {report['under_predicted']} under",
            _coverage_line(report),
            _trivial_line(report["trivial_coverage"]),
        ]
    else:
        lines += [
            "",
            f"  predicted at {report['predicted_at']}, before these points were trained",
            _coverage_line(report),
        ]
    if report["unidentified"]:
        reasons = "; ".join(f"{name}: {why}" for name, why in report["unidentified"].items())
        lines.append(f"  approach 3 is unidentified ({reasons}): its N_opt is withheld")
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
    lines += format_allocations(report.get("allocations", []))
    return "\n".join(line.rstrip() for line in lines)


def format_allocations(allocations: list[dict]) -> list[str]:
    """The allocations' predicted losses and gaps to the first, as lines of the backtest's table."""
    from gpt2jax.flops import format_count

    if not allocations:
        return []
    lines = [
        "",
        f"  allocations of one budget{'':<9}{'N':>8}{'D':>8}{'D/N':>7}{'predicted':>11}{'95% interval':>20}  gap",
    ]
    for row in allocations:
        gap = row["gap"]
        gap_text = (
            f"{gap['predicted']:+.4f} {interval_text(gap['interval'], lambda v: f'{v:+.4f}')}"
            if gap["interval"]
            else ""
        )
        lines.append(
            f"  {row['label']:<34}{format_count(row['n_params']):>8}{format_count(row['n_tokens']):>8}"
            f"{row['tokens_per_param']:>7.1f}{row['predicted_loss']:>11.4f}{interval_text(row['interval']):>20}  {gap_text}"
        )
    return lines + [
        f"  gap: loss minus {allocations[0]['label']}'s, with the central 95% of the bootstrap refits' gaps"
    ]


def cutoffs(points: ScalingPoints) -> list[float]:
    """The cut-offs a dataset is scored at: each budget below the top (without budgets, 1, 2 and 5 times
    each power of ten of the FLOPs) that holds out at least ``MIN_HELDOUT`` points and trains on at
    least ``MIN_TRAIN_SHARE`` of them."""
    key = compute_key(points.final_points())
    if points.budget is not None:
        candidates = np.unique(key)[:-1]
    else:
        decades = np.arange(np.floor(np.log10(key.min())), np.ceil(np.log10(key.max())) + 1)
        candidates = np.array([m * 10.0**d for d in decades for m in (1.0, 2.0, 5.0)])
    return [
        float(cut)
        for cut in candidates
        if np.sum(key > cut) >= MIN_HELDOUT and np.sum(key <= cut) >= MIN_TRAIN_SHARE * len(key)
    ]


def cutoff_rows(points: ScalingPoints, **options) -> list[dict]:
    """``backtest`` at every one of ``cutoffs(points)`` (``options`` as backtest takes them), its figures per cut-off."""
    rows = []
    for cut in cutoffs(points):
        report = backtest(points, cut, **options)
        keys = ("n_train", "n_heldout", "mean_abs_rel_error", "max_abs_rel_error", "coverage", "mean_interval_width")
        rows.append(
            {
                "train_below": cut,
                **{key: report[key] for key in keys},
                "over_predicted": report["over_predicted"],
                "trivial_coverage": report["trivial_coverage"],
            }
        )
    return rows


def format_cutoff_rows(rows: list[dict], source: str) -> str:
    """The per-cut-off backtest as a readable table."""
    if not rows:
        return f"{source}: no cut-off holds out {MIN_HELDOUT} points and trains on {MIN_TRAIN_SHARE:.0%} of them"
    lines = [
        f"{source}: every cut-off holding out at least {MIN_HELDOUT} points (95% intervals; the trivial predictors "
        "get the law's widths)",
        f"  {'cut-off':>9}{'train':>7}{'held':>6}{'mean/max error':>17}{'coverage':>10}{'width':>8}{'over':>8}"
        f"{'median':>8}{'C-law':>7}",
    ]
    for row in rows:
        trivial = [row["trivial_coverage"][key] for key in ("heldout_median", "compute_law")]
        lines.append(
            f"  {row['train_below']:>9.3g}{row['n_train']:>7}{row['n_heldout']:>6}"
            f"{row['mean_abs_rel_error']:>9.2%} / {row['max_abs_rel_error']:<6.2%}{row['coverage']:>9.0%}"
            f"{row['mean_interval_width']:>8.1%}{row['over_predicted'] / row['n_heldout']:>8.0%}"
            + "".join("     n/a" if value is None else f"{value:>8.0%}" for value in trivial)
        )
    lines.append(
        "  over: the share of held-out points over-predicted; median: the held-out losses' median as the prediction;"
        " C-law: L = c + a C^-b fitted to the same training points"
    )
    return "\n".join(lines)


def finite_budget(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--train_below is {value}; give a positive FLOP budget.")
    return value
