"""gpt2-large (774M parameters) with GPT-2's recipe on one 12 GiB card (an RTX 4070 Ti): the float32 state in host memory.

The cheapest layout the budget finds for large on a 12 GiB card (``python -m gpt2jax.scaling budget --gpu
rtx-4070-ti``): bfloat16 weights on the device, the float32 master weights and AdamW's moments in host
memory (``train.offload=master``), ``remat="full"``, GPT-2's 512 sequences a step as 512 micro-batches
of one. The dry run's estimate is 8.4 GiB on the device (bf16 weights 1.44; gradients 4.33: a
micro-batch's in bf16 and the float32 sum they are added into; the streamed update's working set 1.92
for two token-embedding-sized units; kept activations and temporaries) within the 9 GiB of a 12 GiB
card that JAX gives XLA by default, and 17.3 GiB of host memory (master weights 2.88, moments 5.77, a
checkpoint's copy of both):

    python -m gpt2jax.main --config large_12gib --dry_run

Master weights and moments cross PCIe down and up once a step, 18.6 GB: about 0.7 s at PCIe 4.0's
assumed 25 GB/s against about 101 s of compute (full remat's recompute included) at 40% MFU
(flops.DEVICE_PEAKS, docs/memory.md). AdamW's moments alone in host memory (``optimizer``) leave
float32 weights and two float32 gradient buffers on the card, 10.4 GiB. gpt2-xl fits no layout:
its float32 gradient sum alone is 5.8 GiB, which only a sum kept in host memory (not built) would
move off the card. Not yet run on a GPU.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    config = gpt2_recipe("gpt2-large", learning_rate=2.5e-4, grad_accum_steps=512, remat="full")
    config.train.offload = "master"
    return config
