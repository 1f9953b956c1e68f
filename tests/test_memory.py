"""The dry run's accounting, on GPT-2's real shapes, abstractly: nothing here allocates a model."""

import jax
import pytest

from gpt2jax import flops
from gpt2jax.config import load_config_file
from gpt2jax.model import AUTO_LOSS_CHUNK
from gpt2jax.training import footprint, memory
from gpt2jax.training.trainer import build_trainer

GIB = 2**30


def _one_device_trainer(name: str, **model):
    config = load_config_file(name)
    config.model.update(model)
    config.mesh.update(data=1, fsdp=1, tensor=1)
    return build_trainer(config, devices=jax.devices()[:1])


@pytest.mark.parametrize("name", ["small", "medium"])
def test_xla_flops_count_every_scanned_layer_and_micro_batch(name):
    # At depth 12, context 1024, with the config's 32 or 64 accumulated micro-batches: XLA's
    # own count of a scan body counted once would give about 1/12 of the layers' FLOPs.
    trainer = _one_device_trainer(name, n_layer=12)
    analytic = flops.flops_per_token_palm(flops.Shape.from_config(trainer.model_config))
    assert memory.xla_flops_per_token(trainer) == pytest.approx(analytic, rel=0.05)


def test_scanned_flops_multiply_nested_scan_bodies_by_their_trip_counts():
    import jax.numpy as jnp

    def nested(x):
        inner = lambda c, _: (c @ c, None)
        outer = lambda c, _: (jax.lax.scan(inner, c, None, length=3)[0], None)
        return jax.lax.scan(outer, x, None, length=5)[0]

    jaxpr = jax.make_jaxpr(nested)(jax.ShapeDtypeStruct((32, 32), jnp.float32))
    assert memory.scanned_flops(jaxpr) == pytest.approx(15 * 2 * 32**3, rel=0.01)


def test_small_12gib_fits_a_12_gib_card_by_the_platform_independent_estimate():
    trainer = _one_device_trainer("small_12gib")
    assert trainer.config.train.batch_size == load_config_file("small").train.batch_size  # GPT-2's tokens a step
    estimate = memory.estimate(trainer)
    assert estimate["total"] <= memory.usable_fraction() * 12 * GIB
    # The logits path keeps no float32 B x T x V: the largest temporaries are well under the 1.5 GiB
    # that one micro-batch of 8 x 1024 float32 logits took, and their gradient as much again.
    assert estimate["largest_temporaries"] < 8 * 1024 * 50304 * 4


def _dry_run_summary(remat: str, accumulation: tuple, parts: dict, saved: dict, fits: tuple) -> dict:
    """A dry run's summary with sizes in GiB: (grad_accum_steps, micro_batch_size), per-device parts, the
    activations each remat policy keeps, and whether the 12, 24 and 80 GiB cards fit."""
    gib = 2**30
    return {
        "model": {"remat": remat},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        "attention": "xla",
        "n_params": 124e6,
        "n_params_non_embedding": 85e6,
        "grad_accum_steps": accumulation[0],
        "micro_batch_size": accumulation[1],
        "per_device_bytes": {"largest_temporaries": gib} | {key: value * gib for key, value in parts.items()},
        "activations_saved_for_backward_by_remat": {policy: value * gib for policy, value in saved.items()},
        "fits": dict(zip(("12 GiB", "24 GiB", "80 GiB"), fits)),
    }


