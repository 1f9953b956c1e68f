import csv
import dataclasses
import json
import pathlib
import re

import numpy as np
import pytest

from gpt2jax.cli import scaling as scaling_cli
from gpt2jax.scaling import backtest, fit, laws
from gpt2jax.scaling.results import ScalingPoints, load_results

KNOWN_LAW = laws.ChinchillaLaw(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28, name="known", source="test")
# Besiroglu et al.'s points read off Chinchilla's figure 4; shared data beside the checkout, absent
# outside the project's machines.
SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
EPOCH_DATA = SHARED_DATA / "chinchilla_svg_extracted_epoch.csv"


def grid_points(noise: float = 1e-4, seed: int = 0) -> ScalingPoints:
    """The known law on a 7 x 7 grid of N and D, with multiplicative noise."""
    n_params, n_tokens = (values.ravel() for values in np.meshgrid(np.logspace(7, 10, 7), np.logspace(8, 12, 7)))
    noise_factor = 1.0 + noise * np.random.default_rng(seed).standard_normal(n_params.size)
    return ScalingPoints.from_arrays(n_params, n_tokens, KNOWN_LAW.loss(n_params, n_tokens) * noise_factor)


def isoflop_points() -> ScalingPoints:
    """Nine model sizes around the known law's optimum at each of four budgets, trained to that budget."""
    n_params, flops = [], []
    for budget in (1e18, 1e19, 1e20, 1e21):
        n_opt, _ = KNOWN_LAW.compute_optimal(budget)
        n_params += list(n_opt * np.logspace(-0.6, 0.6, 9))
        flops += [budget] * 9
    n_params, flops = np.array(n_params), np.array(flops)
    n_tokens = flops / (6.0 * n_params)
    return ScalingPoints.from_arrays(n_params, n_tokens, KNOWN_LAW.loss(n_params, n_tokens))


def curve_points() -> ScalingPoints:
    """Training curves of 13 model sizes, 40 checkpoints each, on the known law."""
    sizes, tokens = np.meshgrid(np.logspace(7, 10, 13), np.logspace(8, 12, 40), indexing="ij")
    n_params, n_tokens = sizes.ravel(), tokens.ravel()
    run = np.repeat([f"run{index}" for index in range(13)], 40)
    return ScalingPoints.from_arrays(n_params, n_tokens, KNOWN_LAW.loss(n_params, n_tokens), run=run)


def write_csv(path, points: ScalingPoints, columns=("n_params", "n_tokens", "loss")) -> pathlib.Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*(getattr(points, name) for name in columns)))
    return pathlib.Path(path)


def test_law_allocation_is_consistent():
    for law in laws.PUBLISHED_LAWS.values():
        n_opt, d_opt = law.compute_optimal(1e21)
        assert 6.0 * n_opt * d_opt == pytest.approx(1e21)
        assert law.optimal_flops(n_opt) == pytest.approx(1e21)
        assert law.optimal_tokens(n_opt) == pytest.approx(d_opt)
        assert sum(law.exponents()) == pytest.approx(1.0)
        # The optimum is a minimum of the loss along C = 6ND.
        for factor in (0.8, 1.25):
            assert law.loss(n_opt * factor, d_opt / factor) > law.loss(n_opt, d_opt)


def test_gpt2_small_under_the_rounded_law():
    gpt2_small = 124_439_808
    assert laws.HOFFMANN_ROUNDED.optimal_flops(gpt2_small) == pytest.approx(2.4e18, rel=0.15)
    assert laws.HOFFMANN_ROUNDED.optimal_tokens(gpt2_small) == pytest.approx(3.3e9, rel=0.15)


def test_huber_gradient_matches_finite_differences():
    points = grid_points(noise=0.01)
    data = (np.log(points.n_params), np.log(points.n_tokens), np.log(points.loss))
    params = np.array([6.0, 6.1, 0.5, 0.3, 0.3])
    _, gradient = fit.huber_objective(params, *data)
    step = 1e-6
    for index in range(5):
        shift = np.zeros(5)
        shift[index] = step
        above, _ = fit.huber_objective(params + shift, *data)
        below, _ = fit.huber_objective(params - shift, *data)
        numeric = (above - below) / (2 * step)
        assert gradient[index] == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_parametric_fit_recovers_a_known_law():
    law = fit.parametric_fit(grid_points(), fit.COARSE_STARTS).law
    assert law.E == pytest.approx(KNOWN_LAW.E, abs=0.01)
    assert law.alpha == pytest.approx(KNOWN_LAW.alpha, abs=0.005)
    assert law.beta == pytest.approx(KNOWN_LAW.beta, abs=0.005)
    assert law.A == pytest.approx(KNOWN_LAW.A, rel=0.05)
    assert law.B == pytest.approx(KNOWN_LAW.B, rel=0.05)


