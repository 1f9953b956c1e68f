"""The train state laid out on the mesh, and the steps compiled for it.

A ``Trainer`` holds everything compiled for one (config, mesh): the pure steps of
``steps.py`` under ``jax.jit`` with their shardings, the abstract state and the batch of a
step. Trainers whose configs differ only in ``PER_RUN_KEYS`` (a sweep's points of one shape) share
one jitted copy of each step. ``build_trainer`` validates the config against the mesh before anything compiles;
the loop (``loop.py``), the dry run (``memory.py``), the benchmark and the budget build on it.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gpt2jax import init_from, sharding
from gpt2jax.config import check_run_config
from gpt2jax.data import loader
from gpt2jax.model import GPT, GPTConfig, abstract_model
from gpt2jax.training import checkpoint, footprint, optim, steps, validation

# Train keys that are no constant of a compiled step: the schedule's numbers are an input of the train step
# (``optim.schedule_args``), the seed one of the initialisation, and the rest are read on the host. The
# points of a sweep differ in these alone within a shape, so they share its compiled steps (``program_key``).
PER_RUN_KEYS = (
    "steps",
    "schedule",
    "learning_rate",
    "warmup_steps",
    "min_lr_ratio",
    "decay_fraction",
    "seed",
    "init_from",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
)
# (step's name, program key) -> the jitted step, for every trainer of the process; the oldest is dropped
# past this many, so a process that builds trainers of many shapes (the test suite) keeps a few.
_PROGRAMS: dict[tuple, object] = {}
PROGRAMS_KEPT = 32


def _shared(name: str, key: tuple, build):
    """The jitted step ``name`` of the program ``key``, built once per process."""
    if (name, key) not in _PROGRAMS:
        _PROGRAMS[(name, key)] = build()
        while len(_PROGRAMS) > PROGRAMS_KEPT:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
    return _PROGRAMS[(name, key)]


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
    def offload(self) -> str:
        return self.config.train.offload

    @property
    def micro_batch_size(self) -> int:
        return self.config.train.batch_size // self.accum_steps

    def with_model(self, **changes) -> "Trainer":
        """The same trainer with model keys changed that change no parameter (remat, loss_chunk): only the
        graphdef, which carries the model config and is all that the traced steps read of it, is made again."""
        model_config = dataclasses.replace(self.model_config, **changes)
        return dataclasses.replace(self, model_config=model_config, graphdef=abstract_model(model_config)[0])

    def batch_sharding(self, leading_unsharded: int = 0) -> NamedSharding:
        return sharding.batch_sharding(self.mesh, 2 + leading_unsharded, leading_unsharded)

    @functools.cached_property
    def program_key(self) -> tuple:
        """What the compiled steps are a function of: the graphdef (which carries the model config), every
        train key but ``PER_RUN_KEYS``, and the layout. Trainers of one key share their jitted steps."""
        per_run = set(PER_RUN_KEYS) - set(optim.compiled_train_keys(self.config.train))
        train = {key: value for key, value in self.config.train.to_dict().items() if key not in per_run}
        leaves, treedef = jax.tree.flatten(self.state_shardings)
        return (self.graphdef, json.dumps(train, sort_keys=True, default=str), self.mesh, tuple(leaves), treedef)

    @functools.cached_property
    def schedule(self) -> dict:
        """This run's ``optim.schedule_args`` on every device: the train step's last input."""
        return jax.device_put(optim.schedule_args(self.config.train), NamedSharding(self.mesh, P()))

    @functools.cached_property
    def init_state(self):
        """A no-argument function giving this run's step-0 state; the seed is an input of the compiled init."""

        def init(seed):
            model = GPT(self.model_config, rngs=nnx.Rngs(params=jax.random.key(seed)))
            return steps.fresh_state(nnx.state(model), self.optimizer, seed)

        # Initialised directly into its shards: no device ever holds the whole model.
        compiled = _shared("init", self.program_key, lambda: jax.jit(init, out_shardings=self.state_shardings))
        return functools.partial(compiled, self.config.train.seed)

    @functools.cached_property
    def train_step(self):
        """``(state, inputs_AxBxT, targets_AxBxT, schedule) -> (state, metrics)``; pass ``self.schedule``."""

        def build():
            step = functools.partial(
                steps.train_step,
                graphdef=self.graphdef,
                optimizer=self.optimizer,
                residual_sharding=sharding.residual_sharding(self.mesh),
                offload=self.offload,
                compute_dtype=self.model_config.compute_dtype,
                grad_clip=self.config.train.grad_clip,
            )
            batch = self.batch_sharding(leading_unsharded=1)
            replicated = NamedSharding(self.mesh, P())
            return jax.jit(
                step,
                in_shardings=(self.state_shardings, batch, batch, replicated),
                out_shardings=(self.state_shardings, replicated),
                donate_argnums=0,
            )

        return _shared("train", self.program_key, build)

    @functools.cached_property
    def certify(self):
        """(loss of the state on a batch's first micro-batch, whether the whole state is finite), on device.

        A state is only saved once the loss it gives is known: step n's loss was computed
        before update n, so it says nothing of the state update n produced.
        """

        def certify(state, inputs_AxBxT, targets_AxBxT):
            loss = steps.loss_fn(
                steps.step_weights(state["params"], self.offload, self.model_config.compute_dtype),
                self.graphdef,
                inputs_AxBxT[0],
                targets_AxBxT[0],
                residual_sharding=sharding.residual_sharding(self.mesh),
            )
            if steps.host_resident(self.offload):
                return loss, steps.state_is_finite(state, self.optimizer)
            return loss, checkpoint.all_finite(state)

        batch = self.batch_sharding(leading_unsharded=1)
        return _shared(
            "certify", self.program_key, lambda: jax.jit(certify, in_shardings=(self.state_shardings, batch, batch))
        )

    @functools.cached_property
    def eval_step(self):
        return _shared(
            "eval",
            self.program_key,
            lambda: validation.compile_eval_step(self.graphdef, self.mesh, self.device_shardings["params"]),
        )

    @functools.cached_property
    def device_shardings(self) -> dict:
        """The state's shardings with every leaf in device memory: where the steps compute."""
        return jax.tree.map(
            lambda s: s.with_memory_kind(self.mesh.devices.flat[0].default_memory().kind), self.state_shardings
        )

    @functools.cached_property
    def abstract_weights(self):
        """The weights the forward and backward pass read, as ShapeDtypeStructs in device memory: the state's
        parameters, in the compute dtype where ``train.offload=master`` keeps the float32 ones on the host."""
        weights = jax.eval_shape(
            functools.partial(steps.step_weights, offload=self.offload, compute_dtype=self.model_config.compute_dtype),
            self.abstract_state["params"],
        )
        return jax.tree.map(
            lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
            weights,
            self.device_shardings["params"],
        )

    @functools.cached_property
    def device_params(self):
        """Weights the evaluation reads, on the device: the state's own, or with ``train.offload=master``
        compute-dtype copies of the host's float32 master weights (the loss they give is the same)."""
        if "params" not in steps.host_resident(self.offload):
            return lambda params: params
        return jax.jit(
            functools.partial(steps.compute_params, dtype=self.model_config.compute_dtype),
            out_shardings=self.device_shardings["params"],
        )

    def replicated(self, host_array) -> jax.Array:
        """``host_array`` (the same in every process) whole on every device of the mesh."""
        return jax.make_array_from_callback(
            host_array.shape, NamedSharding(self.mesh, P()), lambda index: host_array[index]
        )

    @functools.cached_property
    def gather_windows(self):
        """(corpus on every device, window starts [A, B]) -> (inputs, targets) [A, B, T], laid out as
        ``train_batch``'s host path lays them: the windows cut where the tokens already are."""
        block_size, batch = self.model_config.block_size, self.batch_sharding(leading_unsharded=1)

        def gather(corpus, starts_AxB):
            window_AxBxT1 = corpus[starts_AxB[..., None] + jnp.arange(block_size + 1)].astype(jnp.int32)
            return window_AxBxT1[..., :-1], window_AxBxT1[..., 1:]

        return _shared("gather", self.program_key, lambda: jax.jit(gather, out_shardings=(batch, batch)))

    def train_batch(self, tokens, step: int):
        """The batch of ``step``: a pure function of (seed, step), split into micro-batches.

        ``tokens`` on the host (a ``TokenStream`` or array) are cut here and sent; a ``jax.Array``
        (``loop.device_corpus``, ``data.on_device``) is cut on the devices, into the same batch.
        """
        if isinstance(tokens, jax.Array):
            train = self.config.train
            starts_G = loader.step_starts(
                tokens,
                seed=train.seed,
                step=step,
                batch_size=train.batch_size,
                block_size=self.model_config.block_size,
                sampling=train.sampling,
            )
            # The host path's order: each process's rows, cut into micro-batches, then the processes side by side.
            starts_AxB = starts_G.reshape(jax.process_count(), self.accum_steps, -1).transpose(1, 0, 2)
            return self.gather_windows(tokens, self.replicated(starts_AxB.reshape(self.accum_steps, -1)))
        inputs, targets = loader.batch_for_step(
            tokens,
            seed=self.config.train.seed,
            step=step,
            batch_size=self.config.train.batch_size,
            block_size=self.model_config.block_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            sampling=self.config.train.sampling,
        )
        shape = (self.accum_steps, inputs.shape[0] // self.accum_steps, inputs.shape[1])
        return sharding.global_batch(self.mesh, (inputs.reshape(shape), targets.reshape(shape)), leading_unsharded=1)

    def evaluate(self, params, tokens, num_batches: int) -> float:
        """Mean loss over the same evenly spaced validation windows every time; ``params`` on the device
        (``device_params``)."""
        return validation.validation_loss(
            self.eval_step,
            self.mesh,
            params,
            tokens,
            batch_size=self.micro_batch_size,
            block_size=self.model_config.block_size,
            num_batches=num_batches,
        )


def build_trainer(config, devices=None) -> Trainer:
    """Validates the config against the mesh and sets up (without compiling) the steps.

    ``model.loss_chunk=auto`` is resolved here, where the micro-batch and the devices are
    known (``footprint.auto_loss_chunk``): the trainer's ``model_config`` holds the number.
    """
    check_run_config(config)  # every number in its range, before anything runs or is written
    model_config = GPTConfig.from_config(config.model)
    init_from.parse(config.train.init_from)  # refused now rather than after the data is prepared
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.validate_layout(mesh, model_config, config.train)
    optimizer = optim.make_optimizer(config.train)
    on_host = steps.host_resident(config.train.offload)
    steps.check_offload(config.train.offload, config.train.optimizer)
    graphdef, abstract_params = abstract_model(model_config)
    abstract_state = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abstract_params,
        "opt_state": jax.eval_shape(optimizer.init, abstract_params),
        "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
    }
    abstract_state = sharding.laid_out(mesh, abstract_state)
    abstract_state = {
        part: sharding.in_host_memory(tree) if part in on_host else tree for part, tree in abstract_state.items()
    }
    state_shardings = jax.tree.map(lambda leaf: leaf.sharding, abstract_state)
    trainer = Trainer(config, model_config, mesh, graphdef, optimizer, abstract_state, state_shardings)
    if model_config.loss_chunk == "auto":
        trainer = trainer.with_model(loss_chunk=footprint.auto_loss_chunk(trainer))
    return trainer
