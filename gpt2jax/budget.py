"""``python -m gpt2jax.budget``: the budget command at its short name; it is ``python -m gpt2jax.scaling budget``."""

import sys

from gpt2jax.cli.scaling import entry

if __name__ == "__main__":
    entry(["budget", *sys.argv[1:]])
