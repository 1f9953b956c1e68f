"""Faults a run meets, each with the process fault made real where it can be: a second trainer on
the workdir, a SIGKILL mid-write, a truncated or bit-flipped checkpoint file, a full disk (a tiny
tmpfs where mounting is allowed, an injected OSError where not), a divergence, a changed config,
cut records, and what sampling, export and the commands do with what users give them."""

import errno
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from gpt2jax.data.loader import prepared_data
from gpt2jax.files import workdir as workdir_files
from gpt2jax.inference import export, weights
from gpt2jax.inference.sampling import GPT2_VOCABULARY, Vocabulary, generate, sample_text, vocabulary_of
from gpt2jax.inference.scoring import _perplexity
from gpt2jax.model import GPT, GPTConfig
from gpt2jax.scaling.results import load_results, read_rows, repair, upsert_row
from gpt2jax.scaling.sweep import Sweep
from gpt2jax.training import checkpoint, loop
from gpt2jax.training.checkpoint import COMMIT_MARKER, Checkpointer, UnreadableCheckpoint
from gpt2jax.training.trainer import Trainer, build_trainer
from tests.helpers import REPO, child_xla_flags, compact_config, config_flags, final_record, run_main


def _driver(code: str, config, workdir) -> list[str]:
    """A real training process: ``code`` runs first, then the command line of ``gpt2jax.main``."""
    args = ["--config", "configs/tiny.py", "--workdir", str(workdir), *config_flags(config)]
    return [
        sys.executable,
        "-c",
        f"{code}\nimport sys\nfrom gpt2jax.cli import train\nsys.argv = {['main', *args]!r}\ntrain.entry()",
    ]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=child_xla_flags(1))


def _evaluate(workdir, cwd=REPO) -> subprocess.CompletedProcess:
    """``python -m gpt2jax.cli.evaluate --workdir WORKDIR``, a real process run from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "gpt2jax.cli.evaluate", "--workdir", str(workdir)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A 12-step compact run with checkpoints at 6 and 12, copied by the tests that damage it."""
    workdir = tmp_path_factory.mktemp("trained")
    final = loop.run(compact_config(data_dir), workdir)
    return workdir, final


