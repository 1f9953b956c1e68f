"""Timing of the real jitted train step, after compilation.

MFU is measured against ``flops.DEVICE_PEAKS`` (on a CPU, against its measured matmul
peak), under PaLM's count (``mfu``) and the causal one (``mfu_causal``). Batches are
random tokens, so no corpus is needed; everything else is the step ``main`` trains with.
"""

import resource
import time

import jax
import numpy as np

from gpt2jax import flops, sharding
from gpt2jax.model import attention_implementation, scans_layers
from gpt2jax.training import memory
from gpt2jax.training.trainer import build_trainer

PROFILED_STEPS = 3


def benchmark(config, steps: int, profile_dir: str | None = None) -> dict:
    """Times ``steps`` train steps after the compiling one; with ``profile_dir``, then traces a few more there."""
    trainer = build_trainer(config)
    memory.check_step_fits(trainer)  # refused in one sentence, not killed by the kernel mid-compile
    accounting = flops.model_accounting(trainer.model_config)
    rng = np.random.default_rng(0)
    shape = (trainer.accum_steps, trainer.micro_batch_size, trainer.model_config.block_size)

    def random_batch():
        tokens = rng.integers(0, trainer.model_config.vocab_size, shape, dtype=np.int32)
        return sharding.global_batch(trainer.mesh, (tokens, np.roll(tokens, -1, axis=-1)), leading_unsharded=1)

    state = trainer.init_state()
    inputs, targets = random_batch()
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, inputs, targets)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start

    batches = [random_batch() for _ in range(min(steps, 4))]
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = trainer.train_step(state, *batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps

    if profile_dir:
        # A trace of a few steps (jax.profiler; open it in TensorBoard's or Perfetto's viewer).
        with jax.profiler.trace(profile_dir):
            for i in range(PROFILED_STEPS):
                state, metrics = trainer.train_step(state, *batches[i % len(batches)])
            jax.block_until_ready((state, metrics))

    step = flops.step_accounting(trainer.model_config, config.train.batch_size)
    devices = list(trainer.mesh.devices.flat)
    peak = flops.mesh_peak_flops(devices, trainer.model_config.dtype)
    speed = flops.throughput(step, steps, step_s * steps, peak)
    model_config = trainer.model_config
    return {
        "device": devices[0].device_kind,
        "n_devices": len(devices),
        "mesh": dict(trainer.mesh.shape),
        "n_params": accounting["n_params"],
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
        "peak_memory_bytes": _peak_memory(devices),
        "final_loss": float(metrics["loss"]),
    }


def _peak_memory(devices) -> int | None:
    """The largest per-device peak an accelerator reports; on a CPU the process's peak RSS."""
    stats = [d.memory_stats() for d in devices if d.platform != "cpu"]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s]
    if peaks:
        return int(max(peaks))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
