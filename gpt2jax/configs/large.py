"""gpt2-large (774M parameters) with GPT-2's recipe; see ``gpt2jax.config.gpt2_recipe``.

128 accumulated micro-batches of 4 sequences fits one 80 GB GPU with remat="dots" (docs/memory.md).
With more devices, lower ``--config.train.grad_accum_steps``: the micro-batch must divide
over data x fsdp.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    return gpt2_recipe("gpt2-large", learning_rate=2.5e-4, grad_accum_steps=128, remat="dots")
