import os
import subprocess
import sys

import ml_collections
import pytest

from gpt2jax import xla_flags
from tests.helpers import REPO

MULTI = len(xla_flags.MULTI_DEVICE_DEFAULTS)


def test_gpu_defaults_are_added_only_on_a_multi_device_gpu_run_and_never_override_the_users():
    cpu = {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    xla_flags.configure(cpu)
    assert cpu["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"

    gpus = {
        "JAX_PLATFORMS": "cuda",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false",
    }
    xla_flags.configure(gpus)
    flags = gpus["XLA_FLAGS"].split()
    # The user's value comes last and is the only one for its flag; every other default is there once.
    assert flags[-1] == "--xla_gpu_enable_latency_hiding_scheduler=false"
    assert sum("latency_hiding_scheduler" in flag for flag in flags) == 1
    assert len(flags) == MULTI

    opted_out = {"JAX_PLATFORMS": "cuda", "CUDA_VISIBLE_DEVICES": "0,1", "GPT2JAX_GPU_XLA_DEFAULTS": "0"}
    xla_flags.configure(opted_out)
    assert "XLA_FLAGS" not in opted_out


def test_a_one_gpu_run_gets_no_flag_and_keeps_the_users():
    one = {"JAX_PLATFORMS": "cuda", "CUDA_VISIBLE_DEVICES": "3"}
    xla_flags.configure(one)
    assert "XLA_FLAGS" not in one
    mine = {"JAX_PLATFORMS": "cuda", "CUDA_VISIBLE_DEVICES": "3", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    xla_flags.configure(mine)
    assert mine["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    # No flag of the one-device set is a collective's, nor is any left without a measurement behind it.
    assert xla_flags.gpu_defaults(1) == ()


def _mesh(data=1, fsdp=-1, tensor=1):
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


@pytest.mark.parametrize(
    "environ, mesh, devices",
    [
        ({"CUDA_VISIBLE_DEVICES": "0"}, None, 1),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, _mesh(), 4),
        ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, None, 1),  # CUDA stops at the first -1
        ({"CUDA_VISIBLE_DEVICES": ""}, None, 0),
        # A mesh whose sizes are all given holds their product, whatever the environment says.
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, _mesh(data=2, fsdp=1), 2),
        ({"CUDA_VISIBLE_DEVICES": "0"}, _mesh(data=1, fsdp=1), 1),
        # Several processes, each seeing its own GPU: the mesh spans them all.
        ({"SLURM_NTASKS": "4", "CUDA_VISIBLE_DEVICES": "0"}, _mesh(), 4),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "CUDA_VISIBLE_DEVICES": "0,1"}, None, 4),
    ],
)
def test_the_mesh_device_count_is_known_before_jax_starts(environ, mesh, devices):
    assert xla_flags.mesh_device_count(environ, mesh) == devices


def test_without_cuda_visible_devices_the_gpus_are_the_nvidia_device_files(tmp_path, monkeypatch):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (tmp_path / name).touch()
    monkeypatch.setattr(xla_flags, "DEVICE_FILES", str(tmp_path))
    assert xla_flags.mesh_device_count({}) == 2
    two = {"JAX_PLATFORMS": "cuda"}
    xla_flags.configure(two)
    assert len(two["XLA_FLAGS"].split()) == MULTI
    (tmp_path / "nvidia1").unlink()
    one = {"JAX_PLATFORMS": "cuda"}
    xla_flags.configure(one)
    assert "XLA_FLAGS" not in one


def test_every_gpu_default_is_a_flag_this_xla_knows():
    # XLA aborts at start-up on an unknown flag, whatever the platform, so the CPU checks the names.
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags.with_gpu_defaults("", 2))
    result = subprocess.run(
        [sys.executable, "-c", "import jax; print(len(jax.devices()))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
