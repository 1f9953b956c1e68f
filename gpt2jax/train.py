"""Train state, the jitted train and eval steps, and the training loop.

The steps are pure functions of pytrees: ``nnx.split`` happens once, and the model is
merged from (graphdef, params) inside the traced function. The state is a dict
``{"step", "params", "opt_state", "rng"}`` whose shardings come from ``sharding.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from gpt2jax import flops, optim, sharding
from gpt2jax.checkpoint import Checkpointer
from gpt2jax.data import loader
from gpt2jax.model import GPT, GPTConfig, cross_entropy


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN or infinite; the last good checkpoint is kept."""


def loss_fn(params, graphdef, inputs_BxT, targets_BxT, dropout_key=None, residual_sharding=None):
    model = nnx.merge(graphdef, params)
    logits_BxTxV = model(inputs_BxT, dropout_key=dropout_key, residual_sharding=residual_sharding)
    return cross_entropy(logits_BxTxV, targets_BxT)


def train_step(state, inputs_AxBxT, targets_AxBxT, *, graphdef, optimizer, residual_sharding=None):
    """One optimizer step over A accumulated micro-batches of B sequences."""
    accum_steps = inputs_AxBxT.shape[0]
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    grad_fn = jax.value_and_grad(loss_fn)

    def micro_step(carry, micro):
        loss_sum, grad_sum = carry
        index, inputs_BxT, targets_BxT = micro
        loss, grads = grad_fn(state["params"], graphdef, inputs_BxT, targets_BxT,
                              jax.random.fold_in(dropout_key, index), residual_sharding)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    (loss_sum, grad_sum), _ = jax.lax.scan(
        micro_step, (jnp.zeros((), jnp.float32), zeros),
        (jnp.arange(accum_steps), inputs_AxBxT, targets_AxBxT))
    grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
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


@dataclasses.dataclass
class Trainer:
    """Everything compiled for one (config, mesh): steps, shardings and the abstract state."""

    config: object
    model_config: GPTConfig
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    abstract_state: dict
    state_shardings: dict

    @property
    def accum_steps(self) -> int:
        return self.config.train.grad_accum_steps

    @property
    def micro_batch_size(self) -> int:
        return self.config.train.batch_size // self.accum_steps

    def batch_sharding(self, leading_unsharded: int = 0) -> NamedSharding:
        return sharding.batch_sharding(self.mesh, 2 + leading_unsharded, leading_unsharded)

    @functools.cached_property
    def init_state(self):
        seed = self.config.train.seed

        def init():
            model = GPT(self.model_config, rngs=nnx.Rngs(params=jax.random.key(seed)))
            return fresh_state(nnx.state(model), self.optimizer, seed)

        # Initialised directly into its shards: no device ever holds the whole model.
        return jax.jit(init, out_shardings=self.state_shardings)

    @functools.cached_property
    def train_step(self):
        step = functools.partial(train_step, graphdef=self.graphdef, optimizer=self.optimizer,
                                 residual_sharding=sharding.residual_sharding(self.mesh))
        batch = self.batch_sharding(leading_unsharded=1)
        replicated = NamedSharding(self.mesh, P())
        return jax.jit(step, in_shardings=(self.state_shardings, batch, batch),
                       out_shardings=(self.state_shardings, replicated), donate_argnums=0)

    @functools.cached_property
    def eval_step(self):
        step = functools.partial(eval_step, graphdef=self.graphdef,
                                 residual_sharding=sharding.residual_sharding(self.mesh))
        batch = self.batch_sharding()
        return jax.jit(step, in_shardings=(self.state_shardings["params"], batch, batch),
                       out_shardings=NamedSharding(self.mesh, P()))

    def global_batch(self, local_inputs, local_targets, leading_unsharded: int = 0):
        """Assembles each process's rows into arrays sharded over the whole mesh."""
        batch_sharding = self.batch_sharding(leading_unsharded)
        rows_axis = leading_unsharded
        def assemble(local):
            global_shape = list(local.shape)
            global_shape[rows_axis] *= jax.process_count()
            return jax.make_array_from_process_local_data(batch_sharding, local, tuple(global_shape))
        return assemble(local_inputs), assemble(local_targets)

    def train_batch(self, tokens, step: int):
        """The batch of ``step``: a pure function of (seed, step), split into micro-batches."""
        inputs, targets = loader.batch_for_step(
            tokens, seed=self.config.train.seed, step=step, batch_size=self.config.train.batch_size,
            block_size=self.model_config.block_size,
            process_index=jax.process_index(), process_count=jax.process_count())
        shape = (self.accum_steps, inputs.shape[0] // self.accum_steps, inputs.shape[1])
        return self.global_batch(inputs.reshape(shape), targets.reshape(shape), leading_unsharded=1)

    def evaluate(self, params, tokens, num_batches: int) -> float:
        """Mean loss over the same evenly spaced validation windows every time."""
        losses = []
        for inputs, targets in loader.eval_batches(
                tokens, batch_size=self.micro_batch_size, block_size=self.model_config.block_size,
                num_batches=num_batches, process_index=jax.process_index(),
                process_count=jax.process_count()):
            losses.append(self.eval_step(params, *self.global_batch(inputs, targets)))
        return float(np.mean(jax.device_get(losses)))


def build_trainer(config, devices=None) -> Trainer:
    """Validates the config against the mesh and sets up (without compiling) the steps."""
    model_config = GPTConfig.from_config(config.model)
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.validate_layout(mesh, model_config, config.train)
    optimizer = optim.make_optimizer(config.train)
    abstract_model = nnx.eval_shape(lambda: GPT(model_config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract_model)
    abstract_state = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abstract_params,
        "opt_state": jax.eval_shape(optimizer.init, abstract_params),
        "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
    }
    state_shardings = sharding.tree_shardings(mesh, abstract_state)
    abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract_state, state_shardings)
    return Trainer(config, model_config, mesh, graphdef, optimizer, abstract_state, state_shardings)


