import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpt2jax import flops
from gpt2jax.model import (
    GPT,
    PRESETS,
    REMAT_POLICIES,
    GPTConfig,
    abstract_model,
    attention,
    attention_implementation,
    chunked_cross_entropy,
    count_model_params,
    cross_entropy,
    scans_layers,
)

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


@functools.cache
def _tiny_params():
    """TINY's initial parameters, made once: every variant of TINY below (dtype, remat, chunking) shares their shapes."""
    return nnx.split(GPT(TINY, rngs=nnx.Rngs(0)))[1]


def _split(config):
    """(graphdef, parameters) of a variant of TINY, without initialising it again."""
    return abstract_model(config)[0], _tiny_params()


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


def test_a_model_given_bfloat16_weights_differentiates_to_bfloat16_gradients():
    """train.offload=master trains on compute-dtype copies of the weights; the chunked head returned a
    float32 cotangent for the bf16 wte, which JAX refused to add to the embedding's (any bf16 run)."""
    bf16 = dataclasses.replace(TINY, dtype="bfloat16")
    graphdef, params = nnx.split(GPT(bf16, rngs=nnx.Rngs(0)), nnx.Param)
    weights = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    tokens = _tokens(2, TINY)
    grads = jax.grad(lambda w: nnx.merge(graphdef, w).loss(tokens, tokens))(weights)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("policy", sorted(set(REMAT_POLICIES) - {"none"}))
def test_remat_gives_the_same_gradients(policy):
    tokens = _tokens(6, TINY)

    def grads(config):
        graphdef, params = _split(config)
        loss = lambda p: nnx.merge(graphdef, p).loss(tokens[:, :-1], tokens[:, 1:])
        return jax.jit(jax.grad(loss))(params)

    for a, b in zip(jax.tree.leaves(grads(TINY)), jax.tree.leaves(grads(dataclasses.replace(TINY, remat=policy)))):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _saved_for_backward(config, tokens):
    """Bytes of the residuals the loss's backward pass keeps (the pullback's closure, less the parameters)."""
    from jax.extend.core import Var

    graphdef, params = _split(config)
    pullback = lambda p: jax.vjp(lambda p: nnx.merge(graphdef, p).loss(tokens, tokens), p)[1]
    jaxpr = jax.make_jaxpr(pullback)(params).jaxpr
    return sum(
        math.prod(v.aval.shape) * v.aval.dtype.itemsize
        for v in jaxpr.outvars
        if isinstance(v, Var) and v not in set(jaxpr.invars)
    )


def test_remat_policies_keep_the_named_tensors_and_nothing_else():
    config = dataclasses.replace(TINY, dtype="bfloat16")
    tokens = _tokens(6, config)
    saved = {
        policy: _saved_for_backward(dataclasses.replace(config, remat=policy), tokens) for policy in REMAT_POLICIES
    }
    batch, seq_len = tokens.shape
    per_layer = config.n_layer * batch * seq_len * 2  # bf16 elements of one B x T x . array per layer
    # "attention" keeps, beyond what "full" keeps, each layer's attention output (B x T x H x K);
    # "attention_mlp" also its fc output before GELU (B x T x 4D).
    assert saved["attention"] - saved["full"] == per_layer * config.n_embd
    assert saved["attention_mlp"] - saved["attention"] == per_layer * 4 * config.n_embd
    # "dots" keeps every weight matmul's output as well; no remat keeps everything.
    assert saved["attention_mlp"] < saved["dots"] < saved["none"]


def test_cudnn_attention_forward_is_saved_by_the_attention_keeping_policies():
    """cuDNN's backward reads its forward's output and softmax statistics: keeping them stops a rerun of the fused forward."""
    from jax._src.cudnn.fused_attention_stablehlo import _dot_product_attention_fwd_p_wrapper as cudnn_forward

    keeps = {policy: bool(REMAT_POLICIES[policy](cudnn_forward)) for policy in REMAT_POLICIES if policy != "none"}
    assert keeps == {"full": False, "dots": True, "attention": True, "attention_mlp": True}


def test_auto_attention_is_the_einsum_attention_on_a_cpu():
    assert attention_implementation(dataclasses.replace(TINY, attention="auto")) == "xla"
    assert attention_implementation(dataclasses.replace(TINY, attention="cudnn", dtype="bfloat16")) == "cudnn"


