import json
import math
import re

import pytest

from gpt2jax.cli import scaling as scaling_cli
from gpt2jax.scaling import budget, laws, tuning

ONE_YEAR = 365 * 86_400


def budget_command(args):
    scaling_cli.entry(["budget", *args])


def user_error(capsys, args) -> str:
    """The one line a budget command prints for a user error (exit code 1)."""
    with pytest.raises(SystemExit) as exit_info:
        budget_command(args)
    assert exit_info.value.code == 1
    return capsys.readouterr().err.strip()


def params_bytes(n_layer: int, n_embd: int, optimizer: str = "adamw", dtype: str = "bfloat16", **layout) -> int:
    """A stand-in for memory.estimate: 16 bytes a parameter whatever the optimizer, no activations."""
    return 16 * budget._shape_params(n_layer, n_embd)


@pytest.fixture(scope="module")
def default_report():
    """The command's default answer, with the real dry-run estimates (bf16, MFU assumed)."""
    return budget.budget_report("rtx-4070-ti", days=365, utilization=0.9, bench_records="/nonexistent")


def test_the_questions_premise_is_the_fp32_rate_for_a_year(default_report):
    fp32 = budget.budget_report("rtx-4070-ti", 365, 0.9, mfu=0.4, precision="fp32", step_bytes=params_bytes)
    assert fp32["total_flops"] == pytest.approx(40.1e12 * 0.9 * ONE_YEAR) == pytest.approx(1.138e21, rel=1e-3)
    assert fp32["total_flops"] == default_report["premise"]["flops"]
    # The default counts the tensor cores in bf16 with fp32 accumulate: twice the fp32 rate on this card.
    assert default_report["precision"] == "bf16"
    assert default_report["total_flops"] == pytest.approx(80.2e12 * 0.9 * ONE_YEAR)
    assert default_report["tensor_flops"] == default_report["total_flops"]
    # What a run gets: the peak at the assumed 40% MFU, and the days it takes to spend the budget.
    assert default_report["mfu"] == 0.4 and "assumed" in default_report["mfu_source"]
    assert default_report["achieved_flops"] == pytest.approx(80.2e12 * 0.4 * ONE_YEAR)
    assert default_report["budget_days_at_mfu"] == pytest.approx(365 * 0.9 / 0.4)
    # At the premise's 1.14e21 FLOPs, 40% of the tensor-core peak spends them in ~411 days, not 821.
    assert fp32["total_flops"] / (80.2e12 * 0.4) / 86_400 == pytest.approx(411, abs=1)


def test_the_headline_optimum_is_epochs_law_and_the_others_stand_beside_it(default_report):
    assert default_report["optimal_law"] == "epoch2024"
    params, tokens = default_report["compute_optimal_params"], default_report["compute_optimal_tokens"]
    assert (params, tokens) == tuple(float(v) for v in laws.EPOCH_REFIT.compute_optimal(default_report["total_flops"]))
    assert 6 * params * tokens == pytest.approx(default_report["total_flops"])
    assert set(default_report["laws"]) == set(laws.PUBLISHED_LAWS)
    for entry in default_report["laws"].values():
        assert {"params", "tokens", "tokens_per_param", "predicted_loss", "fits_in_memory"} <= entry.keys()
    assert "MassiveText" in default_report["loss_units"] and "32k SentencePiece" in default_report["loss_units"]
    assert default_report["gpt2_small_optimal_flops"] == pytest.approx(2.3e18, rel=0.05)
    assert default_report["gpt2_small_optimal_tokens"] == pytest.approx(3.1e9, rel=0.05)


