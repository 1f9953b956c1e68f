"""``scaling multiplier``: an optimizer's compute multiplier over a reference, on sweeps made up with a known one."""

import csv
import json
import subprocess
import sys

import pytest

from gpt2jax.scaling import budget, multiplier
from gpt2jax.scaling.results import load_results

BUDGETS = (1e11, 3.16e11, 1e12)
SHAPES = (50_000, 100_000, 200_000)  # parameters
TRUE_MULTIPLIER = 1.5  # the candidate reaches at C the loss the reference reaches at 1.5 C
SEED_SCALE = {0: 1.002, 1: 0.998}


def reference_loss(compute: float) -> float:
    return 20.0 * compute**-0.05


def _write(path, loss_at, budgets=BUDGETS):
    """A results.csv of every shape at every budget and seed; the best shape's loss is the frontier ``loss_at``."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["run", "seed", "budget", "n_params", "n_tokens", "loss"])
        writer.writeheader()
        for budget_flops in budgets:
            for seed, scale in SEED_SCALE.items():
                for rank, params in enumerate(SHAPES):
                    loss = loss_at(budget_flops) * scale + 0.05 * abs(rank - 1)  # the middle shape is the best
                    writer.writerow(
                        dict(
                            run=f"p{params}_b{budget_flops:g}_s{seed}",
                            seed=seed,
                            budget=budget_flops,
                            n_params=params,
                            n_tokens=budget_flops / (6 * params),
                            loss=loss,
                        )
                    )
    return path


@pytest.fixture
def sweeps(tmp_path):
    reference = _write(tmp_path / "adamw.csv", reference_loss)
    candidate = _write(tmp_path / "muon.csv", lambda compute: reference_loss(TRUE_MULTIPLIER * compute))
    return reference, candidate


def test_the_multiplier_of_a_candidate_that_reaches_the_references_loss_on_less_compute(sweeps):
    rows = multiplier.multipliers(load_results(sweeps[0]), load_results(sweeps[1]))
    assert [row["budget"] for row in rows] == list(BUDGETS)
    for row in rows:
        assert row["multiplier"] == pytest.approx(TRUE_MULTIPLIER, rel=1e-9)
        low, high = row["interval"]
        # The pairing of the reference's lower-loss seed with the candidate's higher-loss one, and the reverse,
        # move the compute needed by about the seeds' 0.4% spread over the law's exponent 0.05: x0.92 to x1.08.
        assert low < TRUE_MULTIPLIER * 0.95 and high > TRUE_MULTIPLIER * 1.05
        assert low <= row["multiplier"] <= high
        assert row["candidate_loss"] < row["reference_loss"]
    assert [row["extrapolated"] for row in rows] == [False, False, True]  # 1.5e12 lies beyond the fitted budgets


def test_the_top_budgets_multiplier_is_predicted_from_the_budgets_below_it(sweeps):
    reference, candidate = load_results(sweeps[0]), load_results(sweeps[1])
    predicted = multiplier.prediction(reference, candidate, 1e12)
    assert predicted["from_budgets"] == [1e11, 3.16e11]
    assert predicted["multiplier"] == pytest.approx(TRUE_MULTIPLIER, rel=1e-9)
    with pytest.raises(ValueError, match=r"^a prediction at 3.16e\+11 needs two budgets below it"):
        multiplier.prediction(reference, candidate, 3.16e11)


def test_the_command_writes_the_file_the_budget_reads(sweeps, tmp_path):
    out = tmp_path / "multiplier.json"
    command = [sys.executable, "-m", "gpt2jax.scaling", "multiplier", "--reference", str(sweeps[0])]
    command += ["--candidate", str(sweeps[1]), "--where", "the CPU, 4 layers", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1.500" in result.stdout.splitlines()[-1]
    measured = budget.load_multiplier(out)
    assert measured["multiplier"] == pytest.approx(TRUE_MULTIPLIER) and measured["where"] == "the CPU, 4 layers"
    assert measured["params"] == [min(SHAPES), max(SHAPES)]
    assert json.loads(out.read_text())["budget"] == 1e12


def test_sweeps_without_two_shared_budgets_or_a_falling_frontier_are_refused_in_one_sentence(tmp_path):
    one = load_results(_write(tmp_path / "one.csv", reference_loss, budgets=(1e11,)))
    with pytest.raises(ValueError, match=r"^the two sweeps share 1 budget\(s\) reached by every seed"):
        multiplier.multipliers(one, one)
    flat = load_results(_write(tmp_path / "flat.csv", lambda compute: 3.0))
    with pytest.raises(ValueError, match=r"^the reference's best loss does not fall with compute"):
        multiplier.multipliers(flat, flat)
