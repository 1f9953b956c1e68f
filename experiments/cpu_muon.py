"""Muon against a tuned AdamW on real English (issue 36's multiplier): the same shapes, budgets and seeds.

Designed, not yet run (2026-12-07). Two sweeps, one per optimizer (the variant), each tuning its
own rates first (``scaling.tuning``: AdamW's; Muon's AdamW branch, then Muon's own):

python -m gpt2jax.scaling sweep --config experiments/cpu_muon.py:adamw --workdir runs/cpu_muon_adamw
python -m gpt2jax.scaling sweep --config experiments/cpu_muon.py:muon --workdir runs/cpu_muon_muon

with ``--max_budget 3.16e11`` first, so that the ratio at the top budget can be predicted from the
two lower ones before it trains:

python -m gpt2jax.scaling multiplier --reference runs/cpu_muon_adamw/results.csv \
    --candidate runs/cpu_muon_muon/results.csv --params non_embedding --predict 1e12 \
    --out experiments/cpu_muon/prediction.json

then, both sweeps run to the top budget, the measured one, which ``scaling budget --optimizer muon`` reads:

python -m gpt2jax.scaling multiplier --reference runs/cpu_muon_adamw/results.csv \
    --candidate runs/cpu_muon_muon/results.csv --params non_embedding \
    --where "the 2-core CPU, experiments/cpu_muon.py (4 layers, widths 32-64, English under GPT-2's tokenizer)" \
    --out experiments/cpu_muon/multiplier.json

The multiplier at a budget C is C_AdamW(L_Muon(C)) / C (``scaling.multiplier``): the compute AdamW's
frontier (its best loss over the shapes at each budget, a power law in C fitted to them) needs to
reach the loss Muon's frontier reaches at C, with an interval over the pairings of the two seeds.

Shapes: four layers of widths 32, 48 and 64 (heads of 16), 49k to 197k non-embedding parameters,
of which the hidden matrices Muon updates (12 D^2 a layer) are 97-98%: the CPU study's two layers
of width 8-48 would leave Muon's few small matrices little to act on. Budgets are 6 N_non-embedding D
(``params='non_embedding'``, as cpu_english) at 1e11, 3.16e11 and 1e12: at the top one width 64
reads 0.83M tokens (4.2 per parameter) and width 32 3.3M (64); width 64 is too big for the lowest.
Cost (``--plan``: 1.7e14 FLOPs a sweep, 3.0e13 its AdamW-rate scan): the output matmul over GPT-2's
50257 tokens is most of a step's FLOPs here, and cpu_english ran 700-1600 tokens/s at widths 8-48
on the 2-core EPYC; the ~6.7M tokens one optimizer's sweep reads a seed (trunks and cooldowns) then
take ~2.5 h, both optimizers and seeds ~10 h, the three tuning scans ~3 h more: ~13 h in all.
"""

from pathlib import Path

import ml_collections

from gpt2jax.config import load_config_file

OPTIMIZERS = ("adamw", "muon")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in OPTIMIZERS:
        raise ValueError(
            f"cpu_muon has no variant {variant!r}; give one of {', '.join(OPTIMIZERS)} (cpu_muon.py:muon)."
        )
    config = load_config_file(str(Path(__file__).with_name("cpu_english.py")))  # its corpus, batch, rules, limits
    config.base.model.update(n_layer=4, n_head=2, n_embd=32)
    config.base.train.optimizer = variant
    config.shapes = [dict(n_layer=4, n_head=width // 16, n_embd=width) for width in (32, 48, 64)]
    config.budgets = [1e11, 3.16e11, 1e12]
    config.rules.width_reference = 32
    config.allocations = []
    return config
