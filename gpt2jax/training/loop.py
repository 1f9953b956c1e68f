"""The training loop: the train state laid out on the mesh, the compiled steps, resume and logging.

The steps themselves are the pure functions of ``steps.py``; this module compiles them
for one (config, mesh), restores or initialises the state, and runs them. A run holds its
workdir's lock while it trains, resumes only the run its workdir holds (a config that
changes what the checkpoint means needs ``train.allow_config_change``), stops when the
loss diverges, and saves only states it has checked: finite, and giving a finite loss
below twice the loss of guessing uniformly on the batch after them.
"""

from __future__ import annotations

import functools
import json
import math
import signal
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

from gpt2jax import flops, init_from
from gpt2jax.config import warmup_warning
from gpt2jax.data import loader
from gpt2jax.errors import Stopped, check_stop, stop_requested, stopping_at_checkpoints
from gpt2jax.files import workdir as workdir_files
from gpt2jax.files.atomic import write_atomically
from gpt2jax.files.locks import FileLock
from gpt2jax.model import scans_layers
from gpt2jax.training import checkpoint, eval_tasks, memory, optim, steps
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.training.trainer import Trainer, build_trainer

# A loss this many times that of guessing uniformly, ln(vocab_size), means the run diverged:
# training starts at ln(vocab_size) (within 1% for GPT-2's initialisation) and only goes down,
# and a state past it does not recover at any sane rate (with lr=1e6 the loss went 10.8, 1e10,
# 7e13, then NaN, and a state saved at 1e10 gave 1e10 again however low the rate).
DIVERGED_LOSS_FACTOR = 2.0

# Keys a resumed run may change without changing what its checkpoint means: how often it
# logs, evaluates and saves, where its data lives, how its step is laid out and computed.
# train.steps may grow (to extend a run), not shrink.
RESUMABLE_KEYS = (
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.eval_tasks",
    "train.eval_limit",
    "train.hellaswag_data",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "train.init_from",
    "train.grad_accum_steps",
    "train.offload",  # where the state lives between steps, not what it holds
    "data.dir",
    "data.prepared",  # a move of the same tokens: the loader checks them against their meta.json
    "data.tfds_data_dir",
    "data.on_device",  # the same windows of the same tokens, cut on the device instead of the host
    "model.attention",
    "model.remat",
    "model.scan_layers",  # the same stacked parameters either way: a run moves between a CPU and a GPU
    "model.loss_chunk",
    "mesh.",
)


# The key of ``run``'s result that holds the seconds this call spent in train steps (not in metrics.jsonl):
# the sweep's session records set them against each point's wall time.
TRAIN_STEP_SECONDS = "train_step_s"


class NonFiniteLossError(RuntimeError):
    """The loss diverged (NaN, infinite, or past DIVERGED_LOSS_FACTOR); the last good checkpoint is kept."""


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
        workdir_files.append_jsonl(self.path, record)
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def restore_or_init(trainer: Trainer, checkpointer: Checkpointer):
    """The workdir's newest intact checkpoint if there is one, else the state ``train.init_from`` names.

    'resume' starts a fresh state from random weights, 'hf:DIR' from the Hugging Face GPT-2
    weights in DIR, 'checkpoint:WORKDIR@STEP' from the whole train state (parameters,
    optimizer state, step) another run saved at STEP, so that a run continues it under its
    own schedule. All three resume the workdir's checkpoints once it has some, so an
    interrupted fine-tune continues instead of starting over. 'scratch' refuses a workdir
    that already holds checkpoints. A checkpoint that does not read back intact is reported
    and set aside, and the next older one restored.
    """
    source = refuse_scratch_over_checkpoints(trainer.config.train, checkpointer)
    if checkpointer.latest_step() is not None:
        _, state = checkpointer.restore_newest(lambda step: checkpointer.restore(step, trainer.abstract_state))
        return state
    if source.kind == "hf":
        return state_from_params(trainer, hf_params(trainer, source.path))
    if source.kind == "checkpoint":
        return state_from_checkpoint(trainer, source.path, source.step)
    return trainer.init_state()


def refuse_scratch_over_checkpoints(train_config, checkpointer: Checkpointer) -> init_from.InitFrom:
    """``train.init_from`` parsed; 'scratch' is refused where checkpoints already are."""
    source = init_from.parse(train_config.init_from)
    if source.kind == "scratch" and checkpointer.latest_step() is not None:
        raise ValueError(
            f"{checkpointer.directory} already holds checkpoints; use a new --workdir to start from scratch."
        )
    return source


