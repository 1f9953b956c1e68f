"""Every GPU figure of docs/benchmarks.md from one process, the variants that decide a default first.

    python bench/gpu.py [--out DIR] [--sections S,S,...] [--deadline_s 540] [--tiny]

One JSON line a figure on stdout, and in DIR/bench.jsonl (DIR: $OUT, else /tmp/gpt2jax-bench):
``{"run": NAME, "section": ..., figures..., "versions": {...}}``, every figure from
``training.benchmark`` and its MFU from ``flops``; a variant that fails is one line with
``"error"`` and the run goes on. First, within seconds, ``{"run": "versions", ...}``: the device,
jax, jaxlib, the CUDA plugin, CUDA, cuDNN and the NVIDIA driver, the cuDNN attention probe's
choice and how long the imports took (an import that fails ends the run there, exit 1).

Why one process: a lent GPU gives 15 minutes in all, 10 a command, and one process per
figure took 14 minutes for 24 of them (the H200 run of 2026-12-04). Here the model is initialised once per shape and each variant's step takes
the state the one before returned (scanned or unrolled, every remat and loss head lays the
parameters out alike), so a variant costs its compile and its steps. What jax reads once per
process runs in a child process: the 12 GiB card's share (XLA_PYTHON_CLIENT_MEM_FRACTION) and
the XLA-flag A/B (XLA_FLAGS); the PyTorch peer is a process of its own. This process takes GPU
memory as it needs it (XLA_PYTHON_CLIENT_PREALLOCATE=false), so they find the card free enough.
A variant's config equal to one measured earlier is not run twice: its line says ``same_as``.

The sections, in order (the default run):
  baseline   configs/small.py as shipped (512 x 1024 a step in micro-batches of 16)
  layers     one micro-batch of 16, then of 32, each with model.scan_layers true and false
  remat      model.remat none, dots, attention (unrolled, one micro-batch of 16)
  loss_head  model.loss_chunk 0 (full logits), 128 (the chunk of every earlier GPU figure) and
             auto (the default: as many positions as the memory leaves), likewise
  in_12gib   configs/small_12gib.py inside a 12 GiB card's share: micro-batches of 8, then of 16
  profile    one traced step of the baseline: its 15 heaviest kernels, the time in matmuls,
             attention, fusions and copies (a standard-library reader of jax.profiler's trace)
  train      30 steps of the real training loop (small.py as shipped, the synthetic source)
  torch      bench/torch_baseline.py at the same shape (one micro-batch of 16): torch.compile,
             SDPA's flash attention, fused AdamW, bf16 autocast; skipped where torch is missing
  xla_flags  one variant again in a second process with other XLA flags (--xla_ab; default:
             none of gpt2jax's GPU flags), to hold against the same variant above
Measured on an H200 on 2026-12-04 and off the default run (name them in --sections):
xla_attention, float32, medium, optimizers (each inside a 12 GiB card's share), hf_generate.
Off the default run and not yet measured: offload (issue 34, inside a 12 GiB card's share: medium's
budget step with train.offload all, master, optimizer and none, then configs/large_12gib.py and
configs/xl_12gib.py at 4 micro-batches a step; each line adds the dry run's device and host estimates
and the device's peak so far). Estimated on an H100: a child's start 8 s, 6 compiles and 6
initialisations about 90 s, the steps about 60 s (xl's 12.4 GB of gradient sum over PCIe a micro-batch
dominates): under 3 minutes. Its own call: the command below with ``--sections offload --deadline_s
300`` in place of ``--deadline_s 420``, timeout_s=400.

Files under DIR (at most 8, what the GPU tool brings back): bench.jsonl, bench.log (every
process's stderr), trace.json.gz (the profile, for Perfetto), train_metrics.jsonl, and for
hf_generate hf_generate.jsonl. --tiny runs every section at a 2-layer shape on any machine
(tests/test_bench.py runs it on the CPU, so a GPU draw never finds the harness broken).

How long on one H100, estimated (no H100 has run it yet; --deadline_s bounds it anyway).
Compiles: 13 of a full train step (baseline 1; layers 4; remat 2, since none is the unrolled
b16 of layers; loss_head 2, since auto is that too; in_12gib 2; train 1, its learning-rate
schedule differs from the baseline's; xla_flags 1) and 7 small ones (the cuDNN probe, 4
initialisations, the loop's eval step and checkpoint check), at 4 s each: 28 s. A scanned
step compiled in 7.2 s on the H200 (bench/records.jsonl: compile_s 8.8 less its 1.54 s step);
an unrolled one is taken as 2x that, 14.4 s: on this repository's 2-core CPU, GPT-2 small's
unrolled step compiled 1.3 to 2.9 times as long as the scanned (median 1.7 of five pairs).
With model.scan_layers=auto unrolled on a GPU, 11 of the 13 are unrolled: 11 x 14.4 + 2 x 7.2
= 173 s. Steps, at docs/benchmarks.md's H200 speeds: baseline 3 x 1.55 s, the one-micro-batch
variants 9 x 21 steps of 35-86 ms (9 s), in_12gib 2 x 3 x 1.5 s, profile 2 x 1.55 s and 8 s
of trace, train 30 x 1.55 s and 10 s of data, evaluation and checkpoint: 91 s. Processes:
this one's imports and backend 8 s, two children 8 s each, the PyTorch peer 51 s (5 s of
import, 45 of torch.compile, 22 steps): 75 s. In all 173 + 28 + 91 + 75 = 367 s, 6.1
minutes (5.7 at the CPU's median ratio, 7.3 at its worst). --deadline_s skips what is left
once it passes (540 s by default; 420 in the command below), so a run ends inside its command
with its files written.

When a GPU is lent: `bash scripts/fetch_wheels.sh` (the wheels into .whl/, git-ignored) in the
checkout the device tool sends, then its call; the machine's start (1-2 minutes) and at most
8.5 leave 5 of the 15 for a rerun of one lever (--sections, the compile cache warm); the
command is one line, wrapped here:
    run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
        --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
        PYTHONUNBUFFERED=1 || exit; python3 bench/gpu.py --out $OUT --deadline_s 420",
        carry=[".whl"], timeout_s=510)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.monotonic()
# A child process keeps its parent's clock (a wall time in here): its elapsed_s and deadline are the run's.
STARTED_VARIABLE = "GPT2JAX_BENCH_STARTED"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's gpt2jax, whatever else is installed

# A 12 GiB card's share: JAX gives XLA 75% of a card unless told otherwise (9 GiB of 12).
JAX_DEFAULT_SHARE = 0.75
TWELVE_GIB_SHARE_BYTES = JAX_DEFAULT_SHARE * 12 * 2**30
# --tiny: every variant at this shape, its micro-batch cut by TINY_BATCH_DIVISOR, at most
# TINY_ACCUM of them a step, TINY_STEPS timed steps, and XLA's quickest compiles (its figures
# are not read: CI runs it to find the harness broken before a GPU does).
TINY_MODEL = {"model.n_layer": 2, "model.n_head": 4, "model.n_embd": 32, "model.block_size": 32}
TINY_BATCH_DIVISOR = 8
TINY_ACCUM = 2
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0"  # halved a tiny step's compile on XLA:CPU (9-12 s from 20-23)
TINY_STEPS = 2
TINY_TRAIN_STEPS = 4
TRAIN_STEPS = 30
PEER_STEPS = 20
TRACE_FILE = "trace.json.gz"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One timed step: a shipped config, its overrides ({"section.key": value}) and how many steps to time."""

    name: str
    config: str
    overrides: dict
    steps: int = 20


