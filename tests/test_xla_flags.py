import os
import subprocess
import sys

from gpt2jax import xla_flags
from tests.helpers import REPO


def test_gpu_defaults_are_added_only_on_a_gpu_run_and_never_override_the_users():
    cpu = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    xla_flags.configure(cpu)
    assert cpu["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"

    gpu = {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false"}
    xla_flags.configure(gpu)
    flags = gpu["XLA_FLAGS"].split()
    # The user's value comes last and is the only one for its flag; every other default is there once.
    assert flags[-1] == "--xla_gpu_enable_latency_hiding_scheduler=false"
    assert sum("latency_hiding_scheduler" in flag for flag in flags) == 1
    assert len(flags) == len(xla_flags.GPU_DEFAULTS)

    opted_out = {"JAX_PLATFORMS": "cuda", "GPT2JAX_GPU_XLA_DEFAULTS": "0"}
    xla_flags.configure(opted_out)
    assert "XLA_FLAGS" not in opted_out


def test_every_gpu_default_is_a_flag_this_xla_knows():
    # XLA aborts at start-up on an unknown flag, whatever the platform, so the CPU checks the names.
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags.with_gpu_defaults(""))
    result = subprocess.run(
        [sys.executable, "-c", "import jax; print(len(jax.devices()))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
