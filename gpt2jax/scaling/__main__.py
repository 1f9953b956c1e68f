"""``python -m gpt2jax.scaling``: the scaling tools' command at its short name; it lives in ``cli/scaling.py``."""

from gpt2jax.cli.scaling import entry

if __name__ == "__main__":
    entry()
