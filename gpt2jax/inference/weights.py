"""Weights restored for inference: evaluation, sampling, export and scoring.

Inference needs the model config, a mesh over this machine's devices and the parameters'
shardings; no optimizer and no Trainer. A checkpoint restores onto whatever devices are
here, whatever mesh it was trained on: the parameters are split along ``fsdp`` over the
most devices that divide every dimension the partition table splits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from flax import nnx
from jax.sharding import Mesh

from gpt2jax import sharding
from gpt2jax.files import workdir as workdir_files
from gpt2jax.init_from import InitFrom
from gpt2jax.model import GPTConfig, abstract_model
from gpt2jax.training.checkpoint import Checkpointer


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """Parameters on a mesh, with what it takes to run them."""

    source: InitFrom
    model_config: GPTConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    mesh: Mesh
    step: int | None = None  # the checkpoint's step; None for Hugging Face weights
    run_config: object = None  # the config a checkpoint's run trained with; None for Hugging Face weights
    data_meta: dict | None = None  # the meta.json of the data it trained on, when its workdir recorded it

    @property
    def param_shardings(self):
        return jax.tree.map(lambda leaf: leaf.sharding, self.params)


def inference_layout(model_config: GPTConfig, devices=None) -> tuple[Mesh, nnx.GraphDef, object]:
    """(mesh, graphdef, abstract parameters laid out on it) for inference on this machine's devices.

    The mesh puts the most devices here on fsdp that divide every dimension the table splits.
    """
    devices = jax.devices() if devices is None else list(devices)
    graphdef, params = abstract_model(model_config)
    for count in range(len(devices), 0, -1):
        if len(devices) % count:
            continue
        mesh = sharding.make_mesh({"data": 1, "fsdp": count, "tensor": 1}, devices[:count])
        try:
            return mesh, graphdef, sharding.laid_out(mesh, params)
        except ValueError:
            continue
    raise AssertionError("one device divides every dimension")


def restore_checkpoint(workdir: str | Path, step: int | None = None, devices=None) -> LoadedModel:
    """A training workdir's parameters at ``step`` (the newest intact if None), on this machine's devices.

    Reads only, so it may run while the run trains and saves: it takes the newest committed
    step, and passes over (with a warning) a step that does not read back intact.
    """
    workdir = Path(workdir)
    run_config = workdir_files.load_run_config(workdir)
    model_config = GPTConfig.from_config(run_config.model)
    mesh, graphdef, abstract = inference_layout(model_config, devices)
    checkpointer = Checkpointer(workdir / workdir_files.CHECKPOINTS_DIR, writer=False)
    step, params = checkpointer.restore_newest(lambda found: checkpointer.restore_params(found, abstract), step)
    data_file = workdir / workdir_files.DATA_FILE
    data_meta = workdir_files.read_json(data_file).get("meta") if data_file.is_file() else None
    return LoadedModel(
        InitFrom("checkpoint", workdir, step), model_config, graphdef, params, mesh, step, run_config, data_meta
    )


def load_hf_weights(directory: str | Path, model_config: GPTConfig | None = None, devices=None) -> LoadedModel:
    """A Hugging Face GPT-2 directory's weights on this machine's devices.

    Without ``model_config`` the model is GPTConfig's defaults with the checkpoint's shape;
    with one, its shape must be the checkpoint's.
    """
    from gpt2jax.interop import hf

    model_config, host_params = hf.load_hf(directory, model_config)
    mesh, graphdef, abstract = inference_layout(model_config, devices)
    params = jax.device_put(host_params, jax.tree.map(lambda leaf: leaf.sharding, abstract))
    return LoadedModel(InitFrom("hf", Path(directory)), model_config, graphdef, params, mesh)


def load_weights(source: InitFrom, devices=None) -> LoadedModel:
    """The weights ``source`` names: a checkpoint of a workdir or a Hugging Face directory."""
    if source.kind == "checkpoint":
        return restore_checkpoint(source.path, source.step, devices)
    if source.kind == "hf":
        return load_hf_weights(source.path, devices=devices)
    raise ValueError(f"init_from={source} names no weights to read; give hf:DIR or checkpoint:WORKDIR[@STEP].")
