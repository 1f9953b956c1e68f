"""gpt2-large (774M parameters) with GPT-2's recipe on one 12 GiB card (an RTX 4070 Ti): AdamW's moments in host memory.

The cheapest layout the budget finds for large on a 12 GiB card (``python -m gpt2jax.scaling budget --gpu
rtx-4070-ti``): AdamW with its two float32 moments in host memory (``train.offload=optimizer``),
``remat="dots"``, GPT-2's 512 sequences a step as 512 micro-batches of one. The dry run's estimate is
8.3 GiB on the device (float32 parameters 2.88, one float32 gradient buffer 2.88, the streamed update's
moments 0.96 for two token-embedding-sized units, kept activations and temporaries) within the 9 GiB
of a 12 GiB card that JAX gives XLA by default, and 14.4 GiB of host memory (the moments 5.77 and a
checkpoint's copy of the state):

    python -m gpt2jax.main --config large_12gib --dry_run

The moments cross PCIe down and up once a step, 12.4 GB: about 0.5 s at PCIe 4.0's assumed 25 GB/s
against about 76 s of compute at 40% MFU (flops.DEVICE_PEAKS, docs/memory.md). Not yet run on a GPU.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    config = gpt2_recipe("gpt2-large", learning_rate=2.5e-4, grad_accum_steps=512, remat="dots")
    config.train.offload = "optimizer"
    return config
