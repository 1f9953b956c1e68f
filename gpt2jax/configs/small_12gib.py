"""gpt2 (124M parameters) with GPT-2's recipe, sized for one 12 GiB card (an RTX 4070 Ti).

The same 512 sequences of 1024 tokens a step as ``small.py``, as 64 accumulated
micro-batches of 8, with ``remat="dots"``: each block keeps its weight matmuls' outputs
and its attention output, and recomputes the elementwise ops. The dry run's
platform-independent estimate is 4.7 GiB per device (parameters 0.46, AdamW state 0.93,
gradients 0.93, activations kept for backward 1.63, largest temporaries 0.75), within the
9 GiB of a 12 GiB card that JAX gives XLA by default:

    python -m gpt2jax.main --config small_12gib --dry_run

Micro-batches of 16 (``--config.train.grad_accum_steps=32``) estimate 6.9 GiB, also
within; ``bench/gpu.py`` runs both under a 12 GiB card's memory share to show which one
XLA's GPU allocation fits.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    return gpt2_recipe("gpt2", learning_rate=6e-4, grad_accum_steps=64, remat="dots")