def resumed_counters(trainer: Trainer, checkpointer: Checkpointer, step: int) -> dict:
    """Tokens and FLOPs trained up to ``step``, as the checkpoint it resumes (or branches) from recorded them.

    A checkpoint from before they were recorded counts ``step`` steps of this config's size.
    """
    per_step = flops.step_accounting(trainer.model_config, trainer.config.train.batch_size)
    counters = {"tokens_seen": step * per_step["tokens_per_step"], "flops_seen": step * per_step["flops_per_step"]}
    if step == 0:
        return counters
    source = init_from.parse(trainer.config.train.init_from)
    if step in checkpointer.committed_steps():
        recorded = checkpointer.metadata(step)
    elif source.kind == "checkpoint":
        recorded = _source_checkpointer(source.path).metadata(step)
    else:
        recorded = {}
    return {key: recorded.get(key, value) for key, value in counters.items()}


def _source_checkpointer(workdir: Path) -> Checkpointer:
    return Checkpointer(Path(workdir) / workdir_files.CHECKPOINTS_DIR, writer=False)


def state_from_checkpoint(trainer: Trainer, workdir: Path, step: int | None):
    """The whole train state another run saved at ``step`` (its newest intact if None), on this trainer's shardings."""
    source = _source_checkpointer(workdir)
    _, state = source.restore_newest(lambda found: source.restore(found, trainer.abstract_state), step)
    return state


def hf_params(trainer: Trainer, directory: str | Path):
    """A Hugging Face GPT-2's parameters on the trainer's shardings; its shape must be the config's."""
    from gpt2jax.interop import hf

    _, params = hf.load_hf(directory, trainer.model_config)
    return jax.device_put(params, trainer.state_shardings["params"])


def state_from_params(trainer: Trainer, params):
    """A step-0 train state around ``params``, laid out on the trainer's shardings."""
    init = functools.partial(steps.fresh_state, optimizer=trainer.optimizer, seed=trainer.config.train.seed)
    return jax.jit(init, out_shardings=trainer.state_shardings, donate_argnums=0)(params)


# What a resume may change.


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, new: dict) -> dict[str, tuple]:
    """{key: (saved value, new value)} for each key the two configs (as JSON dicts) set differently.

    A key the saved config lacks (added to the code since) is compared with its default.
    """
    from gpt2jax.config import base_config

    defaults = _flat(json.loads(base_config().to_json_best_effort()))
    saved_flat, new_flat = _flat(saved), _flat(new)
    changes = {}
    for key in sorted(set(saved_flat) | set(new_flat)):
        if key.startswith("train.allow_"):  # what a resume accepts, not what the run is
            continue
        old, value = saved_flat.get(key, defaults.get(key)), new_flat.get(key, defaults.get(key))
        if old != value:
            changes[key] = (old, value)
    return changes


def changes_meaning(key: str, old, value) -> bool:
    """Whether changing ``key`` from ``old`` to ``value`` makes a checkpoint mean another run."""
    if key == "train.steps":
        return not (isinstance(old, int) and isinstance(value, int) and value > old)
    return not any(key == free or (free.endswith(".") and key.startswith(free)) for free in RESUMABLE_KEYS)


def _meaningful(changes: dict) -> dict:
    return {key: change for key, change in changes.items() if changes_meaning(key, *change)}


def _describe(changes: dict) -> str:
    return ", ".join(f"{key} {old!r} -> {value!r}" for key, (old, value) in changes.items())


