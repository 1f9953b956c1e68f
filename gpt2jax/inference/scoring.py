"""Log-probabilities of text under a model, and HellaSwag scored from them.

Text longer than the context is scored by windows of ``block_size`` tokens that advance by
``stride`` targets. The first window predicts tokens 1..block_size; each later window ends
``stride`` targets further on (or at the text's end) and keeps only the targets the previous
window did not reach. Every token after the first is scored exactly once, with at least
``block_size - stride`` tokens of context once past the first window. The default stride,
``block_size``, gives non-overlapping windows of block_size + 1 tokens that share their
boundary token; a smaller stride buys more context per token for more compute.

HellaSwag is scored as in build-nanogpt and llm.c: each ending is rendered as the context's
tokens followed by the tokens of ``" " + ending``, and only the ending's tokens are scored.
``acc`` picks the ending with the lowest summed loss, ``acc_norm`` the lowest mean loss per token.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from gpt2jax.model import token_logprobs as logprobs_of_targets


@functools.partial(jax.jit, static_argnames="graphdef")
def _target_logprobs(graphdef, params, inputs_BxT, targets_BxT):
    # Full float32 matmuls: on GPUs JAX's default is TF32, PyTorch's is not, and scores are
    # compared with PyTorch's.
    with jax.default_matmul_precision("highest"):
        logits_BxTxV = nnx.merge(graphdef, params)(inputs_BxT)
    return logprobs_of_targets(logits_BxTxV, targets_BxT)


def _logprobs_by_batch(
    graphdef, params, batches: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int
) -> list[np.ndarray]:
    """Log-probabilities of each batch's targets given its inputs, each batch padded to batch_size rows.

    The padding keeps the number of rows fixed, so each sequence length compiles once. Every
    batch is dispatched before any result is read, so the device never waits on the host.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    rows, pending = [], []
    for inputs_BxT, targets_BxT in batches:
        padding = ((0, batch_size - len(inputs_BxT)), (0, 0))
        rows.append(len(inputs_BxT))
        pending.append(_target_logprobs(graphdef, params, np.pad(inputs_BxT, padding), np.pad(targets_BxT, padding)))
    return [logprobs_BxT[:n] for n, logprobs_BxT in zip(rows, jax.device_get(pending))]


def token_logprobs(
    graphdef, params, tokens: Sequence[int], block_size: int, *, stride: int | None = None, batch_size: int = 8
) -> np.ndarray:
    """Float32 log-probability of each token after the first, [len(tokens) - 1], by windows of block_size."""
    tokens_N = np.asarray(tokens, np.int32)
    n_targets = len(tokens_N) - 1
    if n_targets < 1:
        raise ValueError("the text has fewer than two tokens, so there is nothing to predict.")
    stride = block_size if stride is None else stride
    if not 0 < stride <= block_size:
        raise ValueError(f"stride={stride} must be between 1 and the model's context of {block_size} tokens.")
    window_ends = [min(block_size, n_targets)]
    while window_ends[-1] < n_targets:
        window_ends.append(min(window_ends[-1] + stride, n_targets))
    window_ends_W = np.asarray(window_ends)
    window_len = min(block_size, n_targets)
    positions_WxT = window_ends_W[:, None] - window_len + np.arange(window_len)
    batches = (
        (tokens_N[positions_WxT[i : i + batch_size]], tokens_N[positions_WxT[i : i + batch_size] + 1])
        for i in range(0, len(positions_WxT), batch_size)
    )
    logprobs_WxT = np.concatenate(_logprobs_by_batch(graphdef, params, batches, batch_size))
    new_targets_W = np.diff(window_ends_W, prepend=0)
    return np.concatenate([row[window_len - new :] for row, new in zip(logprobs_WxT, new_targets_W)])


