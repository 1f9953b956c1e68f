"""Every mesh layout on 8 fake CPU devices: the same training as one device, really split,
checkpoints that restore onto any mesh, and layouts that cannot work refused up front."""

import functools

import jax
import numpy as np
import pytest

from gpt2jax import flops
from gpt2jax.config import base_config
from gpt2jax.inference import weights
from gpt2jax.model import REMAT_POLICIES
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.training.memory import dry_run
from gpt2jax.training.trainer import build_trainer
from tests.helpers import run_main

VOCAB = 512  # small enough to keep the tests fast, divisible by every mesh axis here
STEPS = 3

LAYOUTS = {
    "data": dict(data=8, fsdp=1, tensor=1),
    "fsdp": dict(data=1, fsdp=8, tensor=1),
    "tensor": dict(data=2, fsdp=1, tensor=4),
    "fsdp_tensor": dict(data=1, fsdp=4, tensor=2),
    "mixed": dict(data=2, fsdp=2, tensor=2),
}

# Parameters (float32) one device holds, worked out by hand for the tiny model below.
# Matrices: wte 512x32 = 16384, wpe 16x32 = 512, and per layer qkv 3072, attention out
# 1024, fc 4096, proj 4096; vectors: 896 in all, of which the tensor-split qkv and fc
# biases are 2 x (96 + 128) = 448. The whole model is 42368.
PARAM_FLOATS_PER_DEVICE = {
    "data": 42368,  # a full copy everywhere
    "fsdp": 41472 // 8 + 896,  # every matrix split 8 ways along D, vectors whole
    # Heads, MLP width and vocabulary split 4 ways: wte, qkv, out, fc, proj and their biases.
    "tensor": (16384 + 2 * (3072 + 1024 + 4096 + 4096) + 448) // 4 + (512 + 896 - 448),
    # Matrices split 8 ways (wpe only 4: it has no head or width axis), split biases 2 ways.
    "fsdp_tensor": (16384 + 2 * (3072 + 1024 + 4096 + 4096)) // 8 + 512 // 4 + 448 // 2 + (896 - 448),
    # fsdp=2 x tensor=2 (data keeps copies): matrices split 4 ways, wpe and split biases 2 ways.
    "mixed": (16384 + 2 * (3072 + 1024 + 4096 + 4096)) // 4 + 512 // 2 + 448 // 2 + (896 - 448),
}


def tiny_config(**mesh):
    config = base_config()
    config.model.update(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=VOCAB, vocab_multiple=64)
    # Two micro-batches of 8: accumulation runs too, and 8 rows split over up to 8 devices.
    config.train.update(batch_size=16, grad_accum_steps=2, steps=10, learning_rate=1e-2, warmup_steps=1)
    config.mesh.update(mesh or dict(data=1, fsdp=-1, tensor=1))
    return config


def batches():
    """(inputs, targets) of shape [accum 2, micro 8, T 16] for each step, from random tokens."""
    rng = np.random.default_rng(0)
    windows = rng.integers(0, VOCAB, size=(STEPS, 2, 8, 17), dtype=np.int32)
    return [(window[..., :-1], window[..., 1:]) for window in windows]


@functools.cache
def trained(layout: str | None):
    """(trainer, state after STEPS steps, losses) on one device (None) or on all 8 in a layout."""
    if layout is None:
        trainer = build_trainer(tiny_config(), jax.devices()[:1])
    else:
        trainer = build_trainer(tiny_config(**LAYOUTS[layout]))
    state = trainer.init_state()
    losses = []
    for inputs, targets in batches():
        batch = trainer.batch_sharding(leading_unsharded=1)
        state, metrics = trainer.train_step(
            state, jax.device_put(inputs, batch), jax.device_put(targets, batch), trainer.schedule
        )
        losses.append(float(metrics["loss"]))
    return trainer, state, losses


def bytes_on_first_device(tree) -> int:
    first = jax.devices()[0]
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == first
    )


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_trains_like_one_device_and_really_splits(layout):
    _, reference_state, reference_losses = trained(None)
    trainer, state, losses = trained(layout)
    assert dict(trainer.mesh.shape) == LAYOUTS[layout]
    np.testing.assert_allclose(losses, reference_losses, rtol=2e-6)
    assert losses[-1] < losses[0]  # it learned, so the comparison is not of two untouched states
    for leaf, reference in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(reference_state["params"])):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(reference), atol=5e-5)

    params_bytes = bytes_on_first_device(state["params"])
    assert params_bytes == 4 * PARAM_FLOATS_PER_DEVICE[layout]
    # AdamW's two moments are split exactly like the parameters; only step counters are extra.
    assert 0 < bytes_on_first_device(state["opt_state"]) - 2 * params_bytes <= 16


