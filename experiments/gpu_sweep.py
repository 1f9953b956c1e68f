"""An IsoFLOP sweep of GPT-2s from 7M to 52M parameters on FineWeb-Edu, sized for about 2.1 H100 hours.

python -m gpt2jax.scaling sweep --config experiments/gpu_sweep.py --plan --device h100-sxm
python -m gpt2jax.scaling sweep --config experiments/gpu_sweep.py --workdir runs/gpu_sweep --max_budget 7e16
python -m gpt2jax.scaling backtest --results runs/gpu_sweep/results.csv --train_below 7e16 --predict experiments/gpu_sweep.py
python -m gpt2jax.scaling sweep --config experiments/gpu_sweep.py --workdir runs/gpu_sweep [--shard i/n]

Eight shapes at three FLOP budgets (2e16, 6e16, 2e17), two seeds, the points beyond 8 to 100
tokens per parameter dropped; each shape is one constant-rate trunk with a WSD cooldown
branched off at each budget. The shapes are centred on Epoch AI's law (laws.EPOCH_REFIT):
its N_opt is 10.8M, 19.0M and 35.3M parameters at the three budgets, and every budget has
shapes on both sides of it (2e16: 7.0M to 16.3M; 2e17: 22.6M to 51.5M), four a budget whose
geometric mean is within 0.03 decades of N_opt, so each IsoFLOP parabola has a minimum inside
its sizes. The first sweep and the backtest above predict the
top budget from the two below before it is trained. ``--plan --device h100-sxm`` prints the
estimate: a tuning scan of 10 points (2.21e17 FLOPs), then 28 points (four of them the lr
check) for 2.75e18 FLOPs (6N + attention; 3.04e18 had every point been trained alone), 2.1
hours in train steps at 40% MFU of the H100's 989.5 TFLOP/s bf16 peak, and 6m41s outside them
(8 programs compiled at an assumed 26.4 s, 38 points at an assumed 5 s): 2h11m; models this small
rarely reach 40% MFU, so expect longer; ``--shard`` splits it over GPUs.

A real corpus, not the synthetic source: the question is how GPT-2 should have spent its
compute on web text, and the exponents of a law are properties of the data. FineWeb-Edu's
10B-token sample through the ``hf:`` source; the sweep reads at most 2B tokens of it, so that
its longest point (1.48B tokens, the 22.6M model at 2e17) reads under one epoch: the planner
refuses a grid that repeats data (the old 1.2B-token cut gave the 30M model at 2e17 ~40%
repeated tokens). The sweep command downloads and prepares it before its first point trains,
under ``data/`` in the directory whose name hashes these data settings; tokenizing takes
about 4 to 6 CPU-minutes per billion tokens (3 to 4.5M tokens per CPU-second,
measured for prepare on a CPU, README "Prepare throughput"), so on a GPU machine start the
sweep command once while the GPU time is not yet counted, or copy a ``data/`` it prepared
elsewhere. GPT-2's full vocabulary and context keep the shapes' parameter counts GPT-2's.

Rules (plan.py): learning rate 1e-3 at width 768 times (768 / width), the 1/width of muP for
Adam, giving GPT-2 small the rate nanoGPT's reproductions use within 2x; batch 128
sequences of 1024 tokens at 5e7 parameters times (N / 5e7)^0.5, a power of two in
[64, 256], since the best batch grows as the loss falls; warmup 5% of the shortest branch,
at least 20 steps. The learning-rate rule is tuned before any point trains (``lr_tuning``,
``scaling/tuning.py``): the sweep's smallest and largest shape (widths 128 and 512) train at
x0.25 to x4 of it at 2e16, the lowest budget where each trains the step floor (the 512-wide
one 494 steps, 1.3 tokens per parameter: scan points are not fitted), and the power law in width through their best rates sets every point's
rate; the lr check then trains the smallest and largest shape at x0.5 and x2 of the tuned
rate, and the report says whether it was right.
"""

import ml_collections

from gpt2jax.config import base_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant:
        raise ValueError(f"gpu_sweep has no variant {variant!r}.")
    config = ml_collections.ConfigDict()
    base = base_config()
    base.model.update(block_size=1024, dtype="bfloat16")
    base.data.update(source="hf:HuggingFaceFW/fineweb-edu:sample-10BT", max_tokens=2_000_000_000)
    base.train.update(
        grad_accum_steps=4, weight_decay=0.1, min_lr_ratio=0.1, decay_fraction=0.2, eval_batches=20, log_every=20
    )
    config.base = base
    # Layers = width / 64 (heads of 64) over widths spaced ~1.25x; the limits below keep, at each
    # budget, the four to five shapes around Epoch's optimum (tokens per parameter 8 to 100 about
    # its ~27), so their geometric mean sits within 0.03 decades of its N_opt at every budget.
    config.shapes = [
        dict(n_layer=max(1, width // 64), n_head=max(1, width // 64), n_embd=width)
        for width in (96, 128, 160, 192, 256, 320, 384, 448, 512, 640, 768)
    ]
    config.grid = "isoflop"
    config.budgets = [2e16, 6e16, 2e17]
    config.seeds = [0, 1]
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
            min_warmup_steps=20,
        )
    )
    config.limits = ml_collections.ConfigDict(
        dict(min_steps=200, min_tokens_per_param=8.0, max_tokens_per_param=100.0, max_epochs=1.0)
    )
    config.lr_tuning = [0.25, 0.5, 1.0, 2.0, 4.0]
    config.lr_check = [0.5, 2.0]
    config.evals_per_run = 4
    config.checkpoints_per_run = 4
    return config
