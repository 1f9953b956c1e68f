"""The pure train and eval steps, over pytrees, that ``jax.jit`` compiles.

``nnx.split`` happens once, outside; the model is merged from (graphdef, params) inside
the traced function. The train state is a dict ``{"step", "params", "opt_state", "rng"}``
whose shardings come from ``sharding.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from gpt2jax.training import optim


def loss_fn(params, graphdef, inputs_BxT, targets_BxT, dropout_key=None, residual_sharding=None):
    """The model's chunked cross-entropy (``GPT.loss``): no float32 B x T x V logits, forward or backward."""
    model = nnx.merge(graphdef, params)
    return model.loss(inputs_BxT, targets_BxT, dropout_key=dropout_key, residual_sharding=residual_sharding)


# train.offload: the parts of the train state that live in host memory (JAX's pinned_host memory
# kind) between steps, and with ``all`` the step's float32 sum of its micro-batches' gradients too
# (ZeRO-Offload's layout: only compute-dtype weights and one micro-batch's gradients on the card).
# The step counter and the dropout key always stay on the device.
HOST_RESIDENT: dict[str, tuple[str, ...]] = {
    "none": (),
    "optimizer": ("opt_state",),
    "master": ("params", "opt_state"),
    "all": ("params", "opt_state", "gradient_sum"),
}


# Optimizers whose update pools a whole parameter, so a layer-by-layer update would change it: Adafactor clips
# each parameter's update by its root mean square, over all the layers of a stacked leaf at once.
WHOLE_PARAMETER_OPTIMIZERS = ("adafactor",)


def check_offload(offload: str, optimizer: str) -> None:
    """Refuses, in one sentence, an offload ``streamed_update`` cannot give the same update for."""
    if offload not in offload_modes(optimizer) and offload in HOST_RESIDENT:
        raise ValueError(
            f"train.offload={offload} updates a layer at a time, and train.optimizer={optimizer} pools each "
            "parameter's update over all its layers: use train.offload=none, or another optimizer."
        )


def offload_modes(optimizer: str) -> tuple[str, ...]:
    """The ``train.offload`` layouts ``check_offload`` lets ``optimizer`` run with."""
    return ("none",) if optimizer in WHOLE_PARAMETER_OPTIMIZERS else tuple(HOST_RESIDENT)


def host_resident(offload: str) -> tuple[str, ...]:
    """The parts of the train state ``train.offload`` keeps in host memory; an unknown value is refused."""
    if offload not in HOST_RESIDENT:
        raise ValueError(f"train.offload={offload!r} is not one of {', '.join(HOST_RESIDENT)}.")
    return HOST_RESIDENT[offload]


def to_device(tree):
    """``tree``'s leaves in device memory, each moved on its own (a no-op for a leaf already there).

    Inside a jitted step this is how host-resident state (``train.offload``) reaches the device;
    XLA schedules each leaf's copy where its first reader needs it.
    """
    return jax.tree.map(lambda leaf: jax.device_put(leaf, jax.memory.Space.Device), tree)


def to_host(tree):
    """``tree``'s leaves sent to host memory (``pinned_host``), each on its own."""
    return jax.tree.map(lambda leaf: jax.device_put(leaf, jax.memory.Space.Host), tree)


def compute_params(params, dtype):
    """The weights the forward and backward pass read, on the device in ``dtype`` (``model.dtype``).

    The model casts every weight to its compute dtype where it reads it, so the loss is the same
    whether it is given float32 weights or these; with ``train.offload=master`` these are all the
    weights the device holds, half the float32 bytes in bfloat16.
    """
    return jax.tree.map(lambda p: jax.device_put(p, jax.memory.Space.Device).astype(dtype), params)


def step_weights(params, offload: str, compute_dtype):
    """The weights a step's forward pass reads: the state's own, or ``compute_params`` where the offload
    keeps the float32 master weights in host memory."""
    return compute_params(params, compute_dtype) if "params" in host_resident(offload) else params


def in_layers(path) -> bool:
    """Whether a parameter is one of the blocks' stacked leaves (``h``), whose first axis is the layer."""
    return getattr(path[0], "key", None) == "h"


def _layer(leaf, index):
    """Layer ``index`` of a stacked leaf, keeping the layer axis (length 1)."""
    return lax.dynamic_slice_in_dim(leaf, index, 1)


