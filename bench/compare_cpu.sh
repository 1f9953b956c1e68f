#!/usr/bin/env bash
# gpt2jax's train step against a plain eager PyTorch GPT-2 step of the same shape, on this CPU.
# Usage: bash bench/compare_cpu.sh PYTHON_WITH_TORCH   (e.g. a venv made with `pip install torch`)
set -euo pipefail
torch_python=${1:?give the path of a python that has torch installed}
shapes=(
    "2 4 128 64 16"    # configs/tiny.py
    "4 4 256 128 8"
    "12 12 768 256 4"  # GPT-2 small at a short context
)
for shape in "${shapes[@]}"; do
    read -r layers heads width context batch <<<"$shape"
    echo "== n_layer=$layers n_head=$heads n_embd=$width block_size=$context batch_size=$batch"
    python -m gpt2jax.cli.bench --config configs/tiny.py --steps 10 --json \
        --config.model.n_layer=$layers --config.model.n_head=$heads --config.model.n_embd=$width \
        --config.model.block_size=$context --config.train.batch_size=$batch 2>/dev/null \
        | python -c "import json,sys; r=json.load(sys.stdin); print('gpt2jax', round(r['tokens_per_s']), 'tokens/s, mfu', round(r['mfu'], 3))"
    "$torch_python" bench/torch_baseline.py --steps 10 --n_layer $layers --n_head $heads --n_embd $width \
        --block_size $context --batch_size $batch 2>/dev/null \
        | python -c "import json,sys; r=json.load(sys.stdin); print(r['framework'], round(r['tokens_per_s']), 'tokens/s')"
done
