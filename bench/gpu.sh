#!/usr/bin/env bash
# Every GPU figure the README tables, from one run on a bare GPU machine (one card).
#
# The machine needs jax with its CUDA plugin, flax, optax, orbax-checkpoint and tiktoken;
# wheels of anything else may sit in .whl/ (git ignores it) and are installed first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl ml-collections tqdm threadpoolctl safetensors PyYAML
# Run from the repository root:  bash bench/gpu.sh  (about 6 minutes on an H100)
set -uo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/gpt2jax-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/gpt2jax-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpt2jax-bench}
mkdir -p "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

bench() {  # name, then config overrides
    local name=$1; shift
    echo "== $name"
    python3 -m gpt2jax.cli.bench --steps 20 --json "$@" 2>"$out/$name.err" | tee "$out/$name.json" \
        || tail -5 "$out/$name.err"
}
for attention in cudnn xla; do
    bench "small-b16-$attention" --config configs/small.py --config.train.batch_size=16 \
        --config.train.grad_accum_steps=1 --config.model.attention=$attention
done
bench small-b32-cudnn --config configs/small.py --config.train.batch_size=32 --config.train.grad_accum_steps=1 \
    --config.model.attention=cudnn
bench small-b16-xla-fp32 --config configs/small.py --config.train.batch_size=16 --config.train.grad_accum_steps=1 \
    --config.model.attention=xla --config.model.dtype=float32
# Whether remat=dots, faster on a CPU, also pays on a GPU.
bench small-b16-cudnn-dots --config configs/small.py --config.train.batch_size=16 --config.train.grad_accum_steps=1 \
    --config.model.attention=cudnn --config.model.remat=dots
bench medium-b16-cudnn --config configs/medium.py --config.train.batch_size=16 --config.train.grad_accum_steps=1 \
    --config.model.attention=cudnn

echo "== two-minute training run: GPT-2 small, 0.5M tokens a step, synthetic source"
timeout 240 python3 -m gpt2jax.main --config configs/small.py --workdir /tmp/gpt2jax-run \
    --config.data.source=synthetic --config.data.dir=/tmp/gpt2jax-data --config.model.attention=cudnn \
    --config.train.steps=100 --config.train.log_every=10 --config.train.eval_every=50 \
    --config.train.checkpoint_every=100 2>"$out/train.err" | tail -1
tail -3 /tmp/gpt2jax-run/metrics.jsonl 2>/dev/null || tail -20 "$out/train.err"
cp /tmp/gpt2jax-run/metrics.jsonl "$out/train_metrics.jsonl" 2>/dev/null