def _none_of(leaf):
    """``leaf`` cut to no rows: a stand-in the optimizer updates for nothing, so a call can skip a parameter
    while every mask and rule still sees the parameter's path."""
    return leaf[:0]


def optimizer_state_roles(optimizer: optax.GradientTransformation, params) -> list[str]:
    """Per leaf of ``optimizer``'s state, in ``jax.tree.leaves`` order: ``layers`` where it mirrors a stacked
    parameter (its first axis the layer), ``rest`` where it mirrors another parameter, ``shared`` where it
    belongs to every parameter (a step count).

    Found from shapes alone: the state of parameters with their stacked leaves cut to no layers differs from
    the whole state exactly in the leaves that mirror them, and likewise for the rest, so every optax
    transformation whose state follows the parameters' shapes is read right without naming its fields.
    """

    def abstract(cut_layers: bool, cut_rest: bool):
        def leaf(path, p):
            cut = cut_layers if in_layers(path) else cut_rest
            return jax.ShapeDtypeStruct((0, *p.shape[1:]) if cut else p.shape, p.dtype)

        return jax.tree.leaves(jax.eval_shape(optimizer.init, jax.tree_util.tree_map_with_path(leaf, params)))

    whole, no_layers, no_rest = abstract(False, False), abstract(True, False), abstract(False, True)
    return [
        "layers" if w.shape != layers.shape else "rest" if w.shape != rest.shape else "shared"
        for w, layers, rest in zip(whole, no_layers, no_rest, strict=True)
    ]


def _sum_over_units(leaf, layered: bool, reduce):
    """``reduce`` (leaf -> float32 scalar) summed over ``leaf`` brought to the device a unit at a time: one
    layer of a stacked leaf at a time, or the whole of any other."""
    if not layered:
        return reduce(to_device(leaf))
    return lax.fori_loop(
        0,
        leaf.shape[0],
        lambda index, total: total + reduce(to_device(_layer(leaf, index))),
        jnp.zeros((), jnp.float32),
    )


def state_is_finite(state, optimizer: optax.GradientTransformation) -> jax.Array:
    """True when no floating-point leaf of the train state holds a NaN or an infinity, counted on the device a unit
    at a time (one layer of a stacked leaf, or another leaf whole), as ``streamed_update`` reads the state: what a
    checkpoint's check reads where ``train.offload`` keeps the state in host memory, without bringing it all to
    the device at once."""
    layered = {
        "params": [in_layers(path) for path, _ in jax.tree_util.tree_leaves_with_path(state["params"])],
        "opt_state": [role == "layers" for role in optimizer_state_roles(optimizer, state["params"])],
    }
    bad = jnp.zeros((), jnp.float32)
    for part, flags in layered.items():
        for leaf, is_layered in zip(jax.tree.leaves(state[part]), flags, strict=True):
            if jnp.issubdtype(leaf.dtype, jnp.inexact):
                bad += _sum_over_units(leaf, is_layered, lambda unit: jnp.sum(~jnp.isfinite(unit)).astype(jnp.float32))
    return bad == 0


def add_on_host(grad_sum, grads):
    """``grad_sum`` (float32, in host memory) plus a micro-batch's ``grads`` (on the device), streamed: each unit of
    the sum (one layer of a stacked leaf, or another leaf whole) is brought to the device, added to and sent
    back, so the device holds a unit of the sum at a time, never the whole float32 sum."""

    def add(path, total, grad):
        def unit_sum(total_unit, grad_unit):
            return to_host(to_device(total_unit) + grad_unit.astype(jnp.float32))

        if not in_layers(path):
            return unit_sum(total, grad)
        return lax.fori_loop(
            0,
            total.shape[0],
            lambda index, t: lax.dynamic_update_slice_in_dim(
                t, unit_sum(_layer(t, index), _layer(grad, index)), index, 0
            ),
            total,
        )

    return jax.tree_util.tree_map_with_path(add, grad_sum, grads)


