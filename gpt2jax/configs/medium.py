"""gpt2-medium (355M parameters) with GPT-2's recipe; see ``gpt2jax.config.gpt2_recipe``.

64 accumulated micro-batches of 8 sequences fits one 80 GB GPU with remat="dots" (docs/memory.md).
With more devices, lower ``--config.train.grad_accum_steps``: the micro-batch must divide
over data x fsdp.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    return gpt2_recipe("gpt2-medium", learning_rate=3e-4, grad_accum_steps=64, remat="dots")