def test_isoflop_fit_recovers_the_exponents():
    expected_a, expected_b = KNOWN_LAW.exponents()
    allocation = fit.isoflop_fit(isoflop_points())
    assert len(allocation.flops) == 4
    assert allocation.a == pytest.approx(expected_a, abs=0.01)
    assert allocation.b == pytest.approx(expected_b, abs=0.01)


def test_isoflop_groups_use_the_budget_column():
    points = isoflop_points()
    jittered = ScalingPoints.from_arrays(
        points.n_params,
        points.n_tokens,
        points.loss,
        flops=points.flops * np.random.default_rng(0).uniform(0.7, 1.3, len(points)),
        budget=np.repeat([1e18, 1e19, 1e20, 1e21], 9),
    )
    assert [len(group) for group in fit.isoflop_groups(jittered)] == [9, 9, 9, 9]


def test_isoflop_fit_needs_profiles():
    with pytest.raises(fit.InsufficientData, match="approach 2"):
        fit.isoflop_fit(grid_points())


def test_envelope_fit_reads_training_curves():
    expected_a, _ = KNOWN_LAW.exponents()
    assert fit.envelope_fit(curve_points()).a == pytest.approx(expected_a, abs=0.03)


def test_final_points_keep_each_runs_last_checkpoint():
    final = curve_points().final_points()
    assert len(final) == 13
    assert np.all(final.n_tokens == 1e12)


def test_fit_summary_has_every_estimate_and_interval():
    summary = fit.fit_summary(isoflop_points(), n_bootstrap=5, seed=1, starts=fit.COARSE_STARTS)
    for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
        low, high = summary["ci"][name]
        assert low <= high
    assert summary["a"] == pytest.approx(KNOWN_LAW.exponents()[0], abs=0.01)
    for approach in ("approach1", "approach2"):
        assert set(summary[approach]["ci"]) == {"a", "b"}
    final = isoflop_points().final_points()
    ratios = final.n_tokens / final.n_params
    assert summary["tokens_per_param"] == [pytest.approx(ratios.min()), pytest.approx(ratios.max())]
    json.dumps(summary)


@pytest.mark.skipif(not EPOCH_DATA.is_file(), reason="the shared Chinchilla data (../shared/data) is absent")
def test_epoch_refit_of_chinchilla_data():
    points = epoch_points()
    assert len(points) == 240
    law = fit.parametric_fit(points, fit.COARSE_STARTS).law
    assert law.E == pytest.approx(laws.EPOCH_REFIT.E, abs=0.03)
    assert law.alpha == pytest.approx(laws.EPOCH_REFIT.alpha, abs=0.02)
    assert law.beta == pytest.approx(laws.EPOCH_REFIT.beta, abs=0.02)


def test_load_results_reads_optional_columns(tmp_path):
    points = curve_points()
    path = write_csv(tmp_path / "results.csv", points, ("n_params", "n_tokens", "loss", "flops", "run"))
    loaded = load_results(path)
    assert loaded.has_curves()
    np.testing.assert_allclose(loaded.flops, points.flops)


def test_cli_fit_prints_json(tmp_path, capsys):
    path = write_csv(tmp_path / "results.csv", grid_points())
    scaling_cli.main(["fit", "--results", str(path), "--json", "--bootstrap", "3", "--grid", "coarse"])
    summary = json.loads(capsys.readouterr().out)
    for name in ("E", "A", "B", "alpha", "beta", "a", "b", "ci", "approach1", "approach2"):
        assert name in summary
    assert "skipped" in summary["approach2"]
    assert summary["alpha"] == pytest.approx(KNOWN_LAW.alpha, abs=0.005)


def test_cli_fit_prints_a_table(tmp_path, capsys):
    path = write_csv(tmp_path / "results.csv", isoflop_points())
    scaling_cli.main(["fit", "--results", str(path), "--bootstrap", "0", "--grid", "coarse"])
    table = capsys.readouterr().out
    assert "approach 2" in table and "alpha" in table