def model_accounting(model_config: GPTConfig) -> dict:
    """Parameter counts for the true and the padded vocabulary, and FLOPs per token."""
    true_shape = flops.Shape.from_config(model_config)
    padded_shape = flops.Shape.from_config(model_config, padded=True)
    true_counts, padded_counts = flops.count_params(true_shape), flops.count_params(padded_shape)
    per_token = flops.flops_per_token(true_shape)
    return {
        "n_params": true_counts["n_params"],
        "n_params_non_embedding": true_counts["n_params_non_embedding"],
        "n_params_padded": padded_counts["n_params"],
        "n_params_non_embedding_padded": padded_counts["n_params_non_embedding"],
        "flops_per_token_6n": per_token["6n"],
        "flops_per_token_6n_attention": per_token["6n_attention"],
        "flops_per_token_chinchilla": per_token["chinchilla"],
    }


def prepared_data(config):
    data = config.data
    data_dir = loader.ensure_prepared(
        data.source, data.dir, val_fraction=data.val_fraction, text_key=data.text_key,
        tfds_data_dir=data.tfds_data_dir or None, synthetic_train_tokens=data.synthetic_train_tokens,
        synthetic_val_tokens=data.synthetic_val_tokens, max_tokens=data.max_tokens or None)
    prepared = loader.open_prepared(data_dir)
    if prepared.meta["vocab_size"] > config.model.vocab_size:
        # An id past the embedding would be clipped silently by the gather, not refused.
        raise ValueError(
            f"{data_dir} holds token ids up to {prepared.meta['vocab_size'] - 1} but model.vocab_size is "
            f"{config.model.vocab_size}; set model.vocab_size={prepared.meta['vocab_size']}.")
    return prepared


class MetricsLogger:
    """Appends one JSON object per line to ``metrics.jsonl`` (process 0 only), and to TensorBoard."""

    def __init__(self, workdir: Path, tensorboard: bool):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.writer = None
        if self.enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as error:
                raise ValueError("train.tensorboard=True needs tensorboardX: pip install 'gpt2jax[tensorboard]'.") from error
            self.writer = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check_finite(step: int, metrics: dict) -> None:
    if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
        raise NonFiniteLossError(
            f"the loss became {metrics['loss']} (grad norm {metrics['grad_norm']}) at step {step}; "
            "training stopped and the last good checkpoint is kept: lower train.learning_rate or "
            "raise train.warmup_steps and run again.")