@pytest.mark.parametrize(
    "optimizer, n_layer, params",
    [("adamw", 19, 400e6), ("adamw_bf16", 20, 459e6), ("adafactor", 22, 596e6)],
)
def test_the_memory_constrained_optimum_of_each_optimizer_is_the_largest_model_whose_step_fits(
    default_report, optimizer, n_layer, params
):
    constrained = default_report["memory_constrained_by_optimizer"][optimizer]
    usable = default_report["usable_memory_bytes"]
    assert usable == pytest.approx(0.75 * 12 * 2**30)
    assert constrained["memory_binds"]  # Epoch's optimum for the year needs far more than 9 GiB
    assert constrained["estimated_memory_bytes"] <= usable
    assert constrained["n_layer"] == n_layer and constrained["params"] == pytest.approx(params, rel=0.01)
    next_size = budget._family_shape(n_layer + 1)
    assert budget.training_step_bytes(*next_size, optimizer, "bfloat16") > usable  # the next size does not fit
    # Spent at the run's MFU, not the tensor-core peak.
    assert constrained["tokens"] == pytest.approx(default_report["achieved_flops"] / (6 * constrained["params"]))
    assert constrained["loss_gap"] > 0
    law = laws.EPOCH_REFIT
    assert constrained["predicted_loss"] == pytest.approx(float(law.loss(constrained["params"], constrained["tokens"])))
    # The best that fits is the lowest predicted loss over the optimizers: Adafactor's smaller state.
    assert default_report["memory_constrained"]["optimizer"] == "adafactor"


def test_the_verdict_answers_for_a_4070_ti_year(default_report):
    models = default_report["models"]
    assert models["gpt2"]["optimal_days"] == pytest.approx(0.8, abs=0.05)
    assert models["gpt2"]["original_days"] == pytest.approx(2.7, abs=0.05)
    assert models["gpt2-medium"]["optimal_days"] == pytest.approx(6.5, abs=0.1)
    assert models["gpt2-medium"]["original_days"] == pytest.approx(7.7, abs=0.1)
    assert models["gpt2"]["fits_with"] == ["adamw", "adamw_bf16", "adafactor"]
    # Without offload neither fits with any optimizer: the float32 gradient sum beside a micro-batch's gradients.
    assert models["gpt2-large"]["fits_with"] == [] and models["gpt2-xl"]["fits_with"] == []
    optimum = default_report["achieved_optimum"]
    assert 6 * optimum["params"] * optimum["tokens"] == pytest.approx(default_report["achieved_flops"])
    assert optimum["params"] == pytest.approx(2.8e9, rel=0.05) and not optimum["fits_in_memory"]
    text = budget.format_report(default_report)
    detail = budget.verdict_lines(default_report)
    assert detail[0] == "In detail, at 40% MFU:"
    assert "gpt2 (124M) trains: compute-optimally (3.13B tokens) in 0.8 days, on GPT-2's 10B in 2.7" in detail[1]
    assert "gpt2-large (774M) trains: " in detail[3] and "its step fits with adamw, train.offload=master" in detail[3]
    assert "the best that fits: 596M params (22 layers x 1408) with adafactor" in text
    assert text.startswith("\n".join(budget.answer_lines(default_report) + [""] + detail))


def test_the_first_screen_answers_each_question_in_a_line_then_says_which_flop_total_is_which(default_report):
    title, trains, optimum, spent, premise, tensor, shares = budget.answer_lines(default_report)
    assert title == "One rtx-4070-ti (12 GiB) for 365 days:"
    assert trains == (
        "  Does it train GPT-2? yes for gpt2 (124M), gpt2-medium (355M), gpt2-large (774M) and gpt2-xl (1.56B), in "
        "2.7, 7.7, 16.9 and 101.2 days on GPT-2's 10B tokens; gpt2-large and gpt2-xl with state in host memory "
        "(gpt2-large: adamw, train.offload=master, remat=dots; gpt2-xl: adamw, train.offload=all, remat=full); "
        "judged on 9.0 GiB, the 75% of the card JAX gives XLA by default (XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 raises it)"
    )
    assert optimum.startswith(
        "  GPT-2's budget against a compute-optimal one? GPT-2 xl trained 1.56B params on 10B tokens; the 1.01e+21 "
        "FLOPs a run here gets buy, by epoch2024, 2.8B params on 60.3B tokens (loss 2.305), which does not fit the card"
    )
    assert optimum.endswith("; the best it holds without offload: 596M params with adafactor, +0.075 in loss")
    # The one total the answers spend leads; the other two say what they are, each in one line.
    assert spent == (
        "The answers spend 1.01e+21 FLOPs, what a run gets: 365 days at 40% MFU of its 80.2 TFLOP/s bf16 peak. "
        "The other two totals:"
    )
    assert premise == "  1.14e+21, the question's premise: the card's 40.1 TFLOP/s fp32 rate x 90% of 365 days"
    assert tensor.startswith("  2.28e+21, its tensor cores at bf16 at full peak (80.2 TFLOP/s) x 90% of 365 days")
    # Why 40% MFU stands under --utilization 0.9: two different shares, said as such.
    assert shares == (
        "  --utilization 0.9 is the share of the time the card runs, which those two count; MFU is the share of its "
        "peak a training step reaches (40%, assumed: no --mfu, no bench record for this card)"
    )


