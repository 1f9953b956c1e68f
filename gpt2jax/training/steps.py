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


def train_step(state, inputs_AxBxT, targets_AxBxT, schedule, *, graphdef, optimizer, residual_sharding=None):
    """One optimizer step over A accumulated micro-batches of B sequences, at the rate ``schedule``
    (``optim.schedule_args``) gives this step: ``optimizer`` makes updates at a rate of 1."""
    accum_steps = inputs_AxBxT.shape[0]
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    grad_fn = jax.value_and_grad(loss_fn)

    def micro_step(carry, micro):
        loss_sum, grad_sum = carry
        index, inputs_BxT, targets_BxT = micro
        loss, grads = grad_fn(
            state["params"],
            graphdef,
            inputs_BxT,
            targets_BxT,
            jax.random.fold_in(dropout_key, index),
            residual_sharding,
        )
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    (loss_sum, grad_sum), _ = jax.lax.scan(
        micro_step, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(accum_steps), inputs_AxBxT, targets_AxBxT)
    )
    grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    rate = optim.rate_at(state["step"], schedule)
    updates = jax.tree.map(lambda update: rate.astype(update.dtype) * update, updates)
    new_state = {
        "step": state["step"] + 1,
        "params": optax.apply_updates(state["params"], updates),
        "opt_state": opt_state,
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