def test_the_dry_run_names_the_cheapest_change_that_fits_a_card():
    """A card the step does not fit gets a remat policy before smaller micro-batches, and full recompute last."""
    gib = 2**30
    summary = _dry_run_summary(
        remat="none",
        accumulation=(32, 16),
        parts=dict(estimate_total=30, params=1, optimizer_state=2, gradients=2, activations_saved_for_backward=24),
        saved={"none": 24, "dots": 8, "full": 2},
        fits=(False, False, True),
    )
    text = memory.format_dry_run(summary)
    lines = text.splitlines()
    # 6 GiB besides the activations: dots (8 GiB) fits 18 GiB as it is, and 9 GiB at a quarter of the rows.
    assert lines[2].endswith("does not fit; fits with --config.model.remat=dots --config.train.grad_accum_steps=128")
    assert lines[3].endswith("does not fit; fits with --config.model.remat=dots")
    assert lines[4].endswith("fits")
    summary["activations_saved_for_backward_by_remat"] = {"none": 24 * gib, "full": 24 * gib}
    summary["micro_batch_size"] = 1
    assert "add devices (mesh.fsdp)" in memory.format_dry_run(summary).splitlines()[2]


def test_the_dry_run_names_an_optimizer_only_where_its_smaller_state_makes_the_step_fit():
    """GPT-2 large's step on a 12 GiB card fits with no optimizer gpt2jax has (measured on an H200
    inside 9 GiB: each ran out of memory), so the hint names none; a step that sheds enough with
    bfloat16 moments or Adafactor gets that optimizer, the closest to AdamW first."""
    gib = 2**30
    summary = _dry_run_summary(
        remat="dots",
        accumulation=(4, 1),
        parts=dict(estimate_total=10, params=2, optimizer_state=4, gradients=2.5, activations_saved_for_backward=1),
        saved={"none": 2, "dots": 1, "full": 0.5},
        fits=(False, True, True),
    )
    summary["optimizer_state_by_optimizer"] = {"adamw": 4 * gib, "adamw_bf16": 2 * gib, "adafactor": 0.5 * gib}
    # 9 GiB usable; 9 GiB besides the activations: bfloat16 moments leave 7 + 1 (dots) = 8.
    assert (
        memory.format_dry_run(summary)
        .splitlines()[2]
        .endswith("does not fit; fits with --config.train.optimizer=adamw_bf16 --config.model.remat=none")
    )
    summary["per_device_bytes"]["estimate_total"] = 13 * gib  # 12 besides the activations: only Adafactor's 8.5 + 0.5
    assert (
        memory.format_dry_run(summary)
        .splitlines()[2]
        .endswith("does not fit; fits with --config.train.optimizer=adafactor --config.model.remat=full")
    )
    summary["per_device_bytes"]["estimate_total"] = 16 * gib
    line = memory.format_dry_run(summary).splitlines()[2]
    assert line.endswith("no remat policy, micro-batch, offload or optimizer fits it: add devices (mesh.fsdp)")
    assert "adafactor" not in line


def test_a_step_xla_cannot_count_has_no_flop_figure_rather_than_zero(monkeypatch):
    """On an H200 the dry run printed xla_flops_per_token 0.0: a GPU-lowered module has no cost analysis."""
    trainer = _one_device_trainer("tiny")

    def uncountable(closed_jaxpr):
        raise memory.UncountableError("no flops")

    monkeypatch.setattr(memory, "_xla_flops", uncountable)
    assert memory.xla_flops_per_token(trainer) is None


def test_auto_loss_chunk_takes_the_most_positions_the_memory_left_holds_as_the_estimate_counts_them():
    """The chunk halves from the whole sequence until the dry run's estimate of the step fits the device."""
    trainer = _one_device_trainer("tiny", block_size=1024, loss_chunk="auto")
    # A CPU reports no device memory: the chunk every GPU figure in docs/benchmarks.md ran with.
    assert trainer.model_config.loss_chunk == AUTO_LOSS_CHUNK
    total = {chunk: memory.estimate(trainer.with_model(loss_chunk=chunk))["total"] for chunk in (256, 512)}
    assert footprint.auto_loss_chunk(trainer, total[256]) == 256
    assert footprint.auto_loss_chunk(trainer, total[512] - 1) == 256
    assert footprint.auto_loss_chunk(trainer, total[512]) == 512
    assert footprint.auto_loss_chunk(trainer, 2**40) == 1024  # room for all: one chunk, the whole sequence
    assert footprint.auto_loss_chunk(trainer, 0) == AUTO_LOSS_CHUNK  # room for none: the floor (the dry run says so)


