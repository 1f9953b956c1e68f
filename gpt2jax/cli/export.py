"""Export a trained run as a Hugging Face GPT-2 directory (drives ``export.export_checkpoint``).

``python -m gpt2jax.cli.export --workdir runs/x [--step N] --out exported/``, then
``GPT2LMHeadModel.from_pretrained("exported/")`` and ``AutoTokenizer.from_pretrained("exported/")`` in
transformers. Prints one JSON object.
An ``--out`` that holds files no export wrote is refused unless ``--overwrite``.
"""

import json

from absl import flags

from gpt2jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string(
    "out", None, "Directory to write the Hugging Face model and its tokenizer into.", required=True
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Write into --out even if it holds files no export wrote.")


def main(argv):
    del argv
    from gpt2jax.inference import export

    print(json.dumps(export.export_checkpoint(_WORKDIR.value, _OUT.value, _STEP.value, _OVERWRITE.value)))


def entry() -> None:
    cli.run_absl(main)


if __name__ == "__main__":
    entry()
