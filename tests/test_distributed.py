"""Two processes on this machine train together as two hosts would, through
jax.distributed.initialize(), and match one process on the same eight devices."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from gpt2jax.files.workdir import METRICS_FILE
from gpt2jax.inference import weights
from tests.helpers import REPO, child_xla_flags, config_flags, final_record, run_main, tiny_config

MESH_FLAGS = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Workdirs and final records of the same 4 steps: 2 processes x 4 devices, and 1 process x 8."""
    data_dir = tmp_path_factory.mktemp("data")  # shared: both processes prepare it at once
    # Two micro-batches: each process then contributes half the rows of each of them.
    config = tiny_config(
        data_dir, steps=4, grad_accum_steps=2, log_every=2, eval_every=4, eval_batches=1, checkpoint_every=4
    )
    flags = ["--config", "configs/tiny.py", *config_flags(config), *MESH_FLAGS]

    two_dir = tmp_path_factory.mktemp("two_processes")
    coordinator = f"127.0.0.1:{free_port()}"
    processes = []
    for process_id in range(2):
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            XLA_FLAGS=child_xla_flags(4),
            JAX_COORDINATOR_ADDRESS=coordinator,
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(process_id),
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "gpt2jax.main", *flags, "--workdir", str(two_dir)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
    finally:
        for process in processes:
            process.kill()

    one_dir = tmp_path_factory.mktemp("one_process")
    single = run_main([*flags, "--workdir", str(one_dir)])  # conftest's 8 fake devices
    assert single.returncode == 0, single.stderr[-3000:]
    return {"two": (two_dir, [final_record(out) for out in outputs]), "one": (one_dir, final_record(single.stdout))}


def test_both_processes_report_the_same_losses(runs):
    _, (first, second) = runs["two"]
    assert first["step"] == second["step"] == 4
    assert (first["train_loss"], first["val_loss"]) == (second["train_loss"], second["val_loss"])


def test_two_processes_match_one_process_on_the_same_devices(runs):
    _, (first, _) = runs["two"]
    _, single = runs["one"]
    assert first["train_loss"] == pytest.approx(single["train_loss"], rel=1e-6)
    assert first["val_loss"] == pytest.approx(single["val_loss"], rel=1e-6)
    assert first["train_loss"] < 10.8  # it learned: the uniform loss over 50257 tokens is 10.82


def test_metrics_written_once_and_checkpoint_restores_on_one_device(runs):
    two_dir, _ = runs["two"]
    one_dir, _ = runs["one"]
    records = [json.loads(line) for line in (two_dir / METRICS_FILE).read_text().splitlines()]
    assert [record["step"] for record in records] == [2, 4]  # process 0 only, no doubled lines
    two = weights.restore_checkpoint(two_dir, devices=jax.devices()[:1])
    one = weights.restore_checkpoint(one_dir, devices=jax.devices()[:1])
    assert two.step == 4
    for leaf, single_leaf in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(single_leaf), atol=5e-5)