def restore_or_init(trainer: Trainer, checkpointer: Checkpointer):
    """The workdir's latest checkpoint if there is one, else a fresh state.

    ``init_from``: 'resume' starts a fresh state from random weights, 'hf:DIR' from the
    Hugging Face GPT-2 weights in DIR, 'checkpoint:WORKDIR@STEP' from the whole train state
    (parameters, optimizer state, step) another run saved at STEP, so that a run continues
    it under its own schedule. All three resume the workdir's checkpoints once it has
    some, so an interrupted fine-tune continues instead of starting over. 'scratch' refuses a
    workdir that already holds checkpoints.
    """
    from gpt2jax.interop import hf

    init_from = trainer.config.train.init_from
    hf_directory = hf.init_from_directory(init_from)
    source_checkpoint = checkpoint_init_source(init_from)
    if init_from not in ("resume", "scratch") and hf_directory is None and source_checkpoint is None:
        raise ValueError(f"train.init_from={init_from!r} is not one of resume, scratch, hf:DIR, "
                         "checkpoint:WORKDIR@STEP.")
    latest = checkpointer.latest_step()
    if init_from == "scratch" and latest is not None:
        raise ValueError(
            f"{checkpointer.directory} already holds checkpoints; use a new --workdir to start from scratch.")
    if latest is not None:
        return checkpointer.restore(latest, trainer.abstract_state)
    if hf_directory is not None:
        return state_from_params(trainer, hf_params(trainer, hf_directory))
    if source_checkpoint is not None:
        return state_from_checkpoint(trainer, *source_checkpoint)
    return trainer.init_state()


CHECKPOINT_INIT_PREFIX = "checkpoint:"


def checkpoint_init_source(init_from: str) -> tuple[Path, int] | None:
    """(workdir, step) of ``init_from='checkpoint:WORKDIR@STEP'``; None for the other modes."""
    if not init_from.startswith(CHECKPOINT_INIT_PREFIX):
        return None
    workdir, _, step = init_from.removeprefix(CHECKPOINT_INIT_PREFIX).rpartition("@")
    if not workdir or not step.isdigit():
        raise ValueError(f"train.init_from={init_from!r} must be checkpoint:WORKDIR@STEP, e.g. checkpoint:runs/trunk@1000.")
    return Path(workdir), int(step)


def state_from_checkpoint(trainer: Trainer, workdir: Path, step: int):
    """The whole train state another run saved at ``step``, on this trainer's shardings."""
    source = Checkpointer(workdir / "checkpoints")
    try:
        return source.restore(source.saved_step(step), trainer.abstract_state)
    finally:
        source.close()


def hf_params(trainer: Trainer, directory: str | Path):
    """A Hugging Face GPT-2's parameters on the trainer's shardings; its shape must be the config's."""
    from gpt2jax.interop import hf

    _, params = hf.load_hf(directory, trainer.model_config)
    return jax.device_put(params, trainer.state_shardings["params"])


def state_from_params(trainer: Trainer, params):
    """A step-0 train state around ``params``, laid out on the trainer's shardings."""
    init = functools.partial(fresh_state, optimizer=trainer.optimizer, seed=trainer.config.train.seed)
    return jax.jit(init, out_shardings=trainer.state_shardings, donate_argnums=0)(params)