def continuation_logprobs(
    graphdef, params, requests: Sequence[tuple[Sequence[int], Sequence[int]]], block_size: int, *, batch_size: int = 32
) -> list[np.ndarray]:
    """For each (context tokens, continuation tokens), the log-probabilities of the continuation's tokens.

    A context too long for the model loses its oldest tokens. Rows are padded at the end to a
    power-of-two length, so a few shapes compile however the lengths vary.
    """
    rows = []
    for context, continuation in requests:
        if not context or not continuation:
            raise ValueError("every request needs at least one context token and one continuation token.")
        if len(continuation) > block_size:
            raise ValueError(
                f"a continuation of {len(continuation)} tokens does not fit the model's context of {block_size} tokens."
            )
        rows.append(np.asarray([*context, *continuation], np.int32)[-(block_size + 1) :])
    batches = (_padded_batch(rows[start : start + batch_size], block_size) for start in range(0, len(rows), batch_size))
    logprobs = [row for batch in _logprobs_by_batch(graphdef, params, batches, batch_size) for row in batch]
    return [
        row_logprobs[len(row) - 1 - len(continuation) : len(row) - 1]
        for row_logprobs, row, (_, continuation) in zip(logprobs, rows, requests)
    ]


def _padded_batch(rows: list[np.ndarray], block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of token rows, padded at the end to a power-of-two length."""
    length = min(block_size, 1 << (max(len(row) for row in rows) - 2).bit_length())
    inputs_BxT = np.zeros((len(rows), length), np.int32)
    targets_BxT = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        inputs_BxT[i, : len(row) - 1] = row[:-1]
        targets_BxT[i, : len(row) - 1] = row[1:]
    return inputs_BxT, targets_BxT


def hellaswag_prediction(ending_logprobs: Sequence[np.ndarray]) -> tuple[int, int]:
    """(acc's pick, acc_norm's pick): the ending with the lowest summed loss, and with the lowest mean loss."""
    summed = [-float(np.sum(logprobs)) for logprobs in ending_logprobs]
    mean = [-float(np.mean(logprobs)) for logprobs in ending_logprobs]
    return int(np.argmin(summed)), int(np.argmin(mean))


def hellaswag_scores(graphdef, params, examples: Iterable[dict], block_size: int, *, batch_size: int = 32) -> dict:
    """acc, acc_norm and n over examples with a ``context``, its ``endings`` and the right one's ``label``."""
    from gpt2jax.data.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()
    examples = list(examples)
    if not examples:
        raise ValueError("there are no HellaSwag examples to score.")
    requests, owners = [], []
    for index, example in enumerate(examples):
        context_tokens = tokenizer.encode(example["context"])
        for ending in example["endings"]:
            requests.append((context_tokens, tokenizer.encode(" " + ending)))
            owners.append(index)
    logprobs = continuation_logprobs(graphdef, params, requests, block_size, batch_size=batch_size)
    per_example = [[] for _ in examples]
    for index, ending_logprobs in zip(owners, logprobs):
        per_example[index].append(ending_logprobs)
    correct = np.zeros(2)
    for example, ending_logprobs in zip(examples, per_example):
        correct += np.equal(hellaswag_prediction(ending_logprobs), example["label"])
    return {"acc": float(correct[0]) / len(examples), "acc_norm": float(correct[1]) / len(examples), "n": len(examples)}


def hellaswag_examples(
    split: str = "validation", *, data_dir: str | None = None, limit: int | None = None
) -> list[dict]:
    """HellaSwag examples as dicts of context (str), endings (list of str) and label (int), read from TFDS."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be at least 1.")
    import tensorflow_datasets as tfds

    # Without TensorFlow, TFDS registers the HellaSwag builder only once its module is imported.
    import tensorflow_datasets.text.hellaswag  # noqa: F401

    builder = tfds.builder("hellaswag", data_dir=data_dir)
    try:
        records = builder.as_data_source(split=split)
    except (NotImplementedError, ValueError, AssertionError, FileNotFoundError):
        raise FileNotFoundError(
            f"HellaSwag is not prepared as ArrayRecord under {builder.data_dir_root}; building it needs "
            f"TensorFlow (`pip install tensorflow`), then `tfds build hellaswag --file_format=array_record "
            f"--data_dir={builder.data_dir_root}`, "
            "or pass --tfds_data_dir where it is."
        ) from None
    count = len(records) if limit is None else min(limit, len(records))
    return [
        {
            "context": _text(record["context"]),
            "endings": [_text(ending) for ending in record["endings"]],
            "label": int(record["label"]),
        }
        for record in (records[i] for i in range(count))
    ]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# Whole evaluations, as the evaluate command runs them.


def evaluate_checkpoint(workdir: str | Path, step: int | None = None, batches: int | None = None) -> dict:
    """Validation loss of a run's checkpoint on the data and windows the run evaluated on."""
    from gpt2jax.inference import weights

    loaded = weights.restore_checkpoint(workdir, step)
    return {"step": loaded.step, **_validation_loss(loaded, loaded.run_config, batches)}


def evaluate_hf_on_config(directory: str | Path, config, batches: int | None = None) -> dict:
    """Validation loss of Hugging Face weights on a config's data; the config's model must match them."""
    from gpt2jax.inference import weights
    from gpt2jax.model import GPTConfig

    loaded = weights.load_hf_weights(directory, GPTConfig.from_config(config.model))
    return _validation_loss(loaded, config, batches)


def _perplexity(loss: float) -> float:
    """exp(loss), infinite past float64's range (a diverged model's loss of 5e12 would overflow)."""
    return math.exp(loss) if loss < math.log(sys.float_info.max) else math.inf


def _validation_loss(loaded, config, batches: int | None) -> dict:
    """Over the run's val windows, at the training micro-batch rounded up to the mesh's devices."""
    from gpt2jax.data import loader
    from gpt2jax.training import validation

    data = loader.prepared_data(config)
    batches = config.train.eval_batches if batches is None else batches
    micro_batch = config.train.batch_size // config.train.grad_accum_steps
    batch_size = -(-micro_batch // loaded.mesh.size) * loaded.mesh.size
    block_size = loaded.model_config.block_size
    eval_step = validation.compile_eval_step(loaded.graphdef, loaded.mesh, loaded.param_shardings)
    loss = validation.validation_loss(
        eval_step,
        loaded.mesh,
        loaded.params,
        data.val,
        batch_size=batch_size,
        block_size=block_size,
        num_batches=batches,
    )
    return {"val_loss": loss, "val_perplexity": _perplexity(loss), "val_tokens": batches * batch_size * block_size}


def evaluate_text(
    loaded, path: str, *, stride: int | None = None, batch_size: int = 8, logprobs_out: str | None = None
) -> dict:
    """Mean loss and perplexity of a text file's tokens; optionally writes their log-probabilities."""
    from gpt2jax.data.tokenizer import get_tokenizer

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--text={path} does not exist.") from None
    except UnicodeDecodeError:
        raise ValueError(f"--text={path} is not UTF-8 text.") from None
    tokens = get_tokenizer().encode(text, allowed_special={"<|endoftext|>"})
    logprobs = token_logprobs(
        loaded.graphdef, loaded.params, tokens, loaded.model_config.block_size, stride=stride, batch_size=batch_size
    )
    if logprobs_out:
        np.save(logprobs_out, logprobs)
    loss = -float(np.mean(logprobs, dtype=np.float64))
    return {"tokens": len(tokens), "scored_tokens": len(logprobs), "loss": loss, "perplexity": _perplexity(loss)}


def evaluate_hellaswag(loaded, *, limit: int | None = None, data_dir: str | None = None, batch_size: int = 8) -> dict:
    examples = hellaswag_examples(data_dir=data_dir, limit=limit)
    return {
        "task": "hellaswag",
        **hellaswag_scores(
            loaded.graphdef, loaded.params, examples, loaded.model_config.block_size, batch_size=batch_size
        ),
    }
