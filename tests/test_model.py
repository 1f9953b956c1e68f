import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpt2jax import flops
from gpt2jax.model import GPT, PRESETS, GPTConfig, attention, count_model_params, cross_entropy

TINY = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=300, vocab_multiple=64)

PUBLISHED_PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_match_openai(name):
    config = GPTConfig(**PRESETS[name], vocab_size=50257, vocab_multiple=1)
    assert count_model_params(config) == PUBLISHED_PARAMS[name]
    assert (
        flops.count_params(flops.Shape(config.n_layer, config.n_head, config.n_embd, 50257, 1024))["n_params"]
        == PUBLISHED_PARAMS[name]
    )


def test_vocabulary_padded_to_50304_by_default():
    config = GPTConfig(**PRESETS["gpt2"])
    assert config.padded_vocab_size == 50304
    assert count_model_params(config) == PUBLISHED_PARAMS["gpt2"] + (50304 - 50257) * 768


def _tokens(key, config, batch=2, length=None):
    length = config.block_size if length is None else length
    return jax.random.randint(jax.random.key(key), (batch, length), 0, config.vocab_size)


def test_padding_rows_get_no_probability():
    model = GPT(TINY, rngs=nnx.Rngs(0))
    tokens = _tokens(1, TINY)
    logits = model(tokens)
    assert logits.shape[-1] == 320
    probs = jax.nn.softmax(logits, axis=-1)
    assert float(probs[..., TINY.vocab_size :].max()) == 0.0
    # The loss equals the loss of a model that has only the real rows.
    real = jax.nn.log_softmax(logits[..., : TINY.vocab_size], axis=-1)
    expected = -jnp.take_along_axis(real, tokens[..., None], axis=-1).mean()
    np.testing.assert_allclose(cross_entropy(logits, tokens), expected, rtol=1e-6)


def _reference_logits(params, tokens, config):
    """GPT-2's forward pass written out in float64 numpy, independently of the module."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(params))

    def layer_norm(x, ln):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * ln["scale"] + ln["bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    t = tokens.shape[1]
    x = p["wte"][tokens] + p["wpe"][:t]
    causal = np.tril(np.ones((t, t), bool))
    for i in range(config.n_layer):
        block = jax.tree.map(lambda stacked: stacked[i], p["h"])
        h = layer_norm(x, block["ln_1"])
        qkv = np.einsum("btd,dchk->btchk", h, block["attn"]["qkv_kernel"]) + block["attn"]["qkv_bias"]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(config.head_size)
        scores = np.where(causal, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out = np.einsum("bhqs,bshk->bqhk", weights, v)
        x = x + np.einsum("bthk,hkd->btd", out, block["attn"]["out_kernel"]) + block["attn"]["out_bias"]
        h = layer_norm(x, block["ln_2"])
        h = gelu(h @ block["mlp"]["fc_kernel"] + block["mlp"]["fc_bias"])
        x = x + h @ block["mlp"]["proj_kernel"] + block["mlp"]["proj_bias"]
    return layer_norm(x, p["ln_f"]) @ p["wte"][: config.vocab_size].T


def test_forward_matches_numpy_reference():
    model = GPT(TINY, rngs=nnx.Rngs(0))
    params = nnx.state(model)
    # Perturb biases and LayerNorms away from their zero/one init so they are exercised.
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape), params)
    nnx.update(model, params)
    tokens = _tokens(2, TINY)
    logits = np.asarray(model(tokens))[..., : TINY.vocab_size]
    np.testing.assert_allclose(logits, _reference_logits(params, np.asarray(tokens), TINY), atol=2e-4, rtol=1e-4)


def test_attention_matches_jax_causal_attention_and_its_gradients():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 12, 3, 8)) for i in range(3))
    positions = jnp.arange(12)

    def ours(q, k, v):
        return attention(q, k, v, positions, positions)

    def reference(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")

    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), atol=1e-6)
    weights = jax.random.normal(jax.random.key(3), q.shape)
    ours_grads = jax.grad(lambda *qkv: jnp.sum(ours(*qkv) * weights), argnums=(0, 1, 2))(q, k, v)
    reference_grads = jax.grad(lambda *qkv: jnp.sum(reference(*qkv) * weights), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours_grads, reference_grads):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_initialisation_scales():
    config = GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=64, vocab_size=1000)
    params = nnx.to_pure_dict(nnx.state(GPT(config, rngs=nnx.Rngs(0))))
    block = jax.tree.map(lambda stacked: stacked[0], params["h"])
    assert np.std(params["wte"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(block["attn"]["qkv_kernel"]) == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * config.n_layer)
    assert np.std(block["attn"]["out_kernel"]) == pytest.approx(residual, rel=0.05)
    assert np.std(block["mlp"]["proj_kernel"]) == pytest.approx(residual, rel=0.05)
    assert np.all(block["mlp"]["fc_bias"] == 0) and np.all(block["ln_1"]["scale"] == 1)
    # Each layer draws its own weights: the stacked layer axis holds n_layer different blocks.
    kernels = params["h"]["attn"]["qkv_kernel"]
    assert kernels.shape[0] == config.n_layer
    assert not np.allclose(kernels[0], kernels[1])


def test_kv_cache_decode_matches_full_forward():
    model = GPT(TINY, rngs=nnx.Rngs(0))
    tokens = _tokens(4, TINY)
    full = model(tokens)
    cache = model.init_cache(2)
    prefix, cache = model.decode(tokens[:, :9], cache, 0)
    np.testing.assert_allclose(prefix, full[:, :9], atol=1e-5)
    for position in range(9, TINY.block_size):
        logits, cache = model.decode(tokens[:, position : position + 1], cache, position)
        np.testing.assert_allclose(logits[:, 0], full[:, position], atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_close_loss():
    bf16 = dataclasses.replace(TINY, dtype="bfloat16")
    model32, model16 = GPT(TINY, rngs=nnx.Rngs(0)), GPT(bf16, rngs=nnx.Rngs(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model16)))
    tokens = _tokens(5, TINY)
    logits16 = model16(tokens)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(cross_entropy(logits16, tokens), cross_entropy(model32(tokens), tokens), rtol=1e-2)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_gradients(policy):
    tokens = _tokens(6, TINY)

    def grads(config):
        graphdef, params = nnx.split(GPT(config, rngs=nnx.Rngs(0)))
        loss = lambda p: cross_entropy(nnx.merge(graphdef, p)(tokens[:, :-1]), tokens[:, 1:])
        return jax.grad(loss)(params)

    for a, b in zip(jax.tree.leaves(grads(TINY)), jax.tree.leaves(grads(dataclasses.replace(TINY, remat=policy)))):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_dropout_is_a_function_of_its_key():
    config = dataclasses.replace(TINY, dropout=0.2)
    model = GPT(config, rngs=nnx.Rngs(0))
    tokens = _tokens(7, TINY)
    a = model(tokens, dropout_key=jax.random.key(1))
    np.testing.assert_array_equal(a, model(tokens, dropout_key=jax.random.key(1)))
    assert not np.allclose(a, model(tokens, dropout_key=jax.random.key(2)))
    # Without a key (evaluation) dropout is off.
    np.testing.assert_allclose(model(tokens), GPT(TINY, rngs=nnx.Rngs(0))(tokens), atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(n_embd=30), "divisible by model.n_head"),
        (dict(attention="flash"), "model.attention"),
        (dict(attention="cudnn"), "needs model.dtype"),
        (dict(remat="some"), "model.remat"),
    ],
)
def test_bad_model_config_is_one_sentence(bad, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **bad).validate()