def _copy(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


# Checkpoints are only ever good.


def test_a_diverging_run_keeps_only_states_that_train_and_resumes_at_a_lower_rate(data_dir, tmp_path):
    # lr(0) is 0 under warmup, so step 1 leaves the initial state; lr 1e6 at step 2 blows it up.
    config = compact_config(data_dir, learning_rate=1e6, checkpoint_every=1, log_every=1)
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 2, .*kept its newest checkpoint, step 1 in") as stop:
        loop.run(config, tmp_path)
    assert "--config.train.allow_config_change=True" in str(stop.value)
    saved = Checkpointer(tmp_path / "checkpoints", writer=False)
    assert saved.committed_steps() == [1]
    loaded = weights.restore_checkpoint(tmp_path)
    assert bool(checkpoint.all_finite(loaded.params))
    config.train.update(learning_rate=1e-2, allow_config_change=True)
    final = loop.run(config, tmp_path)
    assert final["step"] == 12 and final["val_loss"] < math.log(65)
    (change,) = workdir_files.read_jsonl(tmp_path / workdir_files.CONFIG_CHANGES_FILE)
    assert change["step"] == 1 and change["changes"]["train.learning_rate"] == [1e6, 1e-2]


def test_a_finished_run_given_another_model_is_refused_not_called_trained(trained, data_dir, tmp_path):
    """A finished workdir used to answer "already trained to step 12: nothing to train" to any config."""
    workdir = _copy(trained, tmp_path)
    config = compact_config(data_dir)
    config.model.block_size = 2 * config.model.block_size
    with pytest.raises(ValueError, match=r"holds a run trained with another config \(model.block_size 16 -> 32\)"):
        loop.run(config, workdir)
    config = compact_config(data_dir, steps=6)  # fewer steps than trained: nothing to do
    assert loop.run(config, workdir)["step"] == 12


def test_a_state_is_saved_only_after_its_own_loss_is_known(data_dir, tmp_path, monkeypatch):
    """Step n's loss is computed before update n: the state update n made is checked on the next batch."""
    real_step = Trainer.train_step.func

    def poisoned(trainer):
        step_fn = real_step(trainer)

        def step(state, inputs, targets, schedule):
            new_state, metrics = step_fn(state, inputs, targets, schedule)
            if int(new_state["step"]) == 6:  # update 6 makes a NaN; step 6's own loss is still fine
                new_state = dict(new_state, params=jax.tree.map(lambda x: x * jnp.nan, new_state["params"]))
            return new_state, metrics

        return step

    cached = functools.cached_property(poisoned)  # compiled once, as the real one is
    cached.__set_name__(Trainer, "train_step")
    monkeypatch.setattr(Trainer, "train_step", cached)
    with pytest.raises(loop.NonFiniteLossError, match="state became NaN or infinite after the update at step 6"):
        loop.run(compact_config(data_dir, checkpoint_every=3), tmp_path)
    assert Checkpointer(tmp_path / "checkpoints", writer=False).committed_steps() == [3]


def test_a_val_split_shorter_than_one_window_is_refused_at_start(tmp_path):
    config = compact_config(tmp_path / "data")
    config.data.synthetic_val_tokens = 10
    with pytest.raises(
        ValueError, match=r"the val split of .* holds 10 tokens, fewer than one window of model.block_size \+ 1"
    ):
        loop.run(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_token_file_edited_after_preparation_is_refused_though_its_size_and_mtime_are_kept(tmp_path):
    config = compact_config(tmp_path / "data", steps=2, checkpoint_every=1)
    config.data.shard_tokens = 5_000
    loop.run(config, tmp_path / "w")
    second_train_file = prepared_data(config).path / "train_000001.bin"
    stat = second_train_file.stat()
    in_range = (int(np.fromfile(second_train_file, dtype="<u2")[100]) + 1) % 64
    for value in (in_range, 65535):  # an id in range: only the hash tells; 65535 is outside the vocabulary too
        tokens = np.fromfile(second_train_file, dtype="<u2")
        tokens[100] = value
        tokens.tofile(second_train_file)
        os.utime(second_train_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as a restored backup keeps them
        config.train.steps += 2
        with pytest.raises(ValueError, match=rf"{second_train_file.name} does not match the sha256 its meta.json"):
            loop.run(config, tmp_path / "w")
    meta_path = second_train_file.parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    for shard in meta["shards"]["train"]:
        if shard["file"] == second_train_file.name:  # a meta.json rewritten to the bad file's hash
            shard["sha256"] = hashlib.sha256(second_train_file.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"train_000001.bin holds token id 65535, outside the vocabulary of 65"):
        loop.run(config, tmp_path / "w")


def test_a_truncated_newest_checkpoint_falls_back_to_the_intact_one(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    # Every data file of step 12 is cut to nothing, as ext4's delayed allocation leaves files whose data
    # never reached the disk. Halving them was not enough: OCDBT may place all the parameters in
    # the halves kept, and inference reads only the parameters.
    for damaged in (workdir / "checkpoints" / "12" / "default" / "ocdbt.process_0" / "d").iterdir():
        os.truncate(damaged, 0)
    with pytest.warns(UserWarning, match=r"step 12 .* could not be read .*; using step 6, the newest that reads back"):
        assert weights.restore_checkpoint(workdir).step == 6
    with pytest.raises(UnreadableCheckpoint, match="the checkpoint of step 12 .* could not be read"):
        weights.restore_checkpoint(workdir, step=12)
    with pytest.warns(UserWarning, match=r"using step 6, .*moved the unreadable step\(s\) to .*checkpoints_set_aside"):
        final = loop.run(compact_config(data_dir, steps=18), workdir)
    assert final["step"] == 18
    assert [path.name.split("-")[0] for path in (workdir / "checkpoints_set_aside").iterdir()] == ["12"]
    assert Checkpointer(workdir / "checkpoints", writer=False).committed_steps() == [6, 12, 18]


def test_a_bit_flipped_checkpoint_is_refused_though_it_reads(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    config = compact_config(data_dir, steps=18)
    abstract_state = build_trainer(config).abstract_state
    state = Checkpointer(workdir / "checkpoints", writer=False).restore(12, abstract_state)
    # One mantissa bit of one weight: the value stays finite and plausible. It is written back
    # through Orbax, under step 12's own metadata, because Orbax compresses its chunks, and a
    # bit flipped in a compressed file mostly makes the file unreadable rather than wrong.
    leaves, treedef = jax.tree.flatten(state)
    index = next(i for i, leaf in enumerate(leaves) if leaf.dtype == jnp.float32 and leaf.size > 1)
    flipped = np.array(leaves[index])
    flipped.view(np.uint32).flat[flipped.size // 2] ^= 0x04
    leaves[index] = jax.device_put(flipped, leaves[index].sharding)
    altered = Checkpointer(tmp_path / "altered", asynchronous=False)
    altered.save(12, jax.tree.unflatten(treedef, leaves))
    altered.close()
    shutil.rmtree(workdir / "checkpoints" / "12" / "default")
    shutil.copytree(tmp_path / "altered" / "12" / "default", workdir / "checkpoints" / "12" / "default")
    saved = Checkpointer(workdir / "checkpoints", writer=False)
    with pytest.raises(UnreadableCheckpoint, match=r"step 12 .* does not match the checksums it was saved with"):
        saved.restore(12, abstract_state)
    with pytest.warns(UserWarning, match="does not match the checksums.*; using step 6"):
        assert loop.run(config, workdir)["step"] == 18


def test_a_workdir_whose_records_disagree_is_refused_naming_the_flag_that_accepts_it(data_dir, tmp_path):
    workdir = tmp_path / "run"
    config = compact_config(data_dir, checkpoint_every=3)  # the last record, step 12's, names its own checkpoint
    loop.run(config, workdir)
    saved_config = (workdir / "config.json").read_bytes()
    (workdir / "config.json").unlink()  # the one record of the config the checkpoints were trained with
    for steps in (12, 14):  # finished, and extended: another rate would otherwise pass unseen
        with pytest.raises(
            ValueError,
            match=r"run holds checkpoints \(newest step 12\) but no config.json, .* restore .*run/config.json, or pass "
            r"--config.train.allow_config_change=True to continue them with this config\.$",
        ):
            loop.run(compact_config(data_dir, steps=steps, learning_rate=3e-3), workdir)
    accepted = tmp_path / "accepted"  # with the flag, the run goes on and says so in its record of changes
    shutil.copytree(workdir, accepted)
    loop.run(compact_config(data_dir, steps=14, learning_rate=3e-3, allow_config_change=True), accepted)
    (missing,) = workdir_files.read_jsonl(accepted / workdir_files.CONFIG_CHANGES_FILE)
    assert missing["config_was_missing"] and missing["step"] == 12
    (workdir / "config.json").write_bytes(saved_config)
    shutil.rmtree(workdir / "checkpoints")  # metrics.jsonl stays, and says which steps were saved
    with pytest.raises(
        ValueError,
        match=r"run/metrics.jsonl records a checkpoint of step 12 \(training to step 12\) but it holds none: "
        r"checkpoints were deleted or lost, .* pass --config.train.allow_lost_checkpoints=True to continue from the "
        r"start\.$",
    ):
        loop.run(config, workdir)
    config.train.allow_lost_checkpoints = True
    assert loop.run(config, workdir)["step"] == 12
    config.train.update(allow_lost_checkpoints=False, steps=14)
    assert loop.run(config, workdir)["step"] == 14  # the records agree again


def test_a_renamed_checkpoint_folder_is_refused_not_taken_for_the_step_its_name_says(trained, data_dir, tmp_path):
    """``checkpoints/20`` renamed to ``40`` was evaluated as step 40 with step 20's loss, and training then
    failed on every rerun with "could not write the checkpoint of step 40 ... already exists"."""
    workdir = _copy(trained, tmp_path)
    (workdir / "checkpoints" / "6").rename(workdir / "checkpoints" / "18")
    refused = (
        rf"{workdir}/checkpoints/18 holds the state of step 6, not 18 \(the folder was renamed or copied\); rename "
    )
    with pytest.raises(checkpoint.MislabeledCheckpoint, match=refused + rf"it to {workdir}/checkpoints/6, or move"):
        weights.restore_checkpoint(workdir)
    with pytest.raises(checkpoint.MislabeledCheckpoint, match=refused):
        loop.run(compact_config(data_dir, steps=18), workdir)
    assert not (workdir / "checkpoints_set_aside").exists()  # refused, not set aside as unreadable
    # A checkpoint saved before its metadata recorded the step: the step inside its state tells.
    metadata_path = workdir / "checkpoints" / "18" / checkpoint.METADATA_FILE
    metadata = json.loads(metadata_path.read_text())
    assert metadata["custom_metadata"].pop("step") == 6
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(checkpoint.MislabeledCheckpoint, match=refused):
        weights.restore_checkpoint(workdir, step=18)
    evaluate = _evaluate(workdir)
    assert evaluate.returncode == 1 and evaluate.stdout == "", evaluate.stdout
    assert (
        evaluate.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {workdir}/checkpoints/18 holds the state of step 6")
    )
    (workdir / "checkpoints" / "18").rename(workdir / "checkpoints" / "6")  # as the sentence says
    assert loop.run(compact_config(data_dir, steps=18), workdir)["step"] == 18


def test_a_step_folder_without_its_commit_marker_is_not_a_checkpoint(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    shutil.copytree(workdir / "checkpoints" / "12", workdir / "checkpoints" / "18")
    (workdir / "checkpoints" / "18" / COMMIT_MARKER).unlink()
    assert Checkpointer(workdir / "checkpoints", writer=False).committed_steps() == [6, 12]
    assert weights.restore_checkpoint(workdir).step == 12
    with pytest.warns(UserWarning, match=r"18 has no commit marker .* so it is not a checkpoint; moved it to"):
        final = loop.run(compact_config(data_dir, steps=18), workdir)
    assert final["step"] == 18  # trained from 12 and saved its own step 18 where the copy was


# One writer per workdir; readers while it saves.


def test_a_second_trainer_is_refused_readers_see_committed_steps_and_a_killed_lock_is_broken(data_dir, tmp_path):
    workdir = tmp_path / "run"
    config = compact_config(data_dir, steps=5000, checkpoint_every=1, keep_checkpoints=1, log_every=1000)
    config.train.eval_every = 5000
    first = subprocess.Popen(
        _driver("", config, workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        saved = Checkpointer(workdir / "checkpoints", writer=False)
        while first.poll() is None and time.time() < deadline and not saved.committed_steps():
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        with pytest.raises(RuntimeError, match=rf"is in use by another training run \(pid {first.pid} on host "):
            loop.run(config, workdir)
        # Readers may read while the run saves a step a few ms and deletes the one before.
        steps = []
        for _ in range(8):
            try:
                steps.append(weights.restore_checkpoint(workdir).step)
            except UnreadableCheckpoint as error:  # the one other outcome allowed: one clear sentence
                assert "changed while they were read" in str(error) or "could not be read" in str(error)
        assert steps and steps == sorted(steps)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    config.train.update(steps=max(saved.committed_steps()) + 2, allow_config_change=True)
    final = loop.run(config, workdir)  # the dead holder's lock is broken
    assert final["step"] == config.train.steps and not (workdir / workdir_files.LOCK_FILE).exists()


def test_an_empty_lock_left_by_a_crash_is_stale_and_said_to_be(data_dir, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = workdir / workdir_files.LOCK_FILE
    lock.touch()  # as a creator killed between creating the file and writing its owner leaves it
    with pytest.raises(RuntimeError, match=r"run is in use by another training run \(it is taking the lock this very"):
        loop.run(compact_config(data_dir, steps=2), workdir)  # so fresh, its creator may still be writing it
    old = time.time() - 60
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match=r"run.lock names no owner \(empty or unreadable: .*so it is stale; broke it"):
        assert loop.run(compact_config(data_dir, steps=2), workdir)["step"] == 2
    assert not lock.exists()


# Records survive crashes.


def test_a_sigkill_mid_write_of_metrics_loses_no_record(data_dir, tmp_path):
    workdir = tmp_path / "run"
    config = compact_config(data_dir, steps=12, checkpoint_every=3)
    kill_at_step_9 = """
import os, signal, json
from gpt2jax.training import loop
real_write = loop.MetricsLogger.write
def write(self, record):
    if record["step"] == 9:
        with self.path.open("a") as file:
            file.write(json.dumps(record)[:25])  # half a line reaches the disk, then the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(self, record)
loop.MetricsLogger.write = write
"""
    killed = subprocess.run(_driver(kill_at_step_9, config, workdir), cwd=REPO, env=_env(), capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (workdir / "metrics.jsonl").read_text().endswith("\n")
    with pytest.warns(UserWarning, match=r"metrics.jsonl ended in a line cut short \(25 bytes, left by a crash\)"):
        loop.run(config, workdir)
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # nothing unreadable, nothing swallowed
    assert [record["step"] for record in workdir_files.read_metrics(workdir)] == [3, 6, 9, 12]


def test_a_cut_results_row_is_not_a_finished_point_and_is_repaired(tmp_path):
    path = tmp_path / "results.csv"
    for run, loss in (("a", 3.0), ("b", 2.5)):
        upsert_row(path, {"run": run, "loss": loss, "n_params": 10, "n_tokens": 20, "wall_s": 12.5})
    path.write_text(path.read_text()[:-3])  # "b"'s row loses its end, as a crash mid-copy leaves it
    with pytest.warns(UserWarning, match="holds 1 row.s. cut short; left them out"):
        assert [row["run"] for row in read_rows(path)] == ["a"]
    path.write_text(path.read_text().rsplit("\n", 1)[0] + "\nb,run,cosine\n")  # a row lacking columns
    with pytest.warns(UserWarning, match="cut short"):
        assert [row["run"] for row in read_rows(path)] == ["a"]
    with pytest.warns(UserWarning):
        upsert_row(path, {"run": "c", "loss": 2.0, "n_params": 10, "n_tokens": 20})
    assert [row["run"] for row in read_rows(path)] == ["a", "c"]  # repaired: no warning now


def test_a_results_row_longer_than_its_header_is_named_as_such_and_a_column_added_by_hand_is_kept(tmp_path):
    """A row with an extra field was called "cut short"; a ``note`` column added by hand ended ``sweep`` and
    ``sweep --repair`` in "dict contains fields not in fieldnames: 'note'", naming no file."""
    path = tmp_path / "results.csv"
    for run, loss in (("a", 3.0), ("b", 2.5)):
        upsert_row(path, {"run": run, "loss": loss, "n_params": 10, "n_tokens": 20, "wall_s": 12.5})
    header, first, second = path.read_text().splitlines()
    columns = len(header.split(","))
    path.write_text(f"{header}\n{first}\n{second},extra\n")
    with pytest.warns(UserWarning, match=rf"holds 1 row\(s\) with more fields than its header's {columns} \(line 3\)"):
        assert [row["run"] for row in read_rows(path)] == ["a"]
    with pytest.raises(
        ValueError, match=rf"{path} line 3: it has {columns + 1} fields where the header names {columns}"
    ):
        load_results(path)
    path.write_text(f"{header},note\n{first},my note\n{second},\n")  # a column of the user's own
    upsert_row(path, {"run": "c", "loss": 2.0, "n_params": 10, "n_tokens": 20})
    assert repair(path) == 0
    rows = read_rows(path)
    assert [(row["run"], row["note"]) for row in rows] == [("a", "my note"), ("b", ""), ("c", "")]


def test_a_full_disk_is_one_sentence_saying_what_was_saved(data_dir, tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("tmpfs cannot be mounted here; test_an_injected_disk_error_is_one_sentence covers the path")
    filler = disk / "filler"
    filled = []
    real_append = workdir_files.append_jsonl

    def fill_the_disk_after_step_9(path, record):
        # Once step 6's checkpoint is committed (it is written in the background), another process
        # fills the disk but for room for the run's metrics lines, not for a checkpoint (about 300
        # KB; OCDBT's layout varies from run to run, so a disk sized from another run's checkpoint
        # failed the second save only by chance).
        real_append(path, record)
        if record.get("step") == 9 and not filled:
            filled.append(True)
            deadline = time.time() + 60
            while not (path.parent / "checkpoints" / "6").is_dir() and time.time() < deadline:
                time.sleep(0.05)
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            filler.write_bytes(b"\0" * (free - 32 * 1024))

    monkeypatch.setattr(workdir_files, "append_jsonl", fill_the_disk_after_step_9)
    try:
        workdir = disk / "run"
        with pytest.raises(
            checkpoint.CheckpointWriteError,
            match=r"could not write the checkpoint of step 12 to .* \(No space left on device\); "
            r"the newest checkpoint saved is step 6",
        ):
            loop.run(compact_config(data_dir), workdir)
        filler.unlink()  # space freed
        assert loop.run(compact_config(data_dir), workdir)["step"] == 12
    finally:
        subprocess.run(["umount", "-l", str(disk)])
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(RuntimeError, match=r"could not prepare the data under .*small \(No space left on device\)"):
            loop.run(compact_config(small), tmp_path / "other")
        assert not list(small.glob("*/meta.json"))  # nothing a later run would take for prepared data
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_a_workdir_turned_read_only_is_one_sentence_saying_what_was_saved_and_what_to_do(
    data_dir, tmp_path, monkeypatch
):
    """It ended in "Read-only file system: .../run.lock": releasing the lock failed too, and hid what was saved."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    real_append = workdir_files.append_jsonl

    def read_only_after_step_9(path, record):
        real_append(path, record)
        if record.get("step") == 9:
            deadline = time.time() + 60  # step 6's checkpoint is written in the background
            while not (path.parent / "checkpoints" / "6" / COMMIT_MARKER).is_file() and time.time() < deadline:
                time.sleep(0.05)
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

    try:
        workdir = disk / "run"
        with monkeypatch.context() as patched:
            patched.setattr(workdir_files, "append_jsonl", read_only_after_step_9)
            with pytest.warns(UserWarning, match=r"could not remove .*run.lock \(Read-only file system\)"):
                with pytest.raises(
                    checkpoint.CheckpointWriteError,
                    match=r"could not write the checkpoint of step 12 to .* \(Read-only file system\); the newest "
                    r"checkpoint saved is step 6: make it writable again \(free space, or fix its permission or mount\) "
                    r"and run the same command to resume\.$",
                ):
                    loop.run(compact_config(data_dir), workdir)
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        lock = workdir / workdir_files.LOCK_FILE
        assert json.loads(lock.read_text())["pid"] == os.getpid()  # once this process ends, the next run breaks it
        lock.unlink()
        assert loop.run(compact_config(data_dir), workdir)["step"] == 12
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_an_injected_disk_error_is_one_sentence(data_dir, tmp_path, monkeypatch):
    real_append = workdir_files.append_jsonl

    def full_after_step_6(path, record):
        if record.get("step", 0) > 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_append(path, record)

    def unprepared(config):
        raise FileNotFoundError("TFDS dataset 'c4/en' is not prepared as ArrayRecord under X; build it.")

    with monkeypatch.context() as patched:  # a missing dataset's own sentence is kept, not called a full disk
        patched.setattr(loop.loader, "prepared_data", unprepared)
        with pytest.raises(FileNotFoundError, match="is not prepared as ArrayRecord under X; build it."):
            loop.run(compact_config(data_dir), tmp_path)
    monkeypatch.setattr(workdir_files, "append_jsonl", full_after_step_6)
    with pytest.raises(
        RuntimeError,
        match=r"could not write .*metrics.jsonl \(No space left on device\); the newest checkpoint saved is step 6",
    ):
        loop.run(compact_config(data_dir), tmp_path)


# Resume means the same run.


def test_resuming_with_another_config_is_refused_or_recorded_and_tokens_stay_true(data_dir, tmp_path):
    loop.run(compact_config(data_dir, steps=6), tmp_path)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=r"another config \(train.batch_size 8 -> 16, train.seed 0 -> 1\)"):
        loop.run(compact_config(data_dir, steps=12, batch_size=16, seed=1), tmp_path)
    assert (tmp_path / "config.json").read_text() == before  # not overwritten
    final = loop.run(compact_config(data_dir, steps=12, batch_size=16, allow_config_change=True), tmp_path)
    assert final["tokens_seen"] == 6 * 8 * 16 + 6 * 16 * 16  # tokens actually trained, across the change
    (change,) = workdir_files.read_jsonl(tmp_path / workdir_files.CONFIG_CHANGES_FILE)
    assert change["changes"] == {"train.batch_size": [8, 16], "train.steps": [6, 12]}
    assert change["meaningful"] == ["train.batch_size"]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["batch_size"] == 16
    # Extending the run needs no permission; shortening it below its checkpoint trains nothing.
    assert loop.run(compact_config(data_dir, steps=15, batch_size=16), tmp_path)["step"] == 15
    assert loop.run(compact_config(data_dir, steps=9, batch_size=16), tmp_path)["step"] == 15


# What a user sees, and what sampling and export do with what users give them.


def test_the_command_line_shows_one_plain_line_per_log_and_no_library_noise(data_dir, tmp_path):
    config = compact_config(data_dir, steps=6, log_every=3)
    result = run_main(["--config", "configs/tiny.py", "--workdir", str(tmp_path), *config_flags(config)])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"train {tmp_path}: cpu, 8 x cpu (mesh data=1, fsdp=8, tensor=1); ")
    assert "parameters" in lines[0] and "128 tokens/step (8 x 16)" in lines[0] and "val tokens; 6 steps" in lines[0]
    assert lines[1].startswith("step 3/6 | loss ") and " | lr " in lines[1] and " tok/s" in lines[1]
    assert lines[2].startswith("step 6/6 | loss ") and " | val " in lines[2]
    assert final_record(result.stdout)["step"] == 6
    assert final_record(result.stdout)["checkpoint"] == 6  # the step the closing line names, saved
    assert lines[-1] == f"done: step 6, train_loss {final_record(result.stdout)['train_loss']:.4f}, " + (
        f"val_loss {final_record(result.stdout)['val_loss']:.4f}; checkpoint {tmp_path}/checkpoints/6, "
        f"metrics {tmp_path}/metrics.jsonl"
    )
    # No absl or Orbax log lines, no progress bar written into a file.
    assert not result.stderr.strip(), result.stderr[-2000:]


def test_a_relative_data_dir_is_recorded_absolute_and_found_from_any_directory(tmp_path, monkeypatch):
    """A relative data.dir was relative to wherever the command ran: resumed or evaluated from elsewhere, the
    corpus was prepared again there."""
    first, elsewhere, workdir = tmp_path / "first", tmp_path / "elsewhere", tmp_path / "run"
    first.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(first)
    loop.run(compact_config("data", steps=6), workdir)
    assert json.loads((workdir / "config.json").read_text())["data"]["dir"] == str(first / "data")
    assert json.loads((workdir / "data.json").read_text())["path"].startswith(str(first / "data") + "/")
    monkeypatch.chdir(elsewhere)
    assert loop.run(compact_config("data", steps=12), workdir)["step"] == 12
    evaluate = _evaluate(workdir, cwd=elsewhere)
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    assert list(elsewhere.iterdir()) == []  # nothing prepared again here
    (change,) = workdir_files.read_jsonl(workdir / workdir_files.CONFIG_CHANGES_FILE)
    assert change["changes"] == {"train.steps": [6, 12]}  # data.dir the same, wherever the run started
    fresh = tmp_path / "fresh"  # a new run from here prepares here, as a relative path says
    loop.run(compact_config("data", steps=2), fresh)
    assert json.loads((fresh / "config.json").read_text())["data"]["dir"] == str(elsewhere / "data")


def test_a_clones_root_taken_for_the_package_is_one_sentence(tmp_path):
    """From a clone's parent (the clone named gpt2jax), python took the clone's root for the package, and the
    data/ training had made there shadowed gpt2jax.data: "cannot import name 'hellaswag' from 'gpt2jax.data'
    (unknown location)". As the editable install finds the package: by a finder after the current directory."""
    finders = list(Path(sys.prefix).glob("lib/python3*/site-packages/__editable___gpt2jax_*_finder.py"))
    if not finders:
        pytest.skip("gpt2jax is not installed editable here")
    (tmp_path / "gpt2jax" / "data").mkdir(parents=True)  # the clone's root and the data/ training made in it
    code = (
        "import runpy, sys\n"
        f"import {finders[0].stem} as finder\n"
        f"finder.MAPPING['gpt2jax'] = {str(REPO / 'gpt2jax')!r}\n"
        "sys.argv = ['evaluate', '--workdir', 'runs/x']\n"
        "runpy.run_module('gpt2jax.cli.evaluate', run_name='__main__')\n"
    )
    env = {key: value for key, value in _env().items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr == (
        f"error: python took {tmp_path / 'gpt2jax'}, a folder of the current directory that is not the package, "
        "for gpt2jax (a clone's root?); run the command from another directory, the clone's root for instance.\n"
    )


def _tiny_model(block_size=8, vocab_size=65):
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=block_size, vocab_size=vocab_size, vocab_multiple=8)
    return nnx.split(GPT(config, rngs=nnx.Rngs(params=jax.random.key(0))))


def test_generation_past_the_context_slides_the_window_as_nanogpt_does():
    graphdef, params = _tiny_model(block_size=8)
    next_token = jax.jit(lambda window_1xT: jnp.argmax(nnx.merge(graphdef, params)(window_1xT)[0, -1]))
    for prompt in ([3, 1, 4], list(range(10))):  # shorter and longer than the context
        tokens = list(prompt)
        for _ in range(12):  # nanoGPT's loop: the last block_size tokens, the whole forward, the argmax
            tokens.append(int(next_token(jnp.asarray([tokens[-8:]], jnp.int32))))
        prompt_1xP = jnp.asarray([prompt], jnp.int32)
        got = generate(graphdef, params, prompt_1xP, jax.random.key(0), max_new_tokens=12, temperature=0.0, top_k=0)
        assert got[0].tolist() == tokens


def test_sampling_flags_are_checked_in_one_sentence():
    graphdef, params = _tiny_model()
    ids = Vocabulary("none (compact synthetic ids, not GPT-2 BPE)", 65, 64)
    for flags, message in (
        (dict(temperature=-1.0), r"--temperature=-1.0 must be 0"),
        (dict(num_samples=0), r"--num_samples=0 must be at least 1"),
        (dict(top_k=-2), r"--top_k=-2 must be 0"),
        (dict(max_new_tokens=0), r"--max_new_tokens=0 must be at least 1"),
    ):
        with pytest.raises(ValueError, match=message):
            sample_text(graphdef, params, "64", vocabulary=ids, **flags)
    with pytest.raises(ValueError, match=r"reads token ids, not text .* ids between 0 and 64 .* --prompt '64'"):
        sample_text(graphdef, params, "Once upon", vocabulary=ids)
    (sample,) = sample_text(graphdef, params, "64 3", vocabulary=ids, max_new_tokens=30, top_k=200)
    words = sample.split()
    assert words[:2] == ["64", "3"] and len(words) == 32 and all(0 <= int(word) < 65 for word in words)


def test_a_compact_checkpoint_samples_its_own_ids_from_the_command_line(trained):
    workdir, _ = trained
    loaded = weights.restore_checkpoint(workdir)
    vocabulary = vocabulary_of(loaded.model_config, loaded.data_meta)
    assert not vocabulary.text and vocabulary.size == 65 and vocabulary.default_prompt == "64"
    assert vocabulary_of(loaded.model_config, None).size == 65  # a workdir without data.json: by its size
    assert vocabulary_of(GPTConfig(), None) is GPT2_VOCABULARY
    result = subprocess.run(
        [sys.executable, "-m", "gpt2jax.cli.sample", "--workdir", str(workdir), "--num_samples", "2"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    samples = result.stdout.split("-" * 40 + "\n")[:2]
    # The README's default, 100 new tokens, on a model whose context is 16.
    assert [len(sample.split()) for sample in samples] == [101, 101]


def test_export_refuses_what_it_did_not_write(trained, tmp_path):
    workdir, _ = trained
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--out .*file is a file; give a directory"):
        export.export_checkpoint(workdir, tmp_path / "file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(ValueError, match=r"already holds files that no export wrote \(notes.txt\); .*--overwrite"):
        export.export_checkpoint(workdir, mine)
    assert export.export_checkpoint(workdir, mine, overwrite=True)["step"] == 12
    assert (mine / "notes.txt").read_text() == "my notes"
    assert export.export_checkpoint(workdir, tmp_path / "out", step=6)["step"] == 6
    assert export.export_checkpoint(workdir, tmp_path / "out")["step"] == 12  # its own export: replaced


def test_invalid_json_files_are_named(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path)
    (workdir / "config.json").write_text('{"model": ')
    with pytest.raises(ValueError, match=r"run/config.json is not valid JSON"):
        weights.restore_checkpoint(workdir)
    (workdir / "config.json").write_text("[]")  # valid JSON, but no config: one sentence, from the command too
    with pytest.raises(ValueError, match=r"run/config.json holds a JSON list, not an object; restore it or remove it"):
        loop.run(compact_config(data_dir, steps=14), workdir)
    evaluate = _evaluate(workdir)
    assert evaluate.returncode == 1 and evaluate.stderr.strip().splitlines() == [
        f"error: {workdir / 'config.json'} holds a JSON list, not an object; restore it or remove it."
    ], evaluate.stderr[-2000:]
    sweep = Sweep(types.SimpleNamespace(config=ml_collections.ConfigDict({"budgets": [1.0]})), tmp_path / "sweep")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text("{")
    with pytest.raises(ValueError, match=r"sweep/sweep.json is not valid JSON"):
        sweep.start("experiments/x.py")
    assert _perplexity(5.4e12) is None and _perplexity(1.0) == pytest.approx(math.e)


def test_records_of_the_wrong_shape_are_named_or_read_as_no_record(trained, data_dir, tmp_path):
    """Each file gpt2jax reads back, holding JSON of the wrong shape: one sentence naming it, or no record."""
    from gpt2jax.data import prepare as prepare_module
    from gpt2jax.data.shards import read_meta
    from gpt2jax.files.locks import FileLock
    from gpt2jax.scaling.results import sweep_param_count

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "meta.json").write_text("[]")
    with pytest.raises(
        ValueError, match=r"data/meta.json holds a JSON list, not an object; delete .* prepare it again"
    ):
        read_meta(data)
    (tmp_path / "journal").mkdir()
    (tmp_path / "journal" / prepare_module.JOURNAL_FILE).write_text("[]")
    assert prepare_module._read_journal(tmp_path / "journal") == {}  # no journal: the prepare starts over
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    with pytest.raises(ValueError, match=r"sweep/sweep.json holds no sweep config; restore it, or run the sweep"):
        sweep_param_count(tmp_path / "sweep")
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"host": "h", "pid": "x", "since": "y"}))
    assert FileLock(lock).holder() == {}  # read as a lock that names no owner, which goes stale as such
    workdir = _copy(trained, tmp_path)
    with open(workdir / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"step": "x"}) + "\n" + json.dumps({"step": 13, "checkpoint": "abc"}) + "\n")
    assert all(type(record["step"]) is int for record in workdir_files.read_metrics(workdir))
    assert loop.run(compact_config(data_dir, steps=14), workdir)["step"] == 14