def test_the_trains_answer_names_the_sizes_that_fit_but_do_not_finish():
    report = budget.budget_report("rtx-4070-ti", 3, 0.9, mfu=0.4, step_bytes=params_bytes)
    trains = budget.answer_lines(report)[1]
    assert "yes for gpt2 (124M), in 2.7 days on GPT-2's 10B tokens" in trains
    assert "gpt2-medium (355M) fit but do not finish in 3 days" in trains
    none = budget.budget_report("rtx-4070-ti", 0.5, 0.9, mfu=0.4, step_bytes=params_bytes)
    assert budget.answer_lines(none)[1].startswith(
        "  Does it train GPT-2? no: gpt2 (124M) and gpt2-medium (355M) fit but do not finish in 0.5 days; "
    )


def test_allocations_are_checked_against_the_corpus(default_report):
    assert default_report["corpus"] == "fineweb-edu-10BT" and default_report["corpus_tokens"] == 10e9
    headline = default_report["laws"]["epoch2024"]
    assert headline["epochs"] == pytest.approx(headline["tokens"] / 10e9) and headline["beyond_corpus"]
    constrained = default_report["memory_constrained_by_optimizer"]["adamw"]
    assert constrained["beyond_corpus"] and constrained["extrapolated"]  # 1055 tokens a parameter, past 341
    assert "beyond the corpus" in budget.format_report(default_report)
    # GPT-2 small's compute-optimal 3.1B tokens are a third of the 10B sample.
    assert default_report["models"]["gpt2"]["optimal_epochs"] == pytest.approx(0.313, abs=0.01)
    whole = budget.budget_report("rtx-4070-ti", 365, 0.9, mfu=0.4, step_bytes=params_bytes, corpus="fineweb-edu")
    assert not whole["laws"]["epoch2024"]["beyond_corpus"]
    assert budget.budget_report("rtx-4070-ti", 365, 0.9, mfu=0.4, step_bytes=params_bytes, corpus="5e9")[
        "corpus_tokens"
    ] == pytest.approx(5e9)


def test_fp32_names_the_cuda_core_rate_and_sizes_a_float32_step():
    sized = []

    def recording_bytes(n_layer, n_embd, optimizer, dtype, **layout):
        sized.append(dtype)
        return params_bytes(n_layer, n_embd)

    report = budget.budget_report("rtx-4070-ti", 365, 0.9, mfu=0.4, precision="fp32", step_bytes=recording_bytes)
    assert set(sized) == {"float32"} and report["memory_constrained"]["training_step"]["dtype"] == "float32"
    text = budget.format_report(report)
    assert "CUDA cores at fp32" in text and "tensor cores at fp32" not in text


def test_gpt2_sizes_against_a_12_gib_card(default_report):
    models = default_report["models"]
    assert list(models) == ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
    assert models["gpt2"]["fits_in_memory"]
    # gpt2-large's AdamW state alone (12.4 GB) is under the card's 12.9 GB, but its training step is not.
    assert models["gpt2-large"]["training_memory_bytes"] < 12 * 2**30
    assert not models["gpt2-large"]["fits_in_memory"] and not models["gpt2-xl"]["fits_in_memory"]
    for name in ("gpt2-large", "gpt2-xl"):  # each in its offloaded layout, at that layout's step time
        size = models[name]
        assert size["original_days"] == pytest.approx(
            size["original_flops"] / (80.2e12 * 0.4) / 86_400 * size["layout"]["slowdown"]
        )