def _fit_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        scaling_cli.entry(["fit", *args])
    assert exit_info.value.code == 1
    return capsys.readouterr().err.strip()


def test_cli_fit_rejects_a_missing_file(tmp_path, capsys):
    assert re.fullmatch(
        "error: results file .* does not exist;.*", _fit_error(capsys, ["--results", str(tmp_path / "absent.csv")])
    )


def test_cli_fit_rejects_a_missing_column(tmp_path, capsys):
    path = write_csv(tmp_path / "results.csv", grid_points(), ("n_params", "loss"))
    assert re.fullmatch(r"error: .* lacks the column\(s\) n_tokens;.*", _fit_error(capsys, ["--results", str(path)]))


# Backtests: a law tested by what it predicts.


def epoch_points(drop_highest: int = 5) -> ScalingPoints:
    """Epoch's 245 points less the ``drop_highest`` highest losses: Besiroglu et al. drop five, the
    worst-extracted and least converged runs, leaving 240. FLOPs as extracted."""
    with open(EPOCH_DATA, newline="") as handle:
        rows = list(csv.DictReader(handle))
    n_params = np.array([float(row["Model Size"]) for row in rows])
    flops = np.array([float(row["Training FLOP"]) for row in rows])
    loss = np.array([float(row["loss"]) for row in rows])
    keep = loss < np.sort(loss)[-drop_highest] if drop_highest else np.ones(len(loss), bool)
    return ScalingPoints.from_arrays(
        n_params[keep], flops[keep] / (6.0 * n_params[keep]), loss[keep], flops=flops[keep]
    )


@pytest.mark.skipif(not EPOCH_DATA.is_file(), reason="the shared Chinchilla data (../shared/data) is absent")
def test_backtest_of_chinchilla_fits_below_1e21_and_predicts_the_points_above():
    report = backtest.backtest(epoch_points(), 1e21, n_bootstrap=20, starts=fit.COARSE_STARTS)
    assert (report["n_train"], report["n_heldout"]) == (217, 23)
    # Fitted on Chinchilla's runs up to 1e21 FLOPs, the law predicts the 23 above (to 1.3e22) within
    # 1.05% on average and 2.8% at worst, its errors split 13 over and 10 under.
    assert report["mean_abs_rel_error"] == pytest.approx(0.0105, abs=0.002)
    assert report["max_abs_rel_error"] < 0.035
    assert report["over_predicted"] >= 8 and report["under_predicted"] >= 8
    json.dumps(report)


@pytest.mark.skipif(not EPOCH_DATA.is_file(), reason="the shared Chinchilla data (../shared/data) is absent")
@pytest.mark.parametrize("drop_highest", [0, 5])
def test_calibrated_intervals_cover_at_every_cutoff_of_chinchillas_points(drop_highest):
    """At every cut-off that holds out 10 points, the 95% intervals cover 85 to 100% of them, at widths that
    say something, and no less than the trivial predictors given the same widths.

    The bootstrap's intervals covered 35 to 74% of the same points (issue 18's audit), and the
    calibration by the largest step in FLOPs, N or D 79% above 2e21 (issue 32): by distance in
    compute it is 86 to 100% on all 245 points, 91 to 100% on the 240.
    """
    rows = backtest.cutoff_rows(epoch_points(drop_highest), n_bootstrap=0, starts=fit.COARSE_STARTS)
    assert [row["train_below"] for row in rows] == [1e20, 2e20, 5e20, 1e21, 2e21]
    for row in rows:
        assert 0.85 <= row["coverage"] <= 1.0, row
        # Narrow enough to bet on: a few percent of the loss, not the loss range (1.9 to 5.0 here).
        assert 0.02 < row["mean_interval_width"] < 0.12, row
        assert row["coverage"] >= max(row["trivial_coverage"].values()), row
    table = backtest.format_cutoff_rows(rows, "epoch")
    assert "2e+21" in table and "median" in table


def test_calibration_widens_with_extrapolation():
    points = isoflop_points()
    cut = float(np.median(points.flops))
    beyond = backtest.compute_decades(cut, points)
    assert np.all(beyond >= 0) and np.any(beyond > 0)
    np.testing.assert_allclose(beyond, np.maximum(0.0, np.log10(points.flops / cut)))
    intervals = backtest.calibrated_interval(KNOWN_LAW, {"rate": 0.01}, cut, points)
    widths = np.log(intervals[:, 1] / intervals[:, 0])
    assert np.all(np.diff(widths[np.argsort(beyond)]) >= -1e-12)
    assert widths.min() == pytest.approx(2 * 0.01 * backtest.NOISE_DECADES)


