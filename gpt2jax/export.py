"""Export a trained run as a Hugging Face GPT-2 directory (config.json + model.safetensors).

``python -m gpt2jax.export --workdir runs/x [--step N] --out exported/``, then
``GPT2LMHeadModel.from_pretrained("exported/")`` in transformers. Prints one JSON object.
"""

import json

from absl import flags

from gpt2jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Directory to write config.json and model.safetensors into.", required=True)


def export_workdir(workdir: str, out_dir: str, step: int | None = None) -> dict:
    from gpt2jax import train
    from gpt2jax.interop import hf

    trainer, params, step = train.restore_trained(workdir, step)
    hf.save_hf(trainer.model_config, params, out_dir)
    return {"step": step, "out": str(out_dir)}


def main(argv):
    del argv
    print(json.dumps(export_workdir(_WORKDIR.value, _OUT.value, _STEP.value)))


if __name__ == "__main__":
    cli.run_absl(main)