def check_records_agree(config, workdir: Path, checkpointer: Checkpointer) -> None:
    """Refuses a workdir whose records disagree: files deleted or lost, so a resume would take another run's word.

    config.json is the one record of what the checkpoints mean: checkpoints beside none would
    resume under any config. Each metrics.jsonl record names the newest checkpoint committed
    when it was written; if the last one written names a step newer than any the workdir holds
    (or set aside), checkpoints were deleted, and a resume would train their steps again and
    mix their metrics with the old ones.
    """
    committed = checkpointer.committed_steps()
    config_path = workdir / workdir_files.CONFIG_FILE
    if committed and not config_path.is_file() and not config.train.allow_config_change:
        raise ValueError(
            f"{workdir} holds checkpoints (newest step {committed[-1]}) but no {workdir_files.CONFIG_FILE}, the record "
            f"of the config they were trained with, so a resume could not tell a changed config; restore "
            f"{config_path}, or pass --config.train.allow_config_change=True to continue them with this config."
        )
    records = workdir_files.read_jsonl(workdir / workdir_files.METRICS_FILE)  # in the order written
    claimed = records[-1].get("checkpoint") if records else None
    if type(claimed) is not int:  # a record this code did not write: it claims nothing
        claimed = None
    set_aside = workdir / workdir_files.SET_ASIDE_DIR
    named = [path.name.split("-")[0] for path in set_aside.glob("*-*")] if set_aside.is_dir() else []
    aside = [int(name) for name in named if name.isdigit()]  # a folder of the user's own there is no step
    newest = max(committed + aside, default=None)
    if claimed is None or (newest is not None and newest >= claimed) or config.train.allow_lost_checkpoints:
        return
    kept = f"the newest it holds is step {newest}" if newest is not None else "it holds none"
    raise ValueError(
        f"{workdir / workdir_files.METRICS_FILE} records a checkpoint of step {claimed} (training to step "
        f"{records[-1]['step']}) but {kept}: checkpoints were deleted or lost, and a resume would train those steps "
        f"again and mix their metrics with the old ones; restore {workdir / workdir_files.CHECKPOINTS_DIR}, use a new "
        f"--workdir, or pass --config.train.allow_lost_checkpoints=True to continue from "
        f"{f'step {newest}' if newest is not None else 'the start'}."
    )


def check_config_change(config, workdir: Path, ignored: tuple[str, ...] = ()) -> dict:
    """The differences from the config the workdir holds; refused if one changes what its checkpoint means.

    ``train.allow_config_change=True`` accepts them; ``record_config`` then records them. Keys in
    ``ignored`` are never refused, nor is any change where no checkpoint was saved: nothing trained
    holds the old config's meaning (a run refused or stopped before its first save left config.json).
    """
    path = workdir / workdir_files.CONFIG_FILE
    if not path.is_file():
        return {}
    changes = config_changes(workdir_files.read_json(path), json.loads(config.to_json_best_effort()))
    meaningful = {key: change for key, change in _meaningful(changes).items() if key not in ignored}
    trained = _source_checkpointer(workdir).latest_step() is not None
    if meaningful and trained and not config.train.allow_config_change:
        raise ValueError(
            f"{workdir} holds a run trained with another config ({_describe(meaningful)}), so resuming would "
            "not continue that run; use a new --workdir, or pass --config.train.allow_config_change=True to "
            f"continue it with the new values (the change is recorded in {workdir_files.CONFIG_CHANGES_FILE})."
        )
    return changes


def check_workdir_takes(config, workdir: Path, checkpointer: Checkpointer) -> dict:
    """What the workdir refuses of this config (``init_from=scratch`` over checkpoints, records that disagree,
    a config that changes what its checkpoint means), else the config's changes to record.

    ``run`` calls it read-only before any data is prepared, so a workdir of another model is named
    before the corpus is fetched (``--config small --workdir runs/tiny`` failed on the network
    first); ``_run_locked`` again under the lock. A finished workdir takes fewer steps: that is how
    a sweep's trunk idles.
    """
    refuse_scratch_over_checkpoints(config.train, checkpointer)
    checkpointer.check_labels()  # before a folder's name is taken for the step it holds
    check_records_agree(config, workdir, checkpointer)
    latest = checkpointer.latest_step()
    finished = latest is not None and latest >= config.train.steps
    return check_config_change(config, workdir, ignored=("train.steps",) if finished else ())


def record_config(config, workdir: Path, changes: dict, step: int, say, resumed: bool) -> None:
    """Writes config.json, after recording in config_changes.jsonl how it differs from the one it replaces.

    ``resumed``: the state is the workdir's own checkpoint (not a fresh one, nor another run's).
    """
    path = workdir / workdir_files.CONFIG_FILE
    if jax.process_index() != 0 or (path.is_file() and not changes):
        return
    if resumed and not path.is_file():  # checkpoints beside no config, accepted by allow_config_change
        workdir_files.append_jsonl(
            workdir / workdir_files.CONFIG_CHANGES_FILE,
            {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step, "config_was_missing": True},
        )
        say(
            f"{path} was missing: step {step}'s checkpoint continues under this config, which may not be the "
            f"one it was trained with (recorded in {workdir_files.CONFIG_CHANGES_FILE})"
        )
    if changes:
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "step": step,
            "meaningful": sorted(_meaningful(changes)),
        }
        record["changes"] = {key: list(change) for key, change in changes.items()}
        workdir_files.append_jsonl(workdir / workdir_files.CONFIG_CHANGES_FILE, record)
        say(f"config changed at step {step}: {_describe(changes)} (recorded in {workdir_files.CONFIG_CHANGES_FILE})")
    write_atomically(path, config.to_json_best_effort(indent=2) + "\n")