def test_the_compute_law_and_the_heldout_median_get_the_laws_widths():
    flops = np.logspace(17, 21, 40)
    losses = 1.8 + 30.0 * flops**-0.07
    points = ScalingPoints.from_arrays(flops / 6e10, np.full(40, 1e10), losses, flops=flops)
    train, held = points.subset(flops <= 1e20), points.subset(flops > 1e20)
    law = backtest.compute_law(train)
    np.testing.assert_allclose(law(held.flops), held.loss, rtol=1e-3)
    # Intervals 1% either side of the truth: the compute law covers all; the median only the points within 1% of it.
    intervals = np.stack([held.loss / 1.01, held.loss * 1.01], axis=1)
    coverage = backtest.trivial_coverage(train, held, held.loss, intervals)
    assert coverage["compute_law"] == 1.0
    expected = np.mean(np.abs(np.log(held.loss / np.median(held.loss))) <= np.log(1.01))
    assert coverage["heldout_median"] == pytest.approx(expected) and expected < 1.0


def _small_sweep_points(rng, loss_of) -> ScalingPoints:
    """5 widths x 3 IsoFLOP budgets x 2 seeds: the smallest sweep the planner's floors let through."""
    n_params, n_tokens, budgets, seeds = [], [], [], []
    for budget in (1e12, 3e12, 1e13):
        for n in np.geomspace(2e5, 3e6, 5):
            for seed in (0, 1):
                n_params.append(n), n_tokens.append(budget / (6 * n)), budgets.append(budget), seeds.append(seed)
    n_params, n_tokens = np.array(n_params), np.array(n_tokens)
    loss = loss_of(n_params, n_tokens) * (1 + 0.01 * rng.standard_normal(len(n_params)))
    return ScalingPoints.from_arrays(n_params, n_tokens, loss, budget=budgets, seed=seeds, run=np.arange(30))


@pytest.mark.parametrize("case", ["flat in N", "data-bound", "a law"])
def test_a_minimal_sweep_fits_with_the_default_bootstrap_or_says_it_is_unidentified(case):
    """Whatever the losses, fit, backtest and their tables end in a result or an 'unidentified' verdict."""
    losses = {
        "flat in N": lambda n, d: np.full_like(n, 5.0),
        "data-bound": lambda n, d: 2.0 + 300.0 / d**0.3,
        "a law": lambda n, d: 1.7 + 400.0 / n**0.34 + 410.0 / d**0.28,
    }
    points = _small_sweep_points(np.random.default_rng(1), losses[case])
    summary = fit.fit_summary(points, starts=fit.COARSE_STARTS)  # the default 100 resamples
    text = fit.format_summary(summary, "sweep")
    if summary["unidentified"]:
        assert summary["a"] is None and "withheld" in text
    else:
        assert summary["a"] is not None
    report = backtest.backtest(points, 3e12, starts=fit.COARSE_STARTS)
    backtest.format_backtest(report, "sweep")
    json.dumps(report)
    if case == "flat in N":
        assert summary["unidentified"], summary


def test_an_allocation_gap_is_the_laws_difference_and_its_interval_holds_it():
    law = KNOWN_LAW
    points = _small_sweep_points(np.random.default_rng(2), law.loss)
    budget = 3e13
    n_opt = float(law.compute_optimal(budget)[0])
    n_gpt2 = (budget / (6 * 6.4)) ** 0.5
    allocations = [
        {"label": "optimum", "n_params": n_opt, "n_tokens": budget / (6 * n_opt), "runs": ["a0", "a1"]},
        {"label": "gpt2", "n_params": n_gpt2, "n_tokens": 6.4 * n_gpt2, "runs": ["b0", "b1"]},
    ]
    report = backtest.backtest(points, 3e12, n_bootstrap=30, starts=fit.COARSE_STARTS, allocations=allocations)
    optimum, gpt2 = report["allocations"]
    assert gpt2["tokens_per_param"] == pytest.approx(6.4)
    assert gpt2["gap"]["predicted"] == pytest.approx(gpt2["predicted_loss"] - optimum["predicted_loss"])
    # The true law's gap: the optimum is the best split, so GPT-2's costs loss, and the fit sees it.
    true_gap = float(law.loss(n_gpt2, 6.4 * n_gpt2) - law.loss(n_opt, budget / (6 * n_opt)))
    assert true_gap > 0 and gpt2["gap"]["predicted"] == pytest.approx(true_gap, abs=0.02)
    low, high = gpt2["gap"]["interval"]
    assert low <= gpt2["gap"]["predicted"] <= high and optimum["gap"]["interval"] is None
    assert "gpt2" in backtest.format_backtest(report, "sweep")
    json.dumps(report)


