"""Train GPT-2: ``python -m gpt2jax.main --config configs/small.py --workdir runs/small``.

Override any config key on the command line, e.g. ``--config.train.learning_rate=3e-4``.
Running again with the same workdir resumes from its latest checkpoint;
``--init_from hf:DIR`` starts (fine-tuning) from Hugging Face GPT-2 weights instead.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from gpt2jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "resume | scratch | hf:DIR; shorthand for --config.train.init_from.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print parameter counts, FLOPs and memory as JSON; train nothing.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.initialize_distributed()
    from gpt2jax import train

    config = _CONFIG.value
    if _INIT_FROM.value:
        config.train.init_from = _INIT_FROM.value
    if _DRY_RUN.value:
        print(json.dumps(train.dry_run(config), indent=2))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required to train (or pass --dry_run).")
    final = train.run(config, _WORKDIR.value)
    print(json.dumps(final))


if __name__ == "__main__":
    cli.run_absl(main)
