"""The embedded default: a 2-layer GPT-2 on the synthetic source, a few minutes on a laptop CPU."""

from gpt2jax.config import base_config


def get_config():
    config = base_config()
    # On a CPU, keeping only matmul outputs for the backward pass and recomputing the
    # elementwise ops around them is faster than storing everything: the step is bound
    # by memory traffic as much as by FLOPs (bench/compare_cpu.sh, README "Benchmarks").
    # The full float32 logits (model.loss_chunk=0) instead of the chunked cross-entropy that
    # keeps a GPU's memory down: on a CPU the one large matmul ran the whole step 1.25x faster
    # at this shape and 1.18x at 4 layers of 256 (AMD EPYC, side by side in one process).
    config.model.update(n_layer=2, n_head=4, n_embd=128, block_size=64, remat="dots", loss_chunk=0)
    config.data.update(source="synthetic", synthetic_train_tokens=1_000_000, synthetic_val_tokens=50_000)
    config.train.update(
        batch_size=16,
        steps=400,
        learning_rate=1e-3,
        warmup_steps=40,
        log_every=10,
        eval_every=100,
        eval_batches=8,
        checkpoint_every=200,
    )
    return config