# The data.


def check_data_fits(data, block_size: int) -> None:
    """Refuses, at start-up, a split too short for one window of block_size + 1 tokens."""
    for split, tokens in (("train", data.train), ("val", data.val)):
        if len(tokens) < block_size + 1:
            raise ValueError(
                f"the {split} split of {data.path} holds {len(tokens)} tokens, fewer than one window of "
                f"model.block_size + 1 = {block_size + 1}; prepare more data or lower model.block_size."
            )


def record_data(data, workdir: Path) -> None:
    """Records in data.json the prepared data the run trains on (its path and meta.json).

    The token files themselves were checked against meta.json when the loader opened them.
    """
    path = workdir / workdir_files.DATA_FILE
    record = {"path": str(Path(data.path).absolute()), "meta": data.meta}
    if jax.process_index() == 0 and (not path.is_file() or workdir_files.read_json(path) != record):
        write_atomically(path, json.dumps(record, indent=2) + "\n")


# What the user sees.


class _Console:
    """One plain line per event on stdout (process 0); a progress bar too, on a terminal only."""

    def __init__(self, total: int, initial: int):
        from tqdm import tqdm

        self.enabled = jax.process_index() == 0
        # disable=None: no bar when stderr is not a terminal (a log file, CI).
        self.bar = tqdm(total=total, initial=initial, disable=None if self.enabled else True, unit="step", leave=False)

    def say(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar.disable:
            print(line, flush=True)
        else:
            self.bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


def first_line(trainer: Trainer, data, workdir: Path, start_step: int) -> str:
    """Where the run trains, what, on what, and from which step."""
    devices = list(trainer.mesh.devices.flat)
    counts = flops.model_accounting(trainer.model_config)
    tokens = flops.step_accounting(trainer.model_config, trainer.config.train.batch_size)["tokens_per_step"]
    mesh = ", ".join(f"{axis}={size}" for axis, size in trainer.mesh.shape.items())
    accum = f" in {trainer.accum_steps} micro-batches" if trainer.accum_steps > 1 else ""
    steps_total = trainer.config.train.steps
    position = f"resuming at step {start_step} of {steps_total}" if start_step else f"{steps_total} steps"
    return (
        f"train {workdir}: {jax.default_backend()}, {len(devices)} x {devices[0].device_kind} (mesh {mesh}); "
        f"{flops.format_count(counts['n_params'])} parameters "
        f"({flops.format_count(counts['n_params_non_embedding'])} non-embedding), "
        f"layers {'scanned' if scans_layers(trainer.model_config) else 'unrolled'}; "
        f"{flops.format_count(tokens)} tokens/step ({trainer.config.train.batch_size} x "
        f"{trainer.model_config.block_size}{accum}); data {data.path}: {flops.format_count(len(data.train))} train, "
        f"{flops.format_count(len(data.val))} val tokens; {position}"
    )


def log_line(record: dict, steps_total: int) -> str:
    """``step 10/400 | loss 7.1234 | val 7.0100 | lr 1.00e-03 | 2.15k tok/s | MFU 8.7%``, from a metrics record."""
    parts = [f"step {record['step']}/{steps_total}", f"loss {record['train_loss']:.4f}"]
    if "val_loss" in record:
        parts.append(f"val {record['val_loss']:.4f}")
    for task in eval_tasks.TASKS:
        if f"{task}_acc_norm" in record:
            parts.append(f"{task} {record[f'{task}_acc_norm']:.3f}")
    parts.append(f"lr {record['learning_rate']:.2e}")
    if "tokens_per_s" in record:
        parts.append(f"{flops.format_count(record['tokens_per_s'])} tok/s")
    if record.get("mfu") is not None:
        parts.append(f"MFU {100 * record['mfu']:.1f}%")
    return " | ".join(parts)


# The run.


@stopping_at_checkpoints()
def run(config, workdir: str | Path) -> dict:
    """Trains until ``train.steps``, resuming from the workdir's newest intact checkpoint.

    Returns the final metrics. Everything a config or its data can get wrong is refused
    before the workdir is touched; then the run takes the workdir's lock, which a second
    run is refused, and releases it on any exit (a killed run's lock is broken by the next).
    A stop (SIGTERM, Ctrl-C: ``errors.request_stop``) ends the run at the next point it
    checks: between start-up phases (the config, the data, the lock, the restore, the
    first step's compilation) with nothing saved, and between steps by saving the step it
    stopped at.
    """
    workdir = Path(workdir)
    config = loader.anchored(config, _recorded_data_dir(workdir))
    trainer = build_trainer(config)
    check_workdir_takes(config, workdir, _source_checkpointer(workdir))
    if warmup_warning(config.train):
        warnings.warn(warmup_warning(config.train), stacklevel=2)
    memory.check_step_fits(trainer)  # before anything is allocated: a step past the memory is killed by the kernel
    tasks = eval_tasks.read_tasks(config)  # a benchmark's missing data is refused before any data is prepared
    check_stop(_starting_stop(workdir))
    try:
        data = loader.prepared_data(config)
    except OSError as error:
        if error.errno is not None and not error.filename:  # a full disk, say, mid-write: name where
            raise RuntimeError(f"could not prepare the data under {config.data.dir} ({error.strerror}).") from error
        raise
    check_data_fits(data, trainer.model_config.block_size)
    if config.data.on_device:
        memory.check_step_fits(trainer, corpus_bytes=len(data.train) * np.dtype(loader.TOKEN_DTYPE).itemsize)
    check_stop(_starting_stop(workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(workdir / workdir_files.LOCK_FILE)
    if jax.process_index() == 0 and not lock.try_acquire():
        who = lock.describe_holder()
        raise RuntimeError(
            f"{workdir} is in use by another training run ({who}); wait for it to finish or train in another --workdir."
        )
    try:
        return _run_locked(trainer, data, tasks, workdir)
    finally:
        lock.release()


def _recorded_data_dir(workdir: Path) -> str | None:
    """The data.dir the workdir's config.json records (absolute since runs record it so), or None."""
    path = workdir / workdir_files.CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = workdir_files.read_json(path).get("data")
    except ValueError:
        return None  # refused by name once the run reads it
    return data.get("dir") if isinstance(data, dict) else None


def _starting_stop(workdir: Path):
    """The line of a stop before the first step: nothing trained, and the checkpoint a rerun resumes, if any."""

    def message(name: str) -> str:
        saved = Checkpointer(workdir / workdir_files.CHECKPOINTS_DIR, writer=False).latest_step()
        kept = f"its newest checkpoint is step {saved}" if saved is not None else "it holds no checkpoint"
        return f"stopped by {name} while starting, before any step: {kept} in {workdir}; the same command resumes."

    return message


def closing_line(final: dict, workdir: str | Path) -> str:
    """The one line a finished run ends with: its loss, and where its checkpoint and metrics are."""
    workdir = Path(workdir)
    losses = ", ".join(f"{key} {final[key]:.4f}" for key in ("train_loss", "val_loss") if key in final)
    saved = final.get("checkpoint")
    checkpoint = workdir / workdir_files.CHECKPOINTS_DIR / str(saved) if saved is not None else "none saved"
    return (
        f"done: step {final['step']}{', ' + losses if losses else ''}; checkpoint {checkpoint}, "
        f"metrics {workdir / workdir_files.METRICS_FILE}"
    )


# data.on_device's copy of the train split, kept for the next run of this process on the same tokens and
# devices, so the points of a sweep copy their corpus over once; one corpus at a time.
_DEVICE_CORPUS: dict[tuple, jax.Array] = {}


def device_corpus(trainer: Trainer, data) -> jax.Array:
    """The train split on every device of the trainer's mesh, copied there by the first run that asks."""
    devices = tuple(device.id for device in trainer.mesh.devices.flat)
    key = (str(data.path), json.dumps(data.meta, sort_keys=True, default=str), devices)
    if key not in _DEVICE_CORPUS:
        _DEVICE_CORPUS.clear()
        _DEVICE_CORPUS[key] = trainer.replicated(data.train[0 : len(data.train)])
    return _DEVICE_CORPUS[key]


def _run_locked(trainer: Trainer, data, tasks: dict, workdir: Path) -> dict:
    config, train_config = trainer.config, trainer.config.train
    checkpointer = Checkpointer(workdir / workdir_files.CHECKPOINTS_DIR, keep=train_config.keep_checkpoints)
    changes = check_workdir_takes(config, workdir, checkpointer)
    latest = checkpointer.latest_step()
    console = _Console(train_config.steps, min(latest or 0, train_config.steps))
    try:
        if latest is not None and latest >= train_config.steps:
            console.say(
                f"{workdir} is already trained to step {latest} (train.steps={train_config.steps}): nothing to "
                "train; raise train.steps to train further."
            )
            done = [record for record in workdir_files.read_metrics(workdir) if record["step"] == latest]
            return (done[-1] if done else {"step": latest}) | {"checkpoint": latest}
        record_data(data, workdir)
        if jax.process_index() == 0:
            checkpointer.set_aside_uncommitted()
        state = restore_or_init(trainer, checkpointer)
        check_stop(_starting_stop(workdir))
        start_step = int(state["step"])
        record_config(config, workdir, changes, start_step, console.say, resumed=latest is not None)
        if jax.process_index() == 0:
            workdir_files.drop_records_after(workdir / workdir_files.METRICS_FILE, start_step)
        return _train(trainer, data, tasks, workdir, checkpointer, state, console)
    finally:
        console.close()
        checkpointer.close()


def _diverged(loss: float, grad_norm: float | None, vocab_size: int) -> str | None:
    """How the loss diverged, or None while it has not."""
    if grad_norm is not None and not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return f"the loss became {loss:.4g} (grad norm {grad_norm:.4g})"
    if not math.isfinite(loss):
        return f"the loss became {loss:.4g}"
    uniform = math.log(vocab_size)
    if loss > DIVERGED_LOSS_FACTOR * uniform:
        return (
            f"the loss became {loss:.4g}, over {DIVERGED_LOSS_FACTOR:g} times the {uniform:.3g} of guessing uniformly,"
        )
    return None


def _stop(what: str, step: int, kept: int | None, checkpointer: Checkpointer, learning_rate: float):
    lower = learning_rate / 10  # named only if it can train: never nan or 0 (a NaN rate once was)
    ok = math.isfinite(lower) and lower > 0
    rate = f"a lower rate, e.g. --config.train.learning_rate={lower:.3g}" if ok else "a lower, finite rate"
    advice = f"with {rate} --config.train.allow_config_change=True (or raise train.warmup_steps)"
    if kept is None:
        return NonFiniteLossError(
            f"{what} at step {step}, so training stopped before any checkpoint; run again {advice}."
        )
    return NonFiniteLossError(
        f"{what} at step {step}, so training stopped and kept its newest checkpoint, step {kept} in "
        f"{checkpointer.directory}, whose state is finite and trains; resume it {advice}."
    )


def _train(
    trainer: Trainer, data, tasks: dict, workdir: Path, checkpointer: Checkpointer, state, console: _Console
) -> dict:
    """The loop. Step n+1 is dispatched before step n's metrics are pulled to the host, so logging never stalls."""
    train_config = trainer.config.train
    vocab_size = trainer.model_config.vocab_size
    start_step = int(state["step"])
    counters = resumed_counters(trainer, checkpointer, start_step)
    kept = start_step if start_step in checkpointer.committed_steps() else None
    logger = MetricsLogger(workdir, train_config.tensorboard)
    step_cost = flops.step_accounting(trainer.model_config, train_config.batch_size)
    peak = flops.mesh_peak_flops(list(trainer.mesh.devices.flat), trainer.model_config.dtype)
    schedule = optim.learning_rate_schedule(train_config)
    console.say(first_line(trainer, data, workdir, start_step))
    train_tokens = device_corpus(trainer, data) if trainer.config.data.on_device else data.train

    def host_metrics(step: int, device_metrics) -> dict:
        metrics = {key: float(value) for key, value in jax.device_get(device_metrics).items()}
        what = _diverged(metrics["loss"], metrics["grad_norm"], vocab_size)
        if what:
            raise _stop(what, step + 1, kept, checkpointer, train_config.learning_rate)
        return metrics

    pending = None  # (step, device metrics): dispatched, not yet read
    step_seconds = 0.0  # in the steps of the throughput's windows: the first step (its compile) and evals are not
    window = _Window()
    record = {}
    try:
        for step in range(start_step, train_config.steps):
            state, device_metrics = trainer.train_step(
                state, *trainer.train_batch(train_tokens, step), trainer.schedule
            )
            if step == start_step:
                # The first step compiles: time the throughput from the second on.
                jax.block_until_ready(device_metrics)
                window.restart_clock()
            else:
                window.steps += 1
            if pending is not None:
                window.losses.append(host_metrics(*pending)["loss"])
            pending = (step, device_metrics)
            completed = step + 1
            counters = {
                "tokens_seen": counters["tokens_seen"] + step_cost["tokens_per_step"],
                "flops_seen": counters["flops_seen"] + step_cost["flops_per_step"],
            }
            signum = stop_requested()
            if signum is not None and step == start_step:
                check_stop(_starting_stop(workdir))  # one step, compiled meanwhile: not worth a save
            is_last = completed == train_config.steps
            evaluate_now = completed % train_config.eval_every == 0 or is_last
            log_now = completed % train_config.log_every == 0 or evaluate_now or signum is not None
            save_now = completed % train_config.checkpoint_every == 0 or is_last or signum is not None
            if log_now or save_now:
                metrics = host_metrics(*pending)
                window.losses.append(metrics["loss"])
                pending = None
            if log_now:
                step_seconds += window.seconds()
                speed = flops.throughput(step_cost, window.steps, window.seconds(), peak) if window.steps else None
                record = _log_record(
                    completed, window, float(schedule(step)), metrics, counters, speed, len(data.train)
                )
                if evaluate_now:
                    weights = trainer.device_params(state["params"])
                    record["val_loss"] = trainer.evaluate(weights, data.val, train_config.eval_batches)
                    record.update(
                        eval_tasks.score_tasks(trainer.graphdef, weights, tasks, trainer.model_config.block_size)
                    )
            if save_now:
                # Checked on the batch the next step trains on: the loss this very state gives.
                loss, finite = jax.device_get(trainer.certify(state, *trainer.train_batch(train_tokens, completed)))
                what = _diverged(float(loss), None, vocab_size) if finite else "the state became NaN or infinite"
                if what:
                    raise _stop(f"{what} after the update", completed, kept, checkpointer, train_config.learning_rate)
                checkpointer.save(completed, state, counters)
                kept = completed
            if log_now:
                if is_last or signum is not None:
                    checkpointer.wait()  # so that the run's last record names the checkpoint its closing line names
                record["checkpoint"] = checkpointer.latest_step()  # what check_records_agree holds a resume to
                logger.write(record)
                console.say(log_line(record, train_config.steps))
                window = _Window()
            console.bar.update(1)
            if signum is not None:
                name = signal.Signals(signum).name
                raise Stopped(
                    signum,
                    f"stopped by {name} at step {completed}: saved it in {checkpointer.directory / str(completed)}; "
                    "the same command resumes from it.",
                )
        checkpointer.wait()
    except OSError as error:
        try:
            checkpointer.wait()  # the save in flight is part of what was saved
        except checkpoint.CheckpointWriteError:
            pass
        saved = checkpointer.latest_step()
        raise RuntimeError(
            f"could not write {error.filename or workdir} ({error.strerror or error}); "
            + (f"the newest checkpoint saved is step {saved}" if saved is not None else "no checkpoint was saved")
            + f": {checkpoint.WRITE_REMEDY}."
        ) from error
    finally:
        logger.close()
        try:
            checkpointer.wait()  # the last good checkpoint must be complete before the process ends
        except checkpoint.CheckpointWriteError:
            pass  # raised already, or overtaken by the error in flight
    return record | {TRAIN_STEP_SECONDS: step_seconds}


def _log_record(
    step: int, window: _Window, learning_rate: float, metrics: dict, counters: dict, speed, unique_tokens: int
) -> dict:
    """The metrics line of ``step``: every key metrics.jsonl and the log line read but ``val_loss`` is set here."""
    record = {
        "step": step,
        "train_loss": float(np.mean(window.losses)),
        "learning_rate": learning_rate,
        "grad_norm": metrics["grad_norm"],
        "tokens_seen": counters["tokens_seen"],
        "flops_seen": counters["flops_seen"],
        "epochs": counters["tokens_seen"] / unique_tokens,  # passes over the unique train tokens
    }
    if speed is not None:
        record.update(tokens_per_s=speed["tokens_per_s"], mfu=speed["mfu"], mfu_causal=speed["mfu_causal"])
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