def one_micro_batch(rows: int) -> dict:
    return {"train.batch_size": rows, "train.grad_accum_steps": 1}


UNROLLED_B16 = {**one_micro_batch(16), "model.scan_layers": False}
SCANNED_B16 = {**one_micro_batch(16), "model.scan_layers": True}
BUDGET_STEP = {"train.batch_size": 4, "train.grad_accum_steps": 4, "model.remat": "dots"}  # scaling budget's step

VARIANTS = {
    "baseline": [Variant("small", "small", {}, steps=2)],
    "layers": [
        Variant(
            f"small-b{rows}-{'scanned' if scan else 'unrolled'}",
            "small",
            {**one_micro_batch(rows), "model.scan_layers": scan},
        )
        for rows in (16, 32)
        for scan in (True, False)
    ],
    "remat": [
        Variant(f"small-b16-unrolled-remat-{policy}", "small", {**UNROLLED_B16, "model.remat": policy})
        for policy in ("none", "dots", "attention")
    ],
    "loss_head": [
        Variant(f"small-b16-unrolled-loss_chunk-{chunk}", "small", {**UNROLLED_B16, "model.loss_chunk": chunk})
        for chunk in (0, 128, "auto")
    ],
    "in_12gib": [
        Variant("small_12gib-in-12gib", "small_12gib", {}, steps=2),
        Variant("small_12gib-b16-in-12gib", "small_12gib", {"train.grad_accum_steps": 32}, steps=2),
    ],
    "xla_flags": [Variant("small-b16-unrolled-xla_ab", "small", UNROLLED_B16)],
    "xla_attention": [
        Variant("small-b16-scanned-xla_attention", "small", {**SCANNED_B16, "model.attention": "xla"}),
        Variant("small-b16-unrolled-xla_attention", "small", {**UNROLLED_B16, "model.attention": "xla"}),
    ],
    "float32": [
        Variant("small-b16-float32", "small", {**SCANNED_B16, "model.dtype": "float32", "model.attention": "xla"})
    ],
    "medium": [Variant("medium-b16-remat-dots", "medium", {**one_micro_batch(16), "model.remat": "dots"}, steps=10)],
    "optimizers": [
        Variant(f"{size}-{optimizer}-in-12gib", size, {**BUDGET_STEP, "train.optimizer": optimizer}, steps=10)
        for size in ("medium", "large")
        for optimizer in ("adamw", "adamw_bf16", "adafactor")
    ],
    # Issue 34: train.offload's cost on medium (the budget's step in each layout), then large and xl in their
    # 12 GiB configs with 4 micro-batches a step instead of 512 (the same buffers: only the loop is shorter).
    # In the order of their estimates, since a process's peak counts every step before it.
    "offload": [
        *(
            Variant(f"medium-offload-{mode}-in-12gib", "medium", {**BUDGET_STEP, "train.offload": mode}, steps=5)
            for mode in ("all", "master", "optimizer", "none")
        ),
        Variant("large_12gib-in-12gib", "large_12gib", {"train.batch_size": 4, "train.grad_accum_steps": 4}, steps=5),
        Variant("xl_12gib-in-12gib", "xl_12gib", {"train.batch_size": 8, "train.grad_accum_steps": 4}, steps=5),
    ],
}
# Sections whose variants run in a child process, and what that process's environment changes.
CHILD_SECTIONS = ("in_12gib", "xla_flags", "optimizers", "offload")
DEFAULT_SECTIONS = ("baseline", "layers", "remat", "loss_head", "in_12gib", "profile", "train", "torch", "xla_flags")
EXTRA_SECTIONS = ("xla_attention", "float32", "medium", "optimizers", "offload", "hf_generate")
DEFAULT_XLA_AB = ("GPT2JAX_GPU_XLA_DEFAULTS=0",)


