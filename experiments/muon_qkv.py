"""Muon's q, k and v orthogonalised as one matrix each or per head (``train.muon_qkv``): which trains better.

    python experiments/english_corpus.py data/english            # once (its docstring: the packages)
    python experiments/muon_qkv.py projection & python experiments/muon_qkv.py head; wait
    python experiments/muon_qkv.py --table                       # experiments/muon_qkv/*.jsonl, as a table

One shape of experiments/cpu_muon.py (4 layers, width 64, 4 heads of 16: per head, q, k and v are
twelve 64 x 16 matrices a layer; as projections, three 64 x 64), on its English corpus under GPT-2's
tokenizer: 400 steps of 8 x 64 tokens (205k tokens), cosine to 10% after 40 warmup steps, Muon's
rate at 0.25, 0.5 and 1 times Jordan's 0.02 with seed 0, then 0.5 times with seed 1; the AdamW branch
(embeddings, biases, norms) at cpu_english's tuned rule for width 64, 1.09e-3. Each variant's runs
share one process and its compiled programs; the two variants run side by side. A run already recorded in
``experiments/muon_qkv/VARIANT.jsonl`` is not trained again.
"""

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpt2jax.config import load_config_file  # noqa: E402

VARIANTS = ("projection", "head")
# (Muon's rate as a multiple of Jordan's 0.02, seed): x0.5 was the best of x0.5 and x1 for both variants, so x0.25
# brackets it from below, and the second seed trains at x0.5.
RUNS = ((0.5, 0), (1.0, 0), (0.25, 0), (0.5, 1))
OUT = REPO / "experiments" / "muon_qkv"


def run_config(variant: str, multiple: float, seed: int):
    config = load_config_file(str(REPO / "experiments" / "cpu_muon.py:muon")).base
    config.model.update(n_layer=4, n_head=4, n_embd=64, block_size=64)
    config.data.update(dir=str(REPO / "runs" / "muon_qkv" / "data"))
    config.train.update(
        optimizer="muon", muon_qkv=variant, muon_learning_rate=0.02 * multiple, learning_rate=1.09e-3,
        batch_size=8, steps=400, warmup_steps=40, schedule="cosine", seed=seed,
        eval_every=400, checkpoint_every=400, log_every=100, eval_batches=128,
    )  # fmt: skip
    return config


def train(variant: str) -> None:
    from gpt2jax.training import loop

    OUT.mkdir(exist_ok=True)
    records = OUT / f"{variant}.jsonl"
    done = [json.loads(line) for line in records.read_text().splitlines()] if records.is_file() else []
    for multiple, seed in RUNS:
        if any(row["muon_rate"] == 0.02 * multiple and row["seed"] == seed for row in done):
            continue
        workdir = REPO / "runs" / "muon_qkv" / f"{variant}_x{multiple:g}_s{seed}"
        started = time.time()
        final = loop.run(run_config(variant, multiple, seed), workdir)
        record = dict(variant=variant, muon_rate=0.02 * multiple, seed=seed, val_loss=final["val_loss"],
                      train_loss=final["train_loss"], seconds=round(time.time() - started, 1))  # fmt: skip
        with open(records, "a") as file:
            file.write(json.dumps(record) + "\n")
        print(record, flush=True)


def table() -> None:
    rows = [json.loads(line) for variant in VARIANTS for line in (OUT / f"{variant}.jsonl").read_text().splitlines()]
    for row in sorted(rows, key=lambda row: (row["variant"], row["seed"], row["muon_rate"])):
        print(f"{row['variant']:>10}  Muon rate {row['muon_rate']:.3f}  seed {row['seed']}  val {row['val_loss']:.4f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:
        table()
    elif len(sys.argv) == 2 and sys.argv[1] in VARIANTS:
        train(sys.argv[1])
    else:
        sys.exit(f"usage: python experiments/muon_qkv.py {{{','.join(VARIANTS)}}} | --table")
