"""GPT-2 as OpenAI built it, as a Flax NNX module used functionally.

Learned position embeddings, pre-LayerNorm blocks (eps 1e-5), tanh-approximated GELU,
biases everywhere, a final LayerNorm, and the output projection tied to the token
embedding. Parameters are float32; ``dtype`` sets the compute precision, with
LayerNorm statistics, the attention softmax and the loss's softmax statistics kept in
float32. Training reads the loss from ``GPT.loss``, whose cross-entropy runs a chunk of
positions at a time (``chunked_cross_entropy``) so that no float32 B x T x V array
exists; ``GPT.__call__`` still returns the full float32 logits, for scoring and sampling.

Shapes in names follow the package's legend (``gpt2jax/__init__.py``): B batch, T query
length, S key length, D width, H heads, K head size, F MLP width, V padded vocabulary,
L layers.

Parameters are laid out so that the one sharding table (``sharding.py``) can split
heads and MLP width: the qkv kernel is D x 3 x H x K and the attention output kernel
H x K x D. The blocks' parameters are stacked along a leading layer axis (L), which the
forward pass scans over, or unrolls on a GPU. The model itself never names a device.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from gpt2jax import flops, ranges
from gpt2jax.errors import first_line

PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}

# The tensors of a block the remat policies choose between, named with checkpoint_name.
# A block's output needs no name: it is the next block's input, which the scan (or the
# unrolled loop) keeps whatever the policy.
ATTENTION_OUT = "attention_out"  # B x T x H x K, attention's result before the out projection
MLP_HIDDEN = "mlp_hidden"  # B x T x F, the MLP's fc output before GELU

# jax.nn.dot_product_attention's cuDNN forward: its outputs (the attention output and the
# float32 softmax statistics, B x H x T) are what the cuDNN backward reads, so a policy that
# keeps the attention output keeps them too, or the backward reruns the fused forward.
_CUDNN_ATTENTION_FORWARD = "dot_product_attention_fwd_wrapper"


def _keeps_attention(prim, *_, **params) -> bool:
    """Saves the named attention output and, under cuDNN, the fused forward's outputs."""
    if prim.name == "name":
        return params["name"] == ATTENTION_OUT
    return prim.name == _CUDNN_ATTENTION_FORWARD


