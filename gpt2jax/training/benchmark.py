"""Timing of the real jitted train step after compilation, the versions it ran under, and its profile's summary.

MFU is measured against ``flops.DEVICE_PEAKS`` (on a CPU, against its measured matmul
peak), under PaLM's count (``mfu``) and the causal one (``mfu_causal``). Batches are
random tokens, so no corpus is needed; everything else is the step ``main`` trains with.
``cli.bench`` times one config; ``bench/gpu.py`` times many variants of one shape in one
process, handing each the state the one before returned (``time_step``).
"""

from __future__ import annotations

import collections
import gzip
import importlib.metadata
import json
import platform
import re
import resource
import subprocess
import time
from pathlib import Path

import jax
import numpy as np

from gpt2jax import flops, sharding
from gpt2jax.model import attention_implementation, scans_layers
from gpt2jax.training import memory
from gpt2jax.training.trainer import Trainer, build_trainer

PROFILED_STEPS = 3


def benchmark(config, steps: int, profile_dir: str | None = None) -> dict:
    """Times ``steps`` train steps after the compiling one; with ``profile_dir``, then traces a few more there."""
    trainer = build_trainer(config)
    memory.check_step_fits(trainer)  # refused in one sentence, not killed by the kernel mid-compile
    result, _ = time_step(trainer, trainer.init_state(), steps, profile_dir=profile_dir)
    result["peak_memory_bytes"] = _peak_memory(list(trainer.mesh.devices.flat))
    return result


def time_step(
    trainer: Trainer, state, steps: int, profile_dir: str | None = None, profiled_steps: int = PROFILED_STEPS
) -> tuple[dict, dict]:
    """Compiles ``trainer``'s step for ``state``, runs it once, times ``steps`` more; returns the figures and the state.

    Every step donates the state it is given, so the state returned is the only one left: a
    caller timing several variants of one model (scanned or unrolled layers, a remat policy,
    a loss head, a micro-batch: the parameters are laid out alike) passes it on to the next
    and initialises the model once. ``compile_s`` is lowering and compiling; the step that
    follows it is not timed (its first allocations). With ``profile_dir``, ``profiled_steps``
    more run under ``jax.profiler`` (open the trace in Perfetto, or ``summarise_trace`` it).
    """
    rng = np.random.default_rng(0)
    shape = (trainer.accum_steps, trainer.micro_batch_size, trainer.model_config.block_size)

    def random_batch():
        tokens = rng.integers(0, trainer.model_config.vocab_size, shape, dtype=np.int32)
        return sharding.global_batch(trainer.mesh, (tokens, np.roll(tokens, -1, axis=-1)), leading_unsharded=1)

    batches = [(*random_batch(), trainer.schedule) for _ in range(max(1, min(steps, 4)))]  # the step's inputs
    start = time.perf_counter()
    compiled = trainer.train_step.lower(state, *batches[0]).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, *batches[0])
    jax.block_until_ready(metrics)

    start = time.perf_counter()
    for i in range(steps):
        state, metrics = compiled(state, *batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps

    if profile_dir:
        with jax.profiler.trace(profile_dir):
            for i in range(profiled_steps):
                state, metrics = compiled(state, *batches[i % len(batches)])
            jax.block_until_ready((state, metrics))

    model_config = trainer.model_config
    step = flops.step_accounting(model_config, trainer.config.train.batch_size)
    devices = list(trainer.mesh.devices.flat)
    peak = flops.mesh_peak_flops(devices, model_config.dtype)
    speed = flops.throughput(step, steps, step_s * steps, peak)
    result = {
        "device": devices[0].device_kind,
        "n_devices": len(devices),
        "mesh": dict(trainer.mesh.shape),
        "n_params": flops.model_accounting(model_config)["n_params"],
        "dtype": model_config.dtype,
        "attention": attention_implementation(model_config),
        "remat": model_config.remat,
        "scan_layers": scans_layers(model_config),  # what ran: auto resolved for this platform
        "loss_chunk": model_config.loss_chunk,  # resolved by the trainer, 0 for the full logits
        "micro_batch_size": trainer.micro_batch_size,
        "grad_accum_steps": trainer.accum_steps,
        "tokens_per_step": step["tokens_per_step"],
        "tokens_per_s": speed["tokens_per_s"],
        "step_ms": 1e3 * step_s,
        "compile_s": compile_s,
        "model_flops_per_s": speed["model_flops_per_s"],
        "peak_flops_per_s": peak,
        "mfu": speed["mfu"],
        "mfu_causal": speed["mfu_causal"],
        **memory.xla_bytes(compiled),
        "final_loss": float(metrics["loss"]),
    }
    return result, state


def _peak_memory(devices) -> int | None:
    """The largest per-device peak an accelerator reports; on a CPU the process's peak RSS."""
    stats = [d.memory_stats() for d in devices if d.platform != "cpu"]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s]
    if peaks:
        return int(max(peaks))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# What a figure was measured with.