def test_auto_layers_are_unrolled_on_a_gpu_and_scanned_on_a_cpu():
    auto = dataclasses.replace(TINY, scan_layers="auto")
    assert scans_layers(auto, "gpu") is False
    assert scans_layers(auto, "cpu") is True
    assert scans_layers(auto) is True  # the tests' platform: a CPU
    assert GPTConfig().scan_layers == "auto"
    # True and False are kept on every platform, also as the command line writes them.
    for given, scanned in ((True, True), (False, False), ("false", False), ("True", True)):
        config = GPTConfig.from_config(dataclasses.asdict(TINY) | {"scan_layers": given})
        assert scans_layers(config, "gpu") is scanned and scans_layers(config, "cpu") is scanned


def test_auto_layers_trace_the_scan_on_a_cpu_and_the_unrolled_loop_on_a_gpu(monkeypatch):
    graphdef, params = _split(dataclasses.replace(TINY, scan_layers="auto"))
    tokens = _tokens(3, TINY)

    def scans(platform):
        monkeypatch.setattr(jax, "default_backend", lambda: platform)
        jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p).loss(tokens, tokens))(params)
        return any(eqn.primitive.name == "scan" and eqn.params["length"] == TINY.n_layer for eqn in jaxpr.eqns)

    assert scans("cpu") and not scans("gpu")


def test_unrolled_layers_match_the_scan_and_keep_the_stacked_parameters():
    unrolled = dataclasses.replace(TINY, scan_layers=False, remat="dots")
    graphdef, params = _split(TINY)
    unrolled_graphdef, unrolled_params = abstract_model(unrolled)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, unrolled_params)
    tokens = _tokens(8, TINY)

    def loss_and_grads(graphdef):
        return jax.jit(jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(tokens[:, :-1], tokens[:, 1:])))(params)

    (loss, grads), (unrolled_loss, unrolled_grads) = loss_and_grads(graphdef), loss_and_grads(unrolled_graphdef)
    np.testing.assert_allclose(unrolled_loss, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(unrolled_grads)):
        np.testing.assert_allclose(a, b, atol=1e-6)

    # Decoding with the cache runs through the unrolled loop too.
    def decode(p):
        model = nnx.merge(unrolled_graphdef, p)
        return model.decode(tokens[:, :5], model.init_cache(2), 0)

    logits, cache = jax.jit(decode)(params)
    np.testing.assert_allclose(logits, jax.jit(lambda p: nnx.merge(graphdef, p)(tokens))(params)[:, :5], atol=1e-5)
    assert cache.k_BxSxHxK.shape == (TINY.n_layer, 2, TINY.block_size, TINY.n_head, TINY.head_size)


# The chunked loss against the full float32 logits' cross-entropy (the model's own dtype in its
# matmuls, float32 logits): (dtype, positions per chunk, loss tolerance, gradient tolerance). A
# float32 model matches to float32 rounding. A bf16 model's chunked head keeps its logits in bf16
# (the log-sum-exp and loss in float32): measured 1.3e-5 relative on the loss and 1.2% of the
# largest gradient (the gradient of the logits is bf16 before the backward matmuls, as it was
# with float32 logits), so 1e-4 and 2e-2.
CHUNKINGS = [
    ("float32", 16, 1e-6, 2e-6),  # one chunk: the whole sequence
    ("float32", 4, 1e-6, 2e-6),  # chunks that divide the sequence
    ("float32", 5, 1e-6, 2e-6),  # a last chunk padded with positions that count for nothing
    ("bfloat16", 4, 1e-4, 2e-2),  # bf16 logits around float32 softmax statistics
    ("bfloat16", 16, 1e-4, 2e-2),
]