def streamed_update(optimizer, grad_sum, opt_state, params, rate, *, accum_steps: int, grad_clip: float, on_host):
    """``optimizer``'s update of ``params`` from the mean gradient ``grad_sum / accum_steps``, streamed through the
    device a unit at a time (one layer of every stacked leaf, then the other leaves whole): the update the
    offloaded layouts run, so the device never holds the whole float32 state (master weights, moments,
    gradient sum) the host keeps. Returns (params, opt_state, the gradient's global norm).

    The same arithmetic as the whole-tree update: the global norm is summed unit by unit first, each unit's
    gradient clipped to ``grad_clip`` by it as optax.clip_by_global_norm clips (the optimizer's own clip
    then finds nothing over the limit), and every elementwise rule of the optimizer applied to the unit. A
    call updates one layer of the stacked leaves and no rows of the others (``_none_of``), so masks and
    per-parameter rules see every path; the step counts are taken from the call that updates the other
    leaves. An optimizer that pools a whole leaf (Adafactor's block RMS clip) would not give the same
    update, and is refused with offload (``check_offload``).
    """

    def placed(leaf, part):
        """``leaf`` sent where ``part`` of the state lives."""
        return to_host(leaf) if part in on_host else leaf

    paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    layered = [in_layers(path) for path, _ in paths]
    grad_leaves = jax.tree.leaves(grad_sum)
    param_leaves = [leaf for _, leaf in paths]
    state_leaves, state_def = jax.tree.flatten(opt_state)
    roles = optimizer_state_roles(optimizer, params)

    def mean_grad(unit):
        return to_device(unit).astype(jnp.float32) / accum_steps

    norm = jnp.sqrt(
        sum(
            _sum_over_units(leaf, is_layered, lambda unit: jnp.sum(jnp.square(mean_grad(unit))))
            for leaf, is_layered in zip(grad_leaves, layered, strict=True)
        )
    )

    def clipped(unit):
        gradient = mean_grad(unit)
        return jnp.where(norm < grad_clip, gradient, (gradient / norm.astype(gradient.dtype)) * grad_clip)

    def update(grads, state, weights):
        """The optimizer on unit lists; returns (new weights, new state leaves), on the device."""
        updates, new_state = optimizer.update(
            jax.tree.unflatten(treedef, grads),
            jax.tree.unflatten(state_def, [to_device(s) for s in state]),
            jax.tree.unflatten(treedef, weights),
        )
        updates = jax.tree.map(lambda u: rate.astype(u.dtype) * u, updates)
        return jax.tree.leaves(optax.apply_updates(jax.tree.unflatten(treedef, weights), updates)), jax.tree.leaves(
            new_state
        )

    # The leaves outside the stack, whole; the stacked ones cut to no layers.
    new_params, new_state = update(
        [clipped(_none_of(g)) if lay else clipped(g) for g, lay in zip(grad_leaves, layered, strict=True)],
        [_none_of(s) if role == "layers" else s for s, role in zip(state_leaves, roles, strict=True)],
        [to_device(_none_of(p) if lay else p) for p, lay in zip(param_leaves, layered, strict=True)],
    )
    params_out = [p if not lay else None for p, lay in zip(new_params, layered, strict=True)]
    state_out = [s if role != "layers" else None for s, role in zip(new_state, roles, strict=True)]

    # The stack, one layer at a time, written back into the state where it lives.
    stacked_params = [p for p, lay in zip(param_leaves, layered, strict=True) if lay]
    stacked_state = [s for s, role in zip(state_leaves, roles, strict=True) if role == "layers"]

    def one_layer(index, carry):
        layer_params, layer_state = carry
        weights, state = iter(layer_params), iter(layer_state)
        new_weights, new_layer_state = update(
            [clipped(_layer(g, index) if lay else _none_of(g)) for g, lay in zip(grad_leaves, layered, strict=True)],
            [
                _layer(next(state), index) if role == "layers" else (_none_of(s) if role == "rest" else s)
                for s, role in zip(state_leaves, roles, strict=True)
            ],
            [
                to_device(_layer(next(weights), index) if lay else _none_of(p))
                for p, lay in zip(param_leaves, layered, strict=True)
            ],
        )
        written_params = [
            lax.dynamic_update_slice_in_dim(old, placed(new.astype(old.dtype), "params"), index, 0)
            for old, new in zip(
                layer_params, [w for w, lay in zip(new_weights, layered, strict=True) if lay], strict=True
            )
        ]
        written_state = [
            lax.dynamic_update_slice_in_dim(old, placed(new.astype(old.dtype), "opt_state"), index, 0)
            for old, new in zip(
                layer_state,
                [s for s, role in zip(new_layer_state, roles, strict=True) if role == "layers"],
                strict=True,
            )
        ]
        return written_params, written_state

    n_layer = stacked_params[0].shape[0]
    layer_params, layer_state = lax.fori_loop(0, n_layer, one_layer, (stacked_params, stacked_state))
    layer_params, layer_state = iter(layer_params), iter(layer_state)
    params_out = [placed(p, "params") if p is not None else next(layer_params) for p in params_out]
    state_out = [placed(s, "opt_state") if s is not None else next(layer_state) for s in state_out]
    return jax.tree.unflatten(treedef, params_out), jax.tree.unflatten(state_def, state_out), norm


