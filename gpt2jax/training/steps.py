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

from gpt2jax.training import optim


def loss_fn(params, graphdef, inputs_BxT, targets_BxT, dropout_key=None, residual_sharding=None):
    """The model's chunked cross-entropy (``GPT.loss``): no float32 B x T x V logits, forward or backward."""
    model = nnx.merge(graphdef, params)
    return model.loss(inputs_BxT, targets_BxT, dropout_key=dropout_key, residual_sharding=residual_sharding)


# train.offload: the parts of the train state that live in host memory (JAX's pinned_host memory
# kind) between steps. The step counter and the dropout key always stay on the device.
HOST_RESIDENT: dict[str, tuple[str, ...]] = {
    "none": (),
    "optimizer": ("opt_state",),
    "master": ("params", "opt_state"),
}


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
):
    """One optimizer step over A accumulated micro-batches of B sequences, at the rate ``schedule``
    (``optim.schedule_args``) gives this step: ``optimizer`` makes updates at a rate of 1.

    One gradient buffer per micro-batch is all the step adds to the parameters when A is 1: the
    micro-batch's gradients are the step's (no zeros accumulator). For A > 1 the first micro-batch's
    gradients start the sum (float32) and the others are added to it in ``lax.scan``'s carry.
    ``offload`` (``train.offload``) says where the float32 state lives between steps: ``none`` all on the
    device; ``optimizer`` the optimizer's state in host memory, brought to the device for the update
    and sent back; ``master`` the float32 weights too, the forward and backward pass reading
    compute-dtype copies (``compute_params``) and each leaf's update reading its master weights and
    moments from the host. Where each leaf lives never changes the arithmetic.
    """
    accum_steps = inputs_AxBxT.shape[0]
    on_host = host_resident(offload)
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    grad_fn = jax.value_and_grad(loss_fn)
    weights = step_weights(state["params"], offload, compute_dtype)

    def micro_grads(index, inputs_BxT, targets_BxT):
        loss, grads = grad_fn(
            weights,
            graphdef,
            inputs_BxT,
            targets_BxT,
            jax.random.fold_in(dropout_key, index),
            residual_sharding,
        )
        return loss, jax.tree.map(lambda g: g.astype(jnp.float32), grads)

    def micro_step(carry, micro):
        loss_sum, grad_sum = carry
        loss, grads = micro_grads(*micro)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    loss_sum, grad_sum = micro_grads(0, inputs_AxBxT[0], targets_AxBxT[0])
    if accum_steps > 1:
        (loss_sum, grad_sum), _ = jax.lax.scan(
            micro_step,
            (loss_sum, grad_sum),
            (jnp.arange(1, accum_steps), inputs_AxBxT[1:], targets_AxBxT[1:]),
        )
    grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
    params, opt_state = (to_device(state[part]) if part in on_host else state[part] for part in ("params", "opt_state"))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    rate = optim.rate_at(state["step"], schedule)
    updates = jax.tree.map(lambda update: rate.astype(update.dtype) * update, updates)
    updated = {"params": optax.apply_updates(params, updates), "opt_state": opt_state}
    new_state = {
        "step": state["step"] + 1,
        **{part: to_host(tree) if part in on_host else tree for part, tree in updated.items()},
        "rng": state["rng"],
    }
    metrics = {"loss": loss_sum / accum_steps, "grad_norm": optax.tree.norm(grads)}
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
