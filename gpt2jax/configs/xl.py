"""gpt2-xl (1.56B parameters) with GPT-2's recipe; see ``gpt2jax.config.gpt2_recipe``.

256 accumulated micro-batches of 2 sequences fits one 80 GB GPU with remat="dots" (docs/memory.md).
With more devices, lower ``--config.train.grad_accum_steps``: the micro-batch must divide
over data x fsdp.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    return gpt2_recipe("gpt2-xl", learning_rate=2e-4, grad_accum_steps=256, remat="dots")