def test_a_recorded_bench_figure_sets_the_mfu(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text(
        json.dumps({"device": "NVIDIA H100 80GB HBM3", "model_flops_per_s": 300e12, "n_devices": 1})
        + "\n"
        + json.dumps({"device": "NVIDIA GeForce RTX 4070 Ti", "model_flops_per_s": 30e12, "n_devices": 1})
        + "\n"
        + json.dumps({"device": "NVIDIA GeForce RTX 4070 Ti", "model_flops_per_s": 24.06e12, "n_devices": 1})
        + "\n"
    )
    report = budget.budget_report("rtx-4070-ti", 365, 0.9, bench_records=records, step_bytes=params_bytes)
    assert report["mfu"] == pytest.approx(24.06e12 / 80.2e12) and str(records) in report["mfu_source"]
    assert budget.budget_report("rtx-4070-ti", 365, 0.9, mfu=0.5, bench_records=records, step_bytes=params_bytes)[
        "mfu"
    ] == pytest.approx(0.5)


def test_cli_json_keeps_every_key_and_fp32_gives_the_questions_figure(capsys):
    budget_command(["--gpu", "rtx-4070-ti", "--days", "365", "--utilization", "0.9", "--precision", "fp32", "--json"])
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
        "premise",
        "memory_constrained",
        "loss_units",
        "predicted_loss",
    ):
        assert key in report
    assert report["total_flops"] == pytest.approx(1.14e21, rel=0.01)


def test_cli_text_leads_with_the_answers_then_the_three_totals(capsys):
    budget_command(["--mfu", "0.4"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("One rtx-4070-ti") and lines[1].startswith("  Does it train GPT-2?")
    assert lines[3].startswith("The answers spend 1.01e+21 FLOPs") and "40% MFU" in lines[3]
    assert "the question's premise" in lines[4] and "1.14e+21" in lines[4]
    assert "tensor cores at bf16" in lines[5] and "2.28e+21" in lines[5]
    assert "(40%, --mfu)" in lines[6]
    assert any("memory-constrained optimum" in line for line in lines)


def test_fit_file_adds_the_projects_law_and_it_leads_in_gpt2_units(tmp_path):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"E": 1.8, "A": 480.0, "B": 2000.0, "alpha": 0.35, "beta": 0.37, "a": 0.51, "b": 0.49}))
    fit = budget.load_fit_law(path)
    report = budget.budget_report("rtx-4070-ti", 365, 0.9, fit=fit, step_bytes=params_bytes)
    assert list(report["laws"])[0] == "fit" and report["laws"]["fit"]["params"] > 0
    own = report["own_law"]
    n_opt, d_opt = (float(value) for value in fit.compute_optimal(report["achieved_flops"]))
    assert own["params"] == pytest.approx(n_opt) and own["tokens"] == pytest.approx(d_opt)
    assert own["predicted_loss"] == pytest.approx(float(fit.loss(n_opt, d_opt)))
    # The fit answers, in GPT-2's units; the published law's allocation follows in the detail.
    answer = budget.answer_lines(report)[2]
    assert "gets buy, by your fit (GPT-2 BPE nats per token on the sweep's corpus), " in answer
    verdict = budget.verdict_lines(report)
    assert any(line.startswith("  by epoch2024, in Chinchilla's units: the ") for line in verdict)
    assert not any("no law yet" in line for line in verdict)
    assert "your fit's losses in GPT-2 BPE nats per token on the sweep's corpus, the published laws' in" in (
        budget.format_report(report)
    )


def test_a_fit_marks_its_own_range_of_tokens_per_parameter_as_the_edge_of_what_it_knows(tmp_path):
    constants = {"E": 1.8, "A": 480.0, "B": 2000.0, "alpha": 0.35, "beta": 0.37}
    path = tmp_path / "fit.json"
    wide, narrow = constants | {"tokens_per_param": [2.0, 1e5]}, constants | {"tokens_per_param": [2.0, 8.0]}
    extrapolated = {}
    for name, values in (("wide", wide), ("narrow", narrow), ("unstated", constants)):
        path.write_text(json.dumps(values))
        report = budget.budget_report("rtx-4070-ti", 365, 0.9, fit=budget.load_fit_law(path), step_bytes=params_bytes)
        extrapolated[name] = report["own_law"]["extrapolated"]
        tokens_per_param = report["own_law"]["tokens"] / report["own_law"]["params"]
    assert 8.0 < tokens_per_param < 341.0  # this law's optimum: inside Chinchilla's range, past the narrow sweep's
    assert extrapolated == {"wide": False, "narrow": True, "unstated": False}


