"""Chinchilla's three estimates of the compute-optimal allocation (Hoffmann et al. 2022, section 3).

Each approach ends in exponents a and b with N_opt ~ C^a and D_opt ~ C^b:
1. the lower envelope of loss against FLOPs, read off in log-uniform FLOP bins;
2. the minima of IsoFLOP profiles, parabolas of loss against log N at fixed budgets;
3. a fit of L(N, D) = E + A/N^alpha + B/D^beta, from which a = beta/(alpha+beta).
Bootstrap resampling of the points gives percentile intervals for every estimate.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

from gpt2jax.scaling.laws import CHINCHILLA_APPROACH_EXPONENTS, ChinchillaLaw
from gpt2jax.scaling.results import ScalingPoints

# Hoffmann et al. fit log-loss residuals with a Huber loss of this width; Besiroglu et al. kept it.
HUBER_DELTA = 1e-3
ISOFLOP_TOLERANCE = 0.1
ENVELOPE_BINS = 30
# Approach 3 fits five constants; fewer points than this leave it underdetermined.
MIN_PARAMETRIC_POINTS = 6
# L-BFGS-B's tolerances for the polish of the best minimum (see parametric_fit).
POLISH_OPTIONS = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000}
# Resampled fits restart from this many of the full fit's distinct local minima.
BOOTSTRAP_STARTS = 4
# exp() of a fitted log-constant above this overflows a float: the fit ran off without a minimum.
MAX_LOG_CONSTANT = 700.0
# Published exponents of L(N, D) lie between 0.07 (Kaplan's D) and 0.8; a fit far beyond this
# (alpha ~ 400 on a data-bound study) describes no dependence that the points show.
MAX_IDENTIFIED_EXPONENT = 3.0
# A constant whose bootstrap interval spans more than this ratio is not pinned down by the points.
MAX_IDENTIFIED_SPAN = 10.0


def start_grid(alpha, beta, e, a, b) -> np.ndarray:
    """Every combination of initial values, one row (a, b, e, alpha, beta) each."""
    return np.array(
        [
            (a_start, b_start, e_start, alpha_start, beta_start)
            for alpha_start, beta_start, e_start, a_start, b_start in itertools.product(alpha, beta, e, a, b)
        ],
        dtype=float,
    )


# Hoffmann et al.'s grid (appendix D.2): alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25}; 4500 starts.
HOFFMANN_STARTS = start_grid(
    alpha=np.arange(0.0, 2.01, 0.5),
    beta=np.arange(0.0, 2.01, 0.5),
    e=np.arange(-1.0, 1.01, 0.5),
    a=np.arange(0.0, 25.1, 5.0),
    b=np.arange(0.0, 25.1, 5.0),
)
# 108 starts spanning the same ranges, for quick fits; it finds the same minimum on Chinchilla's data.
COARSE_STARTS = start_grid(
    alpha=(0.0, 1.0),
    beta=(0.0, 1.0),
    e=(-1.0, 0.0, 1.0),
    a=(0.0, 10.0, 20.0),
    b=(0.0, 10.0, 20.0),
)

START_GRIDS = {"hoffmann": HOFFMANN_STARTS, "coarse": COARSE_STARTS}
LAW_CONSTANTS = ("E", "A", "B", "alpha", "beta")


class InsufficientData(ValueError):
    """The points cannot support an approach; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class AllocationFit:
    """N_opt ~ C^a and D_opt ~ C^b fitted through compute-optimal points (flops, n_opt, d_opt)."""

    a: float
    b: float
    flops: np.ndarray
    n_opt: np.ndarray
    d_opt: np.ndarray
    log_n_intercept: float = 0.0  # log N_opt at C = 1

    def n_opt_at(self, flops):
        """The fitted power law's N_opt at ``flops``, within or beyond the budgets it was fitted on."""
        return np.exp(self.log_n_intercept + self.a * np.log(flops))


@dataclasses.dataclass(frozen=True)
class ParametricFit:
    """Approach 3: the fitted law, its summed Huber loss, and the distinct local minima found, best first.

    ``optima`` rows are (a, b, e, alpha, beta) with a = log A, b = log B, e = log E.
    """

    law: ChinchillaLaw
    objective: float
    optima: np.ndarray


