"""gpt2-large (774M parameters) with GPT-2's recipe on one 12 GiB card (an RTX 4070 Ti): the float32 state in host memory.

bfloat16 weights on the device, the float32 master weights and AdamW's moments in host memory
(``train.offload=master``, the update streamed through the device a layer at a time), ``remat="full"``,
GPT-2's 512 sequences a step as 512 micro-batches of one. The dry run's estimate is 7.7 GiB on the
device (bf16 weights 1.44; gradients 4.33: a micro-batch's in bf16 and the float32 sum they are added
into; the update's streamed units 1.27: the embeddings' and one layer's master weights, moments and
gradient; kept activations and temporaries) within the 9 GiB of a 12 GiB card that JAX gives XLA by
default, and 17.3 GiB of host memory (master weights 2.88, moments 5.77, a checkpoint's copy of both):

    python -m gpt2jax.main --config large_12gib --dry_run

Master weights and moments cross PCIe down and up once a step, 18.6 GB: about 0.7 s at PCIe 4.0's
assumed 25 GB/s against about 101 s of compute (full remat's recompute included) at 40% MFU
(flops.DEVICE_PEAKS, docs/memory.md). The budget's cheapest layout (``scaling budget --gpu rtx-4070-ti``)
is the same with ``remat="dots"``, 76 s of compute, but at 8.7 GiB it is 0.3 GiB from the share's
edge; full remat keeps 1.3 GiB in hand. AdamW's moments alone in host memory (``optimizer``) leave
float32 weights and two float32 gradient buffers on the card, over 9 GiB. gpt2-xl needs its gradient
sum in host memory too (``configs/xl_12gib.py``). Not yet run on a GPU.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    config = gpt2_recipe("gpt2-large", learning_rate=2.5e-4, grad_accum_steps=512, remat="full")
    config.train.offload = "master"
    return config
