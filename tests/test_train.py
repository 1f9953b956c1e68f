import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpt2jax import flops
from gpt2jax.config import SHIPPED_CONFIGS, load_config_file
from gpt2jax.data.loader import prepared_data
from gpt2jax.files.workdir import METRICS_FILE
from gpt2jax.inference import weights
from gpt2jax.inference.sampling import sample_text
from gpt2jax.inference.scoring import evaluate_checkpoint
from gpt2jax.model import PRESETS, GPTConfig, abstract_model, count_model_params
from gpt2jax.training import loop, optim, validation
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.training.footprint import shard_bytes
from gpt2jax.training.trainer import Trainer, build_trainer
from gpt2jax.trees import path_str
from tests.helpers import REPO, child_xla_flags, compact_config, config_flags, config_overrides, run_main, tiny_config


def _records(workdir):
    return [json.loads(line) for line in (Path(workdir) / METRICS_FILE).read_text().splitlines()]


# This module runs in two child processes (tests/conftest.py, OWN_PROCESS_MODULES), shared out between CI's two
# workers: the tests that read the one trained run below with AdamW's runs (AdamW's own reuses the run's compiled
# step), and the rest. Measured on a loaded 2-core EPYC (2026-12-07): 686 s and 352 s with the four optimizers'
# runs in the first, about 550 s and 480 s with two of them moved.
OPTIMIZERS_IN_THE_TRAINED_RUNS_CHILD = ("adamw", "adamw_bf16")
IN_THE_TRAINED_RUNS_CHILD = pytest.mark.own_process("trained_run")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One tiny run shared by the tests that only read its results."""
    workdir = tmp_path_factory.mktemp("run")
    final = loop.run(tiny_config(data_dir), workdir)
    return workdir, final


@pytest.mark.parametrize("path", sorted(SHIPPED_CONFIGS.glob("*.py")), ids=lambda p: p.stem)
def test_every_config_loads(path):
    config = load_config_file(str(path))
    assert load_config_file(path.stem).to_dict() == config.to_dict()  # by name, from anywhere
    model_config = GPTConfig.from_config(config.model)
    assert config.train.batch_size % config.train.grad_accum_steps == 0
    optim.learning_rate_schedule(config.train)
    if path.stem != "tiny":
        # The four GPT-2 sizes: published shapes, ~0.5M tokens a step, a real corpus.
        preset = {"small": "gpt2", "medium": "gpt2-medium", "large": "gpt2-large", "xl": "gpt2-xl"}[
            path.stem.split("_")[0]
        ]
        assert {k: config.model[k] for k in ("n_layer", "n_head", "n_embd")} == PRESETS[preset]
        assert model_config.block_size == 1024
        assert config.train.batch_size * model_config.block_size == 524_288
        assert config.data.source == "hf:HuggingFaceFW/fineweb-edu:sample-10BT"


@IN_THE_TRAINED_RUNS_CHILD
def test_tiny_run_learns_logs_and_checkpoints(trained):
    workdir, final = trained
    records = _records(workdir)
    assert [r["step"] for r in records] == [3, 6, 9, 12]
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.5
    assert final["val_loss"] == records[-1]["val_loss"]
    for key in ("learning_rate", "grad_norm", "tokens_seen", "flops_seen", "tokens_per_s", "mfu"):
        assert key in records[-1]
    assert records[-1]["tokens_seen"] == 12 * 8 * 16
    per_token = flops.flops_per_token_palm(flops.Shape(2, 4, 32, 50257, 16))
    assert records[-1]["flops_seen"] == pytest.approx(12 * 8 * 16 * per_token)
    checkpointer = Checkpointer(workdir / "checkpoints")
    assert checkpointer.committed_steps() == [6, 12]
    checkpointer.close()


def test_tensorboard_events_mirror_the_metrics(data_dir, tmp_path):
    """In a process of its own: late in a full suite run, this test's training aborted inside XLA
    (3 runs of 4) after tensorboardX's protobuf code had loaded beside other libraries'."""
    pytest.importorskip("tensorboardX")
    config = tiny_config(data_dir, steps=3, log_every=1, tensorboard=True)
    child = f"""
