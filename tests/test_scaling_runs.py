"""Other groups' released scaling runs: the converter (scripts/scaling_runs.py) and backtests on them.

The converted files are not in the repository (docs/scaling.md, "Other groups' runs"): the
backtests read them from ``GPT2JAX_SCALING_RUNS`` or ``../shared/data/scaling_runs`` and skip
without them; the converter's tests need nothing.
"""

import functools
import importlib.util
import io
import os
import pathlib
import pickle

import numpy as np
import pytest

from gpt2jax.scaling import backtest, fit
from gpt2jax.scaling.results import load_results
from tests.test_scaling_fit import SHARED_DATA

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "scaling_runs.py"
RUNS = pathlib.Path(os.environ.get("GPT2JAX_SCALING_RUNS", SHARED_DATA / "scaling_runs"))


def converter():
    spec = importlib.util.spec_from_file_location("scaling_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_misfitting_keeps_each_shapes_best_learning_rate_at_its_last_step():
    header = "loss,N,D,portion_steps_elapsed,peak_lr\n"
    text = header + "3.5,1e8,2e9,1.0,0.002\n3.4,1e8,2e9,1.0,0.004\n3.0,1e8,2e9,0.5,0.004\n2.9,2e8,4e9,1.0,0.001\n"
    rows = converter().misfitting_rows(text.encode())
    assert rows == [
        {"n_params": 1e8, "n_tokens": 2e9, "loss": 3.4},
        {"n_params": 2e8, "n_tokens": 4e9, "loss": 2.9},
    ]


def test_marin_budgets_are_named_in_forward_flops_and_validation_optimal_runs_are_dropped():
    header = '"Name","parameter_count","throughput/total_tokens","eval/paloma/macro_loss"\n'
    text = header + '"isoflop-6e+19-d2304-L23-B64-dclm-default","2.5e9","1.1e10","3.04"\n'
    text += '"isoflop-6e+19-validation-optimal-dclm","2e9","1e10","3.0"\n'
    (row,) = converter().marin_rows(text.encode())
    assert row == {"n_params": 2.5e9, "n_tokens": 1.1e10, "budget": 1.8e20, "loss": 3.04}
    assert 6 * row["n_params"] * row["n_tokens"] == pytest.approx(row["budget"], rel=0.1)


def test_a_data_pickle_that_names_any_other_class_is_refused():
    payload = pickle.dumps(pathlib.PurePosixPath("/etc"))  # any class outside pandas and numpy
    with pytest.raises(pickle.UnpicklingError, match="refused to load pathlib"):
        converter()._FramesOnly(io.BytesIO(payload)).load()


def test_the_converter_writes_a_results_csv_the_fits_read(tmp_path):
    module = converter()
    text = "Model Size,Training FLOP,loss\n" + "".join(f"{n},{6 * n * 20 * n},{2 + 100 / n**0.3}\n" for n in (1e6, 1e7))
    rows = module.chinchilla_rows(text)
    module.write(tmp_path, "tiny", rows, {"licence": "test"})
    points = load_results(tmp_path / "tiny.csv")
    np.testing.assert_allclose(points.n_tokens / points.n_params, 20.0)
    assert '"points": 2' in (tmp_path / "tiny.json").read_text()


# Backtests on other groups' runs. Chinchilla's points (Epoch's extraction) chose the interval's
# calibration, with Porian et al.'s and Marin's DCLM ladder looked at beside them; Li et al.'s and
# Marin's Comma and Nemotron ladders only test it (docs/scaling.md).
OTHER_GROUPS = ("porian", "misfitting", "marin_dclm", "marin_comma", "marin_nemotron")


def other_group(name: str):
    path = RUNS / f"{name}.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent; scripts/scaling_runs.py writes it")
    return _cutoff_rows(path)


@functools.cache
def _cutoff_rows(path: pathlib.Path) -> list[dict]:
    return backtest.cutoff_rows(load_results(path), n_bootstrap=0, starts=fit.COARSE_STARTS)


@pytest.mark.parametrize("name", ["porian", "misfitting"])
def test_other_groups_runs_are_covered_at_every_cutoff(name):
    """On Porian et al.'s and Li et al.'s runs the intervals cover 95-100% at every cut-off (10 to 37% wide:
    the criteria below fail on the width, docs/scaling.md)."""
    for row in other_group(name):
        assert row["coverage"] >= 0.85, row


@pytest.mark.parametrize("name", OTHER_GROUPS)
@pytest.mark.xfail(
    strict=True,
    reason="issue 32 is open: Porian's and Li's intervals are 10-37% wide; Marin's cover 43-73%, 80-90% over-predicted",
)
def test_other_groups_runs_meet_issue_32s_criteria(name):
    for row in other_group(name):
        assert 0.85 <= row["coverage"] <= 1.0 and row["mean_interval_width"] <= 0.10, row
        assert max(row["over_predicted"], row["n_heldout"] - row["over_predicted"]) <= 0.75 * row["n_heldout"], row