def test_checkpoint_saved_on_fsdp_x_tensor_restores_on_one_and_four_devices(tmp_path):
    trainer, state, _ = trained("fsdp_tensor")
    (tmp_path / "config.json").write_text(trainer.config.to_json_best_effort())
    saver = Checkpointer(tmp_path / "checkpoints", asynchronous=False)
    saver.save(STEPS, state)
    saver.close()
    saved = jax.device_get(state)

    # Evaluation on one device, the way `evaluate` and `sample` restore.
    one = weights.restore_checkpoint(tmp_path, devices=jax.devices()[:1])
    assert one.step == STEPS and one.mesh.size == 1
    for leaf, expected in zip(jax.tree.leaves(one.params), jax.tree.leaves(saved["params"])):
        assert leaf.sharding.device_set == {jax.devices()[0]}
        np.testing.assert_array_equal(np.asarray(leaf), expected)

    # The whole train state on 4 other devices in another layout, to resume training there.
    four = build_trainer(tiny_config(data=2, fsdp=1, tensor=2), jax.devices()[4:])
    loader = Checkpointer(tmp_path / "checkpoints")
    restored = loader.restore(STEPS, four.abstract_state)
    loader.close()
    for leaf, expected, target in zip(
        jax.tree.leaves(restored), jax.tree.leaves(saved), jax.tree.leaves(four.abstract_state)
    ):
        assert leaf.sharding == target.sharding
        np.testing.assert_array_equal(np.asarray(leaf), expected)
    qkv_kernel = restored["params"]["h"]["attn"]["qkv_kernel"]
    assert qkv_kernel.addressable_shards[0].data.shape == (2, 32, 3, 2, 8)  # heads split 2 ways, layers whole


@pytest.mark.parametrize(
    "mesh, model, train_overrides, message",
    [
        (
            dict(data=3, fsdp=1, tensor=1),
            {},
            {},
            r"^mesh data x fsdp x tensor = .* uses 3 devices but there are 8; make the product equal the device count\.$",
        ),
        (dict(data=3, fsdp=-1, tensor=1), {}, {}, r"^mesh .* cannot be filled: 8 devices are not divisible by 3\.$"),
        (dict(data=-1, fsdp=-1, tensor=1), {}, {}, r"^at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1"),
        (dict(data=1, fsdp=1, tensor=8), {}, {}, r"^model\.n_head=4 is not divisible by mesh\.tensor=8\.$"),
        (
            dict(data=1, fsdp=-1, tensor=2),
            dict(n_head=1),
            {},
            r"^model\.n_head=1 is not divisible by mesh\.tensor=2\.$",
        ),
        (
            dict(data=2, fsdp=4, tensor=1),
            {},
            dict(grad_accum_steps=4),
            r"^the micro-batch of 4 sequences .* is not divisible by mesh data x fsdp = 8\.$",
        ),
    ],
)
def test_layouts_that_cannot_work_are_refused_before_compiling(mesh, model, train_overrides, message):
    config = tiny_config(**mesh)
    config.model.update(model)
    config.train.update(train_overrides)
    with pytest.raises(ValueError, match=message):
        build_trainer(config)


def test_cli_refuses_a_mesh_in_one_sentence():
    result = run_main(["--config", "configs/tiny.py", "--dry_run", "--config.mesh.tensor=8"])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: model.n_head=4 is not divisible by mesh.tensor=8."


def test_dry_run_reports_per_device_memory_and_remat_keeps_fewer_activations():
    summaries = {}
    for remat in ("none", "dots", "full"):
        config = tiny_config(data=1, fsdp=8, tensor=1)
        config.model.update(block_size=64, remat=remat)
        summaries[remat] = dry_run(config)
    memory = summaries["none"]["per_device_bytes"]
    assert summaries["none"]["mesh"] == LAYOUTS["fsdp"]
    assert memory["params"] == 4 * (PARAM_FLOATS_PER_DEVICE["fsdp"] + (64 - 16) * 32 // 8)  # wpe: 64 rows
    assert memory["optimizer_state"] - 2 * memory["params"] <= 16
    # XLA's total is the state, the temporaries and what is left: this device's rows of the batch.
    state_and_temporaries = memory["params"] + memory["optimizer_state"] + memory["xla_activations_and_temporaries"]
    assert 0 <= memory["xla_total"] - state_and_temporaries < 4096
    # The estimate adds its parts; the gradients are a micro-batch's and their running sum.
    parts = ("params", "optimizer_state", "gradients", "activations_saved_for_backward", "largest_temporaries")
    assert memory["estimate_total"] == sum(memory[part] for part in parts)
    assert memory["gradients"] == 2 * memory["params"]
    # The largest temporaries are the float32 logits of this device's 1 row (64 positions) and their gradient.
    assert memory["largest_temporaries"] == 2 * 64 * flops.padded_vocab_size(VOCAB, 64) * 4
    assert summaries["none"]["fits"] == {"12 GiB": True, "24 GiB": True, "80 GiB": True}
    saved = {
        remat: summary["per_device_bytes"]["activations_saved_for_backward"] for remat, summary in summaries.items()
    }
    # Full remat keeps little beyond each block's input and the logits; dots keeps the matmuls.
    assert saved["full"] < saved["dots"] < 0.6 * saved["none"]
    # Every dry run reports what each policy would keep, whatever its own.
    for summary in summaries.values():
        by_remat = summary["activations_saved_for_backward_by_remat"]
        assert by_remat.keys() == REMAT_POLICIES.keys() and {policy: by_remat[policy] for policy in saved} == saved
