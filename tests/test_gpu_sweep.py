"""bench/gpu_sweep.py, the GPU study's driver, run on the CPU as CI runs it: experiments/gpu_english.py:smoke
on a corpus of the repo's own text, packed by scripts/pack_english.sh."""

import csv
import datetime
import json
import os
import subprocess
import sys
import tarfile

from gpt2jax.scaling import walltime
from gpt2jax.scaling.plan import expand, load_sweep_config
from gpt2jax.scaling.tuning import TuningStage
from tests.helpers import REPO, child_xla_flags

# experiments/english_corpus.py's corpus as prepare tokenized it (val_fraction 0.01): its training tokens.
ENGLISH_TRAIN_TOKENS = 22_778_712
ONE_DRAW_S = 7 * 60  # of a lent device's 15 minutes: the machine's start and a rerun take the rest

EIGHT_FILES = {
    "results.csv",
    "sessions.jsonl",
    "tuning.json",
    "prediction.json",
    "fit.json",
    "REPORT.md",
    "driver.json",
    "details.tar.gz",
}


def test_the_gpu_english_study_fits_one_h100_draw_and_reads_no_token_twice():
    config = load_sweep_config(str(REPO / "experiments" / "gpu_english.py"))
    plan = expand(config)
    scan = TuningStage(config, plan, REPO).scan
    found = walltime.estimate([scan, plan], "h100-sxm", {}, mfu=0.4)
    assert found["wall_s"] < ONE_DRAW_S
    assert max(plan.tokens(point) for point in scan.points + plan.points) <= ENGLISH_TRAIN_TOKENS
    assert min(point.n_layer for point in plan.points) >= 4 and max(point.n_embd for point in plan.points) >= 128


def repo_text_as_jsonl(folder):
    """The repo's README, docs and package source, one JSON Lines file of documents per folder: 839 kB."""
    folder.mkdir()
    for name, pattern in (("docs", "docs/*.md"), ("package", "gpt2jax/**/*.py")):
        paths = sorted(REPO.glob(pattern)) + ([REPO / "README.md"] if name == "docs" else [])
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as file:
            for path in paths:
                file.write(json.dumps({"text": path.read_text(encoding="utf-8")}) + "\n")


def test_the_driver_packs_a_bet_whose_prediction_precedes_the_top_budget_into_eight_files(tmp_path):
    repo_text_as_jsonl(tmp_path / "text")
    archive = tmp_path / "english.tar.xz"
    subprocess.run(["bash", str(REPO / "scripts" / "pack_english.sh"), tmp_path / "text", archive], check=True)
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, REPO / "bench" / "gpu_sweep.py", "--config", f"{REPO}/experiments/gpu_english.py:smoke",
         "--corpus", archive, "--workdir", "runs/smoke", "--out", out, "--bootstrap", "4", "--grid", "coarse"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=child_xla_flags(1)),
        check=True, timeout=600,
    )  # fmt: skip
    assert {path.name for path in out.iterdir()} == EIGHT_FILES

    # The top budget's points are predicted, with a timestamp, before the session that trains them starts.
    prediction = json.loads((out / "prediction.json").read_text())
    predicted_at = datetime.datetime.fromisoformat(prediction["predicted_at"]).timestamp()
    predicted = {point["run"] for point in prediction["points"]}
    top = max(point["budget"] for point in prediction["points"])
    assert predicted and all(point["observed_loss"] is None for point in prediction["points"])
    sessions = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    lower, upper = [session for session in sessions if session["sweep"] == "sweep"]
    assert lower["started"] < predicted_at <= upper["started"]
    assert predicted.isdisjoint(lower["points_run"]) and predicted <= set(upper["points_run"])
    stages = {stage["stage"]: stage for stage in json.loads((out / "driver.json").read_text())["stages"]}
    assert stages["predict the top budget"]["predicted_at"] == prediction["predicted_at"]
    assert stages["predict the top budget"]["started"] <= stages["train the top budget"]["started"]

    # The bet is settled: every predicted point trained, the report names the prediction, the figures travel.
    with open(out / "results.csv") as file:
        trained = {row["run"]: float(row["budget"]) for row in csv.DictReader(file)}
    assert predicted <= set(trained) and top == max(trained.values())
    assert prediction["predicted_at"] in (out / "REPORT.md").read_text()
    assert json.loads((out / "tuning.json").read_text()) and json.loads((out / "fit.json").read_text())
    with tarfile.open(out / "details.tar.gz") as archive:
        names = archive.getnames()
    assert any(name.startswith("figures/") and name.endswith(".png") for name in names)
    assert "tuning/results.csv" in names and any(name.endswith("metrics.jsonl") for name in names)
    corpus = stages["tokenize"]
    assert corpus["token_bytes"] == 2 * (corpus["train_tokens"] + corpus["val_tokens"])
