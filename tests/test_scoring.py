"""Tests for gpt2jax.scoring and the evaluate CLI's --text and --task modes.

Reference numbers come from transformers' PyTorch GPT-2 on the same weights
(scripts/make_hf_reference.py); these tests need neither.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tensorflow_datasets.testing.mocking  # noqa: F401 (loads tfds.testing.mocking)

from gpt2jax.data import hellaswag
from gpt2jax.data.tokenizer import get_tokenizer
from gpt2jax.inference import scoring
from gpt2jax.interop import hf
from gpt2jax.model import abstract_model
from gpt2jax.training import eval_tasks

FIXTURE = Path(__file__).parent / "data" / "hf_tiny"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model():
    """(graphdef, params, block_size) of the tiny Hugging Face fixture."""
    config, params = hf.load_hf(FIXTURE)
    graphdef, _ = abstract_model(config)
    return graphdef, params, config.block_size


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE / "reference.npz")


@pytest.fixture(scope="module")
def hellaswag_reference():
    return json.loads((FIXTURE / "hellaswag.json").read_text())


def test_the_reference_is_discriminating(reference):
    # Near-uniform predictions would let a wrongly imported model pass the comparisons below.
    assert reference["logprobs_stride128"].std() > 1.0


@pytest.mark.parametrize("stride", [128, 64])
def test_token_logprobs_match_transformers(model, reference, stride):
    graphdef, params, block_size = model
    tokens = get_tokenizer().encode((FIXTURE / "text.txt").read_text())
    np.testing.assert_array_equal(tokens, reference["tokens"])
    assert len(tokens) > 2 * block_size  # several windows, the last one partial
    logprobs = scoring.token_logprobs(graphdef, params, tokens, block_size, stride=stride, batch_size=2)
    assert logprobs.dtype == np.float32 and logprobs.shape == (len(tokens) - 1,)
    np.testing.assert_allclose(logprobs, reference[f"logprobs_stride{stride}"], atol=TOLERANCE, rtol=0)


def test_a_text_shorter_than_the_context_is_one_window(model, reference):
    graphdef, params, block_size = model
    tokens = reference["tokens"][:40]
    # The first window of the reference saw the same tokens with no padding.
    np.testing.assert_allclose(
        scoring.token_logprobs(graphdef, params, tokens, block_size),
        reference["logprobs_stride128"][:39],
        atol=TOLERANCE,
        rtol=0,
    )


def test_token_logprobs_refuses_what_it_cannot_score(model):
    graphdef, params, block_size = model
    with pytest.raises(ValueError, match="fewer than two tokens"):
        scoring.token_logprobs(graphdef, params, [464], block_size)
    with pytest.raises(ValueError, match="stride=0 must be between 1 and"):
        scoring.token_logprobs(graphdef, params, [464, 318, 257], block_size, stride=0)


def test_evaluate_cli_writes_logprobs_and_prints_loss(tmp_path, reference):
    out = tmp_path / "logprobs.npy"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2jax.cli.evaluate",
            f"--init_from=hf:{FIXTURE}",
            f"--text={FIXTURE / 'text.txt'}",
            f"--logprobs_out={out}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout.splitlines()[-1])
    logprobs = np.load(out)
    assert logprobs.dtype == np.float32
    np.testing.assert_allclose(logprobs, reference["logprobs_stride128"], atol=TOLERANCE, rtol=0)
    expected_loss = -reference["logprobs_stride128"].astype(np.float64).mean()
    assert printed["scored_tokens"] == len(logprobs)
    assert printed["loss"] == pytest.approx(expected_loss, abs=TOLERANCE)
    assert printed["perplexity"] == pytest.approx(np.exp(expected_loss), rel=TOLERANCE)


def test_continuation_logprobs_match_transformers(model, hellaswag_reference):
    graphdef, params, block_size = model
    tokenizer = get_tokenizer()
    requests, expected = [], []
    for example in hellaswag_reference:
        for ending, losses in zip(example["endings"], example["losses"]):
            requests.append((tokenizer.encode(example["context"]), tokenizer.encode(" " + ending)))
            expected.append(losses)
    # A batch of 3 splits examples across batches and pads the last one.
    logprobs = eval_tasks.continuation_logprobs(graphdef, params, requests, block_size, batch_size=3)
    assert [len(row) for row in logprobs] == [len(continuation) for _, continuation in requests]
    losses = np.asarray([[-row.sum(), -row.mean()] for row in logprobs])
    np.testing.assert_allclose(losses, expected, atol=TOLERANCE, rtol=1e-6)


def test_a_long_context_loses_its_oldest_tokens(model, reference):
    graphdef, params, block_size = model
    tokens = reference["tokens"].tolist()
    context, continuation = tokens[:300], tokens[300:310]
    kept = block_size + 1 - len(continuation)
    long, cut = eval_tasks.continuation_logprobs(
        graphdef, params, [(context, continuation), (context[-kept:], continuation)], block_size, batch_size=2
    )
    np.testing.assert_array_equal(long, cut)
    with pytest.raises(ValueError, match="does not fit the model's context"):
        eval_tasks.continuation_logprobs(graphdef, params, [(context, tokens[: block_size + 1])], block_size)


def test_hellaswag_prediction_sums_for_acc_and_averages_for_acc_norm():
    endings = [
        np.array([-1.0, -1.0, -1.0]),  # summed loss 3, mean 1: the best mean
        np.array([-2.5]),  # summed loss 2.5, mean 2.5: the best sum
        np.array([-4.0, -0.5]),
    ]  # summed loss 4.5, mean 2.25
    assert eval_tasks.hellaswag_prediction(endings) == (1, 0)


def test_hellaswag_scores_pick_what_transformers_picks(model, hellaswag_reference):
    graphdef, params, block_size = model
    examples = [
        dict(example, label=int(np.argmin([summed for summed, _ in example["losses"]])))
        for example in hellaswag_reference
    ]
    # With each label set to the reference's summed-loss choice, acc must be 1 exactly.
    scores = eval_tasks.hellaswag_scores(graphdef, params, examples, block_size, batch_size=4)
    expected_norm = np.mean(
        [np.argmin([mean for _, mean in example["losses"]]) == example["label"] for example in examples]
    )
    n = len(examples)
    assert scores == {
        "acc": 1.0,
        "acc_ci95": eval_tasks.wilson_interval(n, n),
        "acc_norm": expected_norm,
        "acc_norm_ci95": eval_tasks.wilson_interval(round(expected_norm * n), n),
        "n": n,
    }
    assert expected_norm < 1.0  # the two rules disagree on these examples, so both are tested


def test_hellaswag_reads_tfds_records(model, hellaswag_reference):
    graphdef, params, block_size = model
    # Records as TFDS's data source returns them: text as bytes, endings as an array, label as numpy.
    records = [
        {
            "context": example["context"].encode(),
            "endings": np.asarray([e.encode() for e in example["endings"]]),
            "label": np.int32(example["label"]),
            "activity_label": b"",
            "split_type": b"",
            "source_id": b"",
        }
        for example in hellaswag_reference
    ]
    with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kwargs: records):
        examples = hellaswag.read_examples("tfds", limit=1)
    assert examples == [{key: hellaswag_reference[0][key] for key in ("context", "endings", "label")}]


def test_tfds_records_with_labels_past_their_endings_are_refused():
    # The mock's examples are random strings with 5 to 50 endings and random labels, mostly out of range.
    with tfds.testing.mock_data(num_examples=3):
        with pytest.raises(ValueError, match=r"^TFDS hellaswag validation record \d+'s label \d+ is out of range"):
            hellaswag.read_examples("tfds")


def test_tfds_not_prepared_says_what_to_read_instead(tmp_path):
    with pytest.raises(FileNotFoundError, match="read hellaswag_val.jsonl or hf:Rowan/hellaswag instead"):
        hellaswag.read_examples("tfds", tfds_data_dir=str(tmp_path))


def test_validation_loss_of_hf_weights_on_a_config(model, tmp_path):
    from gpt2jax.config import base_config
    from gpt2jax.data import loader
    from gpt2jax.inference.scoring import evaluate_hf_on_config

    graphdef, params, block_size = model
    config = base_config()
    config.model.update(n_layer=2, n_head=4, n_embd=32, block_size=block_size)
    config.data.update(dir=str(tmp_path), synthetic_train_tokens=20_000, synthetic_val_tokens=5_000)
    config.train.update(batch_size=8, eval_batches=2)
    result = evaluate_hf_on_config(str(FIXTURE), config)
    # The sharded trainer's loss equals the mean of the scoring path's log-probabilities on the same windows.
    val_tokens = loader.prepared_data(config).val
    logprobs = [
        scoring.token_logprobs(graphdef, params, np.concatenate([inputs, targets[-1:]]), block_size, batch_size=1)
        for batch in loader.eval_batches(
            val_tokens, batch_size=8, block_size=block_size, num_batches=2, process_index=0, process_count=1
        )
        for inputs, targets in zip(*batch)
    ]
    assert result["val_tokens"] == 2 * 8 * block_size
    assert result["val_loss"] == pytest.approx(-np.mean(logprobs), abs=TOLERANCE)
    config.model.n_layer = 3
    with pytest.raises(ValueError, match=r"pass --config.model.n_layer=2\.$"):
        evaluate_hf_on_config(str(FIXTURE), config)
