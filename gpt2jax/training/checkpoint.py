"""Orbax checkpoints of the train state: asynchronous, atomic, sharded, restorable onto any mesh, verified.

A step counts only once committed. Orbax writes it into a temporary folder, puts its commit
marker (``commit_success.txt``) inside and renames the folder; a step folder without the
marker (a half-copied folder, a save a filesystem did not finish) is never restored, and a
writer sets it aside before saving over it.

Each save records in the step's Orbax metadata the counters a resumed run continues from
(tokens and FLOPs trained) and a checksum of every array of the state: two uint32 sums of
its bits, one plain and one weighted by position, computed on device. Integer sums are
exact in any order, so the checksum is the same on any mesh the state is restored onto.
A restore recomputes them: a truncated or bit-flipped file, which TensorStore may read
back without complaint, is caught and the step refused in one sentence, and callers fall
back to the newest step that reads back intact.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from gpt2jax.errors import first_line
from gpt2jax.files.workdir import SET_ASIDE_DIR
from gpt2jax.trees import path_str

COMMIT_MARKER = "commit_success.txt"  # orbax's atomicity_types.COMMIT_SUCCESS_FILE
METADATA_FILE = "_CHECKPOINT_METADATA"  # orbax's step metadata, holding our custom_metadata
ITEM = "default"  # the item name CheckpointManager gives a single StandardSave


class UnreadableCheckpoint(RuntimeError):
    """A committed step that does not read back as it was saved (truncated, altered, deleted meanwhile)."""


# What to do when a workdir stops taking writes (a full disk, a permission, a filesystem turned read-only).
WRITE_REMEDY = "make it writable again (free space, or fix its permission or mount) and run the same command to resume"


class MislabeledCheckpoint(ValueError):
    """A step folder whose name is not the step its state records (renamed or copied by hand)."""


class CheckpointWriteError(RuntimeError):
    """A save that failed (a full disk, a permission), with the step it was writing."""


@jax.jit
def all_finite(tree) -> jax.Array:
    """True when no floating-point leaf of ``tree`` holds a NaN or an infinity (one reduction on device)."""
    flags = [jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def _bits_uint32(leaf):
    if leaf.dtype == jnp.bool_:
        return leaf.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[leaf.dtype.itemsize]
    return jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)


def _leaf_checksum(leaf):
    bits = _bits_uint32(leaf)
    # The flat index from broadcast iotas rather than a reshape, which could gather a sharded array.
    index = jnp.zeros(leaf.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(leaf.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, leaf.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= leaf.shape[axis]
    # Odd weights: flipping any one bit changes both sums (mod 2**32); two flips rarely cancel in both.
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)])


# Each leaf is brought to the device on its own: a state offloaded to host memory (``train.offload``) is summed there.
_checksums_on_device = jax.jit(
    lambda tree: jax.tree.map(lambda leaf: _leaf_checksum(jax.device_put(leaf, jax.memory.Space.Device)), tree)
)


def checksums(tree) -> dict[str, list[int]]:
    """Per leaf path, the two uint32 sums of its bits (plain and position-weighted)."""
    sums = jax.device_get(_checksums_on_device(tree))
    return {path_str(path): [int(v) for v in value] for path, value in jax.tree_util.tree_leaves_with_path(sums)}


def _reason(error: BaseException) -> str:
    """What an Orbax or TensorStore error says went wrong, in a few words: the OS error when there is one."""
    text = str(error)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.ENOENT, errno.EIO):
        if os.strerror(code) in text:
            return os.strerror(code)
    return first_line(error, limit=160)


class Checkpointer:
    """The committed train states under ``directory``; a writer keeps the last ``keep``.

    Every process calls save and Orbax writes each shard once. A reader (``writer=False``)
    creates and changes nothing, so it may read while a run saves.
    """

    def __init__(self, directory: str | Path, keep: int = 3, asynchronous: bool = True, writer: bool = True):
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.asynchronous = asynchronous
        self.writer = writer
        self._manager = None  # made at the first save, after set_aside_uncommitted has cleared the way
        self._saving = None  # the step an asynchronous save is writing

    # Which steps there are.

    def committed_steps(self) -> list[int]:
        """Steps whose folder holds Orbax's commit marker, oldest first."""
        return sorted(int(path.name) for path in self._step_folders() if (path / COMMIT_MARKER).is_file())

    def uncommitted_folders(self) -> list[Path]:
        return [path for path in self._step_folders() if not (path / COMMIT_MARKER).is_file()]

    def _step_folders(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [path for path in self.directory.iterdir() if path.name.isdigit() and path.is_dir()]

    def latest_step(self) -> int | None:
        steps = self.committed_steps()
        return steps[-1] if steps else None

    def saved_step(self, step: int | None = None) -> int:
        """``step`` if this directory holds it committed (the latest when None), else a one-sentence error."""
        steps = self.committed_steps()
        if not steps:
            raise FileNotFoundError(f"{self.directory} holds no checkpoint yet.")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise ValueError(f"{self.directory} has no checkpoint at step {step}; it has steps {steps}.")
        return step

    # Writing.

    def save(self, step: int, state, counters: dict | None = None) -> None:
        """Starts saving ``state`` as ``step`` with its checksums and ``counters`` (tokens_seen, flops_seen)."""
        if self._manager is None:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=self.keep, create=True, enable_async_checkpointing=self.asynchronous
                ),
            )
        self.wait()  # Orbax would wait too; waiting here names the step whose save failed
        metadata = dict(counters or {}, step=step, checksums=checksums(state))
        self._saving = step
        try:
            self._manager.save(step, args=ocp.args.StandardSave(state), custom_metadata=metadata, force=True)
        except Exception as error:
            raise self._write_error(error) from error

    def wait(self) -> None:
        """Blocks until the save in flight is committed; its failure is a CheckpointWriteError."""
        if self._manager is None:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._write_error(error) from error
        self._saving = None

    def _write_error(self, error: BaseException) -> CheckpointWriteError:
        step = self._saving
        self._saving = None
        saved = self.committed_steps()
        return CheckpointWriteError(
            f"could not write the checkpoint of step {step} to {self.directory} ({_reason(error)}); "
            + (f"the newest checkpoint saved is step {saved[-1]}" if saved else "no checkpoint was saved")
            + f": {WRITE_REMEDY}."
        )

    def set_aside(self, folder: Path) -> Path:
        """Moves a step folder out of the checkpoints (nothing is deleted) and returns where it went."""
        aside = self.directory.parent / SET_ASIDE_DIR / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:  # one mover; the other processes skip the step just as well
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(aside))
        if self._manager is not None:
            self._manager.reload()
        return aside

    def set_aside_uncommitted(self) -> None:
        """A writer's first act: step folders without a commit marker are moved aside, with a warning."""
        for folder in self.uncommitted_folders():
            aside = self.set_aside(folder)
            warnings.warn(
                f"{folder} has no commit marker ({COMMIT_MARKER}), so it is not a checkpoint; moved it to {aside}."
            )

    # Reading.

    def metadata(self, step: int) -> dict:
        """The custom metadata save recorded for ``step``: counters and checksums ({} for older checkpoints)."""
        path = self.directory / str(step) / METADATA_FILE
        try:
            return json.loads(path.read_text()).get("custom_metadata") or {}
        except (OSError, ValueError) as error:
            raise UnreadableCheckpoint(
                f"the checkpoint of step {step} in {self.directory} has no readable {METADATA_FILE} ({_reason(error)})."
            ) from error

    def restore(self, step: int, abstract_state):
        """The whole state at ``step`` on the shardings of ``abstract_state`` (ShapeDtypeStructs with shardings).

        The target decides the layout, so a state saved on 8 devices restores onto 1.
        """
        self.check_shapes(step, abstract_state)
        return self._read(
            step,
            lambda path: ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
                path, args=ocp.args.StandardRestore(abstract_state)
            ),
        )

    def restore_params(self, step: int, abstract_params):
        """Only the parameters (no optimizer state), onto the shardings of ``abstract_params``; and the step,
        which ``_read`` holds against the folder's name."""
        mesh = jax.tree.leaves(abstract_params)[0].sharding.mesh
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        target = {"params": abstract_params, "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}
        self.check_shapes(step, target)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        restored = self._read(
            step,
            lambda path: ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
                path, args=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)
            ),
        )
        return restored["params"]

    def check_label(self, step: int, recorded) -> None:
        """Refuses a folder named ``step`` whose state records another step: a checkpoint's step is what it
        records, not its folder's name (``checkpoints/20`` renamed to ``40`` was evaluated as step 40
        with step 20's loss, and a run then could never save its step 40)."""
        if recorded is not None and int(recorded) != step:
            raise MislabeledCheckpoint(
                f"{self.directory / str(step)} holds the state of step {int(recorded)}, not {step} (the folder was "
                f"renamed or copied); rename it to {self.directory / str(int(recorded))}, or move it out of "
                f"{self.directory}."
            )

    def check_labels(self) -> None:
        """``check_label`` on every committed step whose metadata records its step (one small file each)."""
        for step in self.committed_steps():
            try:
                recorded = self.metadata(step).get("step")
            except UnreadableCheckpoint:
                continue  # refused, or set aside, when it is restored
            self.check_label(step, recorded)

    def _read(self, step: int, read):
        """``read(item path)``, verified against the step and the checksums saved with it, and for finiteness."""
        where = f"the checkpoint of step {step} in {self.directory}"
        metadata = self.metadata(step)
        self.check_label(step, metadata.get("step"))
        saved = metadata.get("checksums", {})
        try:
            tree = read(self.directory / str(step) / ITEM)
        except Exception as error:  # TensorStore raises bare Exceptions for a damaged file
            raise UnreadableCheckpoint(f"{where} could not be read ({_reason(error)}).") from error
        if isinstance(tree, dict) and "step" in tree:  # a checkpoint saved before its metadata recorded the step
            self.check_label(step, jax.device_get(tree["step"]))
        found = checksums(tree)
        altered = sorted(path for path, sums in found.items() if path in saved and saved[path] != sums)
        if altered:
            raise UnreadableCheckpoint(
                f"{where} does not match the checksums it was saved with ({len(altered)} array(s), first "
                f"{altered[0]}): a file changed after it was written."
            )
        if not bool(all_finite(tree)):
            raise UnreadableCheckpoint(f"{where} holds NaN or infinite values.")
        return tree

    def restore_newest(self, restore_step, step: int | None = None, attempts: int = 3):
        """(step, ``restore_step(step)``) for ``step``, or for the newest committed step that reads back intact.

        Each newer step that does not is reported in one warning; a writer sets it aside, so
        that training does not save over it. A step that vanished meanwhile (a run deleting
        its oldest checkpoints while this one reads) is passed over, and the steps listed
        again when none was left.
        """
        if step is not None:
            return step, restore_step(self.saved_step(step))
        skipped = []
        for _ in range(attempts):
            listed = self.committed_steps()
            for candidate in reversed(listed):
                try:
                    restored = restore_step(candidate)
                except UnreadableCheckpoint as error:
                    now = self.committed_steps()
                    if candidate not in now or now[-1] > listed[-1]:
                        break  # deleted meanwhile by the run saving newer ones: list the steps again
                    skipped.append((candidate, error))
                    continue
                if skipped:
                    self._report_skipped(skipped, candidate)
                return candidate, restored
            else:
                break
        if skipped:
            raise UnreadableCheckpoint(
                f"no checkpoint in {self.directory} reads back intact: "
                + "; ".join(str(error).rstrip(".") for _, error in skipped)
                + "; move that folder away to start again from scratch."
            )
        if self.committed_steps():
            raise UnreadableCheckpoint(
                f"the checkpoints in {self.directory} changed while they were read (a run is saving and "
                "deleting old ones); run again."
            )
        raise FileNotFoundError(f"{self.directory} holds no checkpoint yet.")

    def _report_skipped(self, skipped: list, used: int) -> None:
        moved = [self.set_aside(self.directory / str(bad)) for bad, _ in skipped] if self.writer else []
        reasons = "; ".join(str(error).rstrip(".") for _, error in skipped)
        where = f" (moved the unreadable step(s) to {moved[0].parent})." if moved else "."
        warnings.warn(f"{reasons}; using step {used}, the newest that reads back intact{where}")

    def check_shapes(self, step: int, abstract_state) -> None:
        """Refuses, in one sentence, a checkpoint whose parameters have other shapes."""
        # The handler reads the metadata from disk, in any process.
        try:
            saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / ITEM)
        except Exception as error:
            raise UnreadableCheckpoint(
                f"the checkpoint of step {step} in {self.directory} has unreadable metadata ({_reason(error)})."
            ) from error
        saved_shapes = {
            path_str(p): tuple(leaf.shape)
            for p, leaf in jax.tree_util.tree_leaves_with_path(saved["params"])
            if hasattr(leaf, "shape")
        }
        wanted = {
            path_str(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(abstract_state["params"])
        }
        if saved_shapes != wanted:
            diff = sorted(set(saved_shapes.items()) ^ set(wanted.items()))[:2]
            raise ValueError(
                f"the checkpoint at step {step} in {self.directory} holds a model of another shape "
                f"(first differences: {diff}); use a new --workdir or the config it was trained with."
            )

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
