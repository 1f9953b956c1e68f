"""Train GPT-2: ``python -m gpt2jax.main --config small --workdir runs/small`` (drives ``loop.run``).

Override any config key on the command line, e.g. ``--config.train.learning_rate=3e-4``.
``--config`` takes a config file or a shipped config's name (tiny, small, medium, large,
xl). Running again with the same workdir resumes from its latest checkpoint;
``--init_from hf:DIR`` starts (fine-tuning) from Hugging Face GPT-2 weights instead, and
``--dry_run`` prints counts, FLOPs and memory (``memory.dry_run``) and trains nothing.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from gpt2jax import cli
from gpt2jax.config import SHIPPED_CONFIGS

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(SHIPPED_CONFIGS / "tiny.py"),
    "A config file, or a shipped config's name (tiny, small, ...).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "resume | scratch | hf:DIR | checkpoint:WORKDIR[@STEP]; shorthand for --config.train.init_from."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print a memory summary, then parameter counts, FLOPs and memory as JSON; train nothing."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.initialize_distributed(_CONFIG.value.mesh)
    config = _CONFIG.value
    if _INIT_FROM.value:
        config.train.init_from = _INIT_FROM.value
    if _DRY_RUN.value:
        from gpt2jax.training import memory

        summary = memory.dry_run(config)
        print(memory.format_dry_run(summary))
        print(json.dumps(summary, indent=2))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required to train (or pass --dry_run).")
    from gpt2jax.training import loop

    final = loop.run(config, _WORKDIR.value)
    print(json.dumps(final))
    print(loop.closing_line(final, _WORKDIR.value))


def entry() -> None:
    cli.run_absl(main, stops_at_checkpoints=True)


if __name__ == "__main__":
    entry()