def test_a_fit_that_runs_off_to_overflowing_constants_is_refused_not_raised():
    points = _small_sweep_points(np.random.default_rng(0), lambda n, d: np.full_like(n, 5.0))
    starts = np.array([[800.0, 800.0, 800.0, 0.0, 0.0]])  # log-constants past what exp() can hold
    with pytest.raises(fit.InsufficientData, match="too large for a float"):
        fit.parametric_fit(points, starts)


def test_backtest_of_a_known_law_predicts_its_top_budget():
    points = isoflop_points()
    noisy = ScalingPoints.from_arrays(
        points.n_params,
        points.n_tokens,
        points.loss * (1 + 0.002 * np.random.default_rng(0).standard_normal(len(points))),
        budget=np.repeat([1e18, 1e19, 1e20, 1e21], 9),
    )
    report = backtest.backtest(noisy, 2e20, n_bootstrap=20, starts=fit.COARSE_STARTS)
    assert report["n_train"] == 27 and report["n_heldout"] == 9
    assert report["mean_abs_rel_error"] < 0.005 and report["coverage"] >= 0.75
    (n_opt,) = report["n_opt"]
    assert n_opt["budget"] == 1e21
    truth = float(KNOWN_LAW.compute_optimal(1e21)[0])
    assert n_opt["observed"] == pytest.approx(truth, rel=0.1)
    for approach in ("approach2", "approach3"):
        assert n_opt[approach]["predicted"] == pytest.approx(truth, rel=0.25)
        low, high = n_opt[approach]["interval"]
        assert low <= n_opt[approach]["predicted"] <= high
    with pytest.raises(ValueError, match="no point has a budget above 1e\\+21"):
        backtest.backtest(noisy, 1e21, n_bootstrap=2, starts=fit.COARSE_STARTS)


def test_a_fit_holding_e_lower_refits_the_rest_and_predicts_lower_above_the_cutoff():
    points = grid_points(noise=0.01)
    free = fit.parametric_fit(points, fit.COARSE_STARTS)
    held = fit.parametric_fit(points, fit.COARSE_STARTS, irreducible_scale=0.8)
    assert held.law.E == pytest.approx(0.8 * free.law.E, rel=1e-12)
    # The rest was refitted: the held law fits the points nearly as well as the free one, far
    # better than the free law with only its E moved.
    moved = dataclasses.replace(free.law, E=held.law.E)
    data = (np.log(points.n_params), np.log(points.n_tokens), np.log(points.loss))
    moved_objective, _ = fit.huber_objective(
        np.log([moved.A, moved.B, moved.E]).tolist() + [moved.alpha, moved.beta], *data
    )
    assert free.objective <= held.objective < 0.5 * moved_objective
    big_n, big_d = np.array([1e12]), np.array([1e14])  # far beyond the grid: the lower E shows
    assert held.law.loss(big_n, big_d) < free.law.loss(big_n, big_d)


def test_cli_backtest_holds_e_at_a_fraction_and_refuses_one_outside_it(tmp_path, capsys):
    path = sweep_like_csv(tmp_path / "results.csv")
    args = ["backtest", "--results", str(path), "--train_below", "2e20", "--bootstrap", "2", "--grid", "coarse"]
    reports = {}
    for scale in ("1", "0.9"):
        scaling_cli.main([*args, "--json", "--irreducible_scale", scale])
        reports[scale] = json.loads(capsys.readouterr().out)
    assert reports["0.9"]["law"]["E"] < reports["1"]["law"]["E"]
    for scale in ("0", "1.5"):
        with pytest.raises(ValueError, match="--irreducible_scale is .*fraction of E in \\(0, 1\\]"):
            scaling_cli.main([*args, "--irreducible_scale", scale])