class Harness:
    """The run's output (stdout, bench.jsonl, bench.log), its clock and deadline, and the state it hands on."""

    def __init__(self, args, modules: dict):
        self.args = args
        self.out = Path(args.out)
        self.modules = modules
        self.jsonl = None if args.child else open(self.out / "bench.jsonl", "a")
        self.log = sys.stderr if args.child else open(self.out / "bench.log", "a")  # a child's stderr is the log
        self.versions = modules["benchmark"].versions()
        self.measured = {}  # config key -> (name, figures): a config already timed in this process
        self.state = None  # (layout, state): the last variant's state, for the next of its layout
        self.trainers = {}  # variant name -> Trainer: the profile traces the baseline's compiled step again

    def remaining_s(self) -> float:
        return self.args.deadline_s - (time.monotonic() - START)

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - START:6.1f} s] {text}"
        print(line, file=sys.stderr, flush=True)
        if self.log is not sys.stderr:
            print(line, file=self.log, flush=True)

    def emit(self, record: dict) -> None:
        text = json.dumps(record, default=str)
        print(text, flush=True)
        if self.jsonl:
            print(text, file=self.jsonl, flush=True)

    def line(self, run: str, section: str, **figures) -> dict:
        xla_flags = os.environ.get("XLA_FLAGS", "")
        return {
            "run": run,
            "section": section,
            **figures,
            "elapsed_s": round(time.monotonic() - START, 1),
            "xla_flags": xla_flags,
            "versions": self.versions,
        }


