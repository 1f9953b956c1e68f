"""The English study sized for one lent H100: the CPU study's corpus, models 20x larger, 350x its compute.

python experiments/english_corpus.py data/english && bash scripts/pack_english.sh   # .corpus/english.tar.xz
python -m gpt2jax.scaling sweep --config experiments/gpu_english.py --plan --device h100
python bench/gpu_sweep.py --config experiments/gpu_english.py --corpus .corpus/english.tar.xz --out $OUT

``bench/gpu_sweep.py`` runs the whole bet in one process: it unpacks and tokenizes the corpus,
tunes, trains the lower budgets, writes the prediction of the top budget (``backtest --predict``,
stamped) before a step of it trains, trains it, then fits, plots and reports.

The corpus is ``experiments/cpu_english.py``'s (``experiments/english_corpus.py``: five
dictionaries, the King James Bible, Python's manual), all of it: 75.3 MB of JSONL, 17.0 MB as
``xz -9`` (``scripts/pack_english.sh``), so it travels beside the GPU image's 9.5 MiB of wheels
inside the 64 MiB a device run carries, and is tokenized there (GPT-2's BPE, every core; 9.8 s on
one core here) into 22,778,712 training and 235,225 validation tokens, 46.0 MB as uint16. No
other English text ships in a package here, so the data, not the H100's compute, bounds the
study: every point reads under one epoch of the training tokens (``train.sampling =
'epochs'``, ``limits.max_epochs = 1``), so no point reads a token twice.

That bound sets the top budget. An IsoFLOP point of N non-embedding parameters at budget C reads
C / 6N tokens, so the smallest shape at the top budget, the one that reads the most, must read at
most the corpus at the tokens-per-parameter ceiling (200, as the CPU study, whose optimum sat near
100): N_min = 113k (4 layers of width 48) at 1.4e13 FLOPs reads 20.6M tokens, 182 per parameter.
The widest shape at that budget then has about 1 token per parameter: 1.2M (6 layers of width 128).
So N spans 51k to 1.2M non-embedding parameters (the CPU study's 1.8k to 57k: 1.3 decades up) and C
1.4e12 to 1.4e13 (its top was 4e10: 2.5 decades up); wider or deeper models (widths 256-512) would
need more English than exists here at any budget that keeps their smaller neighbours under one epoch.

Five shapes of 4 to 6 layers (heads of 16), three budgets half a decade apart, two seeds, WSD
branches off one constant-rate trunk per shape and seed, 16 sequences of 256 tokens a step (the
widest shape at the lowest budget, 96, falls below the 200-step floor there and is dropped: three
shapes remain at 1.4e12). The learning-rate rule starts at the CPU study's 5e-3 at width 32 times
32 / width and is tuned first (``lr_tuning``, x0.125 to x4 at the smallest and largest shape),
then checked (x0.5, x2). The bet at the top budget: GPT-2's allocation (6.4 tokens per parameter)
trained on both seeds (``allocations``): width 112 of 4 layers, 608k non-embedding parameters,
3.84M tokens, 6.3 per parameter, against the optimum the prediction names.

``--plan --device h100`` (40% MFU, 26.4 s a compile and 5 s a point outside its steps assumed, as
no session on an H100 has measured them): 38 points (12 of them the tuning scan) in 6 programs,
about 5m57s: 8 s in train steps (3.32e15 FLOPs by PaLM's count, the 50257-word head included) and
5m48s outside them. The estimate's steps are bound by FLOPs; models this small are bound by a
step's dispatch instead: the study takes 37.6k steps of 4096 tokens, so each millisecond a step
takes adds 38 s (at 3 ms, 7m50s in all); the driver's sessions record what they took, and
``--plan --device h100 --workdir`` reads them back.
"""

import ml_collections

from gpt2jax.config import base_config

TOP_BUDGET = 1.4e13


def _shape(n_layer: int, n_embd: int) -> dict:
    return dict(n_layer=n_layer, n_head=n_embd // 16, n_embd=n_embd)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "smoke"):
        raise ValueError(f"gpu_english has no variant {variant!r}; its one variant is smoke.")
    config = ml_collections.ConfigDict()
    base = base_config()
    base.model.update(n_layer=4, n_head=4, n_embd=64, block_size=256, dtype="bfloat16")
    # 46 MB of tokens: on the device once for the whole sweep, each step's windows cut there.
    base.data.update(source="text:data/english/*.jsonl", val_fraction=0.01, on_device=True)
    base.train.update(weight_decay=0.1, min_lr_ratio=0.1, decay_fraction=0.2, eval_batches=64, log_every=200)
    config.base = base
    config.params = "non_embedding"
    config.shapes = [_shape(4, 32), _shape(4, 48), _shape(4, 64), _shape(4, 96), _shape(6, 128)]
    config.grid = "isoflop"
    config.budgets = [1.4e12, 4.4e12, TOP_BUDGET]
    config.seeds = [0, 1]
    config.schedule = "wsd_branches"
    config.rules = ml_collections.ConfigDict(
        dict(
            learning_rate=5e-3,
            width_reference=32,
            lr_width_exponent=1.0,
            batch_size=16,
            params_reference=1e6,
            batch_params_exponent=0.0,
            min_batch_size=16,
            max_batch_size=16,
            warmup_fraction=0.05,
            min_warmup_steps=10,
        )
    )
    config.limits = ml_collections.ConfigDict(
        dict(min_steps=200, min_tokens_per_param=1.0, max_tokens_per_param=200.0, max_epochs=1.0)
    )
    config.lr_tuning = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0]
    config.lr_check = [0.5, 2.0]
    config.allocations = [
        dict(label="GPT-2's 6.4 tokens per parameter", budget=TOP_BUDGET, **_shape(4, 112)),
    ]
    config.evals_per_run = 2
    config.checkpoints_per_run = 4
    if variant == "smoke":
        _shrink_to_a_smoke_test(config)
    return config


def _shrink_to_a_smoke_test(config: ml_collections.ConfigDict) -> None:
    """The driver's CPU test (tests/test_gpu_sweep.py): the same path, source and rules at three two-layer
    widths, budgets 10^5 times smaller and the test's corpus (871 kB of the repo's own text), with the floors off (a few dozen
    steps a point), in float32 (the CPU has no fast bfloat16). Its points show the driver works, not a law."""
    config.smoke_test = True
    config.base.model.update(block_size=16, dtype="float32")
    config.base.train.update(eval_batches=2, log_every=10)
    config.shapes = [dict(n_layer=2, n_head=2, n_embd=width) for width in (8, 12, 16)]
    config.budgets = [1.5e7, 4e7, 1e8]
    config.rules.update(batch_size=4, min_batch_size=4, max_batch_size=4, min_warmup_steps=2)
    config.limits.update(min_steps=10, min_tokens_per_param=0.2)
    config.lr_tuning = [0.5, 1.0, 2.0]
    config.lr_check = []
    config.allocations = [dict(label="GPT-2's 6.4 tokens per parameter", n_layer=2, n_head=2, n_embd=12, budget=1e8)]
    config.evals_per_run = 1
    config.checkpoints_per_run = 1
