"""The eval tasks (``train.eval_tasks``, ``evaluate --task``): log-probabilities of continuations, and HellaSwag scored from them.

HellaSwag is scored as in build-nanogpt and llm.c: each ending is rendered as the context's
tokens followed by the tokens of ``" " + ending``, and only the ending's tokens are scored.
``acc`` picks the ending with the lowest summed loss, ``acc_norm`` the lowest mean loss per token.
Each comes with its 95% Wilson interval over the ``n`` examples scored (±0.9 points at
HellaSwag's 10,042 validation examples and acc_norm 0.3; ±2.8 points at 1,000).

``evaluate --task`` scores a checkpoint with these, and a run scores ``train.eval_tasks`` with
them as it trains (this is the training layer, which inference reads, as it reads the
validation loss). The examples are read once, before step 1, so a task whose data is missing
or malformed is refused before anything trains; they are scored each ``eval_every`` steps on
the live parameters by every process (the parameters are sharded over all of them) and logged
by process 0 into metrics.jsonl as ``TASK_acc``, ``TASK_acc_norm`` and ``TASK_n``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt2jax.data import hellaswag
from gpt2jax.model import token_logprobs as logprobs_of_targets

TASKS = ("hellaswag",)
METRICS = ("acc", "acc_norm", "n")  # each task's keys in metrics.jsonl and results.csv: TASK_METRIC
# The published figure a task's plot is drawn against: OpenAI's GPT-2 124M scored completion-style
# on HellaSwag's 10,042 validation examples, as build-nanogpt and llm.c report it.
GPT2_124M = {"hellaswag_acc_norm": 0.2955}


def task_columns() -> tuple[str, ...]:
    """Every task's metric keys: ``hellaswag_acc``, ``hellaswag_acc_norm``, ``hellaswag_n``."""
    return tuple(f"{task}_{metric}" for task in TASKS for metric in METRICS)


@functools.partial(jax.jit, static_argnames="graphdef")
def _target_logprobs(graphdef, params, inputs_BxT, targets_BxT):
    # Full float32 matmuls: on GPUs JAX's default is TF32, PyTorch's is not, and scores are
    # compared with PyTorch's.
    with jax.default_matmul_precision("highest"):
        logits_BxTxV = nnx.merge(graphdef, params)(inputs_BxT)
    return logprobs_of_targets(logits_BxTxV, targets_BxT), jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT


def logprobs_by_batch(
    graphdef, params, batches: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(log-probabilities of each batch's targets given its inputs, whether each target is the top token).

    Each batch is padded to batch_size rows.
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
    return [(logprobs_BxT[:n], top_BxT[:n]) for n, (logprobs_BxT, top_BxT) in zip(rows, jax.device_get(pending))]


def continuation_logprobs(
    graphdef, params, requests: Sequence[tuple[Sequence[int], Sequence[int]]], block_size: int, *, batch_size: int = 32
) -> list[np.ndarray]:
    """For each (context tokens, continuation tokens), the log-probabilities of the continuation's tokens."""
    scores = continuation_scores(graphdef, params, requests, block_size, batch_size=batch_size)
    return [logprobs for logprobs, _ in scores]


def continuation_scores(
    graphdef, params, requests: Sequence[tuple[Sequence[int], Sequence[int]]], block_size: int, *, batch_size: int = 32
) -> list[tuple[np.ndarray, bool]]:
    """For each (context tokens, continuation tokens), the continuation's log-probabilities and whether
    greedy decoding would produce it (every token the top one): what lm-eval's loglikelihood returns.

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
    scored = [
        pair
        for logprobs_BxT, top_BxT in logprobs_by_batch(graphdef, params, batches, batch_size)
        for pair in zip(logprobs_BxT, top_BxT)
    ]
    results = []
    for (row_logprobs, row_top), row, (_, continuation) in zip(scored, rows, requests):
        span = slice(len(row) - 1 - len(continuation), len(row) - 1)
        results.append((row_logprobs[span], bool(row_top[span].all())))
    return results


def padded_length(length: int, block_size: int) -> int:
    """The power of two at or above ``length`` (at most block_size): the few lengths that compile."""
    return min(block_size, 1 << (length - 1).bit_length())


def _padded_batch(rows: list[np.ndarray], block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of token rows, padded at the end to a power-of-two length."""
    length = padded_length(max(len(row) for row in rows) - 1, block_size)
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
    correct = np.zeros(2, int)
    for example, ending_logprobs in zip(examples, per_example):
        correct += np.equal(hellaswag_prediction(ending_logprobs), example["label"])
    n = len(examples)
    return {
        "acc": float(correct[0]) / n,
        "acc_ci95": wilson_interval(int(correct[0]), n),
        "acc_norm": float(correct[1]) / n,
        "acc_norm_ci95": wilson_interval(int(correct[1]), n),
        "n": n,
    }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """The Wilson score interval of a proportion, 95% by default.

    Unlike the normal approximation, it stays inside [0, 1] and is not empty at 0 or n
    successes, which small ``--limit`` runs and tiny models reach.
    """
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def read_tasks(config) -> dict[str, list[dict]]:
    """{task: its examples} for each of ``train.eval_tasks``, refused in one sentence if any cannot be read."""
    train = config.train
    names = [name.strip() for name in train.eval_tasks.split(",") if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ValueError(f"train.eval_tasks names {unknown[0]!r}; the tasks are {', '.join(TASKS)}.")
    limit = train.eval_limit  # a whole number, 0 for all (ranges.RUN_CONFIG_RANGES, checked by build_trainer)
    if not names:
        return {}
    if not train.hellaswag_data:
        raise ValueError(
            f"train.eval_tasks=hellaswag needs train.hellaswag_data: {hellaswag.SOURCES} (a prepared TFDS copy)."
        )
    examples = hellaswag.read_examples(
        train.hellaswag_data,
        limit=limit or None,
        hub_cache=config.data.hub_cache or Path(config.data.dir) / "hub",
        tfds_data_dir=config.data.tfds_data_dir or None,
    )
    return {"hellaswag": examples}


def score_tasks(graphdef, params, tasks: dict[str, list[dict]], block_size: int) -> dict:
    """``{TASK_acc, TASK_acc_norm, TASK_n}`` of each task's examples under ``params``."""
    record = {}
    for task, examples in tasks.items():
        scores = hellaswag_scores(graphdef, params, examples, block_size)
        record.update({f"{task}_{key}": scores[key] for key in METRICS})
    return record
