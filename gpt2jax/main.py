"""``python -m gpt2jax.main``: the training command, kept at the name every guide uses; it lives in ``cli/train.py``."""

from gpt2jax.cli.train import entry

if __name__ == "__main__":
    entry()
