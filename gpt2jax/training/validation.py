"""Validation loss: the jitted eval step and the fixed windows of the val split it averages over.

The training loop and ``evaluate`` read the same windows (``loader.eval_batches``), so a
workdir's logged val loss and a later evaluation of its checkpoint agree.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gpt2jax import sharding
from gpt2jax.data import loader
from gpt2jax.training import steps


def compile_eval_step(graphdef, mesh: Mesh, param_shardings):
    """``steps.eval_step`` jitted for parameters laid out on ``param_shardings``, batches split over the mesh."""
    step = functools.partial(steps.eval_step, graphdef=graphdef, residual_sharding=sharding.residual_sharding(mesh))
    batch = sharding.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(param_shardings, batch, batch), out_shardings=NamedSharding(mesh, P()))


def validation_loss(
    eval_step, mesh: Mesh, params, tokens, *, batch_size: int, block_size: int, num_batches: int
) -> float:
    """Mean loss over the same evenly spaced validation windows every time."""
    losses = []
    for inputs, targets in loader.eval_batches(
        tokens,
        batch_size=batch_size,
        block_size=block_size,
        num_batches=num_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        losses.append(eval_step(params, *sharding.global_batch(mesh, (inputs, targets))))
    return float(np.mean(jax.device_get(losses)))
