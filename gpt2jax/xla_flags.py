"""XLA's GPU flags for this kind of step, set before jax starts its backend, on GPU runs only.

Every flag set here overlaps or combines collectives: the ones NVIDIA's JAX-Toolbox GPU
performance guide and MaxText's GPU configs set for transformers with FSDP. A mesh of one
device has no collective, so a one-GPU run gets none of them, and no flag at all: the only
GPU measurement so far (docs/benchmarks.md, one H200, 2026-12-04) ran every figure with
the flags set, so it justifies none of them for a one-GPU step. How many devices the mesh
will hold is decided before jax starts (``mesh_device_count``). A flag already named in
``XLA_FLAGS`` keeps the user's value; ``GPT2JAX_GPU_XLA_DEFAULTS=0`` sets none of them.
XLA aborts on a flag it does not know, so each of these was checked to exist in jax 0.10.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import re

# (flag, value, what it does): set only where the mesh holds more than one device.
MULTI_DEVICE_DEFAULTS: tuple[tuple[str, str, str], ...] = (
    (
        "xla_gpu_enable_latency_hiding_scheduler",
        "true",
        "schedule the program so that collectives run while compute does; the pipelined collectives "
        "below rely on it to overlap (on one device it has no collective to move)",
    ),
    (
        "xla_gpu_enable_highest_priority_async_stream",
        "true",
        "run asynchronous collectives on the highest-priority stream, so compute does not starve them",
    ),
    (
        "xla_gpu_enable_while_loop_double_buffering",
        "true",
        "double-buffer the scanned layers' loop, so layer i+1's FSDP all-gather overlaps layer i",
    ),
    (
        "xla_gpu_enable_pipelined_all_gather",
        "true",
        "issue a scanned layer's parameter all-gather in the iteration before the one that reads it",
    ),
    (
        "xla_gpu_enable_pipelined_reduce_scatter",
        "true",
        "finish a scanned layer's gradient reduce-scatter in the next iteration, behind its compute",
    ),
    (
        "xla_gpu_enable_pipelined_all_reduce",
        "true",
        "the same for all-reduces (data-parallel gradients) inside scanned loops",
    ),
    (
        "xla_gpu_enable_while_loop_reduce_scatter_code_motion",
        "true",
        "move a reduce-scatter of a value summed over loop iterations (micro-batch gradients, the "
        "loss chunks' embedding gradient) out of the loop: one collective instead of one per iteration",
    ),
    (
        "xla_gpu_all_gather_combine_threshold_bytes",
        str(128 * 2**20),
        "combine small all-gathers up to 128 MiB into one (MaxText's GPU value)",
    ),
    (
        "xla_gpu_reduce_scatter_combine_threshold_bytes",
        str(64 * 2**20),
        "combine small reduce-scatters up to 64 MiB into one (MaxText's GPU value)",
    ),
    (
        "xla_gpu_all_reduce_combine_threshold_bytes",
        str(128 * 2**20),
        "combine small all-reduces up to 128 MiB into one (MaxText's GPU value)",
    ),
    (
        "xla_gpu_enable_all_gather_combine_by_dim",
        "false",
        "combine all-gathers whatever dimension they gather along, so more of them combine",
    ),
    (
        "xla_gpu_enable_reduce_scatter_combine_by_dim",
        "false",
        "combine reduce-scatters whatever dimension they scatter along",
    ),
)
# Left out on purpose:
# - xla_gpu_enable_triton_gemm=false (matmuls to cuBLAS, not Triton), which both guides set and
#   this module set until 2026-12-07: the H200 figures ran with it and nothing has timed a step
#   without it, so it is no measured choice; the GPU benchmark harness's XLA-flag A/B decides it.
# - MaxText's --xla_disable_hlo_passes=rematerialization, since on a 12 GiB card XLA's own
#   rematerialization is what turns a near miss into a fit.

_CUDA_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt", "jax-cuda13-pjrt")


def is_gpu_run(environ=os.environ) -> bool:
    """Whether jax will run on a GPU, decided without starting jax's backend.

    JAX_PLATFORMS decides when it is set; otherwise a GPU run is one with a CUDA plugin
    installed and an NVIDIA device present.
    """
    platforms = environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return any(name in platforms for name in ("cuda", "gpu"))
    if not os.path.exists("/dev/nvidiactl"):
        return False
    for name in _CUDA_PLUGINS:
        try:
            importlib.metadata.version(name)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


DEVICE_FILES = "/dev"  # where the NVIDIA driver makes nvidia0, nvidia1, ... one file per GPU


def _processes(environ) -> int:
    """The processes of the run: a hand-started one's JAX_NUM_PROCESSES, or SLURM's tasks (as ``cli.initialize_distributed`` reads them)."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return int(environ.get("JAX_NUM_PROCESSES", "1"))
    return int(environ.get("SLURM_NTASKS", "1"))


def _local_gpus(environ) -> int:
    """The GPUs this process will see: CUDA_VISIBLE_DEVICES's entries where set, else the NVIDIA device files."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [entry for entry in visible.split(",") if entry.strip()]
        # CUDA stops at the first entry that names no device ("-1" hides them all).
        return len(entries) if "-1" not in entries else entries.index("-1")
    if not os.path.isdir(DEVICE_FILES):
        return 0
    return sum(1 for name in os.listdir(DEVICE_FILES) if re.fullmatch(r"nvidia\d+", name))


def mesh_device_count(environ=os.environ, mesh_config=None) -> int:
    """How many devices the run's mesh will hold, without starting jax's backend.

    A mesh config whose sizes are all given holds their product (``sharding.mesh_shape``
    refuses any other device count); one with a -1 takes every device of every process:
    the processes (JAX_NUM_PROCESSES, SLURM_NTASKS) times the GPUs each sees.
    """
    if mesh_config is not None:
        sizes = [int(mesh_config[axis]) for axis in ("data", "fsdp", "tensor")]
        if -1 not in sizes:
            return math.prod(sizes)
    return _processes(environ) * _local_gpus(environ)


def gpu_defaults(n_devices: int) -> tuple[tuple[str, str, str], ...]:
    """The flags a GPU run on a mesh of ``n_devices`` gets: the collective ones only where there are several."""
    return MULTI_DEVICE_DEFAULTS if n_devices > 1 else ()


def with_gpu_defaults(xla_flags: str, n_devices: int) -> str:
    """``xla_flags`` with every GPU default for ``n_devices`` it does not name added in front of it."""
    named = {arg.lstrip("-").split("=", 1)[0] for arg in xla_flags.split()}
    defaults = [f"--{flag}={value}" for flag, value, _ in gpu_defaults(n_devices) if flag not in named]
    return " ".join(defaults + ([xla_flags] if xla_flags else []))


def configure(environ=os.environ, mesh_config=None) -> None:
    """Adds the GPU defaults to XLA_FLAGS on a GPU run; call before jax initialises its backend.

    ``mesh_config`` (the run config's ``mesh``, where the command has one) tells a run that
    uses one of several GPUs from one that uses them all.
    """
    if environ.get("GPT2JAX_GPU_XLA_DEFAULTS", "1") == "0" or not is_gpu_run(environ):
        return
    flags = with_gpu_defaults(environ.get("XLA_FLAGS", ""), mesh_device_count(environ, mesh_config))
    if flags:
        environ["XLA_FLAGS"] = flags
