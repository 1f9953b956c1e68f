"""Generate text from a trained run, or from Hugging Face GPT-2 weights, with a KV cache.

``python -m gpt2jax.sample --workdir runs/x --prompt "Once upon a time" --max_new_tokens 100``
``python -m gpt2jax.sample --init_from hf:DIR --prompt "Once upon a time"``
"""

import functools

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from gpt2jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_INIT_FROM = flags.DEFINE_string("init_from", None, "hf:DIR: Hugging Face GPT-2 weights instead of a --workdir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).")
_PROMPT = flags.DEFINE_string("prompt", "\n", "Text to continue.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 picks the most likely token.")
_TOP_K = flags.DEFINE_integer("top_k", 200, "Sample among the k most likely tokens (0: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Independent continuations of the prompt.")


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


def sample_text(graphdef, params, block_size: int, prompt: str, *, max_new_tokens: int = 100,
                temperature: float = 0.8, top_k: int = 200, seed: int = 0, num_samples: int = 1) -> list[str]:
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
            f"the model's context of {block_size} tokens; shorten one of them.")
    prompt_BxP = jnp.asarray([prompt_tokens] * num_samples, jnp.int32)
    tokens = generate(graphdef, params, prompt_BxP, jax.random.key(seed), max_new_tokens=max_new_tokens,
                      temperature=float(temperature), top_k=int(top_k))
    return [tokenizer.decode(row[len(prompt_tokens):].tolist()) for row in jax.device_get(tokens)]


def main(argv):
    del argv
    cli.initialize_distributed()
    from gpt2jax import train

    model_config, graphdef, params = train.restore_model(_WORKDIR.value, _INIT_FROM.value, _STEP.value)
    samples = sample_text(
        graphdef, params, model_config.block_size, _PROMPT.value,
        max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
        seed=_SEED.value, num_samples=_NUM_SAMPLES.value)
    for text in samples:
        print(_PROMPT.value + text)
        print("-" * 40)


if __name__ == "__main__":
    cli.run_absl(main)