def _allocation_fit(flops, n_opt, d_opt, approach: str, min_points: int) -> AllocationFit:
    found = len(np.unique(flops))
    if found < min_points:
        raise InsufficientData(
            f"{approach} found {found} compute-optimal point(s) at distinct FLOPs and needs {min_points}."
        )
    log_c = np.log(flops)
    a, log_n_intercept = np.polyfit(log_c, np.log(n_opt), 1)
    b = np.polyfit(log_c, np.log(d_opt), 1)[0]
    return AllocationFit(float(a), float(b), flops, n_opt, d_opt, float(log_n_intercept))


def envelope_fit(points: ScalingPoints, n_bins: int = ENVELOPE_BINS) -> AllocationFit:
    """Approach 1: the points on the lower envelope of loss against FLOPs, one per log-uniform FLOP bin.

    Give every checkpoint of every run to read the envelope off training curves, as Hoffmann
    et al. do; with final points only it is the envelope of those.
    """
    order = np.argsort(points.flops, kind="stable")
    loss = points.loss[order]
    best_before = np.minimum.accumulate(np.concatenate(([np.inf], loss[:-1])))
    frontier = order[loss < best_before]
    log_c = np.log(points.flops)
    edges = np.linspace(log_c.min(), log_c.max(), n_bins + 1)
    frontier_bin = np.clip(np.searchsorted(edges, log_c[frontier], side="right") - 1, 0, n_bins - 1)
    # Loss falls along the frontier, so a bin's last frontier point is its lowest.
    chosen = np.array([frontier[frontier_bin == k][-1] for k in np.unique(frontier_bin)])
    return _allocation_fit(
        points.flops[chosen],
        points.n_params[chosen],
        points.n_tokens[chosen],
        "approach 1",
        min_points=3,
    )


def isoflop_groups(points: ScalingPoints, tolerance: float = ISOFLOP_TOLERANCE) -> list[np.ndarray]:
    """Indices of the points of each FLOP budget.

    Budgets come from the ``budget`` column when there is one; otherwise a group holds the
    FLOPs within ``tolerance`` (relative) of its smallest.
    """
    if points.budget is not None:
        return [np.flatnonzero(points.budget == value) for value in np.unique(points.budget)]
    order = np.argsort(points.flops, kind="stable")
    groups, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or points.flops[order[end]] > points.flops[order[start]] * (1.0 + tolerance):
            groups.append(order[start:end])
            start = end
    return groups


@dataclasses.dataclass(frozen=True)
class IsoflopProfile:
    """One FLOP budget's points and the parabola of loss against log N through them.

    ``n_opt`` is the parabola's minimum, or None when it has no minimum inside the sizes.
    """

    budget: float
    group: np.ndarray
    coefficients: np.ndarray  # (curvature, slope, intercept) in log N
    n_opt: float | None


def isoflop_profiles(points: ScalingPoints, tolerance: float = ISOFLOP_TOLERANCE) -> list[IsoflopProfile]:
    """The parabola of every FLOP budget with at least three model sizes.

    A minimum counts only inside the sizes: an extrapolated minimum says more about the
    parabola than about the data.
    """
    profiles = []
    for group in isoflop_groups(points, tolerance):
        log_n = np.log(points.n_params[group])
        if len(np.unique(log_n)) < 3:
            continue
        coefficients = np.polyfit(log_n, points.loss[group], 2)
        curvature, slope, _ = coefficients
        log_n_opt = -slope / (2.0 * curvature) if curvature > 0 else math.nan
        inside = log_n.min() <= log_n_opt <= log_n.max()
        budget = points.budget[group[0]] if points.budget is not None else math.exp(np.log(points.flops[group]).mean())
        profiles.append(IsoflopProfile(float(budget), group, coefficients, math.exp(log_n_opt) if inside else None))
    return profiles


