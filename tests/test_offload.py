"""``train.offload``: the optimizer's state, or it and the float32 master weights, in host memory (``pinned_host``).

The CPU backend has the pinned_host memory kind too, so the offloaded layouts compile and run here
as they would on a GPU, and their results are compared with a run that keeps everything on the device.
"""

import jax
import numpy as np
import pytest

from gpt2jax.files.workdir import read_metrics
from gpt2jax.training import loop
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.training.trainer import build_trainer
from gpt2jax.trees import path_str
from tests.helpers import compact_config

STEPS = 20


def _config(data_dir, offload, **train_overrides):
    """A 1-layer float32 model (exact arithmetic in every layout), two micro-batches a step, a loss a step, and a
    constant rate after warmup, so a run of 10 steps extended to 20 is the run of 20."""
    train = dict(
        schedule="constant",
        steps=STEPS,
        log_every=1,
        eval_every=10,
        checkpoint_every=10,
        batch_size=16,
        grad_accum_steps=2,
    )
    config = compact_config(data_dir, **(train | train_overrides))
    config.model.dtype = "float32"
    config.train.offload = offload
    return config


def _losses(workdir):
    return [record["train_loss"] for record in read_metrics(workdir)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The same 20-step run with each offload: {offload: workdir}."""
    workdirs = {}
    for offload in ("none", "optimizer", "master"):
        workdirs[offload] = tmp_path_factory.mktemp(f"offload_{offload}")
        loop.run(_config(data_dir, offload), workdirs[offload])
    return workdirs


@pytest.mark.parametrize("offload", ["optimizer", "master"])
def test_a_run_with_offload_gives_the_same_losses_as_without(runs, offload):
    plain, offloaded = _losses(runs["none"]), _losses(runs[offload])
    assert len(plain) == STEPS
    # float32 throughout and the same operations in the same order: only where XLA fuses them may
    # differ between the layouts, a few float32 roundings (ulps of a loss near 4) over 20 steps.
    assert offloaded == pytest.approx(plain, rel=1e-6, abs=1e-6)
    assert plain[-1] < plain[0] - 0.5  # the run learns, so the comparison compares something


@pytest.mark.parametrize(
    "offload, host_parts", [("none", set()), ("optimizer", {"opt_state"}), ("master", {"params", "opt_state"})]
)
def test_the_offloaded_state_lives_in_host_memory_before_and_after_a_step(data_dir, offload, host_parts):
    trainer = build_trainer(_config(data_dir, offload))
    state = trainer.init_state()
    state, _ = trainer.train_step(
        state, *trainer.train_batch(np.arange(4096, dtype=np.uint16) % 65, 0), trainer.schedule
    )
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        part = path_str(path).split("/")[0]
        expected = "pinned_host" if part in host_parts else "device"
        assert leaf.sharding.memory_kind == expected, path_str(path)
        assert leaf.format.sharding.memory_kind == expected, path_str(path)
    abstract_kinds = {leaf.sharding.memory_kind for leaf in jax.tree.leaves(trainer.abstract_state["opt_state"])}
    assert abstract_kinds == {"pinned_host" if host_parts else "device"}


def test_an_offloaded_checkpoint_restores_without_offload_and_the_reverse(runs, data_dir):
    for saved_with, restored_with in (("master", "none"), ("none", "master")):
        target = build_trainer(_config(data_dir, restored_with))
        checkpointer = Checkpointer(runs[saved_with] / "checkpoints", writer=False)
        restored = checkpointer.restore(STEPS, target.abstract_state)
        kinds = {leaf.sharding.memory_kind for leaf in jax.tree.leaves(restored["opt_state"])}
        assert kinds == {"pinned_host" if restored_with == "master" else "device"}
        original = Checkpointer(runs[restored_with] / "checkpoints", writer=False).restore(STEPS, target.abstract_state)
        for (path, value), expected in zip(
            jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(original), strict=True
        ):
            np.testing.assert_allclose(
                np.asarray(value), np.asarray(expected), rtol=1e-5, atol=1e-6, err_msg=path_str(path)
            )


def test_a_run_resumed_with_another_offload_continues_the_same_losses(runs, data_dir, tmp_path):
    loop.run(_config(data_dir, "master", steps=10), tmp_path)
    final = loop.run(_config(data_dir, "none"), tmp_path)  # steps 10 to 20 without offload: no config change refused
    assert final["step"] == STEPS
    assert _losses(tmp_path) == pytest.approx(_losses(runs["none"]), rel=1e-6, abs=1e-6)


def test_an_unknown_offload_is_one_sentence(data_dir):
    with pytest.raises(ValueError, match=r"^train.offload='gpu' is not one of none, optimizer, master.$"):
        build_trainer(_config(data_dir, "gpu"))