import json, pathlib
from tensorboardX.proto.event_pb2 import Event
from gpt2jax.config import load_config_file
from gpt2jax.training import loop
config = load_config_file("tiny")
config.update_from_flattened_dict({config_overrides(config)!r})
loop.run(config, pathlib.Path({str(tmp_path)!r}))
(event_file,) = pathlib.Path({str(tmp_path)!r}, "tensorboard").glob("events.out.tfevents.*")
data, losses = event_file.read_bytes(), []
while data:  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
    length = int.from_bytes(data[:8], "little")
    event = Event.FromString(data[12 : 12 + length])
    data = data[16 + length :]
    losses += [value.simple_value for value in event.summary.value if value.tag == "train_loss"]
print(json.dumps(losses))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=child_xla_flags(1))
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])
    assert losses == pytest.approx([r["train_loss"] for r in _records(tmp_path)])


@IN_THE_TRAINED_RUNS_CHILD
def test_same_seed_same_losses_other_seed_other_losses(trained, data_dir, tmp_path):
    workdir, _ = trained
    again = tmp_path / "again"
    loop.run(tiny_config(data_dir), again)
    assert [r["train_loss"] for r in _records(again)] == [r["train_loss"] for r in _records(workdir)]
    other = tmp_path / "other"
    loop.run(tiny_config(data_dir, seed=1), other)
    assert [r["train_loss"] for r in _records(other)] != [r["train_loss"] for r in _records(workdir)]


def test_gradient_accumulation_matches_one_big_batch(data_dir, tmp_path):
    loop.run(tiny_config(data_dir, steps=3, log_every=1, batch_size=16), tmp_path / "one")
    loop.run(tiny_config(data_dir, steps=3, log_every=1, batch_size=16, grad_accum_steps=2), tmp_path / "two")
    # Step 3's loss is computed after two updates, so it checks the accumulated gradients.
    losses_one = [r["train_loss"] for r in _records(tmp_path / "one")]
    losses_two = [r["train_loss"] for r in _records(tmp_path / "two")]
    assert losses_two == pytest.approx(losses_one, abs=1e-5)
    assert losses_one[2] < losses_one[0]


def test_accumulating_micro_batches_holds_one_gradient_sum_beside_the_micro_batch_gradients(data_dir):
    """XLA's own buffer assignment of the step (XLA:CPU), at 1 and at 4 micro-batches of the same size.

    Accumulation adds the float32 sum (one buffer of the parameters' size) and nothing more: a zeros
    accumulator kept beside the first micro-batch's gradients, or the micro-batch's gradients copied
    before they are added, would add a second. A model whose parameters outweigh its activations
    (width 128, a 72-row vocabulary, 2 rows a micro-batch) makes a buffer of them stand out; measured
    (2026-12-07, scanned layers): the sum added 0.98 of the parameters' 1.6 MB.
    """
    temp = {}
    for accum in (1, 4):
        config = compact_config(data_dir, batch_size=8 * accum, grad_accum_steps=accum)
        config.model.update(n_layer=2, n_embd=128, n_head=4)
        trainer = build_trainer(config)
        batch = jax.ShapeDtypeStruct(
            (accum, trainer.micro_batch_size, trainer.model_config.block_size),
            jnp.int32,
            sharding=trainer.batch_sharding(leading_unsharded=1),
        )
        compiled = trainer.train_step.lower(trainer.abstract_state, batch, batch, trainer.schedule).compile()
        temp[accum] = compiled.memory_analysis().temp_size_in_bytes
    param_bytes = shard_bytes(trainer.abstract_state["params"])
    assert 0.5 * param_bytes < temp[4] - temp[1] < 1.5 * param_bytes