@pytest.mark.parametrize("dtype, chunk, tolerance, grad_tolerance", CHUNKINGS)
def test_chunked_loss_matches_the_full_logits_cross_entropy_and_its_gradients(dtype, chunk, tolerance, grad_tolerance):
    config = dataclasses.replace(TINY, dtype=dtype, loss_chunk=chunk)
    graphdef, params = _split(config)
    # Perturbed away from the init, so that the logits spread and the gradients are not tiny.
    params = jax.jit(lambda p: jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(9), x.shape), p))(
        params
    )
    tokens, targets = _tokens(10, TINY), _tokens(11, TINY)
    full = lambda p: cross_entropy(nnx.merge(graphdef, p)(tokens), targets)
    chunked = lambda p: nnx.merge(graphdef, p).loss(tokens, targets)
    (loss, grads), (chunked_loss, chunked_grads) = (jax.jit(jax.value_and_grad(f))(params) for f in (full, chunked))
    np.testing.assert_allclose(chunked_loss, loss, rtol=tolerance)
    assert jax.tree.map(lambda g: g.dtype, chunked_grads) == jax.tree.map(lambda g: g.dtype, grads)
    for a, b in zip(jax.tree.leaves(jax.device_get(chunked_grads)), jax.tree.leaves(jax.device_get(grads))):
        scale = float(np.abs(b).max()) or 1.0
        np.testing.assert_allclose(a / scale, b / scale, atol=grad_tolerance)
    # Without differentiation it is the same loss.
    np.testing.assert_allclose(jax.jit(chunked)(params), chunked_loss, rtol=1e-6)


def test_chunked_loss_gives_padding_rows_no_probability_and_scales_with_the_cotangent():
    h = jax.random.normal(jax.random.key(0), (2, 6, 8))
    wte = jax.random.normal(jax.random.key(1), (16, 8))
    targets = jax.random.randint(jax.random.key(2), (2, 6), 0, 11)
    loss = jax.jit(lambda h, w: chunked_cross_entropy(h, w, targets, 11, 4))
    logits = jnp.einsum("btd,vd->btv", h, wte[:11])
    np.testing.assert_allclose(loss(h, wte), cross_entropy(logits, targets), rtol=1e-6)
    _, pullback = jax.vjp(loss, h, wte)
    dh, dwte = pullback(jnp.float32(3.0))
    # The 5 padding rows of the vocabulary get no gradient; a cotangent of 3 triples it.
    assert float(jnp.abs(dwte[11:]).max()) == 0.0
    np.testing.assert_allclose(dh, 3 * jax.grad(loss)(h, wte), rtol=1e-6)


def test_training_loss_never_makes_a_float32_batch_x_time_x_vocab_array():
    config = dataclasses.replace(TINY, dtype="bfloat16", loss_chunk=4)
    graphdef, params = _split(config)
    tokens = _tokens(12, config)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(tokens, tokens)))(params)
    logits_elements = tokens.size * config.padded_vocab_size

    vocab, wte_shape = config.padded_vocab_size, (config.padded_vocab_size, config.n_embd)

    def float32_vocab_arrays(jaxpr):
        """Sizes of the float32 arrays with a vocabulary axis, other than the embedding and its gradient."""
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                shape = v.aval.shape
                if v.aval.dtype == jnp.float32 and vocab in shape and shape != wte_shape:
                    yield math.prod(shape)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from float32_vocab_arrays(sub)

    # The largest is one chunk's logits: B x 4 x V.
    assert max(float32_vocab_arrays(jaxpr.jaxpr)) == tokens.shape[0] * 4 * vocab < logits_elements

    def logits_matmuls(jaxpr):
        """The output dtypes of the matmuls that make a B x C x V chunk of logits."""
        for eqn in jaxpr.eqns:
            shape = eqn.outvars[0].aval.shape if eqn.outvars else ()
            if eqn.primitive.name == "dot_general" and len(shape) == 3 and shape[-1] == vocab:
                yield eqn.outvars[0].aval.dtype
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from logits_matmuls(sub)

    # The head's logits are written in the compute dtype: bf16, half the bytes of float32.
    assert set(logits_matmuls(jaxpr.jaxpr)) == {jnp.dtype(jnp.bfloat16)}


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
        (dict(loss_chunk=-1), "model.loss_chunk"),
        (dict(loss_chunk="some"), "model.loss_chunk"),
        (dict(scan_layers="sometimes"), "model.scan_layers"),
    ],
)
def test_bad_model_config_is_one_sentence(bad, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **bad).validate()


def test_a_model_key_the_model_does_not_declare_is_refused_by_name():
    model_config = dataclasses.asdict(TINY) | {"n_embed": 64}
    with pytest.raises(ValueError, match=r"^model config has unknown key\(s\) n_embed; the model's keys are "):
        GPTConfig.from_config(model_config)
    assert GPTConfig.from_config(dataclasses.asdict(TINY)) == TINY
