"""The device mesh and the one table that decides how every parameter is split.

Mesh axes: ``data`` (pure data parallelism: parameters replicated), ``fsdp`` (data
parallelism with parameters and optimizer state sharded, ZeRO-3 style) and ``tensor``
(Megatron-style: attention heads and the MLP's hidden width split). The batch is split
over data x fsdp. Optimizer moments mirror the parameters, so the same table serves
them: rules match the end of a leaf's path.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gpt2jax.trees import path_str

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex on the path's end, spec). Shapes: wte V x D, wpe T x D, qkv D x 3 x H x K,
# attention out H x K x D, MLP fc D x F and proj F x D. Block parameters (under ``h/``)
# carry a leading layer axis as well, which is never split: see ``partition_spec``.
# Vectors no rule names (biases of width D, LayerNorms, step counters, the rng key) are
# replicated; a matrix no rule names is refused, so a new parameter cannot end up
# replicated on every device unnoticed.
PARTITION_RULES: tuple[tuple[str, P], ...] = (
    (r"wte$", P("tensor", "fsdp")),
    (r"wpe$", P(None, "fsdp")),
    (r"attn/qkv_kernel$", P("fsdp", None, "tensor", None)),
    (r"attn/qkv_bias$", P(None, "tensor", None)),
    (r"attn/out_kernel$", P("tensor", None, "fsdp")),
    (r"mlp/fc_kernel$", P("fsdp", "tensor")),
    (r"mlp/fc_bias$", P("tensor")),
    (r"mlp/proj_kernel$", P("tensor", "fsdp")),
)

_STACKED_BLOCKS = re.compile(r"(^|/)h/")
# Optimizer state that reduces a parameter by a dimension or more (Adafactor's factored second
# moment: a row and a column per matrix, and (1,) stand-ins) is replicated: it is that many times
# smaller than the matrix it describes, a few megabytes for GPT-2 xl.
_OPTIMIZER_STATE = re.compile(r"^opt_state/")


def partition_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The table's spec for a leaf; refuses, naming the leaf, what the table or the mesh cannot split.

    jit refuses unevenly split arguments, and a dimension kept whole instead would hold a
    full copy on every device, so a mesh axis that does not divide its dimension is an
    error, as is a matrix that no rule names.
    """
    # Every device runs every layer, so the stacked blocks' layer axis stays whole.
    layer_axis = (None,) if _STACKED_BLOCKS.search(path) else ()
    for pattern, rule in PARTITION_RULES:
        if not re.search(pattern, path):
            continue
        spec = P(*layer_axis, *rule)
        if len(shape) < len(spec) and _OPTIMIZER_STATE.search(path):
            return P()
        if len(spec) != len(shape):
            raise ValueError(
                f"parameter {path} has shape {shape}, but the sharding rule {pattern!r} splits "
                f"{len(spec)} axes; fix the rule in sharding.PARTITION_RULES."
            )
        for axis, dim in zip(spec, shape):
            if axis is not None and dim % mesh.shape[axis]:
                raise ValueError(
                    f"mesh.{axis}={mesh.shape[axis]} does not divide dimension {dim} of parameter {path} "
                    f"{tuple(shape)} (sharding rule {pattern!r}); choose a mesh.{axis} that divides {dim}."
                )
        return spec
    if len(shape) - len(layer_axis) >= 2:
        raise ValueError(
            f"parameter {path} {tuple(shape)} is a matrix that no rule in sharding.PARTITION_RULES "
            "names; add a rule for it."
        )
    return P()