def test_a_run_scanned_for_5_steps_resumes_unrolled_to_the_loss_of_10_scanned_steps(data_dir, tmp_path):
    """A checkpoint is one stacked layout either way, so a run that moves from a CPU to a GPU resumes."""
    # A constant rate after warmup, so that a run of 5 steps extended to 10 is the run of 10.
    config = functools.partial(
        tiny_config, data_dir, steps=10, schedule="constant", log_every=1, checkpoint_every=5, eval_every=5
    )
    scanned = config()
    scanned.model.scan_layers = "true"
    loop.run(scanned, tmp_path / "scanned")
    moved = config(steps=5)
    moved.model.scan_layers = "true"
    loop.run(moved, tmp_path / "moved")
    moved.train.steps = 10
    moved.model.scan_layers = "false"  # refused before: a changed config without allow_config_change
    final = loop.run(moved, tmp_path / "moved")
    assert final["step"] == 10
    losses, moved_losses = ([r["train_loss"] for r in _records(tmp_path / run)] for run in ("scanned", "moved"))
    assert moved_losses == pytest.approx(losses, abs=1e-5)
    assert _records(tmp_path / "moved")[-1]["val_loss"] == pytest.approx(
        _records(tmp_path / "scanned")[-1]["val_loss"], abs=1e-5
    )
    (change,) = [json.loads(line) for line in (tmp_path / "moved" / "config_changes.jsonl").read_text().splitlines()]
    assert (
        change["step"] == 5
        and change["meaningful"] == []
        and change["changes"]["model.scan_layers"] == ["true", "false"]
    )


