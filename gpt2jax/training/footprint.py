"""What a train step holds on one device and in host memory, from shapes alone, and the loss chunk that memory
leaves room for.

The dry run (``memory.py``) adds the step's largest temporaries to ``held_bytes``, and checks
``host_bytes`` against the host's memory; the budget reads ``offload_traffic_bytes``;
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


# train.offload's layouts (``steps.HOST_RESIDENT``): what each keeps in host memory (JAX's pinned_host memory
# kind) instead of the device.
OFFLOAD_MODES = tuple(steps.HOST_RESIDENT)


def shard_elements(tree) -> int:
    """Elements of this device's shards of a pytree of ShapeDtypeStructs carrying shardings."""
    return int(sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) for leaf in jax.tree.leaves(tree)))


def _offload(trainer, offload: str | None) -> str:
    offload = trainer.config.train.offload if offload is None else offload
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"train.offload={offload!r} is not one of {', '.join(OFFLOAD_MODES)}.")
    return offload


def _state_bytes(trainer) -> tuple[int, int, int]:
    """(float32 parameters, compute-dtype parameters, optimizer state): this device's shards, from shapes.

    Counted from the parameters' element counts, not their stored dtype, so the figure is the same
    whichever dtype a layout stores its device copy in.
    """
    elements = shard_elements(trainer.abstract_state["params"])
    compute = jnp.dtype(trainer.model_config.dtype).itemsize
    return 4 * elements, compute * elements, shard_bytes(trainer.abstract_state["opt_state"])


def state_bytes(trainer, offload: str | None = None) -> dict:
    """The device's share of the train state and its gradients under ``offload`` (default: the config's
    ``train.offload``), by part, from shapes alone; no tracing, so every layout is cheap to count.

    - ``none``: the float32 parameters and the optimizer state (this device's shards) on the device;
    - ``optimizer``: the float32 parameters on the device, the optimizer state in host memory;
    - ``master``: the compute-dtype weights on the device, the float32 master weights and the
      optimizer state in host memory;
    - ``all``: as ``master``, and the float32 gradient sum in host memory too.
    The gradients: a micro-batch's, in the dtype of the weights the pass reads (float32, or the compute
    dtype with ``master`` and ``all``), and where micro-batches accumulate (``train.grad_accum_steps`` > 1)
    the float32 sum ``steps.train_step`` adds them into, on the device except with ``all``. XLA's buffer
    assignment keeps both: accumulating 4 micro-batches against 1 added 0.98 x the parameters' bytes with
    scanned layers, 0.68 x unrolled (CPU lowering, tests/test_train.py), so the two buffers are counted
    whole. With offload, the streamed update's working set (``offload_stream_bytes``) too.
    """
    offload = _offload(trainer, offload)
    on_host = steps.host_resident(offload)
    master, compute, optimizer = _state_bytes(trainer)
    weights = compute if "params" in on_host else master
    gradient_sum = master if trainer.accum_steps > 1 and "gradient_sum" not in on_host else 0
    return {
        "params": weights,
        "optimizer_state": optimizer if offload == "none" else 0,
        "gradients": weights + gradient_sum,
        "offload_stream": offload_stream_bytes(trainer, offload),
    }


def held_bytes(trainer, offload: str | None = None) -> dict:
    """What one device holds through a train step besides its temporaries, by part, from shapes alone:
    ``state_bytes`` and the activations the backward pass keeps."""
    return state_bytes(trainer, offload) | {"activations_saved_for_backward": saved_for_backward_bytes(trainer)}


def offload_stream_bytes(trainer, offload: str | None = None) -> int:
    """The device bytes an offloaded update holds at once: two units, one updated while the next arrives.

    ``steps.streamed_update`` brings the host's state through the device in two kinds of unit: every
    parameter outside the blocks' stack at once (GPT-2's token embedding is most of it), then one layer of
    every stacked leaf (``h``), layer after layer. A unit brings its optimizer state, and with ``master``
    or ``all`` also its float32 master weights and its float32 gradient; its new values are written in
    place. So at most the first unit and a layer, or two layers, at once: for xl with AdamW and ``all``,
    82M + 31M elements of 16 bytes, 1.7 GiB. ``all``'s sum of micro-batch gradients streams the same
    units with less (the sum's float32 unit and a micro-batch's), so the update's set is the larger.
    0 without offload.
    """
    offload = _offload(trainer, offload)
    if offload == "none":
        return 0
    master, _, optimizer = _state_bytes(trainer)
    per_element = optimizer / (master // 4) + (8 if "params" in steps.host_resident(offload) else 0)
    outside, layer = _stream_units(trainer)
    return int(per_element * max(outside + layer, 2 * layer))


def _stream_units(trainer) -> tuple[int, int]:
    """Elements of this device's shards in the update's two units (``offload_stream_bytes``): the parameters
    outside the blocks' stack, and one layer of the stack (whose leaves lead with the layer axis whether
    the layers run scanned or not)."""
    outside = layer = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(trainer.abstract_state["params"]):
        elements = math.prod(leaf.sharding.shard_shape(leaf.shape))
        if steps.in_layers(path):
            layer += elements // trainer.model_config.n_layer
        else:
            outside += elements
    return outside, layer


def host_bytes(trainer, offload: str | None = None) -> dict:
    """What the host keeps for one device through a run, by part, from shapes alone.

    The state ``offload`` moves there (``held_bytes``), and the copy of the float32 state an
    asynchronous checkpoint writes from (every layout: on a CPU a 102M-parameter run peaked at its
    estimate plus that 1.14 GiB state, ``memory.step_memory``).
    """
    on_host = steps.host_resident(_offload(trainer, offload))
    master, _, optimizer = _state_bytes(trainer)
    return {
        "master_params": master if "params" in on_host else 0,
        "optimizer_state": optimizer if "opt_state" in on_host else 0,
        "gradient_sum": master if "gradient_sum" in on_host else 0,
        "checkpoint_copy": master + optimizer,
    }


def offload_traffic_bytes(trainer, offload: str | None = None, accum_steps: int | None = None) -> int:
    """Bytes that cross the host link each optimizer step: the host's share of the state, down and back up.

    The update reads the offloaded state (optimizer state, and the float32 master weights with ``master``
    and ``all``) and writes it back, once a step whatever the number of micro-batches. With ``all`` the
    float32 gradient sum also comes down and goes back up for every micro-batch, and down once more for
    the update: with micro-batches of one sequence, by far the most of it. ``accum_steps``: the step's
    micro-batches, the trainer's unless given.
    """
    parts = host_bytes(trainer, offload)
    accum_steps = trainer.accum_steps if accum_steps is None else accum_steps
    state = 2 * (parts["master_params"] + parts["optimizer_state"])
    return state + (2 * accum_steps + 1) * parts["gradient_sum"]


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
