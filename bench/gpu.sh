#!/usr/bin/env bash
# Every GPU figure the docs table, from one run on a bare GPU machine (one card).
#
# The machine needs jax with its CUDA plugin, flax, optax, orbax-checkpoint, tiktoken and, for
# the hf_generate section, PyTorch and transformers. What it lacks travels as wheels in .whl/
# (git ignores it), installed first; on a machine with internet, for the GPU machine's Python 3.12:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl ml-collections flax optax orbax-checkpoint
# Run from the repository root:  bash bench/gpu.sh [SECTION ...]  (all of them: about 14 minutes
# on an H100 or H200). The sections, in order:
#   configs      the shipped configs as shipped, and small_12gib inside a 12 GiB card's share
#   one_step     one micro-batch of 16: attention, scanned layers, remat, float32, a profile
#   train        a 100-step training run of GPT-2 small
#   optimizers   each optimizer at the budget's step inside a 12 GiB card's share (about 2 minutes)
#   hf_generate  an export read by transformers decodes as gpt2jax does (about 1 minute)
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
    timeout "${RUN_TIMEOUT_S:-900}" "$@" >"$out/$name.json" 2>"$out/$name.err"
    python3 - "$name" "$out/$name.json" "$out/$name.err" <<'EOF'
import json, re, sys
name, out, err = sys.argv[1:]
try:
    text = open(out).read()
    result = json.loads(text[re.search(r"^\{", text, re.M).start():])  # after a dry run's readable summary
except (AttributeError, ValueError):
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

configs() {
    # The shipped configs as shipped: 512 sequences a step through their accumulation.
    dry_run dry-small --config small
    dry_run dry-small_12gib --config small_12gib
    bench small --config small --steps 5
    bench small_12gib --config small_12gib --steps 5
    # small_12gib with the memory a 12 GiB card would give XLA, and its micro-batch of 16 too.
    XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction_12gib bench small_12gib-in-12gib --config small_12gib --steps 5
    XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction_12gib bench small_12gib-b16-in-12gib --config small_12gib --steps 5 \
        --config.train.grad_accum_steps=32
}

one_step() {
    # One micro-batch of 16 a step: cuDNN against XLA attention, scanned against unrolled
    # layers, the remat policies, float32, and a jax.profiler trace of a few steps.
    local one_step=(--config small --steps 20 --config.train.batch_size=16 --config.train.grad_accum_steps=1)
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
}

train() {
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
}

# The budget's training step (micro-batches of 1 x 1024 summed over 4, bfloat16, remat=dots)
# inside a 12 GiB card's share of this one, once per optimizer: XLA's peak bytes (the dry run's
# estimate is the same on any machine: `main --dry_run` with these flags), for the size the
# budget says fits (gpt2-medium) and the one it says does not (gpt2-large). Accumulation is what
# a real batch needs, and its running sum of gradients is part of the bytes.
optimizers() {
    local step=(--config.train.batch_size=4 --config.train.grad_accum_steps=4 --config.model.remat=dots)
    local size optimizer
    for size in medium large; do
        for optimizer in adamw adamw_bf16 adafactor; do
            XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction_12gib bench "$size-$optimizer-in-12gib" --config $size --steps 10 \
                "${step[@]}" --config.train.optimizer=$optimizer
        done
    done
}

# A tiny GPT-2-vocabulary model trained on this repository's documentation, exported, and decoded
# greedily by transformers and by gpt2jax (bench/hf_generate.py, on the CPU in float32).
hf_generate() {
    local corpus=/tmp/gpt2jax-docs
    rm -rf /tmp/gpt2jax-hf /tmp/gpt2jax-hf-data  # a warm machine's earlier run would only be resumed
    mkdir -p $corpus
    for file in README.md docs/*.md experiments/REPORT.md; do cp "$file" "$corpus/$(basename "$file" .md).txt"; done
    python3 -m gpt2jax.main --config tiny --workdir /tmp/gpt2jax-hf --config.data.source="text:$corpus/*.txt" \
        --config.data.dir=/tmp/gpt2jax-hf-data --config.model.dtype=float32 --config.train.steps=600 \
        --config.train.checkpoint_every=600 --config.train.eval_every=600 >"$out/hf_train.out" 2>"$out/hf_train.err"
    python3 bench/hf_generate.py --workdir /tmp/gpt2jax-hf 2>"$out/hf_generate.err" | tee "$out/hf_generate.jsonl"
}

sections=("$@")
[[ ${#sections[@]} -eq 0 ]] && sections=(configs one_step train optimizers hf_generate)
for section in "${sections[@]}"; do
    "$section"
done