def run(config, workdir: str | Path) -> dict:
    """Trains until ``train.steps``, resuming from the workdir's latest checkpoint.

    Returns the final metrics. Step n+1 is dispatched before step n's metrics are
    pulled to the host, so logging never stalls the device.
    """
    from tqdm import tqdm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(config)
    data = prepared_data(config)
    accounting = model_accounting(trainer.model_config)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    state = restore_or_init(trainer, checkpointer)
    logger = MetricsLogger(workdir, config.train.tensorboard)

    train_config = config.train
    start_step = int(state["step"])
    tokens_per_step = train_config.batch_size * trainer.model_config.block_size
    flops_per_step = accounting["flops_per_token_6n_attention"] * tokens_per_step
    peak = flops.mesh_peak_flops(list(trainer.mesh.devices.flat), trainer.model_config.dtype)
    schedule = optim.learning_rate_schedule(train_config)

    progress = tqdm(total=train_config.steps, initial=start_step, disable=jax.process_index() != 0,
                    unit="step", dynamic_ncols=True)
    pending = None  # (step, device metrics): dispatched, not yet read
    window = _Window()
    record = {}
    try:
        for step in range(start_step, train_config.steps):
            state, device_metrics = trainer.train_step(state, *trainer.train_batch(data.train, step))
            if step == start_step:
                # The first step compiles: time the throughput from the second on.
                jax.block_until_ready(device_metrics)
                window.restart_clock()
            else:
                window.steps += 1
            if pending is not None:
                window.losses.append(_host_metrics(*pending)["loss"])
            pending = (step, device_metrics)
            completed = step + 1
            is_last = completed == train_config.steps
            evaluate_now = completed % train_config.eval_every == 0 or is_last
            log_now = completed % train_config.log_every == 0 or evaluate_now
            save_now = completed % train_config.checkpoint_every == 0 or is_last
            if log_now or save_now:
                # Read now: a checkpoint is only written after its step's loss is known finite.
                metrics = _host_metrics(*pending)
                window.losses.append(metrics["loss"])
                pending = None
            if log_now:
                record = {"step": completed, "train_loss": float(np.mean(window.losses)),
                          "learning_rate": float(schedule(step)), "grad_norm": metrics["grad_norm"],
                          "tokens_seen": completed * tokens_per_step, "flops_seen": completed * flops_per_step}
                seconds = window.seconds()
                if window.steps:
                    record["tokens_per_s"] = window.steps * tokens_per_step / seconds
                    record["mfu"] = flops.mfu(window.steps * flops_per_step / seconds, peak)
                if evaluate_now:
                    record["val_loss"] = trainer.evaluate(state["params"], data.val, train_config.eval_batches)
                logger.write(record)
                progress.set_postfix(loss=f"{record['train_loss']:.3f}", refresh=False)
                window = _Window()
            if save_now:
                checkpointer.save(completed, state)
            progress.update(1)
    finally:
        progress.close()
        logger.close()
        checkpointer.wait()
        checkpointer.close()
    return record