REMAT_POLICIES = {
    "none": None,
    # Recompute everything in the backward pass but each block's input: least memory.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep the weight matmuls' outputs and the attention output, recompute the elementwise
    # ops around them (and, with XLA attention, the scores).
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _keeps_attention
    ),
    # Keep only the attention output (cuDNN's forward never reruns) and recompute the
    # projections, the MLP and the LayerNorms: little more memory than "full".
    "attention": _keeps_attention,
    # Also keep the MLP's fc output, the block's largest matmul, so only the qkv
    # projection and the elementwise ops are recomputed.
    "attention_mlp": jax.checkpoint_policies.save_from_both_policies(
        _keeps_attention, jax.checkpoint_policies.save_only_these_names(MLP_HIDDEN)
    ),
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# xla: ``attention`` below; cudnn: jax.nn.dot_product_attention's cuDNN kernel (GPU, bf16/fp16);
# auto: cudnn on a GPU where a probe of it runs (``attention_implementation``), else xla.
_ATTENTION = ("auto", "xla", "cudnn")

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """The model's keys, declared once: ``config.base_config`` makes the ``model`` section from these fields."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257  # GPT-2's true vocabulary; losses are always over these tokens
    vocab_multiple: int = 64  # pad the embedding rows to a multiple of this (50257 -> 50304)
    dropout: float = 0.0
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16 (parameters stay float32)
    # auto | xla | cudnn: auto is cuDNN's fused attention on a GPU where a start-up probe of it
    # runs (bf16/fp16), else XLA; on a CPU, gpt2jax's einsum attention (``attention`` below)
    attention: Literal["auto", "xla", "cudnn"] = "auto"
    # none | dots | attention | attention_mlp | full: what each block keeps for the backward pass
    # (REMAT_POLICIES); attention keeps the attention output and recomputes the rest
    remat: Literal["none", "full", "dots", "attention", "attention_mlp"] = "none"
    # auto | True | False: run the stacked blocks under jax.lax.scan, or unrolled over the same stacked
    # parameters (a checkpoint is the same either way); auto unrolls on a GPU and scans elsewhere
    # (``scans_layers``). The command line's "true"/"false" are read as True/False.
    scan_layers: bool | str = "auto"
    # auto | N | 0: positions of every row whose logits the cross-entropy holds at once. auto: as many as
    # the device's memory leaves beside the micro-batch's step (``training/footprint.auto_loss_chunk``;
    # AUTO_LOSS_CHUNK where no device memory is known: a CPU, or a model built outside a trainer);
    # 0: the full float32 B x T x V logits and ``cross_entropy`` (faster on a CPU, configs/tiny.py)
    loss_chunk: int | str = "auto"

    # The fields above that hold "auto" or a value of another type (``config.base_config`` leaves them untyped).
    WORD_OR_VALUE: ClassVar[tuple[str, ...]] = ("scan_layers", "loss_chunk")

    def __post_init__(self):
        # A config may still hold one of these as text ("false", "64": a config.json written while
        # these fields were typed as words); it means the same as False or 64.
        object.__setattr__(self, "scan_layers", _from_text(self.scan_layers, {"true": True, "false": False}))
        object.__setattr__(self, "loss_chunk", _from_text(self.loss_chunk, {}))

    @classmethod
    def from_config(cls, model_config) -> "GPTConfig":
        """Builds from the ``model`` part of a config (or a saved one), validating it; an unknown key is refused."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(dict(model_config)) - fields)
        if unknown:
            raise ValueError(
                f"model config has unknown key(s) {', '.join(unknown)}; the model's keys are {', '.join(sorted(fields))}."
            )
        config = cls(**dict(model_config))
        config.validate()
        return config

    def validate(self) -> None:
        """Refuses a model no run could build: its numbers out of their ranges (``ranges.py``: an
        n_layer of 0 ended in a ZeroDivisionError), its choices not among those offered."""
        ranges.check(dataclasses.asdict(self), ranges.RUN_CONFIG_RANGES, prefix="model.")
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
        if self.scan_layers not in ("auto", True, False):
            raise ValueError(f"model.scan_layers={self.scan_layers!r} is not one of auto, true, false.")
        chunk = self.loss_chunk
        if chunk != "auto" and (isinstance(chunk, (bool, str)) or not isinstance(chunk, int) or chunk < 0):
            raise ValueError(f"model.loss_chunk={chunk!r} must be auto, a number of positions, or 0 for none.")

    @property
    def padded_vocab_size(self) -> int:
        return flops.padded_vocab_size(self.vocab_size, self.vocab_multiple)

    @property
    def mlp_width(self) -> int:
        return flops.mlp_width(self.n_embd)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def _from_text(value, words: dict):
    """A config value given as text, as its typed value: a whole number, one of ``words`` (lower case), or the
    text in lower case ("auto"); a value that is not text is returned as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    return int(text) if text.isdigit() else words.get(text, text)


# What model.loss_chunk=auto runs where no device memory figure resolves it (``GPTConfig.loss_chunk``):
# the chunk every GPU figure in docs/benchmarks.md (H200, 2026-12-04) ran with.
AUTO_LOSS_CHUNK = 128


def scans_layers(config: GPTConfig, platform: str | None = None) -> bool:
    """Whether the blocks run under ``jax.lax.scan``: ``model.scan_layers``, with auto decided by the platform.

    auto unrolls on a GPU, where GPT-2 small's step ran 1.29x faster unrolled in 39% less memory
    (467.8k against 362.5k tokens/s, 8.07 against 13.13 GiB: docs/benchmarks.md, one H200), and
    scans on a CPU, where the scan was 1.2 to 1.4x faster (``stacked_blocks``), and on anything
    else, which nothing here has measured. ``platform`` is jax's backend name, the default one's if None.
    """
    if config.scan_layers != "auto":
        return bool(config.scan_layers)
    return (platform or jax.default_backend()) != "gpu"


def attention_implementation(config: GPTConfig) -> str:
    """The attention a config runs: ``xla`` or ``cudnn``; ``auto`` is decided once per shape and platform."""
    if config.attention != "auto":
        return config.attention
    return _auto_attention(jax.default_backend(), config.dtype, config.block_size, config.n_head, config.head_size)


@functools.cache
def _auto_attention(platform: str, dtype: str, seq_len: int, n_head: int, head_size: int) -> str:
    """cuDNN's fused attention on a GPU where it runs this shape, forward and backward; XLA otherwise.

    The probe compiles and runs cuDNN attention once, on one sequence of the model's shape,
    because it fails in ways no version check predicts (jax-ml/jax#32430 under the CUDA 13
    plugin, "No valid engine configs" on Ada cards in jax-ml/jax#23227). A CPU keeps the
    einsum attention, which was 1.4x faster there than jax.nn.dot_product_attention's XLA path.
    """
    if platform != "gpu":
        return "xla"
    if dtype == "float32":
        _log.warning("model.attention=auto: cuDNN attention needs bfloat16 or float16 compute; using XLA attention.")
        return "xla"

    def probe(q_BxTxHxK):
        out_BxTxHxK = jax.nn.dot_product_attention(
            q_BxTxHxK, q_BxTxHxK, q_BxTxHxK, is_causal=True, implementation="cudnn"
        )
        return jnp.sum(out_BxTxHxK.astype(jnp.float32))

    try:
        # Run now even when asked while a step is being traced: the probe must execute, not be staged.
        with jax.ensure_compile_time_eval():
            q_BxTxHxK = jnp.ones((1, seq_len, n_head, head_size), _DTYPES[dtype])
            jax.block_until_ready(jax.jit(jax.value_and_grad(probe))(q_BxTxHxK))
    except Exception as error:  # any failure of the probe means: do not use cuDNN
        reason = first_line(error, limit=200)
        _log.warning("model.attention=auto: cuDNN attention does not run here (%s); using XLA attention.", reason)
        return "xla"
    return "cudnn"


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
            if attention_implementation(self.config) == "cudnn":
                out_BxTxHxK = jax.nn.dot_product_attention(
                    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True, implementation="cudnn"
                )
            else:
                positions_T = jnp.arange(x_BxTxD.shape[1])
                out_BxTxHxK = attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, positions_T, positions_T)
            out_BxTxHxK = checkpoint_name(out_BxTxHxK, ATTENTION_OUT)
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
        d, f = config.n_embd, config.mlp_width
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        self.fc_kernel = nnx.Param(_normal(0.02)(rngs.params(), (d, f), jnp.float32))
        self.fc_bias = nnx.Param(jnp.zeros((f,), jnp.float32))
        self.proj_kernel = nnx.Param(_normal(residual_std)(rngs.params(), (f, d), jnp.float32))
        self.proj_bias = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.dtype = config.compute_dtype

    def __call__(self, x_BxTxD):
        h_BxTxF = x_BxTxD @ self.fc_kernel[...].astype(self.dtype) + self.fc_bias[...].astype(self.dtype)
        h_BxTxF = jax.nn.gelu(checkpoint_name(h_BxTxF, MLP_HIDDEN), approximate=True)
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
    recomputes it there, which made GPT-2 small's step 1.2 to 1.4x slower on a CPU. On a GPU
    the unrolled loop is the faster (``scans_layers``); it runs over the same stacked
    parameters, so checkpoints and Hugging Face interop are the same either way, and a run
    resumes under the other layout.
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

    def _logits(self, h_BxTxD):
        """Float32 logits of the tied output projection; padding rows of the vocabulary get no probability."""
        wte_VxD = self.wte[...].astype(self.config.compute_dtype)
        logits_BxTxV = jnp.einsum("btd,vd->btv", h_BxTxD, wte_VxD, preferred_element_type=jnp.float32)
        return logits_BxTxV + _padding_bias(self.config.vocab_size, self.config.padded_vocab_size)

    def hidden_states(self, tokens_BxT, *, dropout_key=None, residual_sharding=None):
        """The final LayerNorm's output for every position, in the compute dtype: what the output projection reads.

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

        x_BxTxD, _ = self._run_blocks(block_step, x_BxTxD, block_keys_L, REMAT_POLICIES[self.config.remat])
        return self.ln_f(x_BxTxD)

    def __call__(self, tokens_BxT, *, dropout_key=None, residual_sharding=None):
        """Float32 logits over the padded vocabulary for every position (scoring and sampling read these)."""
        return self._logits(
            self.hidden_states(tokens_BxT, dropout_key=dropout_key, residual_sharding=residual_sharding)
        )

    def loss(self, tokens_BxT, targets_BxT, *, dropout_key=None, residual_sharding=None):
        """Mean next-token cross-entropy in nats, the loss training differentiates.

        By ``chunked_cross_entropy``; ``model.loss_chunk=0`` computes the full float32 logits
        and their ``cross_entropy`` instead (a B x T x V array: faster on a CPU). An unresolved
        ``auto`` (a model built outside a trainer) takes AUTO_LOSS_CHUNK positions at a time.
        """
        h_BxTxD = self.hidden_states(tokens_BxT, dropout_key=dropout_key, residual_sharding=residual_sharding)
        chunk = AUTO_LOSS_CHUNK if self.config.loss_chunk == "auto" else self.config.loss_chunk
        if chunk == 0:
            return cross_entropy(self._logits(h_BxTxD), targets_BxT)
        return chunked_cross_entropy(h_BxTxD, self.wte[...], targets_BxT, self.config.vocab_size, chunk)

    def _run_blocks(self, block_step, x_BxTxD, per_layer, remat_policy=None):
        """``block_step(block, x, per_layer[i])`` for each layer i in turn.

        Under ``jax.lax.scan`` where ``scans_layers`` says so, else as an unrolled loop over
        the same stacked parameters (split apart, so their gradients are concatenated back
        rather than summed). Returns x after the last block and block_step's second
        outputs, stacked by layer.
        """
        graphdef, stacked_state = nnx.split(self.h)

        def layer(x_BxTxD, state_and_slice):
            state, layer_slice = state_and_slice
            return block_step(nnx.merge(graphdef, state), x_BxTxD, layer_slice)

        if remat_policy is not None:
            layer = jax.checkpoint(layer, policy=remat_policy)
        if scans_layers(self.config):
            return jax.lax.scan(layer, x_BxTxD, (stacked_state, per_layer))
        outputs = []
        for layer_slice in _unstack((stacked_state, per_layer), self.config.n_layer):
            x_BxTxD, output = layer(x_BxTxD, layer_slice)
            outputs.append(output)
        return x_BxTxD, jax.tree.map(lambda *per_layer_outputs: jnp.stack(per_layer_outputs), *outputs)

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
        x_BxTxD, cache = self._run_blocks(
            lambda block, x_BxTxD, layer_cache: block(x_BxTxD, None, layer_cache, start), x_BxTxD, cache
        )
        return self._logits(self.ln_f(x_BxTxD)), cache


def _unstack(tree, n: int) -> list:
    """The n slices of a pytree's leading axis, by one split per leaf (whose transpose is a concatenation)."""
    leaves, treedef = jax.tree.flatten(tree)
    parts = [jnp.split(leaf, n) for leaf in leaves]
    return [treedef.unflatten([part[i][0] for part in parts]) for i in range(n)]


def _padding_bias(vocab_size: int, padded_vocab_size: int):
    """0 for the real tokens, float32's lowest for the padding rows.

    An additive mask: unlike a select, its backward pass keeps no B x T x V mask alive.
    """
    return jnp.where(jnp.arange(padded_vocab_size) < vocab_size, 0.0, jnp.finfo(jnp.float32).min)


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
    """Mean next-token loss in nats (float32) of logits already computed in full."""
    return -token_logprobs(logits_BxTxV, targets_BxT).mean()


def chunked_cross_entropy(h_BxTxD, wte_VxD, targets_BxT, vocab_size: int, chunk: int):
    """Mean next-token loss of the tied output projection, ``chunk`` positions of every row at a time.

    Equal to ``cross_entropy(logits, targets)`` of the full logits (a float32 model to float32
    rounding; a bf16 model to the rounding of its logits to bf16, tested), but no float32
    B x T x V array is ever made, forward or backward: each chunk's logits (B x chunk x V)
    come from a matmul in the compute dtype of ``h_BxTxD`` with float32 accumulation and
    are kept in the compute dtype, so a bf16 model writes half the bytes of float32 logits
    and reads half in each pass over them (the max, the sum of exponentials, the gradient);
    those passes upcast as they read, so the max, the log-sum-exp and the loss are float32.
    The gradient is cast back to the compute dtype before the two backward matmuls, so a
    bf16 model runs all three at bf16 speed. The
    gradient is computed in the same pass as the loss (when differentiated), so the
    projection is never recomputed: 6 N V D FLOPs for the head, as unchunked. ``wte_VxD`` is
    the float32 parameter; its gradient is summed over chunks in float32. A sequence that
    ``chunk`` does not divide is padded with positions that count for nothing.
    """
    return _chunked_loss(h_BxTxD, wte_VxD, targets_BxT, vocab_size, chunk)


def _chunked(h_BxTxD, targets_BxT, chunk: int):
    """(h, targets, weights) cut into chunks along T, chunk-major: NxBxCxD, NxBxC and NxBxC."""
    batch, seq_len, width = h_BxTxD.shape
    chunk = min(chunk, seq_len)
    n_chunks = -(-seq_len // chunk)
    pad = n_chunks * chunk - seq_len
    weights_BxT = jnp.broadcast_to(jnp.arange(seq_len + pad) < seq_len, (batch, seq_len + pad)).astype(jnp.float32)
    h_BxTxD = jnp.pad(h_BxTxD, ((0, 0), (0, pad), (0, 0)))
    targets_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)))

    def chunk_major(x):
        return x.reshape(batch, n_chunks, chunk, *x.shape[2:]).swapaxes(0, 1)

    return chunk_major(h_BxTxD), chunk_major(targets_BxT), chunk_major(weights_BxT)