def versions() -> dict:
    """The device, and the versions of everything between the step and it; None where this machine has none.

    A GPU figure without them cannot be compared with the next: cuDNN's attention and XLA's
    kernels change between plugin releases, and the same card ran 1.9x apart on two attentions.
    """
    device = jax.devices()[0]
    cuda = _cuda_versions()
    plugins = sorted(
        f"{dist.metadata['Name']} {dist.version}"
        for dist in importlib.metadata.distributions()
        if (dist.metadata["Name"] or "").lower().startswith("jax-cuda")
    )
    return {
        "device": device.device_kind,
        "platform": device.platform,
        "n_devices": jax.device_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _distribution_version("jaxlib"),
        "flax": _distribution_version("flax"),
        "cuda_plugin": ", ".join(plugins) or None,
        "cuda_runtime": _cuda_call(cuda, "cuda_runtime_get_version", _major_minor),
        "cuda_driver_api": _cuda_call(cuda, "cuda_driver_get_version", _major_minor),
        "cudnn": _cuda_call(cuda, "cudnn_get_version", _cudnn_version),
        "nvidia_driver": nvidia_driver_version(),
    }


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_versions():
    """jax's own module of CUDA library versions (a private one: None if a release moves it)."""
    try:
        from jax._src.lib import cuda_versions
    except ImportError:
        return None
    return cuda_versions


def _cuda_call(module, name: str, formatted):
    try:
        return formatted(int(getattr(module, name)()))
    except Exception:  # no plugin, no library, no device: the version is unknown, not an error
        return None


