import json
import re

import pytest

from gpt2jax.cli import scaling as scaling_cli
from gpt2jax.scaling import budget, laws


def budget_command(args):
    scaling_cli.entry(["budget", *args])


def user_error(capsys, args) -> str:
    """The one line a budget command prints for a user error (exit code 1)."""
    with pytest.raises(SystemExit) as exit_info:
        budget_command(args)
    assert exit_info.value.code == 1
    return capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def default_report():
    return budget.budget_report("rtx-4070-ti", days=365, utilization=0.9, mfu=0.4)


def test_one_gpu_year(default_report):
    assert default_report["total_flops"] == pytest.approx(1.14e21, rel=0.03)
    assert default_report["gpt2_xl_original_flops"] == pytest.approx(6 * 1_557_611_200 * 10e9)
    assert default_report["ratio_to_gpt2_xl_original"] == pytest.approx(12, abs=0.5)
    # At 40% MFU, FLOPs counted at 90% of peak take 0.9 / 0.4 as long.
    assert default_report["budget_days_at_mfu"] == pytest.approx(365 * 0.9 / 0.4)


def test_gpt2_small_compute_optimal(default_report):
    assert default_report["gpt2_small_optimal_flops"] == pytest.approx(2.4e18, rel=0.15)
    assert default_report["gpt2_small_optimal_tokens"] == pytest.approx(3.3e9, rel=0.15)


def test_compute_optimal_allocation_spends_the_budget(default_report):
    params, tokens = default_report["compute_optimal_params"], default_report["compute_optimal_tokens"]
    assert 6 * params * tokens == pytest.approx(default_report["total_flops"])
    assert set(default_report["laws"]) == set(laws.PUBLISHED_LAWS)
    for entry in default_report["laws"].values():
        assert {"params", "tokens", "tokens_per_param", "predicted_loss"} <= entry.keys()


def test_gpt2_sizes_against_a_12_gib_card(default_report):
    models = default_report["models"]
    assert list(models) == ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
    assert models["gpt2"]["fits_in_memory"]
    assert not models["gpt2-xl"]["fits_in_memory"]
    xl = models["gpt2-xl"]
    assert xl["original_days"] == pytest.approx(xl["original_flops"] / (40.1e12 * 0.4) / 86_400)


def test_cli_json_keys(capsys):
    budget_command(["--gpu", "rtx-4070-ti", "--days", "365", "--utilization", "0.9", "--json"])
    report = json.loads(capsys.readouterr().out)
    for key in (
        "total_flops",
        "gpt2_xl_original_flops",
        "ratio_to_gpt2_xl_original",
        "compute_optimal_params",
        "compute_optimal_tokens",
        "gpt2_small_optimal_flops",
        "gpt2_small_optimal_tokens",
        "laws",
        "models",
    ):
        assert key in report


def test_cli_text(capsys):
    budget_command([])
    assert "GPT-2 xl" in capsys.readouterr().out


def test_fit_file_adds_the_projects_law(tmp_path):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"E": 1.8, "A": 480.0, "B": 2000.0, "alpha": 0.35, "beta": 0.37, "a": 0.51, "b": 0.49}))
    report = budget.budget_report("rtx-4070-ti", 365, 0.9, fit=budget.load_fit_law(path))
    assert report["laws"]["fit"]["params"] > 0


def test_unknown_gpu_names_the_known_ones(capsys):
    assert re.fullmatch(
        "error: unknown GPU 'gtx-480'; known GPUs are .*rtx-4070-ti.*", user_error(capsys, ["--gpu", "gtx-480"])
    )


def test_fit_file_without_constants_is_refused(tmp_path, capsys):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"E": 1.8}))
    assert re.fullmatch("error: fit file .* lacks A, B, alpha, beta;.*", user_error(capsys, ["--fit", str(path)]))