def test_the_dry_run_header_says_what_each_total_counts():
    """The header printed the estimate (29.62 GiB) beside a JSON xla_total of 44.6 GiB, reconciling neither."""
    summary = _dry_run_summary(
        remat="none",
        accumulation=(1, 8),
        parts=dict(estimate_total=29.62, params=0.5, optimizer_state=1, gradients=1, activations_saved_for_backward=26),
        saved={"none": 26, "full": 2},
        fits=(False, False, True),
    )
    gib = 2**30
    summary["platform"] = "cpu"
    summary["per_device_bytes"].update(xla_total=int(44.6 * gib), xla_activations_and_temporaries=int(43.0 * gib))
    lines = memory.format_dry_run(summary).splitlines()
    assert lines[1].startswith("train step per device, estimated from shapes (JSON estimate_total): 29.62 GiB = ")
    assert lines[2] == (
        "XLA's buffers for this step on cpu (JSON xla_total): 44.60 GiB = state, batch and undonated outputs 1.60 + "
        "activations, gradients and temporaries 43.00; platform-dependent, so the fits below read the estimate"
    )
    assert lines[3].startswith("  12 GiB card (9.0 GiB usable): does not fit")


def _padded_params(trainer) -> int:
    return flops.count_params(flops.Shape.from_config(trainer.model_config, padded=True))["n_params"]


def test_each_offload_layout_moves_the_state_it_names_to_the_host_as_counted_by_hand():
    """Counted from GPT-2 tiny's parameter count: float32 4 bytes, bfloat16 2, AdamW's two float32 moments 8."""
    trainer = _one_device_trainer("tiny", dtype="bfloat16")
    n, vocab, width = _padded_params(trainer), trainer.model_config.padded_vocab_size, trainer.model_config.n_embd
    layers, block, accum = trainer.model_config.n_layer, trainer.model_config.block_size, trainer.accum_steps
    moments = footprint.shard_bytes(trainer.abstract_state["opt_state"])
    assert 8 * n <= moments <= 8 * n + 64  # and the step count
    per_element = moments / n
    # The update's units: wte, wpe and ln_f's scale and bias at once, then one layer of the stack.
    outside = vocab * width + block * width + 2 * width
    layer = (n - outside) // layers
    assert outside > layer  # so the largest set is the first unit and a layer
    sum_on_device = 4 * n if accum > 1 else 0
    expected = {  # device params, device optimizer state, gradients, stream; host master, moments, gradient sum
        "none": (4 * n, moments, 4 * n + sum_on_device, 0, 0, 0, 0),
        "optimizer": (4 * n, 0, 4 * n + sum_on_device, per_element * (outside + layer), 0, moments, 0),
        "master": (2 * n, 0, 2 * n + sum_on_device, (per_element + 8) * (outside + layer), 4 * n, moments, 0),
        "all": (2 * n, 0, 2 * n, (per_element + 8) * (outside + layer), 4 * n, moments, 4 * n),
    }
    for mode, (params, optimizer, gradients, stream, master, offloaded, gradient_sum) in expected.items():
        device, host = footprint.state_bytes(trainer, mode), footprint.host_bytes(trainer, mode)
        assert (device["params"], device["optimizer_state"], device["gradients"]) == (params, optimizer, gradients)
        assert device["offload_stream"] == pytest.approx(stream, abs=1)
        assert (host["master_params"], host["optimizer_state"], host["gradient_sum"]) == (
            master,
            offloaded,
            gradient_sum,
        )
        assert host["checkpoint_copy"] == 4 * n + moments  # every layout's checkpoint writes the float32 state
        # The state down and up once a step; with ``all`` the gradient sum down and up every micro-batch, and down
        # once more for the update.
        traffic = 2 * (master + offloaded) + (2 * accum + 1) * gradient_sum
        assert footprint.offload_traffic_bytes(trainer, mode) == traffic
    with pytest.raises(ValueError, match=r"^train.offload='disk' is not one of none, optimizer, master, all\.$"):
        footprint.state_bytes(trainer, "disk")