def main(argv=None) -> None:
    global START
    args = parse_args(argv)
    if args.child:
        START = time.monotonic() - (time.time() - float(os.environ[STARTED_VARIABLE]))
    else:
        os.environ[STARTED_VARIABLE] = str(time.time() - (time.monotonic() - START))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.child is None:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the children and the peer need room
        if args.tiny:
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TINY_XLA_FLAGS}".strip()
    # A child starts from the XLA flags before gpt2jax's GPU defaults, which it adds by its own environment.
    args.xla_flags_given = os.environ.get("XLA_FLAGS")
    started, started_cpu = time.monotonic(), time.process_time()
    try:
        modules = import_harness()
    except ImportError as error:
        print(json.dumps({"run": "versions", "error": f"an import failed: {error}"}), flush=True)
        print(
            f"error: an import failed ({error}); install the missing package (scripts/fetch_wheels.sh).",
            file=sys.stderr,
        )
        sys.exit(1)
    import_s, import_cpu_s = time.monotonic() - started, time.process_time() - started_cpu
    if args.check_imports:
        sys.exit(check_imports(import_s, import_cpu_s))
    jax = modules["jax"]
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    harness = Harness(args, modules)
    if args.child:
        run_variants(harness, args.child)
        return
    probe_start = time.monotonic()
    probe = modules["model"].attention_implementation(config_for(harness, VARIANTS["baseline"][0]).model_config)
    harness.emit(
        harness.line(
            "versions",
            "versions",
            attention_probe=probe,
            attention_probe_s=round(time.monotonic() - probe_start, 2),
            import_s=round(import_s, 2),
            sections=args.sections,
            tiny=args.tiny,
            compile_cache=args.compile_cache or None,
        )
    )
    for section in args.sections:
        if harness.remaining_s() <= 0:
            harness.emit(harness.line(section, section, skipped=f"past the deadline of {args.deadline_s} s"))
            continue
        harness.say(f"section {section}")
        try:
            if section in CHILD_SECTIONS:
                run_child(harness, section)
            elif section in VARIANTS:
                run_variants(harness, section)
            else:
                SPECIAL_SECTIONS[section](harness)
        except Exception as error:  # a broken section is its line; the ones after it still run
            harness.emit(harness.line(section, section, error=modules["errors"].first_line(error, limit=300)))


