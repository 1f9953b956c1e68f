"""gpt2-large (36 layers, 20 heads, width 1280) with the GPT-2 recipe as nanoGPT and llm.c reproduce it.

About 0.5M tokens a step (512 sequences of 1024), reached by gradient accumulation:
lower ``train.grad_accum_steps`` on bigger or more devices. Warmup then cosine decay to
10% of the peak rate, AdamW with beta2 0.95 and weight decay 0.1, on a real corpus.
"""

from gpt2jax.config import base_config


def get_config():
    config = base_config()
    config.model.update(n_layer=36, n_head=20, n_embd=1280, block_size=1024, dtype="bfloat16")
    # C4's English web text through TFDS (build it once with `tfds build c4/en`); the
    # first 10B tokens cover the 19073 steps of ~0.5M tokens once.
    config.data.update(source="tfds:c4/en", max_tokens=10_000_000_000)
    config.train.update(
        batch_size=512, grad_accum_steps=128, steps=19073, learning_rate=2.5e-4,
        warmup_steps=715, min_lr_ratio=0.1, schedule="cosine",
        log_every=10, eval_every=250, eval_batches=20, checkpoint_every=1000,
    )
    return config
