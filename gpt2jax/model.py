"""GPT-2 as OpenAI built it, as a Flax NNX module used functionally.

Learned position embeddings, pre-LayerNorm blocks (eps 1e-5), tanh-approximated GELU,
biases everywhere, a final LayerNorm, and the output projection tied to the token
embedding. Parameters are float32; ``dtype`` sets the compute precision, with
LayerNorm statistics, softmax and logits kept in float32.

Shapes in names follow the package's legend (``gpt2jax/__init__.py``): B batch, T query
length, S key length, D width, H heads, K head size, F MLP width, V padded vocabulary,
L layers.

Parameters are laid out so that the one sharding table (``sharding.py``) can split
heads and MLP width: the qkv kernel is D x 3 x H x K and the attention output kernel
H x K x D. The blocks' parameters are stacked along a leading layer axis (L), which the
forward pass scans over. The model itself never names a device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gpt2jax import flops

PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}

REMAT_POLICIES = {
    "none": None,
    # Recompute everything in the backward pass: least memory.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep matmul outputs, recompute the cheap elementwise ops around them.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# xla: ``attention`` below; cudnn: jax.nn.dot_product_attention's cuDNN kernel (GPU, bf16/fp16);
# auto: xla, until bench/gpu.sh shows cuDNN ahead on a GPU.
_ATTENTION = ("auto", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257
    vocab_multiple: int = 64
    dropout: float = 0.0
    dtype: str = "float32"
    attention: Literal["auto", "xla", "cudnn"] = "auto"
    remat: Literal["none", "full", "dots"] = "none"

    @classmethod
    def from_config(cls, model_config) -> "GPTConfig":
        """Builds from the ``model`` part of an ml_collections config, validating it."""
        fields = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in dict(model_config).items() if k in fields})
        config.validate()
        return config

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}.")
        if self.dtype not in _DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not one of {sorted(_DTYPES)}.")
        if self.attention not in _ATTENTION:
            raise ValueError(f"model.attention={self.attention!r} is not one of {sorted(_ATTENTION)}.")
        if self.attention == "cudnn" and self.dtype == "float32":
            raise ValueError("model.attention='cudnn' needs model.dtype='bfloat16' or 'float16'.")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r} is not one of {sorted(REMAT_POLICIES)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1).")

    @property
    def padded_vocab_size(self) -> int:
        return flops.padded_vocab_size(self.vocab_size, self.vocab_multiple)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def _normal(stddev: float):
    return jax.nn.initializers.normal(stddev)


def _dropout(x, rate: float, key):
    """Inverted dropout with an explicit key, so train steps stay pure functions."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, n_embd: int, dtype):
        self.scale = nnx.Param(jnp.ones((n_embd,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((n_embd,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x_BxTxD):
        # Statistics in float32 whatever the compute dtype: bf16 variance loses digits.
        x = x_BxTxD.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


class KVCache(NamedTuple):
    """Keys and values for every position up to the cache length.

    A block reads and writes one layer's B x S x H x K arrays; the model's cache stacks
    them along a leading layer axis, as its blocks' parameters are stacked.
    """

    k_BxSxHxK: jax.Array
    v_BxSxHxK: jax.Array


def attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, query_pos_T, key_pos_S):
    """Causal softmax attention in XLA: query t sees the keys at positions up to its own.

    The heads are laid out first before the two batched matmuls, and the causal mask is
    an additive bias; on XLA:CPU that made GPT-2 small's attention forward and backward
    1.4x faster than ``jax.nn.dot_product_attention``'s XLA path, which works in the
    B x T x H x K layout and selects masked scores. Scores and softmax are float32.
    """
    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK = (x.transpose(0, 2, 1, 3) for x in (q_BxTxHxK, k_BxSxHxK, v_BxSxHxK))
    mask_bias_TxS = jnp.where(key_pos_S[None, :] <= query_pos_T[:, None], 0.0, jnp.finfo(jnp.float32).min)
    scores_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK, preferred_element_type=jnp.float32)
    scores_BxHxTxS = scores_BxHxTxS / math.sqrt(q_BxTxHxK.shape[-1]) + mask_bias_TxS
    probs_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(v_BxHxSxK.dtype)
    return jnp.einsum("bhts,bhsk->bhtk", probs_BxHxTxS, v_BxHxSxK).transpose(0, 2, 1, 3)


class Attention(nnx.Module):
    def __init__(self, config: GPTConfig, rngs: nnx.Rngs):
        d, h, k = config.n_embd, config.n_head, config.head_size
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        self.qkv_kernel = nnx.Param(_normal(0.02)(rngs.params(), (d, 3, h, k), jnp.float32))
        self.qkv_bias = nnx.Param(jnp.zeros((3, h, k), jnp.float32))
        self.out_kernel = nnx.Param(_normal(residual_std)(rngs.params(), (h, k, d), jnp.float32))
        self.out_bias = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.config = config

    def __call__(self, x_BxTxD, cache: KVCache | None = None, start=None):
        dtype = self.config.compute_dtype
        qkv_BxTx3xHxK = jnp.einsum("btd,dchk->btchk", x_BxTxD, self.qkv_kernel[...].astype(dtype))
        qkv_BxTx3xHxK = qkv_BxTx3xHxK + self.qkv_bias[...].astype(dtype)
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
        if cache is None:
            if self.config.attention == "cudnn":
                out_BxTxHxK = jax.nn.dot_product_attention(
                    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True, implementation="cudnn"
                )
            else:
                positions_T = jnp.arange(x_BxTxD.shape[1])
                out_BxTxHxK = attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, positions_T, positions_T)
        else:
            cache = KVCache(
                jax.lax.dynamic_update_slice(
                    cache.k_BxSxHxK, k_BxTxHxK.astype(cache.k_BxSxHxK.dtype), (0, start, 0, 0)
                ),
                jax.lax.dynamic_update_slice(
                    cache.v_BxSxHxK, v_BxTxHxK.astype(cache.v_BxSxHxK.dtype), (0, start, 0, 0)
                ),
            )
            # Decoding attends to a cache longer than the query, up to each query's position.
            out_BxTxHxK = attention(
                q_BxTxHxK,
                cache.k_BxSxHxK.astype(dtype),
                cache.v_BxSxHxK.astype(dtype),
                start + jnp.arange(x_BxTxD.shape[1]),
                jnp.arange(cache.k_BxSxHxK.shape[1]),
            )
        y_BxTxD = jnp.einsum("bthk,hkd->btd", out_BxTxHxK, self.out_kernel[...].astype(dtype))
        return y_BxTxD + self.out_bias[...].astype(dtype), cache


class MLP(nnx.Module):
    def __init__(self, config: GPTConfig, rngs: nnx.Rngs):
        d, f = config.n_embd, 4 * config.n_embd
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        self.fc_kernel = nnx.Param(_normal(0.02)(rngs.params(), (d, f), jnp.float32))
        self.fc_bias = nnx.Param(jnp.zeros((f,), jnp.float32))
        self.proj_kernel = nnx.Param(_normal(residual_std)(rngs.params(), (f, d), jnp.float32))
        self.proj_bias = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.dtype = config.compute_dtype

    def __call__(self, x_BxTxD):
        h_BxTxF = x_BxTxD @ self.fc_kernel[...].astype(self.dtype) + self.fc_bias[...].astype(self.dtype)
        h_BxTxF = jax.nn.gelu(h_BxTxF, approximate=True)
        return h_BxTxF @ self.proj_kernel[...].astype(self.dtype) + self.proj_bias[...].astype(self.dtype)


class Block(nnx.Module):
    def __init__(self, config: GPTConfig, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(config.n_embd, config.compute_dtype)
        self.attn = Attention(config, rngs)
        self.ln_2 = LayerNorm(config.n_embd, config.compute_dtype)
        self.mlp = MLP(config, rngs)
        self.dropout = config.dropout

    def __call__(self, x_BxTxD, dropout_key=None, cache: KVCache | None = None, start=None):
        attn_key, mlp_key = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        attn_BxTxD, cache = self.attn(self.ln_1(x_BxTxD), cache, start)
        x_BxTxD = x_BxTxD + _dropout(attn_BxTxD, self.dropout, attn_key)
        x_BxTxD = x_BxTxD + _dropout(self.mlp(self.ln_2(x_BxTxD)), self.dropout, mlp_key)
        return x_BxTxD, cache


def stacked_blocks(config: GPTConfig, rngs: nnx.Rngs) -> Block:
    """All ``n_layer`` blocks as one Block whose parameters carry a leading layer axis.

    The model runs its blocks with ``jax.lax.scan`` over that axis, so XLA compiles one
    block however deep the model: compile time stays flat in depth, and the backward pass
    keeps each layer's residual gradient in its own buffer. Unrolled, XLA:CPU fuses the
    whole chain of residual-gradient sums into every weight-gradient transpose and
    recomputes it there, which made GPT-2 small's step 1.2 to 1.4x slower on a CPU.
    """
    keys_L = jax.random.split(rngs.params(), config.n_layer)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Block(config, nnx.Rngs(0))))
    stacked_state = jax.vmap(lambda key: nnx.split(Block(config, nnx.Rngs(key)))[1])(keys_L)
    return nnx.merge(graphdef, stacked_state)


