"""The CPU study on real English text, run as a prediction: the King James Bible, GPT-2's tokenizer.

apt-get install -y bible-kjv && python experiments/kjv_corpus.py data/kjv
python -m gpt2jax.scaling sweep --config experiments/cpu_text.py --plan
python -m gpt2jax.scaling sweep --config experiments/cpu_text.py --workdir runs/cpu_text --max_budget 6e9
python -m gpt2jax.scaling backtest --results runs/cpu_text/results.csv --train_below 6e9 \
    --params non_embedding --predict experiments/cpu_text.py --json > experiments/cpu_text/prediction.json
python -m gpt2jax.scaling sweep --config experiments/cpu_text.py --workdir runs/cpu_text
python -m gpt2jax.scaling backtest --results runs/cpu_text/results.csv --train_below 6e9 --params non_embedding

The corpus: Debian's bible-kjv-text, the 1611 King James Version (public domain), written by
``experiments/kjv_corpus.py`` as one document per chapter (1189 files, 4.1M characters) and
prepared with ``text:``: 974,726 GPT-2 training tokens, 19,706 validation tokens (2% of the
chapters). It is never committed.

With GPT-2's 50257-token vocabulary the tied embedding is nearly all of these models'
parameters (50257 x 16 = 804k against 6.6k in the blocks at width 16), and its output matmul
costs the same per token at every width here, so the sweep counts non-embedding parameters
(Kaplan et al. 2020; ``params = 'non_embedding'``): budgets are 6 N_non-embedding D, and so are
the floors. Every step costs about the same wall time whatever the width: on this 2-core CPU a
token takes ~0.25 ms (4000 tokens/s unloaded), which is what sizes the sweep to 1.64M tokens in all.

Six widths of two layers (8 to 40) at four budgets 1.5 decades apart (5.5e8 to 1.74e10), two
seeds, WSD branches; batch 2 sequences of 32 tokens (64 a step), so that the smallest points
still train 200 steps; 1 to 50 tokens per non-embedding parameter.
Learning rate 1e-2 at width 32 times (32 / width)^0.75, untuned before this study: the lr
check (x0.5, x2 at the smallest and largest widths) found x0.5 better by 0.14 nats at width 40
and no difference beyond seed noise at width 8.
"""

import ml_collections

from gpt2jax.config import base_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant:
        raise ValueError(f"cpu_text has no variant {variant!r}.")
    config = ml_collections.ConfigDict()
    base = base_config()
    base.model.update(n_layer=2, n_head=2, n_embd=32, block_size=32)
    base.data.update(source="text:data/kjv/*.txt", val_fraction=0.02)
    base.train.update(weight_decay=0.1, min_lr_ratio=0.1, decay_fraction=0.2, eval_batches=96, log_every=50)
    config.base = base
    config.params = "non_embedding"
    config.shapes = [
        dict(n_layer=2, n_head=2, n_embd=8),
        dict(n_layer=2, n_head=2, n_embd=12),
        dict(n_layer=2, n_head=2, n_embd=16),
        dict(n_layer=2, n_head=2, n_embd=24),
        dict(n_layer=2, n_head=2, n_embd=32),
        dict(n_layer=2, n_head=2, n_embd=40),
    ]
    config.grid = "isoflop"
    config.budgets = [5.5e8, 1.74e9, 5.5e9, 1.74e10]
    config.seeds = [0, 1]
    config.schedule = "wsd_branches"
    config.rules = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-2,
            width_reference=32,
            lr_width_exponent=0.75,
            batch_size=2,
            params_reference=1e5,
            batch_params_exponent=0.0,
            min_batch_size=2,
            max_batch_size=2,
            warmup_fraction=0.05,
            min_warmup_steps=10,
        )
    )
    config.limits = ml_collections.ConfigDict(
        dict(min_steps=200, min_tokens_per_param=1.0, max_tokens_per_param=50.0, max_epochs=1.0)
    )
    config.lr_check = [0.5, 2.0]
    config.evals_per_run = 2
    config.checkpoints_per_run = 4
    return config
