"""Time the real jitted train step: ``python -m gpt2jax.bench --config configs/small.py --steps 20``.

Prints tokens/s, step time, compile time, MFU and peak memory, as ``benchmark.benchmark``
measures them.
"""

import json

from absl import flags
from ml_collections import config_flags

from gpt2jax import cli
from gpt2jax.benchmark import benchmark

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Path to a config file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after the compiling one.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def main(argv):
    del argv
    cli.initialize_distributed()
    result = benchmark(_CONFIG.value, _STEPS.value)
    if _JSON.value:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")


if __name__ == "__main__":
    cli.run_absl(main)
