"""Autoregressive generation: a KV cache while the sequence fits the context, then a sliding window.

The prompt fills the cache in one pass and each new token costs one position, up to the
model's ``block_size``. Past it, each further token is predicted from the last
``block_size`` tokens, as nanoGPT does: positions are absolute, so the cached keys of a
window that slid are stale and the window is recomputed whole. Any ``max_new_tokens``
works on any model. ``generate_padded`` decodes prompts of different lengths, padded at the
end, as one batch (lm-eval's ``generate_until``): each row runs at its own positions.

A model trained on GPT-2 BPE text reads and writes text; one trained on a compact
vocabulary (a synthetic source's bare ids, whose meta.json tokenizer is not gpt2) reads
and writes its token ids, since decoding them as GPT-2 text would print garbage.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from gpt2jax.data.tokenizer import EOT_TOKEN_ID, GPT2_VOCAB_SIZE


def _pick(logits_BxV, key, temperature: float, top_k: int):
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1)
    logits_BxV = logits_BxV / temperature
    if top_k:
        kth_largest_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_largest_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(key, logits_BxV, axis=-1)


_STATIC_ARGS = ("graphdef", "max_new_tokens", "temperature", "top_k")


@functools.partial(jax.jit, static_argnames=_STATIC_ARGS)
def generate(graphdef, params, prompt_BxP, key, *, max_new_tokens: int, temperature: float, top_k: int):
    """The prompt followed by ``max_new_tokens`` sampled tokens, [B, P + max_new_tokens].

    A prompt longer than the context conditions on its last ``block_size`` tokens.
    """
    model = nnx.merge(graphdef, params)
    context_BxC = prompt_BxP[:, -model.config.block_size :]
    lengths_B = jnp.full(context_BxC.shape[0], context_BxC.shape[1])
    new_BxN = _new_tokens(model, context_BxC, lengths_B, key, max_new_tokens, temperature, top_k)
    return jnp.concatenate([prompt_BxP, new_BxN], axis=1)


@functools.partial(jax.jit, static_argnames=_STATIC_ARGS)
def generate_padded(
    graphdef, params, prompts_BxP, lengths_B, key, *, max_new_tokens: int, temperature: float, top_k: int
):
    """``max_new_tokens`` sampled tokens after each row's first ``lengths_B`` tokens, [B, max_new_tokens].

    Prompts of different lengths decode as one batch, padded at the end to P (at most
    ``block_size``), so padding them to a few lengths compiles a few shapes. Each row gets the
    tokens ``generate`` gives its unpadded prompt.
    """
    model = nnx.merge(graphdef, params)
    return _new_tokens(model, prompts_BxP, lengths_B, key, max_new_tokens, temperature, top_k)


def _new_tokens(model, prompts_BxP, lengths_B, key, max_new_tokens: int, temperature: float, top_k: int):
    """The tokens sampled after each row's first ``lengths_B`` tokens (P at most block_size), [B, N].

    Each row decodes at its own positions, its first new token at lengths_B. The padding after
    a prompt fills the cache too, but at positions past the row's own, which causal attention
    does not read before the row's new tokens overwrite them.
    """
    block = model.config.block_size
    batch, prompt_len = prompts_BxP.shape
    # The cache serves every token predicted from at most block_size positions: up to the one
    # at position block_size, the first past the context, for a prompt as long as the padding.
    cached = min(max_new_tokens, block - prompt_len + 1)
    keys = jax.random.split(key, max_new_tokens)

    cache = model.init_cache(batch, prompt_len + cached - 1)
    logits_BxPxV, cache = model.decode(prompts_BxP, cache, 0)
    first_B = _pick(_at_rows(logits_BxPxV, lengths_B - 1), keys[0], temperature, top_k)

    def cached_step(carry, inputs):
        token_B, cache = carry
        offset, step_key = inputs
        logits_Bx1xV, cache = _decode_rows(model, token_B[:, None], cache, lengths_B + offset)
        next_B = _pick(logits_Bx1xV[:, 0], step_key, temperature, top_k)
        return (next_B, cache), token_B

    (last_B, _), tokens_NxB = jax.lax.scan(cached_step, (first_B, cache), (jnp.arange(cached - 1), keys[1:cached]))
    new_BxN = jnp.concatenate([tokens_NxB.T, last_B[:, None]], axis=1).astype(prompts_BxP.dtype)
    if max_new_tokens > cached:
        slid_BxN = _slid_tokens(model, prompts_BxP, lengths_B, new_BxN, keys[cached:], temperature, top_k)
        new_BxN = jnp.concatenate([new_BxN, slid_BxN], axis=1)
    return new_BxN


def _slid_tokens(model, prompts_BxP, lengths_B, cached_BxN, keys, temperature: float, top_k: int):
    """The tokens after the cached ones, each predicted from its row's last block_size tokens, [B, len(keys)].

    Positions are absolute, so the cached keys of a window that slid are stale and the window
    is recomputed whole. A row whose prompt was shorter than the padding may still fit the
    context: its window starts at its first token and is read at its own last position.
    """
    block = model.config.block_size
    batch, prompt_len = prompts_BxP.shape
    # Every row's tokens so far, at their own positions: a row's new tokens overwrite its padding.
    tokens_BxS = jnp.zeros((batch, prompt_len + cached_BxN.shape[1] + len(keys)), prompts_BxP.dtype)
    tokens_BxS = _write_rows(tokens_BxS.at[:, :prompt_len].set(prompts_BxP), cached_BxN, lengths_B)

    # The whole window's logits are computed (XLA does not sink the slice to the last
    # position: 855 MFLOP a token on configs/tiny.py, 96% of it the output layer).
    def sliding_step(carry, step_key):
        tokens_BxS, ends_B = carry  # ends_B: each row's length so far
        starts_B = jnp.maximum(ends_B - block, 0)
        window_BxT = jax.vmap(lambda row, start: jax.lax.dynamic_slice(row, (start,), (block,)))(tokens_BxS, starts_B)
        logits_BxTxV = model(window_BxT)
        next_B = _pick(_at_rows(logits_BxTxV, ends_B - starts_B - 1), step_key, temperature, top_k)
        next_B = next_B.astype(tokens_BxS.dtype)
        return (_write_rows(tokens_BxS, next_B[:, None], ends_B), ends_B + 1), next_B

    _, slid_NxB = jax.lax.scan(sliding_step, (tokens_BxS, lengths_B + cached_BxN.shape[1]), keys)
    return slid_NxB.T


def _decode_rows(model, tokens_BxT, cache, starts_B):
    """``model.decode`` with a start position per row (the model's takes one for the whole batch)."""

    def decode_row(tokens_T, cache_row, start):
        logits_1xTxV, cache_row = model.decode(tokens_T[None], jax.tree.map(lambda x: x[:, None], cache_row), start)
        return logits_1xTxV[0], jax.tree.map(lambda x: x[:, 0], cache_row)

    # The cache's batch axis follows its layer axis.
    return jax.vmap(decode_row, in_axes=(0, 1, 0), out_axes=(0, 1))(tokens_BxT, cache, starts_B)


def _at_rows(x_BxTx, index_B):
    """Row b's entry at position index_B[b]."""
    return x_BxTx[jnp.arange(x_BxTx.shape[0]), index_B]


def _write_rows(tokens_BxS, values_BxK, starts_B):
    """Row b's values written from position starts_B[b] on."""
    return jax.vmap(lambda row, values, start: jax.lax.dynamic_update_slice(row, values, (start,)))(
        tokens_BxS, values_BxK, starts_B
    )


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """How a model's token ids are read and written: GPT-2 BPE text, or bare ids (``text=False``)."""

    tokenizer: str  # "gpt2", or what the data's meta.json says its ids are
    size: int
    eot_token_id: int | None

    @property
    def text(self) -> bool:
        return self.tokenizer == "gpt2"

    @property
    def default_prompt(self) -> str:
        """A newline for text; the <|endoftext|> id, where a document starts, for ids."""
        return "\n" if self.text or self.eot_token_id is None else str(self.eot_token_id)

    def encode(self, prompt: str) -> list[int]:
        if self.text:
            from gpt2jax.data.tokenizer import get_tokenizer

            return get_tokenizer().encode(prompt, allowed_special={"<|endoftext|>"})
        try:
            ids = [int(word) for word in prompt.split()]
        except ValueError:
            ids = None
        if ids is None or any(not 0 <= token < self.size for token in ids):
            example = self.eot_token_id if self.eot_token_id is not None else 0
            raise ValueError(
                f"this model reads token ids, not text (its data's tokenizer is {self.tokenizer!r}): give --prompt "
                f"as ids between 0 and {self.size - 1} separated by spaces, e.g. --prompt '{example}'."
            )
        return ids

    def render(self, prompt: str, ids: list[int]) -> str:
        """``prompt`` followed by the generated ``ids``: text as text, ids as space-separated numbers."""
        if self.text:
            from gpt2jax.data.tokenizer import get_tokenizer

            return prompt + get_tokenizer().decode(ids)
        return " ".join([*prompt.split(), *map(str, ids)])


GPT2_VOCABULARY = Vocabulary("gpt2", GPT2_VOCAB_SIZE, EOT_TOKEN_ID)


def vocabulary_of(model_config, data_meta: dict | None) -> Vocabulary:
    """The vocabulary a checkpoint's data used: its meta.json's tokenizer, else GPT-2's unless the model is smaller."""
    if data_meta is not None:
        return Vocabulary(data_meta.get("tokenizer", "gpt2"), data_meta["vocab_size"], data_meta.get("eot_token_id"))
    if model_config.vocab_size < GPT2_VOCAB_SIZE:  # too few rows for GPT-2's ids: it was trained on others
        return Vocabulary("unknown (fewer ids than GPT-2's)", model_config.vocab_size, None)
    return GPT2_VOCABULARY


def sample_text(
    graphdef,
    params,
    prompt: str,
    *,
    vocabulary: Vocabulary = GPT2_VOCABULARY,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int = 200,
    seed: int = 0,
    num_samples: int = 1,
) -> list[str]:
    """``num_samples`` samples, each ``prompt`` followed by its continuation, rendered in ``vocabulary``."""
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens={max_new_tokens} must be at least 1.")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature={temperature} must be 0 (always the most likely token) or more.")
    if top_k < 0:
        raise ValueError(f"--top_k={top_k} must be 0 (every token) or more.")
    if num_samples < 1:
        raise ValueError(f"--num_samples={num_samples} must be at least 1.")
    prompt_tokens = vocabulary.encode(prompt)
    if not prompt_tokens:
        raise ValueError("the prompt is empty; pass some text with --prompt.")
    prompt_BxP = jnp.asarray([prompt_tokens] * num_samples, jnp.int32)
    tokens = generate(
        graphdef,
        params,
        prompt_BxP,
        jax.random.key(seed),
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=min(int(top_k), vocabulary.size),
    )
    return [vocabulary.render(prompt, row[len(prompt_tokens) :].tolist()) for row in jax.device_get(tokens)]