def test_a_fit_whose_points_identify_no_law_is_refused_with_its_reasons(tmp_path, capsys):
    path = tmp_path / "fit.json"
    reason = "its 95% interval [0.01, 3.2] spans more than a decade"
    path.write_text(
        json.dumps({"E": 1.8, "A": 4.0, "B": 400.0, "alpha": 0.07, "beta": 0.3, "unidentified": {"alpha": reason}})
    )
    assert re.fullmatch(
        rf"error: fit file .* says its points do not identify its constants \({re.escape(reason)}\): .*",
        user_error(capsys, ["--fit", str(path)]),
    )


def test_a_prepared_directory_is_a_corpus_of_its_train_tokens(tmp_path):
    from gpt2jax.data.prepare import prepare

    out = tmp_path / "prepared"
    prepare("synthetic:vocabulary=compact", out, synthetic_train_tokens=30_000, synthetic_val_tokens=3_000)
    name, tokens = budget.corpus_tokens(str(out))
    assert (name, tokens) == (str(out), 30_000.0)
    report = budget.budget_report("rtx-4070-ti", 1, 0.9, mfu=0.4, step_bytes=params_bytes, corpus=str(out))
    assert report["models"]["gpt2"]["original_epochs"] == pytest.approx(10e9 / 30_000)


def test_without_a_fit_the_verdict_names_the_gpu_sweep_and_its_cost_on_the_card(default_report):
    from gpt2jax.scaling import plan

    own = default_report["own_law"]
    config = plan.load_sweep_config(str(budget.GPU_SWEEP))
    sweep = plan.expand(config)
    scan = tuning.scan_plan(config, sweep)
    # The sweep's 2.75e18 FLOPs and its tuning scan's 2.2e17, at 40% of the 4070 Ti's 80.2 TFLOP/s
    # bf16 peak: about a day.
    assert own["flops"] == pytest.approx(
        plan.costs(sweep)["flops_spent"]["6n_attention"] + plan.costs(scan)["flops_spent"]["6n_attention"]
    )
    assert 2.9e18 < own["flops"] < 3.05e18
    assert own["days"] == pytest.approx(own["flops"] / (0.4 * 80.2e12) / 86_400) and 1.0 < own["days"] < 1.1
    line = next(line for line in budget.verdict_lines(default_report) if "no law yet" in line)
    assert "experiments/gpu_sweep.py" in line and "1.1 days on this card at 40% MFU" in line and "--fit" in line


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--gpu", "gtx-480"], "error: unknown GPU 'gtx-480'; known GPUs are .*rtx-4070-ti.*"),
        (["--days", "inf"], r"error: days is inf; give a positive, finite number of days\."),
        (["--days", "nan"], r"error: days is nan; give a positive, finite number of days\."),
        (["--days", "-3"], r"error: days is -3.0; give a positive, finite number of days\."),
        (["--days", "1e300"], r"error: days is 1e\+300; give at most 36500 days \(a century of one card\)\."),
        (["--corpus", "nowhere"], r"error: --corpus nowhere is not one of .*"),
        (["--utilization", "1.5"], r"error: utilization is 1.5; give a fraction of peak in \[0.001, 1\]\."),
        (["--mfu", "0"], r"error: mfu is 0.0; give a fraction of peak in \[0.001, 1\]\."),
        (["--mfu", "1e-300"], r"error: mfu is 1e-300; give a fraction of peak in \[0.001, 1\]\."),
    ],
)
def test_nonsense_values_are_one_sentence(capsys, args, pattern):
    assert re.fullmatch(pattern, user_error(capsys, args))


def test_fit_file_without_constants_is_refused(tmp_path, capsys):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"E": 1.8}))
    assert re.fullmatch("error: fit file .* lacks A, B, alpha, beta;.*", user_error(capsys, ["--fit", str(path)]))


@pytest.mark.parametrize("bad", [{"alpha": 0}, {"E": math.nan}, {"B": "400"}, {"beta": -0.3}])
def test_fit_file_whose_constants_make_no_law_is_refused(tmp_path, capsys, bad):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"E": 1.8, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28} | bad))
    ((name, value),) = bad.items()
    assert re.fullmatch(
        rf"error: fit file .*fit.json holds {name}={re.escape(repr(value))}; a law needs finite constants, .*fit --json\.",
        user_error(capsys, ["--fit", str(path)]),
    )