def parse_args(argv):
    every = DEFAULT_SECTIONS + EXTRA_SECTIONS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpt2jax-bench", help="Where the files go.")
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"Comma-separated, run in the order given: {', '.join(every)}.",
    )
    parser.add_argument("--deadline_s", type=float, default=540, help="Skip what is left after this many seconds.")
    parser.add_argument("--tiny", action="store_true", help="Every section at a 2-layer shape (CI, on a CPU).")
    parser.add_argument(
        "--xla_ab",
        nargs="*",
        default=list(DEFAULT_XLA_AB),
        help="VAR=VALUE settings of the xla_flags section's process (default: none of gpt2jax's GPU flags).",
    )
    parser.add_argument(
        "--compile_cache",
        default="/tmp/gpt2jax-compile-cache",
        help="jax's persistent compilation cache ('' for none): a rerun on the same machine (one lever changed) "
        "recompiles only the variants it changed.",
    )
    parser.add_argument("--check_imports", action="store_true", help="Import what the harness needs, report, exit.")
    parser.add_argument("--child", choices=CHILD_SECTIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sections = [name for name in args.sections.split(",") if name]
    unknown = sorted(set(args.sections) - set(every))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; the sections are {', '.join(every)}")
    for setting in args.xla_ab:
        if "=" not in setting:
            parser.error(f"--xla_ab takes VAR=VALUE settings, not {setting!r}")
    return args


def import_harness() -> dict:
    """Everything the harness runs, imported before any device work (an ImportError ends the run in seconds).

    What travels as a wheel (bench/wheels.txt: what the GPU image lacks) is imported first: a
    missing one stops the run in about a second, before jax's imports take their several.
    """
    import ml_collections  # noqa: F401  (gpt2jax.config's; the harness needs no other wheel)

    from gpt2jax import xla_flags

    xla_flags.configure()  # XLA's GPU flags are read when jax starts its backend
    import jax

    from gpt2jax import config, errors, flops, model
    from gpt2jax.training import benchmark, loop, memory, trainer

    return {
        "jax": jax,
        "config": config,
        "errors": errors,
        "flops": flops,
        "model": model,
        "benchmark": benchmark,
        "loop": loop,
        "memory": memory,
        "trainer": trainer,
    }


# Variants.


@dataclasses.dataclass
class Built:
    config: object
    model_config: object


def config_for(harness: Harness, variant: Variant, extra: dict | None = None) -> Built:
    """The variant's config (at the tiny shape under --tiny), validated, with its GPTConfig."""
    modules = harness.modules
    config = modules["config"].load_config_file(variant.config)
    overrides = {**variant.overrides, **(extra or {})}
    if harness.args.tiny:
        overrides = {**overrides, **TINY_MODEL}
    model = dict(config.model)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in config or name not in config[section]:
            raise ValueError(f"the variant {variant.name} overrides {key}, which no config has; see gpt2jax/config.py.")
        if section == "model":
            model[name] = value
        else:
            config[section][name] = value
    # model.scan_layers may hold a string default ('auto') that a bool override must replace:
    # the section is made anew rather than type-checked against its default.
    config.model = type(config.model)(model)
    if harness.args.tiny:
        micro_batch = max(1, config.train.batch_size // config.train.grad_accum_steps // TINY_BATCH_DIVISOR)
        config.train.grad_accum_steps = min(config.train.grad_accum_steps, TINY_ACCUM)
        config.train.batch_size = micro_batch * config.train.grad_accum_steps
    return Built(config, modules["model"].GPTConfig.from_config(config.model))


def run_variants(harness: Harness, section: str) -> None:
    for variant in VARIANTS[section]:
        if harness.remaining_s() <= 0:
            harness.emit(
                harness.line(variant.name, section, skipped=f"past the deadline of {harness.args.deadline_s} s")
            )
            continue
        harness.say(f"{section}: {variant.name}")
        try:
            figures = time_variant(harness, variant)
        except Exception as error:  # one variant's failure (out of memory, a compile error) is its line
            figures = {"error": harness.modules["errors"].first_line(error, limit=300)}
            drop_spent_state(harness)
        harness.emit(harness.line(variant.name, section, config=variant.config, overrides=variant.overrides, **figures))


def time_variant(harness: Harness, variant: Variant) -> dict:
    built = config_for(harness, variant)
    key = json.dumps(built.config.to_dict(), sort_keys=True, default=str)
    if key in harness.measured:
        name, figures = harness.measured[key]
        return {"same_as": name, **figures}
    trainer = harness.modules["trainer"].build_trainer(built.config)
    state = state_for(harness, trainer)
    steps = min(variant.steps, TINY_STEPS) if harness.args.tiny else variant.steps
    figures, state = harness.modules["benchmark"].time_step(trainer, state, steps)
    if variant in VARIANTS["offload"]:
        figures |= memory_figures(harness, trainer)
    harness.state = (layout(trainer), state)
    harness.trainers[variant.name] = trainer
    harness.measured[key] = (variant.name, figures)
    return figures


def memory_figures(harness: Harness, trainer) -> dict:
    """The dry run's estimates for the card and the host beside what the device reports: its peak so far in this
    process (the offload section runs its variants in the order of their estimates) and its limit."""
    memory, jax = harness.modules["memory"], harness.modules["jax"]
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "offload": trainer.config.train.offload,
        "estimate_bytes": memory.estimate(trainer)["total"],
        "host_estimate_bytes": memory.host_estimate(trainer)["total"],
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
        "bytes_limit": stats.get("bytes_limit"),
    }


def layout(trainer):
    """What decides whether a state fits a trainer's step: the tree, each leaf's shape, dtype and memory (device, or
    host with ``train.offload``), and the mesh."""
    import jax

    leaves, treedef = jax.tree.flatten(trainer.abstract_state)
    return treedef, tuple((leaf.shape, str(leaf.dtype), leaf.sharding.memory_kind) for leaf in leaves), trainer.mesh


def state_for(harness: Harness, trainer):
    """The state the last variant returned when it fits this trainer's step; else a new one (the old one freed)."""
    wanted = layout(trainer)
    if harness.state is not None and harness.state[0] == wanted:
        return harness.state[1]
    harness.state = None
    harness.say(f"initialising a model of {trainer.model_config.n_layer} layers of {trainer.model_config.n_embd}")
    return trainer.init_state()


def drop_spent_state(harness: Harness) -> None:
    """A failed step may have consumed the donated state: the next variant then initialises one."""
    if harness.state is None:
        return
    jax = harness.modules["jax"]
    if any(leaf.is_deleted() for leaf in jax.tree.leaves(harness.state[1])):
        harness.state = None


# Child processes: what jax reads once per process.


def card_bytes(harness: Harness) -> int | None:
    """The GPU's memory in bytes (nvidia-smi's figure, else the allocator's limit over JAX's share); None without a GPU."""
    jax = harness.modules["jax"]
    if jax.default_backend() != "gpu":
        return None
    mib = harness.modules["benchmark"].nvidia_smi("memory.total")
    if mib and mib.isdigit():
        return int(mib) * 2**20
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats["bytes_limit"] / JAX_DEFAULT_SHARE) if "bytes_limit" in stats else None