@IN_THE_TRAINED_RUNS_CHILD
@pytest.mark.parametrize("offload", ["none", "master"])
def test_resume_after_sigkill_ends_at_the_same_loss(trained, data_dir, tmp_path, offload):
    """With ``train.offload=master`` too: the state saved from and restored into host memory."""
    workdir, final = trained
    config = tiny_config(data_dir, checkpoint_every=3, offload=offload)
    resumed = tmp_path / "killed"
    args = ["--config", "configs/tiny.py", "--workdir", str(resumed), *config_flags(config)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2jax.main", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (resumed / "checkpoints" / "6").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpointer = Checkpointer(resumed / "checkpoints")
    assert 12 not in checkpointer.committed_steps(), "the run finished before it could be killed"
    checkpointer.close()
    result = run_main(args)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed_final = _records(resumed)[-1]
    assert resumed_final["step"] == 12
    # The same float32 operations in either layout; XLA may fuse them differently around the copies.
    assert resumed_final["val_loss"] == pytest.approx(final["val_loss"], abs=0 if offload == "none" else 1e-6)
    assert resumed_final["train_loss"] == pytest.approx(final["train_loss"], abs=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    config = tiny_config(data_dir, checkpoint_every=3, log_every=1)
    real_step = Trainer.train_step.func

    def poisoned(trainer):
        step_fn = real_step(trainer)

        def step(state, inputs, targets, schedule):
            new_state, metrics = step_fn(state, inputs, targets, schedule)
            if int(new_state["step"]) >= 5:
                metrics = dict(metrics, loss=jnp.float32(jnp.nan))
            return new_state, metrics

        return step

    cached = functools.cached_property(poisoned)  # compiled once, as the real one is
    cached.__set_name__(Trainer, "train_step")
    monkeypatch.setattr(Trainer, "train_step", cached)
    with pytest.raises(
        loop.NonFiniteLossError, match="at step 5, so training stopped and kept its newest checkpoint, step 3"
    ):
        loop.run(config, tmp_path)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    assert checkpointer.committed_steps() == [3]
    checkpointer.close()


def test_divergence_from_a_huge_learning_rate_is_one_sentence(data_dir, tmp_path):
    config = tiny_config(data_dir, learning_rate=1e35, warmup_steps=0, grad_clip=1e30)
    args = ["--config", "configs/tiny.py", "--workdir", str(tmp_path), *config_flags(config)]
    result = run_main(args)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: the loss became")


@IN_THE_TRAINED_RUNS_CHILD
def test_evaluate_restores_and_matches_the_run(trained):
    workdir, final = trained
    result = evaluate_checkpoint(str(workdir))
    assert result["step"] == 12
    assert result["val_loss"] == pytest.approx(final["val_loss"], abs=1e-5)
    assert result["val_perplexity"] == pytest.approx(np.exp(result["val_loss"]))
    older = evaluate_checkpoint(str(workdir), step=6)
    assert older["step"] == 6 and older["val_loss"] != result["val_loss"]


@IN_THE_TRAINED_RUNS_CHILD
def test_evaluate_on_one_device(trained):
    workdir, final = trained
    loaded = weights.restore_checkpoint(workdir, devices=jax.devices()[:1])
    assert loaded.mesh.size == 1 and loaded.step == 12
    data = prepared_data(loaded.run_config)
    eval_step = validation.compile_eval_step(loaded.graphdef, loaded.mesh, loaded.param_shardings)
    loss = validation.validation_loss(
        eval_step,
        loaded.mesh,
        loaded.params,
        data.val,
        batch_size=8,
        block_size=loaded.model_config.block_size,
        num_batches=2,
    )
    assert loss == pytest.approx(final["val_loss"], abs=1e-5)


@IN_THE_TRAINED_RUNS_CHILD
def test_restoring_a_step_the_run_never_saved_names_the_saved_ones(trained, tmp_path):
    workdir, _ = trained
    with pytest.raises(ValueError, match=r"has no checkpoint at step 7; it has steps \[6, 12\]"):
        weights.restore_checkpoint(workdir, step=7)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="holds no checkpoint yet"):
        weights.restore_checkpoint(tmp_path)


@IN_THE_TRAINED_RUNS_CHILD
def test_sample_is_seeded_and_greedy_is_deterministic(trained):
    workdir, _ = trained
    loaded = weights.restore_checkpoint(workdir)
    args = (loaded.graphdef, loaded.params, "Hello")
    greedy = sample_text(*args, max_new_tokens=6, temperature=0.0)
    assert greedy == sample_text(*args, max_new_tokens=6, temperature=0.0, seed=5)
    a = sample_text(*args, max_new_tokens=6, temperature=1.0, top_k=0, seed=1, num_samples=3)
    assert a == sample_text(*args, max_new_tokens=6, temperature=1.0, top_k=0, seed=1, num_samples=3)
    assert len(set(a)) > 1


@IN_THE_TRAINED_RUNS_CHILD
def test_sample_and_evaluate_cli(trained):
    workdir, _ = trained
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2jax.cli.sample",
            "--workdir",
            str(workdir),
            "--prompt",
            "Hi",
            "--max_new_tokens",
            "5",
            "--temperature",
            "0",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Hi")
    result = subprocess.run(
        [sys.executable, "-m", "gpt2jax.cli.evaluate", "--workdir", str(workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 12


@IN_THE_TRAINED_RUNS_CHILD
def test_workdir_of_another_model_shape_is_refused(trained, data_dir):
    workdir, _ = trained
    config = tiny_config(data_dir, steps=20)
    config.model.n_embd = 64
    with pytest.raises(ValueError, match=r"holds a run trained with another config \(model.n_embd 32 -> 64\)"):
        loop.run(config, workdir)
    config.train.allow_config_change = True
    with pytest.raises(ValueError, match="holds a model of another shape"):
        loop.run(config, workdir)


def test_data_with_more_ids_than_the_model_reads_is_refused(data_dir):
    config = tiny_config(data_dir)
    config.model.vocab_size = 1000
    with pytest.raises(
        ValueError, match="holds token ids up to 50256 but model.vocab_size is 1000; set model.vocab_size=50257."
    ):
        prepared_data(config)


@IN_THE_TRAINED_RUNS_CHILD
def test_scratch_refuses_a_workdir_with_checkpoints(trained, data_dir):
    workdir, _ = trained
    with pytest.raises(ValueError, match="use a new --workdir"):
        loop.run(tiny_config(data_dir, init_from="scratch"), workdir)


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.train.not_a_key=1", "error: unknown config key 'not_a_key'"),
        ("--config.data.source=text:/nonexistent/*.txt", "error: "),
        ("--config.model.n_head=5", "error: model.n_embd=128 must be divisible by model.n_head=5."),
        ("--config.train.schedule=linear", "error: train.schedule='linear' is not one of"),
        ("--config.data.sorce=x", "error: unknown config key 'sorce' in --config.data.sorce (did you mean \"source\""),
        ("--config.train.steps=0", "error: train.steps=0 must be a whole number of at least 1."),
    ],
)
def test_bad_input_is_one_sentence(flag, message, tmp_path):
    result = run_main(
        [
            "--config",
            "configs/tiny.py",
            "--workdir",
            str(tmp_path / "w"),
            f"--config.data.dir={tmp_path / 'data'}",
            flag,
        ]
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "w").exists()  # refused before the workdir was made


def test_dry_run_prints_counts_and_memory(tmp_path):
    result = run_main(["--config", "configs/tiny.py", "--dry_run"])
    assert result.returncode == 0, result.stderr[-2000:]
    # A readable summary first, sizes in GiB and a verdict per card; then the JSON.
    readable, _, json_text = result.stdout.partition("\n{")
    assert "GiB" in readable and "12 GiB card" in readable and "fits" in readable
    summary = json.loads("{" + json_text)
    shape = flops.Shape(2, 4, 128, 50257, 64)
    assert summary["n_params"] == flops.count_params(shape)["n_params"]
    assert summary["n_params_padded"] == summary["n_params"] + (50304 - 50257) * 128
    assert summary["flops_per_token_6n"] == 6 * summary["n_params"]
    assert summary["flops_per_token_6n_attention"] == flops.flops_per_token_palm(shape)
    assert summary["per_device_bytes"]["params"] > 0
    # XLA's own count of the compiled step agrees with PaLM's 6N + 12·L·D·T (plus the
    # softmax, LayerNorm and optimizer arithmetic the formula leaves out).
    assert summary["xla_flops_per_token"] == pytest.approx(summary["flops_per_token_6n_attention"], rel=0.03)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules(schedule):
    config = tiny_config(
        "unused", schedule=schedule, steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1, decay_fraction=0.2
    )
    lr = optim.learning_rate_schedule(config.train)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    end = {"cosine": 0.1, "wsd": 0.1, "constant": 1.0}[schedule]
    assert float(lr(100)) == pytest.approx(end, abs=1e-6)
    if schedule == "wsd":
        assert float(lr(79)) == pytest.approx(1.0) and float(lr(90)) == pytest.approx(0.55)


@IN_THE_TRAINED_RUNS_CHILD
def test_weight_decay_only_on_matrices(trained):
    workdir, _ = trained
    params = weights.restore_checkpoint(workdir).params
    decayed = {path_str(p): m for p, m in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
    assert decayed["wte"] and decayed["h/attn/qkv_kernel"] and decayed["h/mlp/proj_kernel"]
    assert not decayed["h/attn/qkv_bias"] and not decayed["h/ln_1/scale"] and not decayed["ln_f/bias"]


@pytest.mark.parametrize(
    "optimizer",
    [
        pytest.param(name, marks=IN_THE_TRAINED_RUNS_CHILD if name in OPTIMIZERS_IN_THE_TRAINED_RUNS_CHILD else ())
        for name in optim.ALL_OPTIMIZERS
    ],
)
def test_every_optimizer_trains_and_keeps_the_state_it_claims(data_dir, tmp_path, optimizer):
    """Each optimizer lowers the loss from ln(vocab) over the same steps, and its state has the size its docstring says."""
    from gpt2jax.training import memory
    from gpt2jax.training.trainer import build_trainer

    config = tiny_config(data_dir, steps=30, optimizer=optimizer, eval_every=30, checkpoint_every=30, log_every=10)
    final = loop.run(config, tmp_path / optimizer)
    assert final["val_loss"] < np.log(config.model.vocab_size) - 2.0, final
    # Adafactor factors matrices of at least 128 on both sides (optax's min_dim_size_to_factor).
    config.model.update(n_embd=128, n_head=4)
    trainer = build_trainer(config)
    estimate = memory.estimate(trainer)
    ratio = estimate["optimizer_state"] / estimate["params"]
    # Muon: one moment for the hidden matrices (12 D^2 a layer), Adam's two for the rest.
    muon = 2 - config.model.n_layer * 12 * config.model.n_embd**2 / count_model_params(trainer.model_config)
    expected = {
        "adamw": (1.99, 2.01),
        "adamw_bf16": (0.99, 1.01),
        "adafactor": (0.0, 0.1),
        "muon": (muon - 0.001, muon + 0.001),
    }[optimizer]
    assert expected[0] <= ratio <= expected[1], ratio


def test_an_unknown_optimizer_is_one_sentence(data_dir):
    with pytest.raises(ValueError, match=r"train.optimizer='lion' is not one of adamw, adamw_bf16, adafactor, muon\."):
        optim.make_optimizer(tiny_config(data_dir, optimizer="lion").train)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    _, params = abstract_model(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16))
    labels = {path_str(p): label for p, label in jax.tree_util.tree_leaves_with_path(optim.muon_labels(params))}
    muon = {"h/attn/qkv_kernel", "h/attn/out_kernel", "h/mlp/fc_kernel", "h/mlp/proj_kernel"}
    assert {path for path, label in labels.items() if label == "muon"} == muon
    assert {"wte", "wpe", "ln_f/scale", "ln_f/bias", "h/ln_1/scale", "h/attn/qkv_bias"} <= set(labels)
    assert all(label == "adamw" for path, label in labels.items() if path not in muon)


def _newton_schulz(sigma, steps=optim.MUON_NS_STEPS, coefficients=(3.4445, -4.7750, 2.0315)):
    """What Muon's five quintic steps make of singular values ``sigma`` of a matrix of Frobenius norm 1."""
    a, b, c = coefficients
    for _ in range(steps):
        sigma = a * sigma + b * sigma**3 + c * sigma**5
    return sigma


def _at_the_schedules_rate(updates, train, step=0):
    """What ``steps.train_step`` applies: the optimizer's update, made at a rate of 1, times the schedule's rate."""
    rate = optim.learning_rate_schedule(train)(step)
    return jax.tree.map(lambda update: rate * update, updates)


def test_a_muon_update_of_q_is_its_gradient_orthogonalised_as_one_matrix_per_layer():
    """A gradient U diag(s) V^T on one layer's q projection (D x H*K) becomes lr x U diag(s') V^T, with s' what
    Newton-Schulz makes of s / |s|: within Muon's band 0.68-1.13 for s_i >= 1% of |s|, not 1 (Jordan's
    coefficients trade exactness for speed). Orthogonalised per head, or over q, k and v together, the
    singular values of the D x H*K slice would be others."""
    _, abstract = abstract_model(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16))
    params = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), nnx.to_pure_dict(abstract))
    d, h, k = 32, 4, 8
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(d, d)))
    v, _ = np.linalg.qr(rng.normal(size=(h * k, h * k)))
    sigma = np.geomspace(1.0, 0.03, d)  # the smallest is 1.8% of the Frobenius norm
    q_gradient = (u * sigma) @ v.T
    grads = jax.tree.map(jnp.zeros_like, params)
    qkv = np.zeros((2, d, 3, h, k), np.float32)
    qkv[1, :, 0] = q_gradient.reshape(d, h, k)
    grads["h"]["attn"]["qkv_kernel"] = jnp.asarray(qkv)
    train = tiny_config("unused", optimizer="muon", schedule="constant", warmup_steps=0).train
    train.update(muon_learning_rate=0.5, weight_decay=0.0)
    optimizer = optim.make_optimizer(train)
    updates = _at_the_schedules_rate(jax.jit(optimizer.update)(grads, optimizer.init(params), params)[0], train)
    q_update = -np.asarray(updates["h"]["attn"]["qkv_kernel"])[1, :, 0].reshape(d, h * k) / 0.5
    expected = _newton_schulz(sigma / np.linalg.norm(sigma))
    assert 0.68 <= expected.min() and expected.max() <= 1.14
    np.testing.assert_allclose(q_update, (u * expected) @ v.T, atol=2e-3)
    np.testing.assert_allclose(np.linalg.svd(q_update, compute_uv=False), np.sort(expected)[::-1], atol=2e-3)
    # A zero gradient (the other layer, k, v) stays a zero update.
    assert not np.asarray(updates["h"]["attn"]["qkv_kernel"])[0].any()


