"""Runs of one shape share their compiled steps: the schedule and the seed are inputs of the programs, not
constants in them, so a sweep compiles each shape once across its budgets, rates and seeds."""

import jax
import numpy as np
import optax
import pytest

from gpt2jax.training import optim
from gpt2jax.training import trainer as trainer_module
from gpt2jax.training.trainer import build_trainer
from tests.helpers import compact_config


def _optax_schedule(schedule: str, peak: float, warmup: int, total: int, floor: float, stable_end: int):
    """The schedules as optax builds them: the reference the traced ones must equal."""
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), floor)
    warm = optax.linear_schedule(0.0, peak, warmup)
    if schedule == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(peak)], [warmup])
    decay = optax.linear_schedule(peak, floor, total - stable_end)
    return optax.join_schedules([warm, optax.constant_schedule(peak), decay], [warmup, stable_end])


@pytest.mark.parametrize(
    "schedule, peak, warmup, total",
    [
        ("cosine", 3e-3, 10, 100),
        ("cosine", 1e-2, 0, 37),
        ("wsd", 3e-3, 10, 100),
        ("wsd", 6e-4, 3, 7),
        ("wsd", 1e-2, 12, 10),  # warmup past the end: no decay
        ("constant", 2e-3, 5, 50),
    ],
)
def test_the_traced_schedule_gives_optaxs_rates_from_one_compiled_program(schedule, peak, warmup, total):
    config = compact_config(
        "unused",
        schedule=schedule,
        learning_rate=peak,
        warmup_steps=warmup,
        steps=total,
        min_lr_ratio=0.1,
        decay_fraction=0.2,
    )
    stable_end = optim.wsd_stable_end(total, warmup, 0.2)
    steps_N = jax.numpy.arange(total + 3, dtype=jax.numpy.int32)
    expected_N = jax.jit(jax.vmap(_optax_schedule(schedule, peak, warmup, total, 0.1 * peak, stable_end)))(steps_N)
    rate_at = jax.jit(jax.vmap(optim.rate_at, in_axes=(0, None)))
    # Within 1e-6: optax's constants are folded into its program (a division by a constant becomes a
    # product by its reciprocal), the traced ones cannot be; cosine's rates differed by up to 5.5e-7.
    np.testing.assert_allclose(rate_at(steps_N, optim.schedule_args(config.train)), expected_N, rtol=1e-6, atol=0)
    other = compact_config("unused", schedule="wsd", learning_rate=1.0, warmup_steps=1, steps=5)
    rate_at(steps_N, optim.schedule_args(other.train))
    assert rate_at._cache_size() == 1  # another schedule, the same program


def _losses(trainer, tokens, steps: int) -> list[float]:
    state = trainer.init_state()
    losses = []
    for step in range(steps):
        state, metrics = trainer.train_step(state, *trainer.train_batch(tokens, step), trainer.schedule)
        losses.append(float(metrics["loss"]))
    return losses


def test_runs_of_one_shape_share_one_compiled_step_and_each_trains_at_its_own_schedule_and_seed():
    tokens = np.random.default_rng(0).integers(0, 65, 4000).astype(np.uint16)
    trainer_module._PROGRAMS.clear()
    first = build_trainer(compact_config("unused", steps=5, learning_rate=1e-2, schedule="cosine", seed=0))
    second_config = compact_config("unused", steps=7, learning_rate=3e-3, warmup_steps=3, schedule="wsd", seed=1)
    second = build_trainer(second_config)
    assert second.train_step is first.train_step and second.init_state.func is first.init_state.func
    assert second.eval_step is first.eval_step and second.certify is first.certify
    wider = compact_config("unused")
    wider.model.n_embd = 64
    assert build_trainer(wider).train_step is not first.train_step  # another shape, another program
    _losses(first, tokens, 5)
    shared = _losses(second, tokens, 7)
    assert first.train_step._cache_size() == 1 and first.init_state.func._cache_size() == 1
    trainer_module._PROGRAMS.clear()  # as in a process of its own
    alone = _losses(build_trainer(second_config), tokens, 7)
    assert shared == alone


def test_muon_runs_at_other_learning_rates_do_not_share_a_program_their_branch_ratio_is_compiled_in():
    """Muon's branch scales its updates by muon_learning_rate / learning_rate inside the optimizer: a program
    shared across learning rates would train the second run at the first run's ratio."""
    adamw = [build_trainer(compact_config("unused", learning_rate=rate)) for rate in (1e-2, 3e-3)]
    muon = [build_trainer(compact_config("unused", learning_rate=rate, optimizer="muon")) for rate in (1e-2, 3e-3)]
    assert adamw[0].program_key == adamw[1].program_key
    assert muon[0].program_key != muon[1].program_key
    same_rate = build_trainer(compact_config("unused", learning_rate=1e-2, optimizer="muon", steps=99))
    assert same_rate.program_key == muon[0].program_key
