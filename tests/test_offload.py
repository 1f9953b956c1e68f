"""``train.offload``: the optimizer's state, it and the float32 master weights, or those and the float32 gradient sum,
in host memory (``pinned_host``), the update streamed through the device a layer at a time.

The CPU backend has the pinned_host memory kind too, so the offloaded layouts compile and run here
as they would on a GPU, and their results are compared with a run that keeps everything on the device.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt2jax.files.workdir import read_metrics
from gpt2jax.training import loop, steps
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.training.trainer import build_trainer
from gpt2jax.trees import path_str
from tests.helpers import compact_config

STEPS = 20


def _config(data_dir, offload, optimizer="adamw", **train_overrides):
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
    config.train.optimizer = optimizer
    return config


def _losses(workdir):
    return [record["train_loss"] for record in read_metrics(workdir)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The same 20-step run with each offload: {offload: workdir}."""
    workdirs = {}
    for offload in ("none", "optimizer", "master", "all"):
        workdirs[offload] = tmp_path_factory.mktemp(f"offload_{offload}")
        loop.run(_config(data_dir, offload), workdirs[offload])
    return workdirs


@pytest.mark.parametrize("offload", ["optimizer", "master", "all"])
def test_a_run_with_offload_gives_the_same_losses_as_without(runs, offload):
    plain, offloaded = _losses(runs["none"]), _losses(runs[offload])
    assert len(plain) == STEPS
    # float32 throughout and the same operations in the same order: only where XLA fuses them may
    # differ between the layouts, a few float32 roundings (ulps of a loss near 4) over 20 steps.
    assert offloaded == pytest.approx(plain, rel=1e-6, abs=1e-6)
    assert plain[-1] < plain[0] - 0.5  # the run learns, so the comparison compares something


@pytest.mark.parametrize(
    "offload, host_parts",
    [
        ("none", set()),
        ("optimizer", {"opt_state"}),
        ("master", {"params", "opt_state"}),
        ("all", {"params", "opt_state"}),
    ],
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
    """The same values whichever layout restores them, each in the memory its layout names. (The two runs' states
    are not compared: the key bias's gradient is rounding noise that Adam scales up, and the layouts' sums of
    the global norm differ in rounding, so its last digits differ between runs whose losses agree.)"""
    for saved_with, restored_with in (("master", "none"), ("none", "master"), ("all", "none")):
        checkpointer = Checkpointer(runs[saved_with] / "checkpoints", writer=False)
        restored = checkpointer.restore(STEPS, build_trainer(_config(data_dir, restored_with)).abstract_state)
        kinds = {leaf.sharding.memory_kind for leaf in jax.tree.leaves(restored["opt_state"])}
        assert kinds == {"pinned_host" if restored_with == "master" else "device"}
        as_saved = checkpointer.restore(STEPS, build_trainer(_config(data_dir, saved_with)).abstract_state)
        for (path, value), expected in zip(
            jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(as_saved), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=path_str(path))


def test_a_run_resumed_with_another_offload_continues_the_same_losses(runs, data_dir, tmp_path):
    loop.run(_config(data_dir, "master", steps=10), tmp_path)
    final = loop.run(_config(data_dir, "none"), tmp_path)  # steps 10 to 20 without offload: no config change refused
    assert final["step"] == STEPS
    assert _losses(tmp_path) == pytest.approx(_losses(runs["none"]), rel=1e-6, abs=1e-6)


def test_an_unknown_offload_is_one_sentence(data_dir):
    with pytest.raises(ValueError, match=r"^train.offload='gpu' is not one of none, optimizer, master, all.$"):
        build_trainer(_config(data_dir, "gpu"))


def test_an_optimizer_that_pools_a_whole_parameter_is_refused_with_offload(data_dir):
    """Adafactor clips each parameter's update by its RMS over every layer of a stacked leaf, which a layer-at-a-time
    update would change; refused before anything compiles, and its state still sized by the dry run."""
    with pytest.raises(ValueError, match=r"^train.offload=master updates a layer at a time, and train.optimizer"):
        build_trainer(_config(data_dir, "master", optimizer="adafactor"))
    assert steps.offload_modes("adafactor") == ("none",)
    assert steps.offload_modes("muon") == tuple(steps.HOST_RESIDENT)


def test_the_streamed_update_is_the_whole_trees_update_for_each_optimizer_that_offloads(data_dir):
    """One step's update, layer by layer through the device, against optax's on the whole tree: the global-norm clip
    (a gradient far over the limit, so it acts), AdamW's decay mask, Muon's per-matrix orthogonalisation and
    both branches' step counts all come out the same."""
    for optimizer in ("adamw", "adamw_bf16", "muon"):
        trainer = build_trainer(_config(data_dir, "none", optimizer=optimizer))
        state = trainer.init_state()
        params, opt_state = state["params"], state["opt_state"]
        keys = iter(jax.random.split(jax.random.key(0), 64))
        grad_sum = jax.tree.map(
            lambda p: jax.device_put(30.0 * jax.random.normal(next(keys), p.shape, p.dtype), p.sharding), params
        )
        streamed = jax.jit(
            functools.partial(steps.streamed_update, trainer.optimizer, accum_steps=3, grad_clip=1.0, on_host=())
        )
        rate = jnp.float32(0.01)
        for _ in range(2):  # the second step reads the first's moments and counts
            grads = jax.tree.map(lambda g: g / 3, grad_sum)
            updates, expected_state = trainer.optimizer.update(grads, opt_state, params)
            expected = optax.apply_updates(params, jax.tree.map(lambda u: rate * u, updates))
            got, got_state, norm = streamed(grad_sum, opt_state, params, rate)
            assert float(norm) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-6) and float(norm) > 1
            for (path, value), reference in zip(
                jax.tree_util.tree_leaves_with_path((got, got_state)),
                jax.tree.leaves((expected, expected_state)),
                strict=True,
            ):
                np.testing.assert_allclose(
                    np.asarray(value, np.float32),
                    np.asarray(reference, np.float32),
                    rtol=2e-5,
                    atol=1e-7,
                    err_msg=f"{optimizer} {path_str(path)}",
                )
            params, opt_state = got, got_state


@pytest.mark.parametrize("part", ["params", "opt_state"])
def test_a_checkpoint_of_an_offloaded_state_is_refused_for_a_nan_in_any_one_layer(data_dir, part):
    """The check before a checkpoint reads the host's state a unit at a time (``steps.state_is_finite``): a NaN in the
    last layer of a stacked leaf, or in the token embedding's moment, is found all the same."""
    trainer = build_trainer(_config(data_dir, "all"))
    state = trainer.init_state()
    batch = trainer.train_batch(np.arange(4096, dtype=np.uint16) % 65, 0)
    assert bool(trainer.certify(state, *batch)[1])
    for target in ("h/mlp/fc_kernel", "wte"):
        paths = [path_str(path) for path, _ in jax.tree_util.tree_leaves_with_path(state[part])]
        index = next(i for i, name in enumerate(paths) if name.endswith(target))
        leaves, treedef = jax.tree.flatten(state[part])
        poisoned = np.asarray(leaves[index]).copy()
        poisoned[-1, ...] = np.nan  # the last layer of a stacked leaf, or the embedding's last row
        leaves[index] = jax.device_put(poisoned, leaves[index].sharding)
        assert leaves[index].sharding.memory_kind == "pinned_host"
        assert not bool(trainer.certify(state | {part: jax.tree.unflatten(treedef, leaves)}, *batch)[1]), target