def isoflop_fit(points: ScalingPoints, tolerance: float = ISOFLOP_TOLERANCE) -> AllocationFit:
    """Approach 2: a parabola of loss against log N per FLOP budget, its minimum N_opt, then power laws."""
    profiles = [profile for profile in isoflop_profiles(points, tolerance) if profile.n_opt is not None]
    budgets = [profile.budget for profile in profiles]
    n_opt = [profile.n_opt for profile in profiles]
    if len(budgets) < 2:
        raise InsufficientData(
            f"approach 2 found {len(budgets)} IsoFLOP profile(s) with at least three model sizes and a loss minimum"
            " inside them, and needs 2; give each run a budget column or train several sizes per FLOP budget."
        )
    budgets, n_opt = np.array(budgets), np.array(n_opt)
    return _allocation_fit(budgets, n_opt, budgets / (6.0 * n_opt), "approach 2", min_points=2)


def huber_objective(params, log_n, log_d, log_loss, delta: float = HUBER_DELTA):
    """Summed Huber loss of LSE(a - alpha log N, b - beta log D, e) - log L, and its gradient.

    ``params`` is (a, b, e, alpha, beta). The log-sum-exp is log(A/N^alpha + B/D^beta + E),
    computed without overflow from any start of the grid.
    """
    a, b, e, alpha, beta = params
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    residual = top + np.log(total) - log_loss
    weights /= total  # the softmax of the terms: d LSE / d term
    size = np.abs(residual)
    value = np.where(size <= delta, 0.5 * residual**2, delta * (size - 0.5 * delta)).sum()
    slope = np.clip(residual, -delta, delta)  # Huber'(residual)
    per_term = weights * slope
    gradient = np.array(
        [
            per_term[0].sum(),
            per_term[1].sum(),
            per_term[2].sum(),
            -per_term[0] @ log_n,
            -per_term[1] @ log_d,
        ]
    )
    return value, gradient


def _distinct_minima(results, count: int) -> np.ndarray:
    """Up to ``count`` optimiser results, best first, none within 0.01 of a better one in every coordinate."""
    kept = []
    for result in results:
        if not any(np.allclose(result.x, other, rtol=0.0, atol=0.01) for other in kept):
            kept.append(result.x)
        if len(kept) == count:
            break
    return np.array(kept)


def _fixed_e_objective(params, e, log_n, log_d, log_loss, delta):
    """``huber_objective`` of (a, b, alpha, beta) with log E held at ``e``, and its gradient."""
    a, b, alpha, beta = params
    value, gradient = huber_objective(np.array([a, b, e, alpha, beta]), log_n, log_d, log_loss, delta)
    return value, gradient[[0, 1, 3, 4]]


def parametric_fit(
    points: ScalingPoints,
    starts: np.ndarray = HOFFMANN_STARTS,
    delta: float = HUBER_DELTA,
    name: str = "fit",
    source: str = "Huber fit of L(N, D) to this project's results",
    irreducible_scale: float = 1.0,
) -> ParametricFit:
    """Approach 3: L-BFGS-B from every start, keeping the lowest summed Huber loss, as Hoffmann et al. do.

    The best minimum is polished with tight tolerances: at this loss scale the default ones stop
    early, the flaw Besiroglu et al. (2024) found in Hoffmann et al.'s own fit. With
    ``irreducible_scale`` below 1, E is then held at that fraction of the fitted E and A, B,
    alpha and beta refitted from the minimum: ``backtest --irreducible_scale`` measures what a lower E does
    to the predictions (docs/scaling.md).
    """
    if len(points) < MIN_PARAMETRIC_POINTS:
        raise InsufficientData(
            f"approach 3 fits five constants and needs at least {MIN_PARAMETRIC_POINTS} points, got {len(points)}."
        )
    data = (np.log(points.n_params), np.log(points.n_tokens), np.log(points.loss), delta)
    # L-BFGS-B's 5 x 5 linear algebra runs ten times slower when OpenBLAS wakes its threads for it
    # on a busy machine. Starts far from the data overflow harmlessly to inf or nan and are dropped.
    with threadpool_limits(limits=1, user_api="blas"), np.errstate(over="ignore", invalid="ignore"):
        results = [
            optimize.minimize(huber_objective, start, args=data, jac=True, method="L-BFGS-B") for start in starts
        ]
        results = sorted((result for result in results if np.isfinite(result.fun)), key=lambda result: result.fun)
        if not results:
            raise InsufficientData("approach 3 found no finite fit from any start; check the losses and sizes.")
        polished = optimize.minimize(
            huber_objective,
            results[0].x,
            args=data,
            jac=True,
            method="L-BFGS-B",
            options=POLISH_OPTIONS,
        )
        best = polished if polished.fun <= results[0].fun else results[0]
        a, b, e, alpha, beta = best.x
        objective = best.fun
        if irreducible_scale != 1.0:
            e += math.log(irreducible_scale)
            held = optimize.minimize(
                _fixed_e_objective,
                np.array([a, b, alpha, beta]),
                args=(e, *data),
                jac=True,
                method="L-BFGS-B",
                options=POLISH_OPTIONS,
            )
            (a, b, alpha, beta), objective = held.x, held.fun
    if max(a, b, e) > MAX_LOG_CONSTANT:
        raise InsufficientData(
            f"approach 3 ran off to constants too large for a float (log A {a:.3g}, log B {b:.3g}, log E {e:.3g}): "
            "the points do not identify the law."
        )
    law = ChinchillaLaw(
        E=math.exp(e),
        A=math.exp(a),
        B=math.exp(b),
        alpha=float(alpha),
        beta=float(beta),
        name=name,
        source=source,
    )
    return ParametricFit(law, float(objective), _distinct_minima([best, *results], BOOTSTRAP_STARTS))


