"""HellaSwag from the original jsonl, the Hub's parquet and TFDS; scored by the evaluate command and in training.

A tiny model trained on the true (context, ending) sentences must pick every true ending; with the
labels shuffled the same model scores what chance gives. No test reaches the network: the Hub is
a cache folder written here and read by huggingface_hub in offline mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import constants as hub_constants

from gpt2jax.data import hellaswag
from gpt2jax.files.workdir import METRICS_FILE
from gpt2jax.inference import scoring, weights
from gpt2jax.init_from import weights_source
from gpt2jax.training import eval_tasks, loop
from tests.corpora import write_hub_cache
from tests.helpers import REPO, tiny_config

HF_TINY = Path(__file__).parent / "data" / "hf_tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "a child", "the farmer"]
VERBS = ["opens", "paints", "cleans", "carries", "finds", "washes", "moves", "checks"]
THINGS = ["door", "window", "box", "table", "chair", "garden", "car", "house"]
# Words the corpus never holds: a model trained on it gives them little probability.
STRANGE = ["quasar", "obsidian", "zeppelin", "marzipan", "tundra", "kelvin", "sonnet", "fjord", "lichen", "vortex"]


def true_sentences(count: int) -> list[tuple[str, str]]:
    return [
        (
            f"{SUBJECTS[i % 6]} {VERBS[i % 8]} the {THINGS[(i * 3) % 8]}",
            f"and then {VERBS[(i + 3) % 8]} the {THINGS[(i * 5 + 1) % 8]}.",
        )
        for i in range(count)
    ]


def examples_with(sentences, labels) -> list[dict]:
    """rowanz/hellaswag records whose true ending is at ``labels[i]`` among three of strange words."""
    rng = np.random.default_rng(1)
    records = []
    for index, ((context, ending), label) in enumerate(zip(sentences, map(int, labels))):
        endings = [" ".join(rng.choice(STRANGE, 5)) + "." for _ in range(3)]
        endings.insert(label, ending)
        records.append({"ind": index, "activity_label": "Chores", "ctx": context, "endings": endings, "label": label})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def evaluate(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gpt2jax.cli.evaluate", *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def learned(tmp_path_factory, data_dir):
    """(workdir, jsonl, records): a tiny run trained on the true sentences, scoring HellaSwag as it trains."""
    root = tmp_path_factory.mktemp("hellaswag")
    sentences = true_sentences(48)
    rng = np.random.default_rng(0)
    records = examples_with(sentences, rng.integers(0, 4, len(sentences)))
    jsonl = write_jsonl(root / "hellaswag_val.jsonl", records)
    corpus = root / "corpus.jsonl"
    # One sentence a document: each context starts a document, as it starts a scored row.
    corpus.write_text(
        "".join(
            json.dumps({"text": f"{context} {ending}"}) + "\n"
            for _ in range(150)
            for context, ending in rng.permutation(sentences)
        )
    )
    config = tiny_config(data_dir, steps=24, log_every=12, eval_every=12, checkpoint_every=24, eval_tasks="hellaswag")
    config.model.block_size = 32
    config.data.update(source=f"text:{corpus}", val_fraction=0.1)
    config.train.hellaswag_data = str(jsonl)
    workdir = root / "run"
    loop.run(config, workdir)
    return workdir, jsonl, records


def test_training_logs_hellaswag_and_learns_the_true_endings(learned):
    workdir, _, records = learned
    metrics = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    assert [record["step"] for record in metrics] == [12, 24]
    assert all(record["hellaswag_n"] == len(records) for record in metrics)
    assert metrics[-1]["hellaswag_acc_norm"] == 1.0 and metrics[-1]["hellaswag_acc"] == 1.0


def test_evaluate_scores_the_original_jsonl(learned):
    workdir, jsonl, records = learned
    result = evaluate(f"--workdir={workdir}", "--task=hellaswag", f"--hellaswag_data={jsonl}")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout.splitlines()[-1])
    assert printed["acc_norm"] == 1.0 and printed["n"] == len(records)
    assert printed["interval"] == "Wilson 95%"
    assert printed["acc_norm_ci95"] == pytest.approx(eval_tasks.wilson_interval(len(records), len(records)))
    assert 0.9 < printed["acc_norm_ci95"][0] < 1.0 == printed["acc_norm_ci95"][1]


def test_shuffled_labels_score_near_chance(learned, tmp_path):
    workdir, _, records = learned
    true_labels = np.array([record["label"] for record in records])
    shuffled = np.random.default_rng(7).integers(0, 4, len(records))
    wrong = write_jsonl(tmp_path / "shuffled.jsonl", [dict(r, label=int(s)) for r, s in zip(records, shuffled)])
    loaded = weights.load_weights(weights_source(str(workdir), None, None))
    result = scoring.evaluate_hellaswag(loaded, hellaswag.read_examples(str(wrong)), str(wrong))
    # The model still picks each true ending, so it is right exactly where a shuffled label kept it.
    assert result["acc_norm"] == pytest.approx(np.mean(shuffled == true_labels))
    assert abs(result["acc_norm"] - 0.25) < 0.15
    low, high = result["acc_norm_ci95"]
    assert low < 0.25 < high


def hub_layout(snapshot: Path, records: list[dict]) -> None:
    """Rowan/hellaswag as the Hub holds it: a card naming data/SPLIT-*, parquet with string labels."""
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: test\n    path: data/test-*\n  - split: validation\n    path: data/validation-*\n---\n"
    )
    (snapshot / "data").mkdir()
    rows = [
        {
            "ind": record["ind"],
            "activity_label": record["activity_label"],
            "ctx_a": record["ctx"],
            "ctx_b": "",
            "ctx": record["ctx"],
            "endings": record["endings"],
            "source_id": "activitynet~v_0",
            "split": "val",
            "split_type": "indomain",
            "label": str(record["label"]),
        }
        for record in records
    ]
    pq.write_table(pa.Table.from_pylist(rows), snapshot / "data" / "validation-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([dict(rows[0], label="")]), snapshot / "data" / "test-00000-of-00001.parquet")


def test_the_hubs_parquet_reads_as_the_original_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    records = examples_with(true_sentences(6), [0, 1, 2, 3, 0, 1])
    original = hellaswag.read_examples(str(write_jsonl(tmp_path / "val.jsonl", records)))
    cache = tmp_path / "hub"
    snapshot = write_hub_cache(cache, "Rowan/hellaswag", COMMIT, lambda snapshot: hub_layout(snapshot, records))
    assert hellaswag.read_examples("hf:Rowan/hellaswag", hub_cache=cache) == original
    assert hellaswag.read_examples(f"hf:{snapshot}", limit=2) == original[:2]
    # The test split's labels are hidden (empty strings): scoring it is refused.
    with pytest.raises(ValueError, match="labels are hidden, so score the validation split"):
        hellaswag.read_examples("hf:Rowan/hellaswag", split="test", hub_cache=cache)


def test_ctx_a_and_ctx_b_make_the_context():
    record = {"ctx_a": "A man sits on a roof.", "ctx_b": "he", "endings": ["x", "y"], "label": "1"}
    assert hellaswag.checked_example(record, "here") == {
        "context": "A man sits on a roof. he",
        "endings": ["x", "y"],
        "label": 1,
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda record: record.pop("endings"), "line 2 has no 'endings' field; a HellaSwag example has ctx"),
        (lambda record: record.update(label=4), "line 2's label 4 is out of range for its 4 endings."),
    ],
    ids=["missing-field", "label-out-of-range"],
)
def test_a_bad_hellaswag_file_is_one_sentence(tmp_path, change, message):
    records = examples_with(true_sentences(3), [0, 1, 2])
    change(records[1])
    path = write_jsonl(tmp_path / "val.jsonl", records)
    result = evaluate(f"--init_from=hf:{HF_TINY}", "--task=hellaswag", f"--hellaswag_data={path}")
    assert_refused(result, message)
    assert sorted(tmp_path.iterdir()) == [path]


def test_a_limit_below_one_is_one_sentence(tmp_path):
    path = write_jsonl(tmp_path / "val.jsonl", examples_with(true_sentences(2), [0, 1]))
    result = evaluate(f"--init_from=hf:{HF_TINY}", "--task=hellaswag", f"--hellaswag_data={path}", "--limit=0")
    assert_refused(result, "--limit=0 must be at least 1; omit it to score every example.")


def test_a_hub_dataset_not_in_the_offline_cache_is_one_sentence(tmp_path):
    cache = tmp_path / "hub"
    result = evaluate(
        f"--init_from=hf:{HF_TINY}",
        "--task=hellaswag",
        "--hellaswag_data=hf:Rowan/hellaswag",
        f"--hub_cache={cache}",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert_refused(result, "hf:Rowan/hellaswag is not in the local cache")
    assert not cache.exists() or not [path for path in cache.rglob("*") if path.is_file()]


def assert_refused(result, message: str) -> None:
    """Exit 1, one line on stderr that says ``message``, nothing printed."""
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert result.stdout == ""


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(eval_tasks="hellaswag", hellaswag_data="/nonexistent/hellaswag_val.jsonl"), "does not exist; give"),
        (dict(eval_tasks="hellaswag"), "train.eval_tasks=hellaswag needs train.hellaswag_data"),
        (dict(eval_tasks="winogrande"), "train.eval_tasks names 'winogrande'; the tasks are hellaswag."),
        (dict(eval_tasks="hellaswag", eval_limit=-1), "train.eval_limit=-1 must be a whole number"),
    ],
    ids=["missing-file", "no-data", "unknown-task", "negative-limit"],
)
def test_a_task_without_its_data_is_refused_before_training(tmp_path, overrides, message):
    workdir, data_dir = tmp_path / "run", tmp_path / "data"
    with pytest.raises((ValueError, OSError), match=message):
        loop.run(tiny_config(data_dir, **overrides), workdir)
    assert not workdir.exists() and not data_dir.exists()  # refused before the data was prepared
