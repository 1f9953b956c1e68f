"""Orbax checkpoints of the train state: asynchronous, atomic, sharded, restorable onto any mesh."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from gpt2jax.trees import path_str


class Checkpointer:
    """Keeps the last ``keep`` train states under ``directory``.

    Orbax writes each step into a temporary folder and renames it when complete, so a
    run killed mid-save leaves the previous checkpoint as the latest. Every process
    calls save; Orbax writes each shard once.
    """

    def __init__(self, directory: str | Path, keep: int = 3, asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def saved_step(self, step: int | None = None) -> int:
        """``step`` if this directory holds it (the latest when None), else a one-sentence error."""
        steps = sorted(self.all_steps())
        if not steps:
            raise FileNotFoundError(f"{self.directory} holds no checkpoint yet.")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise ValueError(f"{self.directory} has no checkpoint at step {step}; it has steps {steps}.")
        return step

    def save(self, step: int, state) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, step: int, abstract_state):
        """Restores onto the shardings of ``abstract_state`` (ShapeDtypeStructs with shardings).

        The target decides the layout, so a state saved on 8 devices restores onto 1.
        """
        self.check_shapes(step, abstract_state)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def restore_params(self, step: int, abstract_params):
        """Only the parameters (no optimizer state), onto the shardings of ``abstract_params``."""
        self.check_shapes(step, {"params": abstract_params})
        target = {"params": abstract_params}
        restored = self._manager.restore(
            step,
            args=ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
            ),
        )
        return restored["params"]

    def check_shapes(self, step: int, abstract_state) -> None:
        """Refuses, in one sentence, a checkpoint whose parameters have other shapes."""
        # The manager only knows an item's metadata in the process that saved it; the
        # handler reads it from disk in any process.
        saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "default")
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

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
