"""gpt2-xl (1.56B parameters) with GPT-2's recipe on one 12 GiB card (an RTX 4070 Ti): the answer to "a 1.5B
GPT-2 cannot train on one 12 GiB card".

The cheapest layout the budget finds for xl on a 12 GiB card (``python -m gpt2jax.scaling budget --gpu
rtx-4070-ti``): bfloat16 weights and one bfloat16 gradient buffer on the device (2.90 GiB each), the
float32 master weights and the optimizer state in host memory (``train.offload=master``), the update
streamed through the device a unit at a time, ``remat="full"``, GPT-2's 512 sequences a step as 512
micro-batches of one. AdamW's float32 moments make the streamed update's working set too large by
0.3 GiB (9.27 GiB estimated); ``adamw_bf16`` keeps them in bfloat16 and the estimate is 8.67 GiB
within the 9 GiB of a 12 GiB card JAX gives XLA by default. The host keeps 23.2 GiB (master weights
5.8, moments 5.8, a checkpoint's copy of both):

    python -m gpt2jax.main --config xl_12gib --dry_run

Master weights and moments cross PCIe down and up once a step, 25 GB: about 1.0 s at PCIe 4.0's
assumed 25 GB/s against about 204 s of compute (full remat's recompute included) at 40% MFU.
Not yet run on a GPU.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    config = gpt2_recipe("gpt2-xl", learning_rate=2e-4, grad_accum_steps=512, remat="full")
    config.train.update(offload="master", optimizer="adamw_bf16")
    return config
