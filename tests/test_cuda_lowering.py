"""The real train step lowered for CUDA on the CPU: what a GPU would run, checked without one.

GPT-2 small's width, heads, context and vocabulary with 2 layers, bf16 compute, 2
accumulated micro-batches of 8 sequences and an 8-device FSDP mesh (the fake CPU devices),
exported with ``jax.export(..., platforms=["cuda"])``: lowered, not compiled, so no
memory is spent and no GPU is needed.
"""

import math
import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from gpt2jax.config import load_config_file
from gpt2jax.training.trainer import build_trainer

MICRO_BATCH, ACCUM, CONTEXT, VOCAB = 8, 2, 1024, 50304
_TENSOR = re.compile(r"tensor<((?:\d+x)*\d+)x(f32|bf16|f16)>")
_DOT = re.compile(r"stablehlo\.dot_general[^\n]*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)")


def _cudnn_traceable() -> bool:
    """Whether jax can trace cuDNN attention here: it asks the installed cuDNN its version while tracing."""
    q = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16)
    try:
        jax.eval_shape(lambda q: jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn"), q)
    except RuntimeError:
        return False
    return True


def _exported_train_step(attention: str):
    config = load_config_file("small")
    config.model.update(n_layer=2, attention=attention)
    config.train.update(batch_size=MICRO_BATCH * ACCUM, grad_accum_steps=ACCUM)
    config.mesh.update(data=1, fsdp=8, tensor=1)
    trainer = build_trainer(config)
    batch = jax.ShapeDtypeStruct(
        (ACCUM, MICRO_BATCH, CONTEXT), jnp.int32, sharding=trainer.batch_sharding(leading_unsharded=1)
    )
    return trainer, export.export(trainer.train_step, platforms=["cuda"])(
        trainer.abstract_state, batch, batch, trainer.schedule
    )


@pytest.mark.parametrize("attention", ["xla", "cudnn"])
def test_cuda_train_step_runs_the_head_in_bf16_keeps_no_float32_logits_and_donates_the_state(attention):
    if attention == "cudnn" and not _cudnn_traceable():
        pytest.skip(
            "jax traces cuDNN attention only where cuDNN is installed (it reads cuDNN's version while "
            "tracing); the XLA-attention lowering checks everything else"
        )
    trainer, exported = _exported_train_step(attention)
    assert exported.platforms == ("cuda",)
    module = exported.mlir_module()

    # Every matmul that touches the vocabulary (the output projection forward, and the
    # two backward matmuls of its gradient) reads bf16: tensor-core speed, not TF32.
    vocab_dots = [dot for dot in _DOT.findall(module) if any(f"x{VOCAB}x" in t or f"<{VOCAB}x" in t for t in dot)]
    assert len(vocab_dots) >= 3, vocab_dots
    for lhs, rhs, _ in vocab_dots:
        assert lhs.endswith("xbf16>") and rhs.endswith("xbf16>"), (lhs, rhs)

    # No float32 array as large as one micro-batch's B x T x V logits exists anywhere: the
    # largest float32 arrays with a vocabulary axis are one loss chunk's logits.
    float32_shapes = {tuple(map(int, dims.split("x"))) for dims, dtype in _TENSOR.findall(module) if dtype == "f32"}
    assert max(math.prod(shape) for shape in float32_shapes) < MICRO_BATCH * CONTEXT * VOCAB
    chunk = trainer.model_config.loss_chunk
    assert max(math.prod(shape) for shape in float32_shapes if VOCAB in shape) == MICRO_BATCH * chunk * VOCAB

    # The state is donated: every one of its leaves is aliased to an output.
    assert module.count("tf.aliasing_output") == len(jax.tree.leaves(trainer.abstract_state))
