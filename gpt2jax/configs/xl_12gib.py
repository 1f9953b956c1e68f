"""gpt2-xl (1.56B parameters) with GPT-2's recipe on one 12 GiB card (an RTX 4070 Ti): every float32 array in host memory.

ZeRO-Offload's layout (``train.offload=all``): bfloat16 weights and one micro-batch's bfloat16 gradients on
the device; the float32 master weights, AdamW's moments and the float32 sum of the micro-batches' gradients
in host memory, each micro-batch's gradients added into the sum a layer at a time and the update streamed
through the device a layer at a time (``steps.add_on_host``, ``steps.streamed_update``). ``remat="full"``,
GPT-2's 512 sequences a step as 256 micro-batches of two. The dry run's estimate is 8.6 GiB on the device
(bf16 weights 2.90; a micro-batch's bf16 gradients 2.90; the update's streamed units 1.68: the embeddings'
and one layer's master weights, moments and gradient; kept activations and temporaries) within the 9 GiB
of a 12 GiB card that JAX gives XLA by default, and 40.6 GiB of host memory (master weights 5.8, moments
11.6, gradient sum 5.8, a checkpoint's copy of the float32 state 17.4):

    python -m gpt2jax.main --config xl_12gib --dry_run

The price is the host link: the gradient sum comes down and goes back up for every micro-batch, 3.2 TB a
524k-token step, about 128 s at PCIe 4.0's assumed 25 GB/s against about 200 s of compute (full remat's
recompute included) at 40% MFU (``scaling budget --gpu rtx-4070-ti``, docs/memory.md); micro-batches of
one sequence would fit too (8.4 GiB) at twice the traffic. XLA's buffer assignment on a CPU cannot confirm
the estimate (XLA:CPU keeps the stacked gradients in float32); not yet run on a GPU.
"""

from gpt2jax.config import gpt2_recipe


def get_config():
    config = gpt2_recipe("gpt2-xl", learning_rate=2e-4, grad_accum_steps=256, remat="full")
    config.train.offload = "all"
    return config
