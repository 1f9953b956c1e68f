"""Log-probabilities of text under a model, validation loss, and HellaSwag, as ``evaluate`` reports them.

Text longer than the context is scored by windows of ``block_size`` tokens that advance by
``stride`` targets. The first window predicts tokens 1..block_size; each later window ends
``stride`` targets further on (or at the text's end) and keeps only the targets the previous
window did not reach. Every token after the first is scored exactly once, with at least
``block_size - stride`` tokens of context once past the first window. The default stride,
``block_size``, gives non-overlapping windows of block_size + 1 tokens that share their
boundary token; a smaller stride buys more context per token for more compute.

HellaSwag is scored by ``training.eval_tasks``, which says how.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpt2jax.training import eval_tasks


def token_logprobs(
    graphdef, params, tokens: Sequence[int], block_size: int, *, stride: int | None = None, batch_size: int = 8
) -> np.ndarray:
    """Float32 log-probability of each token after the first, [len(tokens) - 1], by windows of block_size."""
    tokens_N = np.asarray(tokens, np.int32)
    window_ends_W, window_len = _windows(len(tokens_N), block_size, stride)
    positions_WxT = window_ends_W[:, None] - window_len + np.arange(window_len)
    batches = (
        (tokens_N[positions_WxT[i : i + batch_size]], tokens_N[positions_WxT[i : i + batch_size] + 1])
        for i in range(0, len(positions_WxT), batch_size)
    )
    logprobs_WxT = np.concatenate(
        [logprobs for logprobs, _ in eval_tasks.logprobs_by_batch(graphdef, params, batches, batch_size)]
    )
    new_targets_W = np.diff(window_ends_W, prepend=0)
    return np.concatenate([row[window_len - new :] for row, new in zip(logprobs_WxT, new_targets_W)])


def rolling_windows(
    tokens: Sequence[int], block_size: int, *, stride: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """token_logprobs's windows as (context, continuation) requests of ``eval_tasks.continuation_scores``.

    Each continuation is the targets its window scores first; their log-probabilities, in order,
    are token_logprobs's. As requests, the windows of many texts share padded batches, so
    scoring many texts compiles a few lengths instead of one per text.
    """
    tokens_N = np.asarray(tokens, np.int32)
    window_ends_W, window_len = _windows(len(tokens_N), block_size, stride)
    starts_W = window_ends_W - window_len  # each window's first input token
    firsts_W = window_ends_W + 1 - np.diff(window_ends_W, prepend=0)  # its first new target
    return [
        (tokens_N[start:first].tolist(), tokens_N[first : end + 1].tolist())
        for start, first, end in zip(starts_W, firsts_W, window_ends_W)
    ]


def _windows(n_tokens: int, block_size: int, stride: int | None) -> tuple[np.ndarray, int]:
    """(the index of each window's last target, the windows' length in inputs), as the module says."""
    n_targets = n_tokens - 1
    if n_targets < 1:
        raise ValueError("the text has fewer than two tokens, so there is nothing to predict.")
    stride = block_size if stride is None else stride
    if not 0 < stride <= block_size:
        raise ValueError(f"stride={stride} must be between 1 and the model's context of {block_size} tokens.")
    window_ends = [min(block_size, n_targets)]
    while window_ends[-1] < n_targets:
        window_ends.append(min(window_ends[-1] + stride, n_targets))
    return np.asarray(window_ends), min(block_size, n_targets)


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


def _perplexity(loss: float) -> float | None:
    """exp(loss); None (JSON's null) past float64's range, where a diverged model's loss of 5e12 puts it:
    JSON has no Infinity."""
    return math.exp(loss) if loss < math.log(sys.float_info.max) else None


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


def evaluate_hellaswag(loaded, examples: list[dict], source: str, *, batch_size: int = 8) -> dict:
    """HellaSwag examples read from ``source`` (``data.hellaswag.read_examples``), scored and counted."""
    scores = eval_tasks.hellaswag_scores(
        loaded.graphdef, loaded.params, examples, loaded.model_config.block_size, batch_size=batch_size
    )
    return {"task": "hellaswag", "data": source, **scores, "interval": "Wilson 95%"}