def test_with_muon_qkv_head_each_heads_q_is_orthogonalised_as_its_own_matrix():
    """train.muon_qkv=head: a gradient whose heads' D x K blocks are U_h diag(s) V_h^T gives each head
    U_h diag(s') V_h^T, s' what Newton-Schulz makes of s / |s|, whatever the head's scale; as one D x H*K matrix
    (projection, the default) the same gradient's heads come out otherwise."""
    _, abstract = abstract_model(GPTConfig(n_layer=1, n_head=4, n_embd=32, block_size=16))
    params = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), nnx.to_pure_dict(abstract))
    d, h, k = 32, 4, 8
    rng = np.random.default_rng(1)
    sigma = np.geomspace(1.0, 0.1, k)
    blocks = [np.linalg.qr(rng.normal(size=(d, k)))[0] * sigma @ np.linalg.qr(rng.normal(size=(k, k)))[0].T]
    blocks += [np.linalg.qr(rng.normal(size=(d, k)))[0] * (3.0 * sigma) @ np.eye(k) for _ in range(h - 1)]
    qkv = np.zeros((1, d, 3, h, k), np.float32)
    qkv[0, :, 0] = np.stack(blocks, axis=1)
    grads = jax.tree.map(jnp.zeros_like, params)
    grads["h"]["attn"]["qkv_kernel"] = jnp.asarray(qkv)
    q_updates = {}
    for variant in ("head", "projection"):
        train = tiny_config("unused", optimizer="muon", schedule="constant", warmup_steps=0).train
        train.update(muon_learning_rate=0.5, weight_decay=0.0, muon_qkv=variant)
        optimizer = optim.make_optimizer(train)
        updates = _at_the_schedules_rate(jax.jit(optimizer.update)(grads, optimizer.init(params), params)[0], train)
        q_updates[variant] = -np.asarray(updates["h"]["attn"]["qkv_kernel"])[0, :, 0] / 0.5  # D x H x K
    expected = _newton_schulz(sigma / np.linalg.norm(sigma))
    for head in range(h):
        u, _, vt = np.linalg.svd(blocks[head], full_matrices=False)
        np.testing.assert_allclose(q_updates["head"][:, head], (u * expected) @ vt, atol=2e-3)
    # As one matrix, the heads' blocks are orthogonalised together: the first head's comes out otherwise.
    difference = np.abs(q_updates["projection"][:, 0] - q_updates["head"][:, 0]).max()
    assert difference > 0.05, difference
    with pytest.raises(ValueError, match=r"^train.muon_qkv='qk' is not one of projection, head\.$"):
        optim.make_optimizer(tiny_config("unused", optimizer="muon", muon_qkv="qk").train)


def test_muon_decays_every_matrix_by_adamws_weight_decay_per_step_whatever_its_rate():
    """With no gradient, each update is the decay alone: wd x train.learning_rate x the weight, on Muon's
    branch (at a rate 50x AdamW's) as on AdamW's; biases and norms are not decayed."""
    _, abstract = abstract_model(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16))
    params = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, leaf.dtype), nnx.to_pure_dict(abstract))
    train = tiny_config("unused", optimizer="muon", schedule="constant", warmup_steps=0, learning_rate=1e-2).train
    train.update(muon_learning_rate=0.5, weight_decay=0.1)
    optimizer = optim.make_optimizer(train)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates = _at_the_schedules_rate(jax.jit(optimizer.update)(grads, optimizer.init(params), params)[0], train)
    decay = {path_str(p): float(np.asarray(u).max()) for p, u in jax.tree_util.tree_leaves_with_path(updates)}
    for path in ("h/attn/qkv_kernel", "h/mlp/fc_kernel", "wte"):
        assert decay[path] == pytest.approx(-0.1 * 1e-2, rel=1e-5), path
    assert decay["h/ln_1/scale"] == 0.0 and decay["h/attn/qkv_bias"] == 0.0
