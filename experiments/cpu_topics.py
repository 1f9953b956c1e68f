"""The CPU study on a synthetic source with power-law structure, run as a prediction.

python -m gpt2jax.scaling sweep --config experiments/cpu_topics.py --plan
python -m gpt2jax.scaling sweep --config experiments/cpu_topics.py --workdir runs/cpu_topics --max_budget 1.5e12
python -m gpt2jax.scaling backtest --results runs/cpu_topics/results.csv --train_below 1.5e12 \
    --predict experiments/cpu_topics.py --json > experiments/cpu_topics/prediction.json
python -m gpt2jax.scaling sweep --config experiments/cpu_topics.py --workdir runs/cpu_topics
python -m gpt2jax.scaling backtest --results runs/cpu_topics/results.csv --train_below 1.5e12

The first sweep trains the lower decade of budgets (1.2e11 to 1.2e12 FLOPs), the backtest fits
it and predicts the top budget's (3.8e12) losses and N_opt from the plan before a step of it is
trained (the prediction carries the time it was made), and the second sweep trains the rest;
the last backtest sets the prediction against what happened. experiments/REPORT.md holds both.

The source is a Zipf mixture of 32 Markov "topics" (data/synthetic.py): 32 words each, 24
Zipf-weighted successors a word, topic k drawn with weight 1/k. Its entropy rate, 2.6966
nats/token, is the loss no model can beat; how often a row is seen falls as a power law, so
loss keeps falling with both data and capacity across these sizes. Compact ids (1025 of them).
A first try with 64 words and 32 successors a topic left every model data-starved at these
budgets (the smallest width won every IsoFLOP profile) and its points of ~250 steps at 8
sequences a step differed by up to 0.5 nats between seeds; this one was chosen after it.

Six widths of two layers (16 to 96) at four FLOP budgets 1.5 decades apart, two seeds; each
width is one constant-rate trunk with a WSD cooldown branched off at each budget
(``wsd_branches``). The limits keep 1 to 60 tokens per parameter, so each budget has shapes on
both sides of its optimum (25 to 35 tokens per parameter, as it turned out). Rules: learning
rate 2e-2 at width 64 times (64 / width)^0.75, tuned on the earlier single-chain source; the lr
check here (x0.5 and x2 at the smallest and largest widths) found x0.5 better at both by
~0.09 nats, nine seed spreads. Batch 16 sequences of 64 tokens, so the smallest point still has
324 steps; warmup 5% of the shortest branch, at least 10 steps.
"""

import ml_collections

from gpt2jax.config import base_config

TOPICS, WORDS, SUCCESSORS = 32, 32, 24


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "smoke"):
        raise ValueError(f"cpu_topics has no variant {variant!r}; its one variant is smoke.")
    config = ml_collections.ConfigDict()
    base = base_config()
    base.model.update(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=TOPICS * WORDS + 1, vocab_multiple=8)
    base.data.update(
        source=f"synthetic:num_states={WORDS},support_size={SUCCESSORS},topics={TOPICS},vocabulary=compact",
        synthetic_train_tokens=20_000_000,
        synthetic_val_tokens=200_000,
    )
    base.train.update(weight_decay=0.1, min_lr_ratio=0.1, decay_fraction=0.2, eval_batches=32, log_every=50)
    config.base = base
    config.shapes = [
        dict(n_layer=2, n_head=2, n_embd=16),
        dict(n_layer=2, n_head=2, n_embd=24),
        dict(n_layer=2, n_head=2, n_embd=32),
        dict(n_layer=2, n_head=3, n_embd=48),
        dict(n_layer=2, n_head=4, n_embd=64),
        dict(n_layer=2, n_head=4, n_embd=96),
    ]
    config.grid = "isoflop"
    config.budgets = [1.2e11, 3.8e11, 1.2e12, 3.8e12]
    config.seeds = [0, 1]
    config.schedule = "wsd_branches"
    config.rules = ml_collections.ConfigDict(
        dict(
            learning_rate=2e-2,
            width_reference=64,
            lr_width_exponent=0.75,
            batch_size=16,
            params_reference=1e5,
            batch_params_exponent=0.0,
            min_batch_size=16,
            max_batch_size=16,
            warmup_fraction=0.05,
            min_warmup_steps=10,
        )
    )
    config.limits = ml_collections.ConfigDict(
        dict(min_steps=200, min_tokens_per_param=1.0, max_tokens_per_param=60.0, max_epochs=1.0)
    )
    config.lr_check = [0.5, 2.0]
    config.evals_per_run = 4
    config.checkpoints_per_run = 4
    if variant == "smoke":
        _shrink_to_a_smoke_test(config)
    return config


def _shrink_to_a_smoke_test(config: ml_collections.ConfigDict) -> None:
    """The README's sweep: the same source and rules at three small widths and budgets a hundred times
    smaller, with the floors off (a few dozen steps a point), so the whole path (tuning scan, sweep,
    fit, plot) runs in minutes on a CPU. Its points show the commands work; they are too short for a law."""
    config.smoke_test = True
    config.base.data.update(synthetic_train_tokens=1_000_000, synthetic_val_tokens=20_000)
    config.base.train.update(eval_batches=4, log_every=20)
    config.shapes = config.shapes[:3]
    config.budgets = [6e9, 2e10, 6e10]
    config.limits.update(min_steps=20, min_tokens_per_param=0.5)
    config.lr_tuning = [0.5, 1.0, 2.0]  # the tuning stage, at its smallest scan
    config.lr_check = []
    config.evals_per_run = 2
    config.checkpoints_per_run = 2
