#!/usr/bin/env bash
# Every GPU figure the README tables, from one run on a bare GPU machine (one card).
#
# The machine needs jax with its CUDA plugin, flax, optax, orbax-checkpoint and tiktoken.
# What it lacks travels as wheels in .whl/ (git ignores it), installed first; on a machine
# with internet, for the GPU machine's Python 3.12:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl ml-collections tqdm threadpoolctl safetensors PyYAML tensorflow-datasets
# Run from the repository root:  bash bench/gpu.sh  (about 10 minutes on an H100 or H200).
#
# Every run prints one JSON line {"run": NAME, ...figures} on stdout (a failed run:
# {"run": NAME, "error": its last line}), so `grep '^{' | jq -s` makes the table; logs,
# JSON files and the jax.profiler trace land in $OUT (default /tmp/gpt2jax-bench).
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/gpt2jax-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/gpt2jax-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpt2jax-bench}
mkdir -p "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" >&2
card_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
# A 12 GiB card gives XLA 75% of itself by default (9 GiB): the same bytes of this card.
fraction_12gib=$(python3 -c "print(round(0.75 * 12 * 1024 / $card_mib, 4))")

run() {  # NAME, then the command; prints its JSON output as one line tagged with NAME
    local name=$1; shift
    "$@" >"$out/$name.json" 2>"$out/$name.err"
    python3 - "$name" "$out/$name.json" "$out/$name.err" <<'EOF'
import json, sys
name, out, err = sys.argv[1:]
try:
    result = json.loads(open(out).read())
except ValueError:
    lines = open(err).read().strip().splitlines() or ["no output"]
    result = {"error": lines[-1][:300]}
print(json.dumps({"run": name, **result}))
EOF
}
bench() {  # NAME, then bench flags
    local name=$1; shift
    run "$name" python3 -m gpt2jax.cli.bench --json "$@"
}
dry_run() {  # NAME, then train flags: XLA's own GPU memory figures beside the estimate
    local name=$1; shift
    run "$name" python3 -m gpt2jax.main --dry_run "$@"
}

# The shipped configs as shipped: 512 sequences a step through their accumulation.
dry_run dry-small --config small
dry_run dry-small_12gib --config small_12gib
bench small --config small --steps 5
bench small_12gib --config small_12gib --steps 5
# small_12gib with the memory a 12 GiB card would give XLA, and its micro-batch of 16 too.
XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction_12gib bench small_12gib-in-12gib --config small_12gib --steps 5
XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction_12gib bench small_12gib-b16-in-12gib --config small_12gib --steps 5 \
    --config.train.grad_accum_steps=32

# One micro-batch of 16 a step: cuDNN against XLA attention, scanned against unrolled
# layers, the remat policies, float32, and a jax.profiler trace of a few steps.
one_step=(--config small --steps 20 --config.train.batch_size=16 --config.train.grad_accum_steps=1)
for attention in cudnn xla; do
    bench "small-b16-$attention" "${one_step[@]}" --config.model.attention=$attention
done
bench small-b16-unrolled "${one_step[@]}" --config.model.scan_layers=False
bench small-b16-xla-unrolled "${one_step[@]}" --config.model.attention=xla --config.model.scan_layers=False
for remat in dots attention full; do
    bench "small-b16-remat-$remat" "${one_step[@]}" --config.model.remat=$remat
done
bench small-b32 --config small --steps 20 --config.train.batch_size=32 --config.train.grad_accum_steps=1
bench small-b16-fp32-xla "${one_step[@]}" --config.model.dtype=float32 --config.model.attention=xla
bench small-b16-profiled "${one_step[@]}" --profile_dir="$out/profile"
bench medium-b16 --config medium --steps 10 --config.train.batch_size=16 --config.train.grad_accum_steps=1

# A two-minute training run: GPT-2 small, 0.5M tokens a step, synthetic source; its last metrics line.
timeout 300 python3 -m gpt2jax.main --config small --workdir /tmp/gpt2jax-run \
    --config.data.source=synthetic --config.data.dir=/tmp/gpt2jax-data \
    --config.train.steps=100 --config.train.log_every=10 --config.train.eval_every=50 \
    --config.train.checkpoint_every=100 >"$out/train.out" 2>"$out/train.err"
cp /tmp/gpt2jax-run/metrics.jsonl "$out/train_metrics.jsonl" 2>/dev/null
python3 -c "
import json, sys
lines = open('$out/train_metrics.jsonl').read().splitlines() if __import__('os').path.exists('$out/train_metrics.jsonl') else []
print(json.dumps({'run': 'train-small-100-steps', **json.loads(lines[-1])} if lines else {'run': 'train-small-100-steps', 'error': 'no metrics'}))
"
echo "profile trace: $out/profile" >&2
