"""The training loop: the train state laid out on the mesh, the compiled steps, resume and logging.

The steps themselves are the pure functions of ``steps.py``; this module compiles them
for one (config, mesh), restores or initialises the state, and runs them.
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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gpt2jax import evaluation, flops, init_from, optim, sharding, steps
from gpt2jax import workdir as workdir_files
from gpt2jax.checkpoint import Checkpointer
from gpt2jax.data import loader
from gpt2jax.model import GPT, GPTConfig, abstract_model


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN or infinite; the last good checkpoint is kept."""


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
            return steps.fresh_state(nnx.state(model), self.optimizer, seed)

        # Initialised directly into its shards: no device ever holds the whole model.
        return jax.jit(init, out_shardings=self.state_shardings)

    @functools.cached_property
    def train_step(self):
        step = functools.partial(
            steps.train_step,
            graphdef=self.graphdef,
            optimizer=self.optimizer,
            residual_sharding=sharding.residual_sharding(self.mesh),
        )
        batch = self.batch_sharding(leading_unsharded=1)
        replicated = NamedSharding(self.mesh, P())
        return jax.jit(
            step,
            in_shardings=(self.state_shardings, batch, batch),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=0,
        )

    @functools.cached_property
    def eval_step(self):
        return evaluation.compile_eval_step(self.graphdef, self.mesh, self.state_shardings["params"])

    def train_batch(self, tokens, step: int):
        """The batch of ``step``: a pure function of (seed, step), split into micro-batches."""
        inputs, targets = loader.batch_for_step(
            tokens,
            seed=self.config.train.seed,
            step=step,
            batch_size=self.config.train.batch_size,
            block_size=self.model_config.block_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        shape = (self.accum_steps, inputs.shape[0] // self.accum_steps, inputs.shape[1])
        return sharding.global_batch(self.mesh, (inputs.reshape(shape), targets.reshape(shape)), leading_unsharded=1)

    def evaluate(self, params, tokens, num_batches: int) -> float:
        """Mean loss over the same evenly spaced validation windows every time."""
        return evaluation.validation_loss(
            self.eval_step,
            self.mesh,
            params,
            tokens,
            batch_size=self.micro_batch_size,
            block_size=self.model_config.block_size,
            num_batches=num_batches,
        )


def build_trainer(config, devices=None) -> Trainer:
    """Validates the config against the mesh and sets up (without compiling) the steps."""
    model_config = GPTConfig.from_config(config.model)
    init_from.parse(config.train.init_from)  # refused now rather than after the data is prepared
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.validate_layout(mesh, model_config, config.train)
    optimizer = optim.make_optimizer(config.train)
    graphdef, abstract_params = abstract_model(model_config)
    abstract_state = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abstract_params,
        "opt_state": jax.eval_shape(optimizer.init, abstract_params),
        "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
    }
    state_shardings = sharding.tree_shardings(mesh, abstract_state)
    abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract_state, state_shardings
    )
    return Trainer(config, model_config, mesh, graphdef, optimizer, abstract_state, state_shardings)


class MetricsLogger:
    """Appends one JSON object per line to ``metrics.jsonl`` (process 0 only), and to TensorBoard."""

    def __init__(self, workdir: Path, tensorboard: bool):
        self.enabled = jax.process_index() == 0
        self.path = workdir / workdir_files.METRICS_FILE
        self.writer = None
        if self.enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as error:
                raise ValueError(
                    "train.tensorboard=True needs tensorboardX: pip install 'gpt2jax[tensorboard]'."
                ) from error
            self.writer = SummaryWriter(str(workdir / workdir_files.TENSORBOARD_DIR))

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
            "raise train.warmup_steps and run again."
        )


def restore_or_init(trainer: Trainer, checkpointer: Checkpointer):
    """The workdir's latest checkpoint if there is one, else the state ``train.init_from`` names.

    'resume' starts a fresh state from random weights, 'hf:DIR' from the Hugging Face GPT-2
    weights in DIR, 'checkpoint:WORKDIR@STEP' from the whole train state (parameters,
    optimizer state, step) another run saved at STEP, so that a run continues it under its
    own schedule. All three resume the workdir's checkpoints once it has some, so an
    interrupted fine-tune continues instead of starting over. 'scratch' refuses a workdir
    that already holds checkpoints.
    """
    source = init_from.parse(trainer.config.train.init_from)
    latest = checkpointer.latest_step()
    if source.kind == "scratch" and latest is not None:
        raise ValueError(
            f"{checkpointer.directory} already holds checkpoints; use a new --workdir to start from scratch."
        )
    if latest is not None:
        return checkpointer.restore(latest, trainer.abstract_state)
    if source.kind == "hf":
        return state_from_params(trainer, hf_params(trainer, source.path))
    if source.kind == "checkpoint":
        return state_from_checkpoint(trainer, source.path, source.step)
    return trainer.init_state()


def state_from_checkpoint(trainer: Trainer, workdir: Path, step: int | None):
    """The whole train state another run saved at ``step`` (its latest if None), on this trainer's shardings."""
    source = Checkpointer(Path(workdir) / workdir_files.CHECKPOINTS_DIR)
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
    init = functools.partial(steps.fresh_state, optimizer=trainer.optimizer, seed=trainer.config.train.seed)
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
    data = loader.prepared_data(config)
    if jax.process_index() == 0:
        (workdir / workdir_files.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2) + "\n")
    checkpointer = Checkpointer(workdir / workdir_files.CHECKPOINTS_DIR, keep=config.train.keep_checkpoints)
    state = restore_or_init(trainer, checkpointer)
    logger = MetricsLogger(workdir, config.train.tensorboard)

    train_config = config.train
    start_step = int(state["step"])
    step_cost = flops.step_accounting(trainer.model_config, train_config.batch_size)
    peak = flops.mesh_peak_flops(list(trainer.mesh.devices.flat), trainer.model_config.dtype)
    schedule = optim.learning_rate_schedule(train_config)

    progress = tqdm(
        total=train_config.steps, initial=start_step, disable=jax.process_index() != 0, unit="step", dynamic_ncols=True
    )
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
                record = {
                    "step": completed,
                    "train_loss": float(np.mean(window.losses)),
                    "learning_rate": float(schedule(step)),
                    "grad_norm": metrics["grad_norm"],
                    "tokens_seen": completed * step_cost["tokens_per_step"],
                    "flops_seen": completed * step_cost["flops_per_step"],
                }
                record["epochs"] = record["tokens_seen"] / len(data.train)  # passes over the unique train tokens
                if window.steps:
                    speed = flops.throughput(step_cost, window.steps, window.seconds(), peak)
                    record.update(tokens_per_s=speed["tokens_per_s"], mfu=speed["mfu"], mfu_causal=speed["mfu_causal"])
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