def percentile_interval(samples, confidence: float) -> list[float] | None:
    """The central ``confidence`` interval of bootstrap samples, or None without samples."""
    if len(samples) == 0:
        return None
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return [float(low), float(high)]


def _resample(points: ScalingPoints, rng: np.random.Generator) -> ScalingPoints:
    """Points drawn with replacement; whole runs when the points hold training curves, so a curve stays a curve."""
    if not points.has_curves():
        return points.subset(rng.integers(len(points), size=len(points)))
    runs = np.unique(points.run)
    drawn = rng.choice(runs, size=len(runs))
    return points.subset(np.concatenate([np.flatnonzero(points.run == run) for run in drawn]))


def _bootstrap_allocation(fit_function, points, n_bootstrap, rng) -> dict[str, list[float]]:
    samples = {"a": [], "b": []}
    for _ in range(n_bootstrap):
        try:
            refit = fit_function(_resample(points, rng))
        except InsufficientData:
            continue
        samples["a"].append(refit.a)
        samples["b"].append(refit.b)
    return samples


def _allocation_summary(fit_function, points, n_bootstrap, rng, confidence) -> dict:
    try:
        fit = fit_function(points)
    except InsufficientData as reason:
        return {"skipped": str(reason)}
    samples = _bootstrap_allocation(fit_function, points, n_bootstrap, rng)
    return {
        "a": fit.a,
        "b": fit.b,
        "ci": {name: percentile_interval(values, confidence) for name, values in samples.items()},
        "bootstrap_fits": len(samples["a"]),
        "points": [
            {"flops": float(c), "n_opt": float(n), "d_opt": float(d)}
            for c, n, d in zip(fit.flops, fit.n_opt, fit.d_opt)
        ],
    }


def _law_values(law: ChinchillaLaw) -> dict[str, float]:
    a, b = law.exponents()
    return {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta, "a": a, "b": b}