def _chunk_logits_and_losses(h_BxCxD, w_VxD, targets_BxC, weights_BxC, vocab_size: int):
    """One chunk's masked logits (upcast as read), their float32 logsumexp and its weighted per-position losses.

    The matmul's output is in the compute dtype (accumulated in float32); the float32
    upcast and the padding rows' bias are elementwise, so XLA fuses them into the
    reductions and the gradient that read them rather than writing a float32 copy.
    """
    logits_BxCxV = jnp.einsum("bcd,vd->bcv", h_BxCxD, w_VxD)
    masked_BxCxV = logits_BxCxV.astype(jnp.float32) + _padding_bias(vocab_size, w_VxD.shape[0])
    lse_BxC = jax.nn.logsumexp(masked_BxCxV, axis=-1)
    target_logit_BxC = jnp.take_along_axis(logits_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]
    return masked_BxCxV, lse_BxC, (lse_BxC - target_logit_BxC.astype(jnp.float32)) * weights_BxC


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_loss(h_BxTxD, wte_VxD, targets_BxT, vocab_size, chunk):
    h_NxBxCxD, targets_NxBxC, weights_NxBxC = _chunked(h_BxTxD, targets_BxT, chunk)
    w_VxD = wte_VxD.astype(h_BxTxD.dtype)

    def chunk_loss(loss_sum, chunk_slices):
        h_BxCxD, targets_BxC, weights_BxC = chunk_slices
        losses_BxC = _chunk_logits_and_losses(h_BxCxD, w_VxD, targets_BxC, weights_BxC, vocab_size)[2]
        return loss_sum + losses_BxC.sum(), None

    loss_sum, _ = jax.lax.scan(chunk_loss, jnp.zeros((), jnp.float32), (h_NxBxCxD, targets_NxBxC, weights_NxBxC))
    return loss_sum / targets_BxT.size


