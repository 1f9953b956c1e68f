"""XLA's GPU flags for this kind of step, set before jax starts its backend, on GPU runs only.

The defaults are what NVIDIA's JAX-Toolbox GPU performance guide and MaxText's GPU
configs set for transformers with scanned layers and FSDP. A flag already named in
``XLA_FLAGS`` keeps the user's value; ``GPT2JAX_GPU_XLA_DEFAULTS=0`` sets none of them.
XLA aborts on a flag it does not know, so each of these was checked to exist in jax 0.10.
"""

from __future__ import annotations

import importlib.metadata
import os

# (flag, value, what it does)
GPU_DEFAULTS: tuple[tuple[str, str, str], ...] = (
    (
        "xla_gpu_enable_latency_hiding_scheduler",
        "true",
        "schedule the program so that collectives and copies run while compute does",
    ),
    (
        "xla_gpu_enable_highest_priority_async_stream",
        "true",
        "run asynchronous collectives on the highest-priority stream, so compute does not starve them",
    ),
    (
        "xla_gpu_enable_triton_gemm",
        "false",
        "leave matmuls to cuBLAS rather than Triton-generated kernels, as both guides recommend",
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
# Left out on purpose: MaxText's --xla_disable_hlo_passes=rematerialization, since on a
# 12 GiB card XLA's own rematerialization is what turns a near miss into a fit.

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


def with_gpu_defaults(xla_flags: str) -> str:
    """``xla_flags`` with every GPU default it does not name added in front of it."""
    named = {arg.lstrip("-").split("=", 1)[0] for arg in xla_flags.split()}
    defaults = [f"--{flag}={value}" for flag, value, _ in GPU_DEFAULTS if flag not in named]
    return " ".join(defaults + ([xla_flags] if xla_flags else []))


def configure(environ=os.environ) -> None:
    """Adds the GPU defaults to XLA_FLAGS on a GPU run; call before jax initialises its backend."""
    if environ.get("GPT2JAX_GPU_XLA_DEFAULTS", "1") == "0" or not is_gpu_run(environ):
        return
    environ["XLA_FLAGS"] = with_gpu_defaults(environ.get("XLA_FLAGS", ""))
