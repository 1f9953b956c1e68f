"""What a train step holds on one device, from shapes alone, and the loss chunk that memory leaves room for.

The dry run (``memory.py``) adds the step's largest temporaries to ``held_bytes``;
``build_trainer`` resolves ``model.loss_chunk=auto`` with ``auto_loss_chunk``. A trainer
is read by its attributes only, so the trainer module can use this one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gpt2jax.model import AUTO_LOSS_CHUNK
from gpt2jax.training import steps


def shard_bytes(tree) -> int:
    """Bytes of this device's shards of a pytree of ShapeDtypeStructs carrying shardings."""
    return int(
        sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))
    )


def aval_bytes(var) -> int:
    return math.prod(var.aval.shape) * var.aval.dtype.itemsize


def micro_batch_tokens(trainer):
    """This device's rows of one micro-batch, as the abstract token array the step's loss reads."""
    rows = trainer.micro_batch_size // (trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"])
    return jax.ShapeDtypeStruct((rows, trainer.model_config.block_size), jnp.int32)


def saved_for_backward_bytes(trainer) -> int:
    """What the backward pass of this device's rows of one micro-batch keeps, read from the traced step.

    The figure ``model.remat`` trades for recompute, the same on every platform (counted
    whole along the tensor axis, so an upper bound when mesh.tensor > 1).
    """
    from jax.extend.core import Var

    def pullback(params, tokens_BxT):
        return jax.vjp(lambda p: steps.loss_fn(p, trainer.graphdef, tokens_BxT, tokens_BxT), params)[1]

    # The pullback closes over the residuals; the parameters it merely reads are its inputs.
    jaxpr = jax.make_jaxpr(pullback)(trainer.abstract_weights, micro_batch_tokens(trainer)).jaxpr
    inputs = set(jaxpr.invars)
    return int(sum(aval_bytes(v) for v in jaxpr.outvars if isinstance(v, Var) and v not in inputs))


def held_bytes(trainer) -> dict:
    """What one device holds through a train step besides its temporaries, by part, from shapes alone.

    The float32 parameters and optimizer state (this device's shards), the float32
    gradients of one micro-batch and their running sum (``steps.train_step`` sums
    micro-batches in a scan whatever their number), and the activations the backward
    pass keeps.
    """
    params = shard_bytes(trainer.abstract_state["params"])
    return {
        "params": params,
        "optimizer_state": shard_bytes(trainer.abstract_state["opt_state"]),
        "gradients": 2 * params,
        "activations_saved_for_backward": saved_for_backward_bytes(trainer),
    }


def auto_loss_chunk(trainer, memory_limit: int | None = None) -> int:
    """``model.loss_chunk=auto``: the most positions of every row whose loss head fits the memory the micro-batch leaves.

    What is left of a device's memory (``memory_limit``, by default the allocator's limit the
    device reports: XLA_PYTHON_CLIENT_MEM_FRACTION of the card) once ``held_bytes`` (parameters,
    optimizer state, gradients, the micro-batch's kept activations) are placed must hold the
    head's two largest values as ``memory.estimate`` counts them: two float32 rows x C x V arrays, the
    chunk's upcast logits and their exponentials, an upper bound (a GPU fuses both into the
    passes that read the compute-dtype logits). So the dry run's fit holds at the chosen chunk.
    The chunk halves from the whole sequence until it fits, down to AUTO_LOSS_CHUNK. Fewer
    chunks read the V x D embedding fewer times: each chunk's three matmuls read it and its
    float32 gradient sum is read and written, about 0.54 GB a chunk for GPT-2 small in bf16,
    so micro-batches of 16 in 8 chunks of 128 move 4.3 GB, in one chunk 0.54 (arithmetic; no
    GPU has timed it yet). A device that reports no memory (a CPU) gets AUTO_LOSS_CHUNK.
    """
    if memory_limit is None:
        local = [d for d in trainer.mesh.devices.flat if d.process_index == jax.process_index()]
        limits = [(d.memory_stats() or {}).get("bytes_limit") for d in local]
        if not limits or None in limits:
            return AUTO_LOSS_CHUNK
        memory_limit = min(limits)
    held = sum(held_bytes(trainer).values())
    rows = micro_batch_tokens(trainer).shape[0]
    seq_len, vocab = trainer.model_config.block_size, trainer.model_config.padded_vocab_size
    chunk = seq_len
    while chunk > AUTO_LOSS_CHUNK and chunk % 2 == 0 and held + 2 * rows * chunk * vocab * 4 > memory_limit:
        chunk //= 2
    return chunk