def _approach_rngs(seed: int) -> list[np.random.Generator]:
    """One generator per approach, so that skipping one leaves the others' resamples unchanged."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3)]


def parametric_bootstrap(
    points: ScalingPoints,
    n_bootstrap: int = 100,
    seed: int = 0,
    starts: np.ndarray = HOFFMANN_STARTS,
    irreducible_scale: float = 1.0,
) -> tuple[ParametricFit, list[ChinchillaLaw]]:
    """Approach 3 on each run's final point, and its refits on ``n_bootstrap`` resamples
    (``irreducible_scale`` as ``parametric_fit`` takes it, the same for every refit).

    The refits give intervals for anything a law predicts (a loss, an allocation at some
    budget); they are the ones behind ``fit_summary``'s intervals for the same seed.
    """
    final = points.final_points()
    rng = _approach_rngs(seed)[2]
    parametric = parametric_fit(final, starts, irreducible_scale=irreducible_scale)
    laws = []
    # A resample without a fit (too few distinct points, or constants that overflow) is dropped;
    # fit_summary reports how many of the n_bootstrap resamples fitted.
    for _ in range(n_bootstrap):
        try:
            laws.append(
                parametric_fit(_resample(final, rng), parametric.optima, irreducible_scale=irreducible_scale).law
            )
        except InsufficientData:
            continue
    return parametric, laws


def unidentified(law: ChinchillaLaw, laws: list[ChinchillaLaw], confidence: float = 0.95) -> dict[str, str]:
    """The constants of approach 3 that its points do not pin down, each with the reason; empty when all are.

    A constant is unidentified when it has the wrong sign or an implausible size, or when its
    bootstrap interval spans more than a decade: the fit then lands anywhere along a valley
    of about the same error, and what it implies (N_opt, D_opt, the exponents) means nothing.
    """
    reasons = {}
    for name, grows in (("alpha", "N"), ("beta", "D")):
        value = getattr(law, name)
        if value <= 0:
            reasons[name] = f"{name} = {value:.3g}: the fitted loss does not fall with {grows}"
        elif value > MAX_IDENTIFIED_EXPONENT:
            reasons[name] = f"{name} = {value:.3g}, beyond any published exponent (0.07 to 0.8)"
    for name in LAW_CONSTANTS:
        interval = percentile_interval([getattr(boot, name) for boot in laws], confidence)
        if name in reasons or interval is None:
            continue
        low, high = interval
        if low <= 0 or high / low > MAX_IDENTIFIED_SPAN:
            reasons[name] = f"its {confidence:.0%} interval [{low:.3g}, {high:.3g}] spans more than a decade"
    return reasons


def fit_summary(
    points: ScalingPoints,
    *,
    n_bootstrap: int = 100,
    seed: int = 0,
    starts: np.ndarray = HOFFMANN_STARTS,
    confidence: float = 0.95,
    tolerance: float = ISOFLOP_TOLERANCE,
    n_bins: int = ENVELOPE_BINS,
    bootstrap: tuple[ParametricFit, list[ChinchillaLaw]] | None = None,
) -> dict:
    """All three approaches with bootstrap intervals, as a JSON-ready dict.

    Approach 3's constants and implied exponents sit at the top level, their intervals under
    ``ci``; ``approach1`` and ``approach2`` hold a, b and theirs, or ``skipped`` with the reason.
    Approaches 2 and 3 use each run's final point; approach 1 uses every checkpoint.
    ``bootstrap``: what ``parametric_bootstrap(points, n_bootstrap, seed, starts)`` returned,
    to reuse it instead of fitting again.
    """
    final = points.final_points()
    rng_envelope, rng_isoflop, _ = _approach_rngs(seed)
    parametric, laws = bootstrap if bootstrap is not None else parametric_bootstrap(points, n_bootstrap, seed, starts)
    samples = {name: [] for name in ("E", "A", "B", "alpha", "beta", "a", "b")}
    for law in laws:
        for name, value in _law_values(law).items():
            samples[name].append(value)
    unknown = unidentified(parametric.law, laws, confidence)
    ratio = final.n_tokens / final.n_params
    law_values = _law_values(parametric.law)
    if unknown:  # the exponents and everything allocated from them depend on the unidentified constants
        law_values.update(a=None, b=None)
    return {
        **law_values,
        "unidentified": unknown,
        "seed_spread": seed_spread(final),
        "huber_objective": parametric.objective,
        "n_points": len(final),
        "n_rows": len(points),
        # the fitted points' span: past it, an allocation under this law extrapolates its D term
        "tokens_per_param": [float(np.min(ratio)), float(np.max(ratio))],
        "bootstrap": n_bootstrap,
        "bootstrap_fits": len(samples["E"]),
        "seed": seed,
        "confidence": confidence,
        "ci": {name: percentile_interval(values, confidence) for name, values in samples.items()},
        "approach1": _allocation_summary(
            lambda data: envelope_fit(data, n_bins),
            points,
            n_bootstrap,
            rng_envelope,
            confidence,
        ),
        "approach2": _allocation_summary(
            lambda data: isoflop_fit(data, tolerance),
            final,
            n_bootstrap,
            rng_isoflop,
            confidence,
        ),
    }


def seed_spread(points: ScalingPoints) -> dict | None:
    """How much the loss moves with the seed alone: over the points trained at one (N, D) with several
    seeds, the sample standard deviation of their losses. None without such points.

    It is a floor under how closely any law can fit or predict these points.
    """
    if points.seed is None:
        return None
    groups: dict[tuple[float, float], list[float]] = {}
    for n, d, loss in zip(points.n_params, points.n_tokens, points.loss):
        groups.setdefault((float(n), float(d)), []).append(float(loss))
    repeated = [np.array(losses) for losses in groups.values() if len(losses) > 1]
    if not repeated:
        return None
    std = np.array([losses.std(ddof=1) for losses in repeated])
    relative = np.array([losses.std(ddof=1) / losses.mean() for losses in repeated])
    return {
        "groups": len(repeated),
        "seeds_per_group": float(np.mean([len(losses) for losses in repeated])),
        "mean_std": float(std.mean()),
        "max_std": float(std.max()),
        "mean_relative_std": float(relative.mean()),
    }


def format_seed_spread(spread: dict | None) -> str:
    if spread is None:
        return "seed-to-seed spread: no point was trained with more than one seed"
    return (
        f"seed-to-seed spread over {spread['groups']} points with {spread['seeds_per_group']:.0f} seeds each: "
        f"loss std {spread['mean_std']:.4f} on average ({spread['mean_relative_std']:.2%}), {spread['max_std']:.4f} at most"
    )


def _interval(interval) -> str:
    return "" if interval is None else f"[{interval[0]:.4g}, {interval[1]:.4g}]"


def _exponent_cells(values: dict) -> str:
    if "skipped" in values:
        return f"skipped: {values['skipped']}"
    ci = values.get("ci", {})
    return "  ".join(f"{values[name]:.3f} {_interval(ci.get(name))}".ljust(26) for name in ("a", "b"))


def format_summary(summary: dict, source: str) -> str:
    """The fit as a readable table; ``source`` names the results file."""
    intervals = (
        f"{summary['confidence']:.0%} percentile intervals from {summary['bootstrap']} bootstrap resamples "
        f"({summary['bootstrap_fits']} fitted; a resample without a fit is dropped)"
        if summary["bootstrap"]
        else "no bootstrap intervals"
    )
    lines = [
        f"{source}: {summary['n_points']} final points ({summary['n_rows']} rows), {intervals}",
        "",
        f"approach 3: L(N, D) = E + A/N^alpha + B/D^beta  (summed Huber loss {summary['huber_objective']:.6g})",
    ]
    lines += [f"  {name:<6} {summary[name]:<10.4g} {_interval(summary['ci'][name])}".rstrip() for name in LAW_CONSTANTS]
    approach3 = {"a": summary["a"], "b": summary["b"], "ci": summary["ci"]}
    if summary["unidentified"]:
        reasons = "; ".join(f"{name}: {why}" for name, why in summary["unidentified"].items())
        lines.append(f"  unidentified, so its exponents and N_opt are withheld: {reasons}")
        approach3 = {"skipped": "withheld: the points do not identify " + ", ".join(summary["unidentified"])}
    lines.append(f"  {format_seed_spread(summary['seed_spread'])}")
    lines += ["", "compute-optimal exponents, N_opt ~ C^a and D_opt ~ C^b", f"  {'':<12}{'a':<28}b"]
    approaches = {"approach 1": summary["approach1"], "approach 2": summary["approach2"], "approach 3": approach3}
    for label, values in approaches.items():
        lines.append(f"  {label:<12}{_exponent_cells(values)}".rstrip())
    published = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in CHINCHILLA_APPROACH_EXPONENTS.values())
    lines.append(f"  Hoffmann et al. 2022, Table 2 (approaches 1, 2, 3): {published}")
    return "\n".join(lines)