def _major_minor(version: int) -> str:
    """CUDA's 13000 -> '13.0'."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _cudnn_version(version: int) -> str:
    """cuDNN 9's 91400 -> '9.14.0' (major x 10000 + minor x 100 + patch; cuDNN 8 used x 1000)."""
    major, rest = (version // 10000, version % 10000) if version >= 90000 else (version // 1000, version % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver's version (580.159.04), from /proc or nvidia-smi; None without one."""
    try:
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    return nvidia_smi("driver_version")


def nvidia_smi(field: str) -> str | None:
    """The first GPU's ``field`` as ``nvidia-smi --query-gpu`` gives it (no units); None without nvidia-smi."""
    try:
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = smi.stdout.splitlines()
    return lines[0].strip() if smi.returncode == 0 and lines else None


# A jax.profiler trace, summarised.

TOP_KERNELS = 15
# A kernel's class by its name, first match wins: cuDNN's fused attention ("cudnn...sdpa",
# flash kernels), cuBLAS and CUTLASS matmuls ("nvjet", "sm90_xmma_gemm", Triton's gemms) and
# XLA:CPU's (dot, and its YNNPACK fusions, which are dots), data movement, then XLA's fusions.
KERNEL_CLASSES = (
    ("attention", ("fmha", "flash", "sdpa", "cudnn", "attention")),
    ("matmul", ("gemm", "xmma", "nvjet", "cutlass", "cublas", "matmul", "dot", "ynn")),
    ("copy", ("memcpy", "memset", "copy", "transpose", "dynamic-update-slice", "dynamic_update_slice")),
    ("fusion", ("fusion", "triton", "reduce", "loop_", "input_")),
)


def kernel_class(name: str) -> str:
    """matmul, attention, fusion, copy or other, by the kernel's name (``KERNEL_CLASSES``)."""
    lowered = name.lower()
    for label, patterns in KERNEL_CLASSES:
        if any(pattern in lowered for pattern in patterns):
            return label
    return "other"


def trace_file(profile_dir: str | Path) -> Path:
    """The newest ``*.trace.json.gz`` jax.profiler wrote under ``profile_dir``."""
    found = sorted(Path(profile_dir).rglob("*.trace.json.gz"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no jax.profiler trace (*.trace.json.gz) under {profile_dir}.")
    return found[-1]


def summarise_trace(profile_dir: str | Path, steps: int, top: int = TOP_KERNELS) -> dict:
    """The ``top`` heaviest kernels of a trace of ``steps`` steps, and the time in each ``KERNEL_CLASSES``, per step.

    Reads the Chrome-format trace jax.profiler writes beside its xplane.pb with the standard
    library alone, so a machine without TensorBoard or protobuf reads it. Kernels are the
    events of a GPU's stream lines (its derived "XLA Ops" lines repeat them, so they are
    skipped); with no GPU in the trace, the XLA:CPU threads' ops (runtime bookkeeping, named
    ``Class::method``, left out). Each counts its own time: a ``while`` op on a CPU holds
    the ops of its body, which count for themselves.
    """
    with gzip.open(trace_file(profile_dir), "rt") as file:
        events = json.load(file)["traceEvents"]
    processes, threads = {}, {}
    for event in events:
        if event.get("ph") == "M" and event.get("name") == "process_name":
            processes[event["pid"]] = event["args"]["name"]
        elif event.get("ph") == "M" and event.get("name") == "thread_name":
            threads[event["pid"], event["tid"]] = event["args"]["name"]
    lines = _kernel_lines(processes, threads)
    by_line = collections.defaultdict(list)
    for event in events:
        key = (event.get("pid"), event.get("tid"))
        if event.get("ph") == "X" and key in lines and _is_kernel(event["name"], lines[key]):
            by_line[key].append((float(event["ts"]), float(event.get("dur", 0.0)), event["name"]))
    own_us, calls = collections.Counter(), collections.Counter()
    first, last = float("inf"), float("-inf")
    for line_events in by_line.values():
        for name, own in _own_times(line_events):
            own_us[name] += own
            calls[name] += 1
        first = min(first, min(ts for ts, _, _ in line_events))
        last = max(last, max(ts + dur for ts, dur, _ in line_events))
    totals = dict.fromkeys([label for label, _ in KERNEL_CLASSES] + ["other"], 0.0)
    for name, own in own_us.items():
        totals[kernel_class(name)] += own / 1e3 / steps
    kernel_ms = sum(own_us.values()) / 1e3 / steps
    return {
        "steps": steps,
        "kernel_lines": sorted({f"{processes.get(pid, pid)} / {threads[pid, tid]}" for pid, tid in lines})[:8],
        "kernels": len(own_us),
        "kernel_ms_per_step": kernel_ms,
        "span_ms_per_step": (last - first) / 1e3 / steps if own_us else 0.0,
        "totals_ms_per_step": totals,
        "top": [
            {
                "name": name[:160],
                "class": kernel_class(name),
                "ms_per_step": own / 1e3 / steps,
                "share": own / 1e3 / steps / kernel_ms,
                "calls_per_step": calls[name] / steps,
            }
            for name, own in own_us.most_common(top)
        ],
    }


def _kernel_lines(processes: dict, threads: dict) -> dict:
    """{(pid, tid): "gpu" or "cpu"}: a GPU's stream lines, or else the XLA:CPU threads."""
    gpus = {pid for pid, name in processes.items() if name.startswith("/device:GPU")}
    if gpus:
        on_gpu = {key: name for key, name in threads.items() if key[0] in gpus}
        streams = {key for key, name in on_gpu.items() if name.lower().startswith("stream")}
        return dict.fromkeys(streams or on_gpu, "gpu")
    return {key: "cpu" for key, name in threads.items() if name.startswith("tf_XLA")}


def _is_kernel(name: str, line: str) -> bool:
    return line == "gpu" or ("::" not in name and not name.startswith("end: ") and " " not in name)


def _own_times(line_events: list) -> list:
    """(name, own microseconds) of each event of one line: its duration less those of the events inside it."""
    line_events = sorted(line_events, key=lambda event: (event[0], -event[1]))
    own, open_events = [], []  # open_events: (end, index into own)
    for ts, dur, name in line_events:
        while open_events and open_events[-1][0] <= ts:
            open_events.pop()
        if open_events:
            parent = open_events[-1][1]
            own[parent] = (own[parent][0], own[parent][1] - dur)
        own.append((name, dur))
        open_events.append((ts + dur, len(own) - 1))
    return own