def sweep_like_csv(path) -> pathlib.Path:
    """Rows as a sweep writes them: both parameter counts, shapes, seeds and a learning-rate check row."""
    points = isoflop_points()
    columns = ["run", "seed", "lr_multiplier", "n_layer", "n_embd", "block_size", "n_params", "n_params_non_embedding"]
    columns += ["n_tokens", "budget", "flops", "loss"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for index, (n, d, loss) in enumerate(zip(points.n_params, points.n_tokens, points.loss)):
            budget = [1e18, 1e19, 1e20, 1e21][index // 9]
            for seed in (0, 1):
                wobble = 1 + 0.001 * (seed - 0.5)
                writer.writerow(
                    [f"p{index}_s{seed}", seed, "", 2, 64, 128, n, 0.8 * n, d, budget, 6 * n * d, loss * wobble]
                )
        writer.writerow(["lr_check", 0, 2.0, 2, 64, 128, 1e9, 8e8, 1e10, 1e18, 6e19, 9.9])
    return pathlib.Path(path)


def test_results_choose_the_parameter_count_and_the_flop_count(tmp_path):
    path = sweep_like_csv(tmp_path / "results.csv")
    total = load_results(path)
    assert len(total) == 72 and 9.9 not in total.loss  # the learning-rate check row is not a point of the law
    non_embedding = load_results(path, params="non_embedding")
    np.testing.assert_allclose(non_embedding.n_params, 0.8 * total.n_params)
    np.testing.assert_allclose(non_embedding.flops, 6 * 0.8 * total.n_params * total.n_tokens)
    attention = load_results(path, params="non_embedding", flops="6n_attention")
    np.testing.assert_allclose(attention.flops, (6 * 0.8 * total.n_params + 12 * 2 * 64 * 128) * total.n_tokens)
    spread = fit.seed_spread(total)
    assert spread["groups"] == 36 and spread["seeds_per_group"] == 2
    assert spread["mean_relative_std"] == pytest.approx(0.001 / np.sqrt(2), rel=1e-6)
    with pytest.raises(ValueError, match="lack.* n_params_non_embedding that params=non_embedding"):
        load_results(write_csv(tmp_path / "plain.csv", grid_points()), params="non_embedding")


def test_cli_backtest_json_carries_the_summary_at_its_top_level(tmp_path, capsys):
    path = sweep_like_csv(tmp_path / "results.csv")
    args = ["backtest", "--results", str(path), "--train_below", "2e20", "--bootstrap", "4", "--grid", "coarse"]
    scaling_cli.main([*args, "--params", "non_embedding", "--json"])
    report = json.loads(capsys.readouterr().out)
    for key in ("mean_abs_rel_error", "max_abs_rel_error", "coverage", "points", "n_opt", "law"):
        assert key in report
    assert report["params"] == "non_embedding" and report["n_heldout"] == 18
    assert report["train_seed_spread"]["groups"] == 27
    scaling_cli.main(args)
    table = capsys.readouterr().out
    assert "mean |relative error|" in table and "N_opt at the held-out budgets" in table
    assert "the held-out losses' median covers" in table


def test_cli_backtest_every_cutoff_prints_one_row_per_cutoff(tmp_path, capsys):
    path = sweep_like_csv(tmp_path / "results.csv")
    args = ["backtest", "--results", str(path), "--every_cutoff", "--bootstrap", "2", "--grid", "coarse"]
    scaling_cli.main([*args, "--json"])
    rows = json.loads(capsys.readouterr().out)
    # 1e18 trains on a quarter of the 72 points, under half; 1e21 is the top.
    assert [(row["train_below"], row["n_heldout"]) for row in rows] == [(1e19, 36), (1e20, 18)]
    scaling_cli.main(args)
    assert "C-law" in capsys.readouterr().out


def test_cli_fit_reports_the_seed_spread_and_takes_several_files(tmp_path, capsys):
    first = sweep_like_csv(tmp_path / "a.csv")
    scaling_cli.main(["fit", "--results", str(first), str(first), "--bootstrap", "0", "--grid", "coarse"])
    table = capsys.readouterr().out
    # Rows of one run id count once, whichever file they come from.
    assert "72 final points (144 rows)" in table
    assert "seed-to-seed spread over 36 points with 2 seeds each: loss std" in table
