"""Autoregressive generation with a KV cache: the prompt fills the cache in one pass."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _pick(logits_BxV, key, temperature: float, top_k: int):
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1)
    logits_BxV = logits_BxV / temperature
    if top_k:
        kth_largest_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_largest_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(key, logits_BxV, axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k"))
def generate(graphdef, params, prompt_BxP, key, *, max_new_tokens: int, temperature: float, top_k: int):
    """The prompt followed by ``max_new_tokens`` sampled tokens, [B, P + max_new_tokens].

    The prompt fills the cache in one pass; each new token then costs one position.
    """
    model = nnx.merge(graphdef, params)
    batch, prompt_len = prompt_BxP.shape
    cache = model.init_cache(batch, prompt_len + max_new_tokens)
    logits_BxPxV, cache = model.decode(prompt_BxP, cache, 0)
    keys = jax.random.split(key, max_new_tokens)
    first_B = _pick(logits_BxPxV[:, -1], keys[0], temperature, top_k)

    def step(carry, inputs):
        token_B, cache = carry
        position, step_key = inputs
        logits_Bx1xV, cache = model.decode(token_B[:, None], cache, position)
        next_B = _pick(logits_Bx1xV[:, 0], step_key, temperature, top_k)
        return (next_B, cache), token_B

    positions = prompt_len + jnp.arange(max_new_tokens - 1)
    (last_B, _), tokens_NxB = jax.lax.scan(step, (first_B, cache), (positions, keys[1:]))
    new_BxN = jnp.concatenate([tokens_NxB.T, last_B[:, None]], axis=1)
    return jnp.concatenate([prompt_BxP, new_BxN.astype(prompt_BxP.dtype)], axis=1)


def sample_text(
    graphdef,
    params,
    block_size: int,
    prompt: str,
    *,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int = 200,
    seed: int = 0,
    num_samples: int = 1,
) -> list[str]:
    """Continuations of ``prompt``, decoded with the GPT-2 tokenizer."""
    from gpt2jax.data.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()
    prompt_tokens = tokenizer.encode(prompt, allowed_special={"<|endoftext|>"})
    if not prompt_tokens:
        raise ValueError("the prompt is empty; pass some text with --prompt.")
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens={max_new_tokens} must be at least 1.")
    if len(prompt_tokens) + max_new_tokens > block_size:
        raise ValueError(
            f"the prompt ({len(prompt_tokens)} tokens) plus --max_new_tokens={max_new_tokens} exceeds "
            f"the model's context of {block_size} tokens; shorten one of them."
        )
    prompt_BxP = jnp.asarray([prompt_tokens] * num_samples, jnp.int32)
    tokens = generate(
        graphdef,
        params,
        prompt_BxP,
        jax.random.key(seed),
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
    )
    return [tokenizer.decode(row[len(prompt_tokens) :].tolist()) for row in jax.device_get(tokens)]