def test_large_12gib_fits_a_12_gib_cards_share_by_the_estimate_with_its_float32_state_in_host_memory():
    trainer = _one_device_trainer("large_12gib")
    config = trainer.config
    assert (config.train.optimizer, config.train.offload, trainer.model_config.remat) == ("adamw", "master", "full")
    assert trainer.micro_batch_size == 1 and config.train.batch_size == load_config_file("small").train.batch_size
    share = 0.75 * 12 * GIB  # JAX's default share of a 12 GiB card
    device = memory.estimate(trainer)
    assert device["total"] <= share
    n = _padded_params(trainer)
    # bf16 weights on the card; the gradients a micro-batch's in bf16 and the float32 sum of 512 micro-batches
    assert device["params"] == 2 * n and device["gradients"] == 2 * n + 4 * n and device["optimizer_state"] == 0
    # Without offload, or with the moments alone on the host, the same step does not fit.
    assert memory.estimate(trainer, "none")["total"] > share
    assert memory.estimate(trainer, "optimizer")["total"] > share
    host = memory.host_estimate(trainer)
    assert host["optimizer_state"] == pytest.approx(8 * n, abs=64) and host["master_params"] == 4 * n  # Adam's counts


def test_xl_12gib_fits_a_12_gib_cards_share_by_the_estimate_with_its_gradient_sum_in_host_memory():
    trainer = _one_device_trainer("xl_12gib")
    config = trainer.config
    assert (config.train.optimizer, config.train.offload, trainer.model_config.remat) == ("adamw", "all", "full")
    assert trainer.micro_batch_size * trainer.accum_steps == config.train.batch_size == 512
    share = 0.75 * 12 * GIB
    device = memory.estimate(trainer)
    n = _padded_params(trainer)
    # bf16 weights and a micro-batch's bf16 gradients on the card, and no float32 sum
    assert device["params"] == 2 * n and device["gradients"] == 2 * n and device["optimizer_state"] == 0
    assert device["total"] <= share
    # With the sum on the card (master), the same step does not fit even 95% of the card: 11.6 GiB of weights
    # and gradients before anything else.
    assert memory.estimate(trainer, "master")["total"] > 0.95 * 12 * GIB
    host = memory.host_estimate(trainer)
    assert (host["master_params"], host["gradient_sum"]) == (4 * n, 4 * n)


def test_a_run_whose_host_memory_is_short_is_refused_in_one_sentence_before_it_starts():
    """On a CPU the host holds each device's step as well as what offload and a checkpoint keep there."""
    trainer = _one_device_trainer("tiny", dtype="bfloat16")
    config = trainer.config
    config.train.offload = "master"
    host = memory.host_estimate(trainer)
    needed = memory.estimate(trainer)["total"] + host["total"]
    assert host["total"] == 2 * 4 * _padded_params(trainer) + 2 * host["optimizer_state"]  # master + moments, twice
    assert memory.host_memory(trainer, available=needed)[0] == needed
    memory.check_host_fits(trainer, available=needed)
    with pytest.raises(
        ValueError,
        match=r"^the train step and a checkpoint's copy of its state in this host's memory "
        r"need about \d+\.\d GiB by the dry run's estimate, more than the \d+\.\d GiB available; make the model smaller ",
    ):
        memory.check_host_fits(trainer, available=needed - 1)