def _chunked_loss_fwd(h_BxTxD, wte_VxD, targets_BxT, vocab_size, chunk):
    """The loss and, in the same pass over the chunks, its gradients with respect to h and wte."""
    batch, seq_len, _ = h_BxTxD.shape
    h_NxBxCxD, targets_NxBxC, weights_NxBxC = _chunked(h_BxTxD, targets_BxT, chunk)
    w_VxD = wte_VxD.astype(h_BxTxD.dtype)
    scale = 1.0 / targets_BxT.size

    def chunk_step(carry, chunk_slices):
        loss_sum, dwte_VxD = carry
        h_BxCxD, targets_BxC, weights_BxC = chunk_slices
        masked_BxCxV, lse_BxC, losses_BxC = _chunk_logits_and_losses(
            h_BxCxD, w_VxD, targets_BxC, weights_BxC, vocab_size
        )
        # d loss / d logits = softmax - onehot(target), per counted position, over the mean's count.
        probs_BxCxV = jnp.exp(masked_BxCxV - lse_BxC[..., None])
        onehot_BxCxV = jax.nn.one_hot(targets_BxC, w_VxD.shape[0], dtype=jnp.float32)
        dlogits_BxCxV = ((probs_BxCxV - onehot_BxCxV) * (weights_BxC * scale)[..., None]).astype(w_VxD.dtype)
        dh_BxCxD = jnp.einsum("bcv,vd->bcd", dlogits_BxCxV, w_VxD, preferred_element_type=jnp.float32)
        dwte_VxD = dwte_VxD + jnp.einsum("bcv,bcd->vd", dlogits_BxCxV, h_BxCxD, preferred_element_type=jnp.float32)
        return (loss_sum + losses_BxC.sum(), dwte_VxD), dh_BxCxD.astype(h_BxCxD.dtype)

    init = (jnp.zeros((), jnp.float32), jnp.zeros(wte_VxD.shape, jnp.float32))
    (loss_sum, dwte_VxD), dh_NxBxCxD = jax.lax.scan(chunk_step, init, (h_NxBxCxD, targets_NxBxC, weights_NxBxC))
    dh_BxTxD = dh_NxBxCxD.swapaxes(0, 1).reshape(batch, -1, h_BxTxD.shape[-1])[:, :seq_len]
    return loss_sum * scale, (dh_BxTxD, dwte_VxD.astype(wte_VxD.dtype))


def _chunked_loss_bwd(vocab_size, chunk, gradients, g):
    dh_BxTxD, dwte_VxD = gradients
    # The loss's cotangent g is float32: without the casts a bfloat16 wte (train.offload=master's
    # compute-dtype weights) got a float32 cotangent, which JAX refuses to add to the embedding's.
    return (g * dh_BxTxD).astype(dh_BxTxD.dtype), (g * dwte_VxD).astype(dwte_VxD.dtype), None


_chunked_loss.defvjp(_chunked_loss_fwd, _chunked_loss_bwd)