def child_environment(harness: Harness, section: str) -> dict:
    """The settings a section's process differs in: a 12 GiB card's memory share, or the XLA-flag A/B's."""
    if section == "xla_flags":
        return dict(setting.split("=", 1) for setting in harness.args.xla_ab)
    card = card_bytes(harness)
    return {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{TWELVE_GIB_SHARE_BYTES / card:.4f}"} if card else {}


def run_child(harness: Harness, section: str) -> None:
    changes = child_environment(harness, section)
    harness.say(f"{section}: a process of its own with {changes or 'the same environment'}")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", section, "--out", str(harness.out)]
    command += ["--deadline_s", str(harness.args.deadline_s), "--compile_cache", harness.args.compile_cache]
    command += ["--tiny"] if harness.args.tiny else []
    try:
        environment = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
        if harness.args.xla_flags_given is not None:
            environment["XLA_FLAGS"] = harness.args.xla_flags_given
        process = subprocess.run(
            command,
            env={**environment, **changes},
            stdout=subprocess.PIPE,
            stderr=harness.log,
            text=True,
            timeout=max(harness.remaining_s(), 1) + 30,
        )
        stdout, code = process.stdout, process.returncode
    except subprocess.TimeoutExpired as error:
        stdout, code = error.stdout or "", "timeout"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    lines = [json.loads(text) for text in stdout.splitlines() if text.startswith("{")]
    for record in lines:
        harness.emit({**record, "environment": changes})
    if code != 0:
        harness.emit(harness.line(section, section, error=f"its process exited {code}; bench.log has its stderr"))


# The profile, the training run, the PyTorch peer, the transformers check.


def profile(harness: Harness) -> None:
    """One traced step of the baseline (its compiled step reused), summarised by ``benchmark.summarise_trace``."""
    baseline = VARIANTS["baseline"][0].name
    if baseline not in harness.trainers:
        run_variants(harness, "baseline")
    trainer = harness.trainers.get(baseline)
    if trainer is None:
        harness.emit(harness.line("profile", "profile", error="the baseline did not run, so there is nothing to trace"))
        return
    benchmark = harness.modules["benchmark"]
    with tempfile.TemporaryDirectory(prefix="gpt2jax-profile-") as directory:
        state = state_for(harness, trainer)
        _, state = benchmark.time_step(trainer, state, steps=1, profile_dir=directory, profiled_steps=1)
        harness.state = (layout(trainer), state)
        summary = benchmark.summarise_trace(directory, steps=1)
        trace = benchmark.trace_file(directory)
        kept = trace.stat().st_size <= 16 * 2**20  # what the GPU tool brings back
        if kept:
            shutil.copyfile(trace, harness.out / TRACE_FILE)
    harness.emit(
        harness.line(
            "profile", "profile", variant=baseline, trace=TRACE_FILE if kept else "over 16 MiB, not kept", **summary
        )
    )


def train(harness: Harness) -> None:
    """The real loop (``loop.run``: data, logging, evaluation, a checked checkpoint) on small.py as shipped."""
    harness.state = None  # the variants' state is not needed again: its memory goes to the run's
    steps = TINY_TRAIN_STEPS if harness.args.tiny else TRAIN_STEPS
    with tempfile.TemporaryDirectory(prefix="gpt2jax-bench-train-") as directory:
        run = {
            "data.source": "synthetic",
            "data.dir": f"{directory}/data",
            "train.steps": steps,
            "train.log_every": steps,
            "train.eval_every": steps,
            "train.checkpoint_every": steps,
            "train.eval_batches": 4,
        }
        if harness.args.tiny:
            run.update({"data.synthetic_train_tokens": 50_000, "data.synthetic_val_tokens": 5_000})
        built = config_for(harness, VARIANTS["baseline"][0], run)
        start = time.monotonic()
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the loop's lines are a log; stdout is JSON
                final = harness.modules["loop"].run(built.config, f"{directory}/run")
        except Exception as error:
            harness.emit(harness.line("train", "train", error=harness.modules["errors"].first_line(error, limit=300)))
            return
        metrics = Path(directory) / "run" / "metrics.jsonl"
        if metrics.exists():
            shutil.copyfile(metrics, harness.out / "train_metrics.jsonl")
    harness.emit(harness.line("train", "train", config="small", wall_s=round(time.monotonic() - start, 1), **final))


def torch_peer(harness: Harness) -> None:
    """bench/torch_baseline.py at the one-micro-batch shape, in its own process; its MFU from ``flops``."""
    if importlib.util.find_spec("torch") is None:
        harness.emit(harness.line("torch", "torch", skipped="torch is not installed"))
        return
    built = config_for(harness, Variant("torch", "small", one_micro_batch(16)))
    model_config, rows = built.model_config, built.config.train.batch_size
    on_gpu = harness.modules["jax"].default_backend() == "gpu"
    steps = TINY_STEPS if harness.args.tiny else PEER_STEPS
    command = [sys.executable, str(REPO / "bench" / "torch_baseline.py")]
    shape = dict(
        n_layer=model_config.n_layer,
        n_head=model_config.n_head,
        n_embd=model_config.n_embd,
        block_size=model_config.block_size,
        vocab_size=model_config.padded_vocab_size,
        batch_size=rows,
        steps=steps,
    )
    command += [f"--{key}={value}" for key, value in shape.items()]
    command += ["--device=cuda", "--compile", "--dtype=bfloat16"] if on_gpu else []
    try:
        process = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=harness.log, text=True, timeout=max(harness.remaining_s(), 30)
        )
        result = json.loads(process.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as error:
        harness.emit(harness.line("torch", "torch", error=f"bench/torch_baseline.py gave no result ({error})"))
        return
    flops = harness.modules["flops"]
    step = flops.step_accounting(model_config, rows)
    dtype = "bfloat16" if on_gpu else "float32"
    peak = flops.mesh_peak_flops(harness.modules["jax"].devices()[:1], dtype)
    speed = flops.throughput(step, 1, result["step_ms"] / 1e3, peak)
    harness.emit(harness.line("torch", "torch", micro_batch_size=rows, dtype=dtype, **result, **speed))


def hf_generate(harness: Harness) -> None:
    """A tiny model trained on these docs, exported, decoded greedily by transformers and by gpt2jax alike."""
    with tempfile.TemporaryDirectory(prefix="gpt2jax-hf-") as directory:
        corpus = Path(directory) / "docs"
        corpus.mkdir()
        for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "REPORT.md"]:
            shutil.copyfile(path, corpus / f"{path.stem}.txt")
        train = [sys.executable, "-m", "gpt2jax.main", "--config", "tiny", "--workdir", f"{directory}/run"]
        train += [f"--config.data.source=text:{corpus}/*.txt", f"--config.data.dir={directory}/data"]
        train += ["--config.model.dtype=float32", "--config.train.steps=600", "--config.train.checkpoint_every=600"]
        train += ["--config.train.eval_every=600"]
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        steps = [train, [sys.executable, str(REPO / "bench" / "hf_generate.py"), "--workdir", f"{directory}/run"]]
        for command in steps:
            process = subprocess.run(command, env=environment, stdout=subprocess.PIPE, stderr=harness.log, text=True)
            if process.returncode:
                harness.emit(
                    harness.line("hf_generate", "hf_generate", error=f"{command[1:3]} exited {process.returncode}")
                )
                return
        (harness.out / "hf_generate.jsonl").write_text(process.stdout)
        for text in process.stdout.splitlines():
            if text.startswith("{"):
                harness.emit(harness.line("hf_generate", "hf_generate", **json.loads(text)))