def tree_shardings(mesh: Mesh, tree):
    """NamedShardings for every leaf of a pytree of arrays or ShapeDtypeStructs."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, partition_spec(path_str(path), tuple(leaf.shape), mesh)), tree
    )


def laid_out(mesh: Mesh, tree):
    """A pytree of arrays or ShapeDtypeStructs as ShapeDtypeStructs carrying the table's shardings on ``mesh``.

    What jit lowers against and Orbax restores onto; ``leaf.sharding`` reads each one back.
    """
    return jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), tree, tree_shardings(mesh, tree)
    )


HOST_MEMORY = "pinned_host"


def in_host_memory(tree):
    """A pytree of ShapeDtypeStructs carrying shardings, moved to host memory (``train.offload``).

    ``pinned_host`` is the memory kind a device can copy to and from directly (page-locked host
    RAM on a GPU); the CPU backend offers it too, so offloaded runs are tested there.
    """
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding.with_memory_kind(HOST_MEMORY)),
        tree,
    )


def residual_sharding(mesh: Mesh) -> NamedSharding:
    """The B x T x D residual stream between blocks: rows over data x fsdp, D whole.

    Without it XLA lets the FSDP-split weights decide and splits D, which costs an
    all-to-all per block and (for fsdp=8 on a tiny model) 2.5x the temporaries.
    """
    return NamedSharding(mesh, P(BATCH_AXES, None, None))


def batch_sharding(mesh: Mesh, ndim: int = 2, leading_unsharded: int = 0) -> NamedSharding:
    """Batch rows over data x fsdp; ``leading_unsharded`` axes (micro-batches) stay whole."""
    spec = (None,) * leading_unsharded + (BATCH_AXES,) + (None,) * (ndim - leading_unsharded - 1)
    return NamedSharding(mesh, P(*spec))


def global_batch(mesh: Mesh, local_arrays, leading_unsharded: int = 0):
    """Assembles each process's rows of a batch into arrays sharded over the whole mesh.

    The rows are axis ``leading_unsharded`` (after any micro-batch axis); every process
    passes its own, as ``loader`` cut them.
    """

    def assemble(local):
        global_shape = list(local.shape)
        global_shape[leading_unsharded] *= jax.process_count()
        sharding = batch_sharding(mesh, local.ndim, leading_unsharded)
        return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))

    return jax.tree.map(assemble, local_arrays)


def mesh_shape(mesh_config, n_devices: int) -> dict[str, int]:
    """Axis sizes with one -1 filled in; refuses shapes that do not use every device.

    Each size is a whole number of at least 1, or -1: ``ranges.RUN_CONFIG_RANGES``, checked by ``build_trainer``.
    """
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    unknown = [axis for axis, size in sizes.items() if size == -1]
    if len(unknown) > 1:
        raise ValueError(f"at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1, got {sizes}.")
    known = math.prod(size for size in sizes.values() if size != -1)
    if unknown:
        if n_devices % known:
            raise ValueError(f"mesh {sizes} cannot be filled: {n_devices} devices are not divisible by {known}.")
        sizes[unknown[0]] = n_devices // known
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(
            f"mesh data x fsdp x tensor = {sizes} uses {math.prod(sizes.values())} devices "
            f"but there are {n_devices}; make the product equal the device count."
        )
    return sizes


def make_mesh(mesh_config, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    sizes = mesh_shape(mesh_config, len(devices))
    device_grid = np.asarray(devices).reshape([sizes[axis] for axis in MESH_AXES])
    return Mesh(device_grid, MESH_AXES)


def validate_layout(mesh: Mesh, model_config, train_config) -> None:
    """Refuses, before compiling, a batch or model that the mesh cannot split evenly."""
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    tensor = mesh.shape["tensor"]
    if train_config.batch_size % train_config.grad_accum_steps:
        raise ValueError(
            f"train.batch_size={train_config.batch_size} is not divisible by "
            f"train.grad_accum_steps={train_config.grad_accum_steps}."
        )
    micro_batch = train_config.batch_size // train_config.grad_accum_steps
    if micro_batch % batch_shards:
        raise ValueError(
            f"the micro-batch of {micro_batch} sequences (train.batch_size / train.grad_accum_steps) "
            f"is not divisible by mesh data x fsdp = {batch_shards}."
        )
    if model_config.n_head % tensor:
        raise ValueError(f"model.n_head={model_config.n_head} is not divisible by mesh.tensor={tensor}.")
    if model_config.mlp_width % tensor:
        raise ValueError(f"the MLP width {model_config.mlp_width} is not divisible by mesh.tensor={tensor}.")
