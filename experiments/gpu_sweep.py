"""An IsoFLOP sweep of GPT-2s from 16M to 124M parameters on C4, sized for one H100 hour.

python -m gpt2jax.scaling sweep --config experiments/gpu_sweep.py --plan --device h100-sxm
python -m gpt2jax.scaling sweep --config experiments/gpu_sweep.py --workdir runs/gpu_sweep [--shard i/n]

Five shapes at three FLOP budgets (2e16, 6e16, 2e17), 11 points once the limits drop the
allocations beyond 1 to 100 tokens per parameter; each shape is one constant-rate trunk with
a WSD cooldown branched off at each budget. ``--plan --device h100-sxm`` prints the estimate:
1.04e18 FLOPs (6N + attention; 1.26e18 had every point been trained alone), 0.73 hours at
40% MFU of the H100's bf16 peak. Models this small rarely reach 40% MFU, so expect longer;
``--shard`` splits it over GPUs.

A real corpus, not the synthetic source: the question is how GPT-2 should have spent its
compute on web text, and the exponents of a law are properties of the data. The synthetic
Markov chain is mastered by models far smaller than these, so its law would say nothing
about GPT-2. C4 through TFDS is the corpus of configs/small.py; prepare it once before the
hour starts (``tfds build c4/en --file_format=array_record``, then the first point
tokenizes the 1.2B tokens the sweep reads, which takes far longer than the hour on a few
CPU cores). GPT-2's full vocabulary and context keep the shapes' parameter counts GPT-2's.

Rules (plan.py): learning rate 1e-3 at width 768 times (768 / width), the 1/width of muP for
Adam, giving GPT-2 small the rate nanoGPT's reproductions use within 2x; batch 128
sequences of 1024 tokens at 5e7 parameters times (N / 5e7)^0.5, a power of two in
[64, 256], since the best batch grows as the loss falls; warmup 5% of the shortest branch,
at least 50 steps. They are untuned at this scale: a first GPU session should spend
minutes on a learning-rate trial per end of the size range before the sweep.
"""

import ml_collections

from gpt2jax.config import base_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant:
        raise ValueError(f"gpu_sweep has no variant {variant!r}.")
    config = ml_collections.ConfigDict()
    base = base_config()
    base.model.update(block_size=1024, dtype="bfloat16")
    base.data.update(source="tfds:c4/en", max_tokens=1_200_000_000)
    base.train.update(
        grad_accum_steps=4, weight_decay=0.1, min_lr_ratio=0.1, decay_fraction=0.2, eval_batches=20, log_every=20
    )
    config.base = base
    config.shapes = [
        dict(n_layer=4, n_head=4, n_embd=256),
        dict(n_layer=6, n_head=6, n_embd=384),
        dict(n_layer=8, n_head=8, n_embd=512),
        dict(n_layer=10, n_head=10, n_embd=640),
        dict(n_layer=12, n_head=12, n_embd=768),
    ]
    config.grid = "isoflop"
    config.budgets = [2e16, 6e16, 2e17]
    config.seeds = [0]
    config.schedule = "wsd_branches"
    config.rules = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-3,
            width_reference=768,
            lr_width_exponent=1.0,
            batch_size=128,
            params_reference=5e7,
            batch_params_exponent=0.5,
            min_batch_size=64,
            max_batch_size=256,
            warmup_fraction=0.05,
            min_warmup_steps=50,
        )
    )
    config.limits = ml_collections.ConfigDict(dict(min_steps=200, min_tokens_per_param=1.0, max_tokens_per_param=100.0))
    config.evals_per_run = 4
    config.checkpoints_per_run = 4
    return config