def test_the_short_command_answers_the_question_as_the_issue_spells_it():
    """``python -m gpt2jax.scaling budget ... --precision fp32 --json`` reproduces the question's 1.14e21 FLOPs."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    command = [
        sys.executable,
        "-m",
        "gpt2jax.scaling",
        "budget",
        "--gpu",
        "rtx-4070-ti",
        "--days",
        "365",
        "--utilization",
        "0.9",
        "--precision",
        "fp32",
        "--json",
    ]
    result = subprocess.run(
        command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["total_flops"] == pytest.approx(1.14e21, rel=0.01)


def test_a_4070_ti_trains_large_and_xl_with_their_state_in_host_memory_at_their_pcie_cost(default_report):
    """Issue 34: "does not fit with any optimizer" became what fits with what, and how much slower."""
    models = default_report["models"]
    plain = {name: models[name]["layout"] for name in ("gpt2", "gpt2-medium")}
    assert all(layout["offload"] == "none" and layout["slowdown"] == 1.0 for layout in plain.values())
    large = models["gpt2-large"]["layout"]
    assert (large["optimizer"], large["offload"], large["remat"]) == ("adamw", "master", "dots")
    usable = 0.75 * 12 * 2**30
    preset = budget.model.PRESETS["gpt2-large"]
    shape = (preset["n_layer"], preset["n_embd"], "adamw", "bfloat16")
    assert large["device_bytes"] == budget.training_step_bytes(*shape, offload="master", remat="dots") <= usable
    # Every layout cheaper in step time with AdamW does not fit.
    for offload in ("none", "optimizer"):
        assert budget.training_step_bytes(*shape, offload=offload, remat="dots") > usable
    # The traffic: the master weights and moments down and up once a 524k-token step, at PCIe 4.0's 25.2 GB/s.
    moved = budget.training_offload_bytes(*shape, "master")
    # 12 bytes a parameter (float32 master and two moments) of the 774.09M with the padded vocabulary, and Adam's counts
    assert moved["traffic_bytes"] == pytest.approx(2 * 12 * 774_090_240, abs=64)
    assert large["host_link_seconds"] == pytest.approx(moved["traffic_bytes"] / 25.2e9)
    step_flops = 6 * models["gpt2-large"]["n_params"] * 524288
    assert large["compute_seconds"] == pytest.approx(step_flops / (0.4 * 80.2e12), rel=1e-3)  # dots: no recompute
    assert models["gpt2-large"]["original_days"] == pytest.approx(16.9, abs=0.1)
    detail = budget.verdict_lines(default_report)
    assert (
        "its step fits with adamw, train.offload=master, remat=dots: 8.7 GiB on the card, 17.3 GiB of host" in detail[3]
    )
    assert "0.7 s over PCIe and 76 s of compute a 524k-token step, x1.01 the time of one without offload" in detail[3]
    # xl: only with its float32 gradient sum in host memory too, which then crosses the link twice a micro-batch.
    xl = models["gpt2-xl"]["layout"]
    assert (xl["optimizer"], xl["offload"], xl["remat"]) == ("adamw", "all", "full")
    preset = budget.model.PRESETS["gpt2-xl"]
    shape = (preset["n_layer"], preset["n_embd"], "adamw", "bfloat16")
    assert xl["device_bytes"] == budget.training_step_bytes(*shape, offload="all", remat="full") <= usable
    for offload in ("none", "optimizer", "master"):
        assert budget.training_step_bytes(*shape, offload=offload, remat="full") > usable
    n = 1_557_686_400  # with the padded vocabulary
    # master weights and moments down and up once; the float32 sum down and up for each of 512 micro-batches, and
    # down once more for the update
    assert xl["traffic_bytes"] == pytest.approx(2 * 12 * n + (2 * 512 + 1) * 4 * n, abs=64)
    assert "its step fits with adamw, train.offload=all, remat=full: 8.6 GiB on the card, 40.6 GiB of host" in detail[4]
    assert "254.9 s over PCIe and 204 s of compute a 524k-token step, x3.00 the time of one without" in detail[4]


def test_the_verdict_judges_the_share_of_the_card_xla_python_client_mem_fraction_gives(monkeypatch):
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    report = budget.budget_report("rtx-4070-ti", 365, 0.9, mfu=0.4, bench_records="/nonexistent")
    assert report["usable_memory_bytes"] == pytest.approx(0.95 * 12 * 2**30)
    trains = budget.answer_lines(report)[1]
    assert trains.endswith("; judged on 11.4 GiB, the 95% of the card XLA_PYTHON_CLIENT_MEM_FRACTION gives XLA")
    # With 2.4 GiB more, large keeps its float32 weights on the card and xl needs no full remat.
    assert "gpt2-large: adamw, train.offload=optimizer, remat=dots" in trains
    assert "gpt2-xl: adamw, train.offload=all, remat=dots" in trains


def test_a_card_whose_host_link_is_not_stated_gets_no_offload_layout():
    report = budget.budget_report("tpu-v5e", 365, 0.9, mfu=0.4, step_bytes=params_bytes)
    assert all(size["layout"] is None or size["layout"]["offload"] == "none" for size in report["models"].values())


def test_muon_without_a_measured_multiplier_says_so_in_one_line_and_applies_nothing(default_report, tmp_path):
    section = budget.optimizer_section(default_report, "muon", tmp_path / "multiplier.json")
    (line,) = budget.optimizer_lines(section)
    assert line.startswith(f"--optimizer muon: no measured multiplier ({tmp_path / 'multiplier.json'} does not exist)")
    assert "for context and not applied" in line
    assert all(figure in line for figure in ("~1.4x at 0.1B falling to ~1.1x at 1.2B", "1.35x", "~2x"))
    assert "days" not in section and budget.optimizer_section(default_report, "adamw") is None


def test_muon_with_a_measured_multiplier_divides_the_days_and_says_where_and_at_what_scale(
    default_report, tmp_path, capsys
):
    path = tmp_path / "multiplier.json"
    measured = {"multiplier": 1.25, "interval": [1.1, 1.4], "where": "on a 2-core CPU", "params": [2e5, 3.2e6]}
    path.write_text(json.dumps(measured))
    section = budget.optimizer_section(default_report, "muon", path)
    # GPT-2 small: 0.8 days compute-optimally and 2.7 on its 10B tokens with AdamW at 40% MFU (above).
    assert section["days"]["gpt2"]["optimal_days"] == pytest.approx(0.8 / 1.25, abs=0.04)
    assert section["days"]["gpt2"]["original_days"] == pytest.approx(2.7 / 1.25, abs=0.04)
    assert section["achieved_flops_as_adamw"] == pytest.approx(1.25 * 80.2e12 * 0.4 * ONE_YEAR)
    lines = budget.optimizer_lines(section)
    assert lines[0] == (
        f"--optimizer muon: a compute multiplier of 1.25 (interval 1.10-1.40), measured on a 2-core CPU at "
        f"200k-3.2M params ({path}); applied to GPT-2's sizes it is an extrapolation"
    )
    gpt2 = section["days"]["gpt2"]
    assert lines[2].split() == ["gpt2", f"{gpt2['optimal_days']:.1f}", f"{gpt2['original_days']:.1f}"]
    assert lines[-1].startswith("  published, for context:")
    budget_command(["--mfu", "0.4", "--optimizer", "muon", "--multiplier", str(path), "--json"])
    assert json.loads(capsys.readouterr().out)["optimizer"]["measured"] == measured


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("{", "is not JSON"),
        ('{"multiplier": 1.2}', "lacks interval, where, params"),
        ('{"multiplier": 2.0, "interval": [1.1, 1.4], "where": "x", "params": [1, 2]}', "outside its interval"),
        ('{"multiplier": 1.2, "interval": 1.3, "where": "x", "params": [1, 2]}', "must each be a pair [low, high]"),
    ],
)
def test_a_malformed_multiplier_file_is_one_sentence(tmp_path, capsys, content, pattern):
    path = tmp_path / "multiplier.json"
    path.write_text(content)
    error = user_error(capsys, ["--mfu", "0.4", "--optimizer", "muon", "--multiplier", str(path)])
    assert pattern in error and error.endswith("write it again with the Muon experiment, or remove it.")
