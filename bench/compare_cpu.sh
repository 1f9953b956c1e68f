#!/usr/bin/env bash
# gpt2jax's train step against a plain eager PyTorch GPT-2 step of the same shape, on this CPU.
# Usage: bash bench/compare_cpu.sh PYTHON_WITH_TORCH [PYTHON_WITH_GPT2JAX]
#   PYTHON_WITH_TORCH: e.g. a venv made with `pip install torch numpy`; the second python (default:
#   python3) runs gpt2jax from this checkout. Prints the CPU, the load, and per shape one line of
#   each framework's tokens/s and their ratio; the two run one after the other, shape by shape.
set -euo pipefail
torch_python=${1:?give the path of a python that has torch installed}
jax_python=${2:-python3}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
shapes=(
    "2 4 128 64 16"    # configs/tiny.py
    "4 4 256 128 8"
    "12 12 768 256 4"  # GPT-2 small at a short context
)
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for shape in "${shapes[@]}"; do
    read -r layers heads width context batch <<<"$shape"
    jax_tps=$("$jax_python" -m gpt2jax.cli.bench --config configs/tiny.py --steps 10 --json \
        --config.model.n_layer=$layers --config.model.n_head=$heads --config.model.n_embd=$width \
        --config.model.block_size=$context --config.train.batch_size=$batch 2>/dev/null \
        | "$jax_python" -c "import json,sys; r=json.load(sys.stdin); print(round(r['tokens_per_s']), r['mfu'])")
    torch_tps=$("$torch_python" bench/torch_baseline.py --steps 10 --n_layer $layers --n_head $heads --n_embd $width \
        --block_size $context --batch_size $batch 2>/dev/null \
        | "$jax_python" -c "import json,sys; print(round(json.load(sys.stdin)['tokens_per_s']))")
    read -r jax_tokens mfu <<<"$jax_tps"
    echo "n_layer=$layers n_head=$heads n_embd=$width block_size=$context batch_size=$batch:" \
        "gpt2jax $jax_tokens tokens/s (mfu $mfu), pytorch $torch_tps tokens/s," \
        "ratio $("$jax_python" -c "print(round($jax_tokens / $torch_tps, 2))")"
done