def train_step(
    state,
    inputs_AxBxT,
    targets_AxBxT,
    schedule,
    *,
    graphdef,
    optimizer,
    residual_sharding=None,
    offload="none",
    compute_dtype=jnp.float32,
    grad_clip=1.0,
):
    """One optimizer step over A accumulated micro-batches of B sequences, at the rate ``schedule``
    (``optim.schedule_args``) gives this step: ``optimizer`` makes updates at a rate of 1.

    One gradient buffer per micro-batch is all the step adds to the parameters when A is 1: the
    micro-batch's gradients are the step's (no zeros accumulator). For A > 1 the first micro-batch's
    gradients start the sum (float32) and the others are added to it in ``lax.scan``'s carry.
    ``offload`` (``train.offload``) says where the float32 state lives between steps: ``none`` all on the
    device; ``optimizer`` the optimizer's state in host memory; ``master`` the float32 weights too, the
    forward and backward pass reading compute-dtype copies (``compute_params``); ``all`` the float32
    gradient sum too, each micro-batch's gradients added into it unit by unit (``add_on_host``). With
    offload the update streams the state through the device a layer at a time (``streamed_update``,
    ``grad_clip`` being ``train.grad_clip``). Where each leaf lives never changes the arithmetic.
    """
    accum_steps = inputs_AxBxT.shape[0]
    on_host = host_resident(offload)
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    grad_fn = jax.value_and_grad(loss_fn)
    weights = step_weights(state["params"], offload, compute_dtype)

    def micro_grads(index, inputs_BxT, targets_BxT):
        return grad_fn(
            weights,
            graphdef,
            inputs_BxT,
            targets_BxT,
            jax.random.fold_in(dropout_key, index),
            residual_sharding,
        )

    def upcast(grads):
        return jax.tree.map(lambda g: g.astype(jnp.float32), grads)

    if "gradient_sum" in on_host:
        # Every micro-batch's gradients added into a float32 sum that starts at zero in host memory.
        def micro_step(carry, micro):
            loss_sum, grad_sum = carry
            loss, grads = micro_grads(*micro)
            return (loss_sum + loss, add_on_host(grad_sum, grads)), None

        zeros = to_host(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), weights))
        (loss_sum, grad_sum), _ = jax.lax.scan(
            micro_step, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(accum_steps), inputs_AxBxT, targets_AxBxT)
        )
    else:

        def micro_step(carry, micro):
            loss_sum, grad_sum = carry
            loss, grads = micro_grads(*micro)
            return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, upcast(grads))), None

        loss_sum, first = micro_grads(0, inputs_AxBxT[0], targets_AxBxT[0])
        grad_sum = upcast(first)
        if accum_steps > 1:
            (loss_sum, grad_sum), _ = jax.lax.scan(
                micro_step,
                (loss_sum, grad_sum),
                (jnp.arange(1, accum_steps), inputs_AxBxT[1:], targets_AxBxT[1:]),
            )
    rate = optim.rate_at(state["step"], schedule)
    if on_host:
        params, opt_state, grad_norm = streamed_update(
            optimizer,
            grad_sum,
            state["opt_state"],
            state["params"],
            rate,
            accum_steps=accum_steps,
            grad_clip=grad_clip,
            on_host=on_host,
        )
    else:
        grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        updates = jax.tree.map(lambda update: rate.astype(update.dtype) * update, updates)
        params, grad_norm = optax.apply_updates(state["params"], updates), optax.tree.norm(grads)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": state["rng"]}
    metrics = {"loss": loss_sum / accum_steps, "grad_norm": grad_norm}
    return new_state, metrics


def eval_step(params, inputs_BxT, targets_BxT, *, graphdef, residual_sharding=None):
    return loss_fn(params, graphdef, inputs_BxT, targets_BxT, residual_sharding=residual_sharding)


def fresh_state(params, optimizer: optax.GradientTransformation, seed: int) -> dict:
    """A step-0 train state: ``params``, a new optimizer state, and the dropout key of ``seed``."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optimizer.init(params),
        "rng": jax.random.key_data(jax.random.key(seed + 1)),
    }
