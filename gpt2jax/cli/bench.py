"""Time the real jitted train step (drives ``benchmark.benchmark``).

``python -m gpt2jax.cli.bench --config small --steps 20`` prints tokens/s, step time,
compile time, MFU (PaLM's count and the causal one) and peak memory; ``--profile_dir``
also writes a ``jax.profiler`` trace of a few steps there.
"""

import json

from absl import flags
from ml_collections import config_flags

from gpt2jax import cli
from gpt2jax.config import SHIPPED_CONFIGS

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(SHIPPED_CONFIGS / "tiny.py"),
    "A config file, or a shipped config's name (tiny, small, ...).",
    lock_config=True,
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after the compiling one.", lower_bound=1)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "Write a jax.profiler trace of a few steps here.")


def main(argv):
    del argv
    cli.initialize_distributed(_CONFIG.value.mesh)
    from gpt2jax.training.benchmark import benchmark

    result = benchmark(_CONFIG.value, _STEPS.value, _PROFILE_DIR.value)
    if _JSON.value:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")


def entry() -> None:
    cli.run_absl(main)


if __name__ == "__main__":
    entry()
