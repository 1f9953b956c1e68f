"""gpt2 (124M parameters) with GPT-2's recipe; see ``gpt2jax.config.gpt2_recipe``.

32 accumulated micro-batches of 16 sequences fits one 80 GB GPU without remat (docs/memory.md).
With more devices, lower ``--config.train.grad_accum_steps``: the micro-batch must divide
over data x fsdp.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    return gpt2_recipe("gpt2", learning_rate=6e-4, grad_accum_steps=32)