SPECIAL_SECTIONS = {"profile": profile, "train": train, "torch": torch_peer, "hf_generate": hf_generate}


# The wheels' check (scripts/check_wheels.sh runs it in a fresh environment holding the GPU image's packages).


def check_imports(import_s: float, import_cpu_s: float) -> int:
    """Imports TFDS too (its wheels travel), lists the distributions loaded, and fails past 10 s or on one the
    GPU image lacks and no wheel brings (bench/gpu_image_packages.txt, bench/wheels.txt).

    The 10 s hold the imports' CPU time: on a shared machine the wall clock measures the neighbours
    (17.9 s at a load of 50 on 2 cores, for 3.3 s of CPU). The harness's first line gives the wall
    time on the GPU machine."""
    import importlib.metadata
    import re

    started = time.monotonic()
    import tensorflow_datasets

    tfds_s = time.monotonic() - started
    if not hasattr(tensorflow_datasets, "builder"):  # TFDS logs an error in its own imports and goes on
        print(
            "error: tensorflow_datasets imported only in part (its error is above); add the wheel it lacks.",
            file=sys.stderr,
        )
        return 1
    normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()
    listed = lambda path: {
        normal(re.split(r"[=<>;\s]", text)[0])
        for text in path.read_text().splitlines()
        if text and not text.startswith("#")
    }
    available = listed(REPO / "bench" / "gpu_image_packages.txt") | listed(REPO / "bench" / "wheels.txt")
    by_module = importlib.metadata.packages_distributions()
    loaded = {normal(dist) for name in list(sys.modules) for dist in by_module.get(name.partition(".")[0], [])}
    lacking = sorted(loaded - available - {"gpt2jax"})
    report = {
        "run": "check_imports",
        "import_s": round(import_s, 2),
        "import_cpu_s": round(import_cpu_s, 2),
        "tfds_import_s": round(tfds_s, 2),
        "distributions": sorted(loaded),
        "lacking": lacking,
    }
    print(json.dumps(report), flush=True)
    if lacking:
        print(
            f"error: the harness imported {', '.join(lacking)}, which the GPU image lacks; add a wheel.",
            file=sys.stderr,
        )
        return 1
    if import_cpu_s >= 10:
        print(f"error: the harness's imports took {import_cpu_s:.1f} s of CPU, over 10 s.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    main()
