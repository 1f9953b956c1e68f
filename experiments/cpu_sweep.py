"""An IsoFLOP sweep of tiny GPT-2s on the synthetic Markov source, sized for 2 CPU cores in well under 30 minutes.

python -m gpt2jax.scaling sweep --config experiments/cpu_sweep.py --workdir runs/cpu_sweep
python -m gpt2jax.scaling sweep --config experiments/cpu_sweep.py:cosine --workdir runs/cpu_sweep_cosine

experiments/REPORT.md holds the results and the commands that plot and report them.

Five widths at four FLOP budgets; each width is one constant-rate trunk with a WSD cooldown
branched off at each budget's token count (``wsd_branches``). The ``cosine`` variant trains
the points of two widths as separate cosine runs, to compare with their branched twins.

The source is a first-order Markov chain over 512 words (32 Zipf-weighted successors each)
in a compact vocabulary of 513 ids: its entropy rate, 2.893 nats per token, is the loss no
model can beat, so the fitted E has a known answer. With GPT-2's 50257-token vocabulary the
output layer alone would cost tiny models more than their blocks.

Rules (plan.py): learning rate 2e-2 at width 64, times (64 / width)^0.75; warmup 5% of the
shortest branch, at least 10 steps; a batch of 32 sequences of 64 tokens for every size.
The ``lr_scan`` variant checks the rule: cosine runs of 1M tokens at half, once and twice
its rate. Final validation loss (cpu_sweep/lr_scan_results.csv):
  width 32:  0.5x 4.080, 1x 4.005, 2x 4.013
  width 64:  0.5x 3.475, 1x 3.429, 2x 3.440
  width 128: 0.5x 3.215, 1x 3.186, 2x 3.322
so at every width the rule's rate is the best of the three.

python -m gpt2jax.scaling sweep --config experiments/cpu_sweep.py:lr_scan --workdir runs/cpu_sweep_lr_scan
cp runs/cpu_sweep_lr_scan/results.csv experiments/cpu_sweep/lr_scan_results.csv
"""

import ml_collections

from gpt2jax.config import base_config

NUM_STATES = 512


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    base = base_config()
    base.model.update(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=NUM_STATES + 1, vocab_multiple=8)
    base.data.update(
        source=f"synthetic:num_states={NUM_STATES},support_size=32,vocabulary=compact",
        synthetic_train_tokens=20_000_000,
        synthetic_val_tokens=200_000,
    )
    base.train.update(weight_decay=0.1, min_lr_ratio=0.1, decay_fraction=0.2, eval_batches=32, log_every=10)
    config.base = base
    config.shapes = [
        dict(n_layer=2, n_head=2, n_embd=32),
        dict(n_layer=2, n_head=3, n_embd=48),
        dict(n_layer=2, n_head=4, n_embd=64),
        dict(n_layer=2, n_head=4, n_embd=96),
        dict(n_layer=2, n_head=4, n_embd=128),
    ]
    config.grid = "isoflop"
    config.budgets = [2.5e11, 6e11, 1.5e12, 3.5e12]
    config.seeds = [0]
    config.schedule = "wsd_branches"
    config.rules = ml_collections.ConfigDict(
        dict(
            learning_rate=2e-2,
            width_reference=64,
            lr_width_exponent=0.75,
            batch_size=32,
            params_reference=1e5,
            batch_params_exponent=0.0,
            min_batch_size=32,
            max_batch_size=32,
            warmup_fraction=0.05,
            min_warmup_steps=10,
        )
    )
    config.limits = ml_collections.ConfigDict(dict(min_steps=50, min_tokens_per_param=0.5, max_tokens_per_param=200.0))
    config.evals_per_run = 4
    config.checkpoints_per_run = 4
    if variant == "cosine":
        config.schedule = "cosine"
        config.shapes = [config.shapes[0], config.shapes[3]]
    elif variant == "lr_scan":
        config.update(schedule="cosine", grid="tokens", budgets=[1_048_576], lr_multipliers=[0.5, 1.0, 2.0])
        config.shapes = [config.shapes[0], config.shapes[2], config.shapes[4]]
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of cpu_sweep; the variants are 'cosine' and 'lr_scan'.")
    return config