class GPT(nnx.Module):
    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        self.wte = nnx.Param(_normal(0.02)(rngs.params(), (config.padded_vocab_size, config.n_embd), jnp.float32))
        self.wpe = nnx.Param(_normal(0.02)(rngs.params(), (config.block_size, config.n_embd), jnp.float32))
        self.h = stacked_blocks(config, rngs)
        self.ln_f = LayerNorm(config.n_embd, config.compute_dtype)

    def _embed(self, tokens_BxT, positions_T, dropout_key):
        dtype = self.config.compute_dtype
        x_BxTxD = self.wte[...][tokens_BxT].astype(dtype) + self.wpe[...][positions_T].astype(dtype)
        return _dropout(x_BxTxD, self.config.dropout, dropout_key)

    def _logits(self, x_BxTxD):
        """Tied output projection; padding rows of the vocabulary get no probability."""
        dtype = self.config.compute_dtype
        logits_BxTxV = jnp.einsum(
            "btd,vd->btv", self.ln_f(x_BxTxD), self.wte[...].astype(dtype), preferred_element_type=jnp.float32
        )
        # An additive mask: unlike a select, its backward pass keeps no B x T x V mask alive.
        padding_bias_V = jnp.where(
            jnp.arange(self.config.padded_vocab_size) < self.config.vocab_size, 0.0, jnp.finfo(jnp.float32).min
        )
        return logits_BxTxV + padding_bias_V

    def __call__(self, tokens_BxT, *, dropout_key=None, residual_sharding=None):
        """Float32 logits over the padded vocabulary for every position.

        ``residual_sharding`` (from ``sharding.residual_sharding``) pins the B x T x D
        residual stream between blocks to the batch split; left to itself, XLA follows
        the FSDP-split weights and splits D instead, trading activations back and forth.
        """
        seq_len = tokens_BxT.shape[1]
        if seq_len > self.config.block_size:
            raise ValueError(f"sequence length {seq_len} exceeds model.block_size={self.config.block_size}.")
        embed_key, block_keys_L = None, None
        if dropout_key is not None and self.config.dropout > 0:
            embed_key, blocks_key = jax.random.split(dropout_key)
            block_keys_L = jax.random.split(blocks_key, self.config.n_layer)
        x_BxTxD = self._embed(tokens_BxT, jnp.arange(seq_len), embed_key)

        def block_step(block, x_BxTxD, key):
            x_BxTxD, _ = block(x_BxTxD, key)
            if residual_sharding is not None:
                x_BxTxD = jax.lax.with_sharding_constraint(x_BxTxD, residual_sharding)
            return x_BxTxD, None

        x_BxTxD, _ = self._scan_blocks(block_step, x_BxTxD, block_keys_L, REMAT_POLICIES[self.config.remat])
        return self._logits(x_BxTxD)

    def _scan_blocks(self, block_step, x_BxTxD, per_layer, remat_policy=None):
        """``block_step(block, x, per_layer[i])`` for each layer i in turn, under ``jax.lax.scan``.

        Returns x after the last block and block_step's second outputs, stacked by layer.
        """
        graphdef, stacked_state = nnx.split(self.h)

        def layer(x_BxTxD, state_and_slice):
            state, layer_slice = state_and_slice
            return block_step(nnx.merge(graphdef, state), x_BxTxD, layer_slice)

        if remat_policy is not None:
            layer = jax.checkpoint(layer, policy=remat_policy)
        return jax.lax.scan(layer, x_BxTxD, (stacked_state, per_layer))

    def init_cache(self, batch_size: int, length: int | None = None) -> KVCache:
        """An empty cache for every layer, stacked along a leading layer axis like the blocks."""
        length = self.config.block_size if length is None else length
        shape = (self.config.n_layer, batch_size, length, self.config.n_head, self.config.head_size)
        dtype = self.config.compute_dtype
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def decode(self, tokens_BxT, cache: KVCache, start):
        """Runs T new tokens at positions start..start+T-1 against the cache.

        Returns their logits and the cache with their keys and values written in.
        """
        positions_T = start + jnp.arange(tokens_BxT.shape[1])
        x_BxTxD = self._embed(tokens_BxT, positions_T, None)
        x_BxTxD, cache = self._scan_blocks(
            lambda block, x_BxTxD, layer_cache: block(x_BxTxD, None, layer_cache, start), x_BxTxD, cache
        )
        return self._logits(x_BxTxD), cache


def preset(name: str) -> dict[str, int]:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}.")
    return dict(PRESETS[name])


def abstract_model(config: GPTConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph and parameter shapes without allocating memory (``jax.eval_shape``)."""
    return nnx.split(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))))


def count_model_params(config: GPTConfig) -> int:
    """Parameters actually created by the module, counted abstractly."""
    _, params = abstract_model(config)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def token_logprobs(logits_BxTxV, targets_BxT):
    """log p(target) per position in float32, as logit(target) - logsumexp(logits).

    Never materialises the full log-softmax: the vocabulary axis is the largest
    activation of a small GPT-2, and this form reads it once forward.
    """
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return target_logit_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)


def cross_entropy(logits_BxTxV, targets_BxT):
    """Mean next-token loss in nats (float32)."""
    return -token_logprobs(logits_BxTxV, targets_BxT).mean()