class _Window:
    """Losses and timed steps since the last log line."""

    def __init__(self):
        self.losses: list[float] = []
        self.steps = 0
        self.restart_clock()

    def restart_clock(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def _host_metrics(step: int, device_metrics) -> dict:
    metrics = {key: float(value) for key, value in jax.device_get(device_metrics).items()}
    _check_finite(step + 1, metrics)
    return metrics


def load_config(workdir: str | Path):
    """The config a workdir was trained with (written by ``run``)."""
    import ml_collections

    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{workdir} holds no config.json: is it a gpt2jax workdir (--workdir of a training run)?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_trained(workdir: str | Path, step: int | None = None, devices=None):
    """(trainer, params, step) of a workdir's checkpoint, laid out on this machine's devices.

    The mesh it was trained on does not matter: parameters restore onto every device
    available here along the fsdp axis.
    """
    config = load_config(workdir)
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    config.train.update(grad_accum_steps=1, batch_size=_evaluation_batch(config, devices))
    trainer = build_trainer(config, devices)
    checkpointer = Checkpointer(Path(workdir) / "checkpoints", keep=config.train.keep_checkpoints)
    try:
        step = checkpointer.saved_step(step)
        params = checkpointer.restore_params(step, trainer.abstract_state["params"])
    finally:
        checkpointer.close()
    return trainer, params, step


def restore_model(workdir: str | Path | None = None, init_from: str | None = None, step: int | None = None):
    """(model config, graphdef, params) of a workdir's checkpoint or of ``init_from='hf:DIR'``, for inference."""
    from gpt2jax.interop import hf
    from gpt2jax.model import abstract_model

    if (workdir is None) == (init_from is None):
        raise ValueError("pass either --workdir (a training run) or --init_from=hf:DIR (Hugging Face weights).")
    if workdir is not None:
        trainer, params, _ = restore_trained(workdir, step)
        return trainer.model_config, trainer.graphdef, params
    directory = hf.init_from_directory(init_from)
    if directory is None:
        raise ValueError(f"--init_from={init_from!r} must be hf:DIR, a Hugging Face GPT-2 directory.")
    if step is not None:
        raise ValueError("--step picks a checkpoint of a --workdir; Hugging Face weights have none.")
    model_config, params = hf.load_hf(directory)
    graphdef, _ = abstract_model(model_config)
    return model_config, graphdef, jax.device_put(params)


def _evaluation_batch(config, devices) -> int:
    """The training micro-batch, rounded up to a multiple of the devices here."""
    n_devices = len(jax.devices() if devices is None else devices)
    micro = config.train.batch_size // config.train.grad_accum_steps
    return -(-micro // n_devices) * n_devices


def dry_run(config) -> dict:
    """Parameter counts, FLOPs per token and the compiled step's memory per device, training nothing.

    ``fits`` says whether the step fits a 12, 24 or 80 GiB card, against the share of it
    JAX lets XLA use: XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 unless set.
    """
    import os

    trainer = build_trainer(config)
    summary = {"model": dict(config.model), "mesh": dict(trainer.mesh.shape)}
    summary.update(model_accounting(trainer.model_config))
    micro = trainer.micro_batch_size
    block = trainer.model_config.block_size
    batch = jax.ShapeDtypeStruct((trainer.accum_steps, micro, block), jnp.int32,
                                 sharding=trainer.batch_sharding(leading_unsharded=1))
    compiled = trainer.train_step.lower(trainer.abstract_state, batch, batch).compile()
    summary["per_device_bytes"] = per_device_bytes(trainer, compiled)
    usable_fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", 0.75))
    if "total" in summary["per_device_bytes"]:
        summary["fits"] = {f"{gib} GiB": summary["per_device_bytes"]["total"] <= usable_fraction * gib * 2**30
                           for gib in (12, 24, 80)}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and cost.get("flops"):
        # XLA counts the accumulation loop's body once: its FLOPs are one micro-batch's.
        tokens_per_device = micro * block / trainer.mesh.size
        summary["xla_flops_per_token"] = cost["flops"] / tokens_per_device
    return summary


def per_device_bytes(trainer: Trainer, compiled) -> dict:
    """Bytes one device holds during a train step.

    ``params`` and ``optimizer_state`` are this device's shards. ``activations_saved_for_backward``
    is what the backward pass of this device's rows of one micro-batch keeps, read from
    the traced step before XLA sees it: the figure ``model.remat`` trades for recompute,
    the same on every platform (counted whole along the tensor axis, so an upper bound
    when mesh.tensor > 1). From XLA's buffer assignment: ``activations_and_temporaries``,
    everything the compiled step allocates besides its arguments (saved activations,
    gradients and their accumulator, workspace), and ``total``, which adds the arguments
    (state and batch) and the outputs the donated state does not absorb.
    """
    from jax.extend.core import Var

    def shard_bytes(tree):
        return int(sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
                       for leaf in jax.tree.leaves(tree)))

    def saved_for_backward_bytes():
        rows = trainer.micro_batch_size // (trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"])
        tokens_BxT = jax.ShapeDtypeStruct((rows, trainer.model_config.block_size), jnp.int32)

        def pullback(params, tokens_BxT):
            return jax.vjp(lambda p: loss_fn(p, trainer.graphdef, tokens_BxT, tokens_BxT), params)[1]

        # The pullback closes over the residuals; the parameters it merely reads are its inputs.
        jaxpr = jax.make_jaxpr(pullback)(trainer.abstract_state["params"], tokens_BxT).jaxpr
        inputs = set(jaxpr.invars)
        return int(sum(math.prod(v.aval.shape) * v.aval.dtype.itemsize
                       for v in jaxpr.outvars if isinstance(v, Var) and v not in inputs))

    report = {
        "params": shard_bytes(trainer.abstract_state["params"]),
        "optimizer_state": shard_bytes(trainer.abstract_state["opt_state"]),
        "activations_saved_for_backward": saved_for_backward_bytes(),
    }
    memory = compiled.memory_analysis()
    if memory is not None:
        report["activations_and_temporaries"] = int(memory.temp_size_in_bytes)
        report["total"] = int(memory.argument_size_in_bytes + memory.temp_size_in_bytes
                              + memory.output_size_in_bytes - memory.alias_size_in_bytes)
    return report