def test_the_dry_run_prints_host_memory_and_names_an_offload_that_makes_the_step_fit():
    gib = 2**30
    summary = _dry_run_summary(
        remat="dots",
        accumulation=(4, 1),
        parts=dict(estimate_total=14, params=4, optimizer_state=8, gradients=1, activations_saved_for_backward=1),
        saved={"none": 2, "dots": 1, "full": 0.5},
        fits=(False, True, True),
    )
    summary["offload"] = "none"
    summary["per_device_host_bytes"] = {"master_params": 0, "optimizer_state": 0, "checkpoint_copy": 12 * gib} | {
        "total": 12 * gib
    }
    summary["estimate_by_offload"] = {
        "none": {"device": 14 * gib, "host": 12 * gib},
        "optimizer": {"device": 10 * gib, "host": 20 * gib},  # 9 besides the activations: full remat makes 9.5
        "master": {"device": 8.5 * gib, "host": 24 * gib},  # 9.5 GiB without remat: dots, as it is, fits
    }
    lines = memory.format_dry_run(summary).splitlines()
    assert lines[2] == (
        "host memory per device, train.offload=none (JSON per_device_host_bytes): 12.00 GiB = master weights 0.00"
        " + optimizer 0.00 + a checkpoint's copy of the state 12.00"
    )
    # optimizer comes first, but needs full remat and still does not fit 9 GiB; master fits as it is.
    assert lines[3].endswith(
        "does not fit; fits with --config.train.offload=master --config.model.remat=dots (24.0 GiB of host memory a device)"
    )


def test_beside_an_accelerator_the_host_keeps_the_offloaded_state_and_is_told_to_offload_less(monkeypatch):
    import types

    trainer = _one_device_trainer("tiny", dtype="bfloat16")
    trainer.config.train.offload = "master"
    monkeypatch.setattr(memory, "_local_devices", lambda trainer: [types.SimpleNamespace(platform="gpu")])
    host = memory.host_estimate(trainer)
    assert memory.host_memory(trainer, available=2**40)[0] == host["total"]  # the device's step is not in it
    offloaded = (host["master_params"] + host["optimizer_state"]) / GIB
    with pytest.raises(ValueError) as refused:
        memory.check_host_fits(trainer, available=1)
    assert str(refused.value).startswith(
        f"the state offloaded to this host ({offloaded:.1f} GiB, train.offload=master) and a checkpoint's copy of it "
        f"need about {host['total'] / GIB:.1f} GiB by the dry run's estimate, more than the 0.0 GiB available; "
        "offload less (--config.train.offload=optimizer or none)"
    )


def test_the_step_is_traced_once_for_every_trainer_whose_weights_and_micro_batch_it_reads_alike(monkeypatch):
    """A sweep checked each point's memory twice, tracing the step each time: 0.74 s a check, 27% of the GPU
    study's smoke run. Points of one shape share the trace; a new micro-batch, remat or width does not."""
    traces = []
    real = memory.saved_for_backward_bytes
    monkeypatch.setattr(memory, "saved_for_backward_bytes", lambda trainer: traces.append(trainer) or real(trainer))
    monkeypatch.setattr(memory, "_TRACED", {})

    def trainer(**changes):
        config = load_config_file("tiny")
        config.mesh.update(data=1, fsdp=1, tensor=1)
        for key, value in changes.items():
            section, name = key.split("__")
            config[section][name] = value
        return build_trainer(config, devices=jax.devices()[:1])

    first = memory.estimate(trainer())
    # Another seed, rate, step count or optimizer: the same trace.
    for alike in (dict(train__seed=7), dict(train__learning_rate=1e-2, train__steps=9), dict(train__optimizer="muon")):
        assert memory.traced_bytes(trainer(**alike)) == {key: first[key] for key in memory.traced_bytes(trainer())}
    assert len(traces) == 1
    # Another micro-batch, remat or width: traced again, and each figure is its own.
    saved = {first["activations_saved_for_backward"]}
    for different in (dict(train__batch_size=8), dict(model__remat="full"), dict(model__n_embd=96)):
        saved.add(memory.traced_bytes(trainer(**different))["activations_saved_for_backward"])
    assert len(traces) == 4 and len(saved) == 4
