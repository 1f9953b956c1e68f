"""A real prepare process killed (SIGKILL) or stopped (SIGTERM, as SLURM does) mid-way, and started again.

Each run reads a Hub dataset from a local cache with HF_HUB_OFFLINE=1 through two tokenizer
workers, so the offline Hub path, the worker pool and the journal are the ones a user runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants

from gpt2jax.data.prepare import JOURNAL_FILE, prepare
from tests.corpora import (
    documents,
    interrupted_after_publishing,
    write_fineweb_layout,
    write_hub_cache,
    write_parquet_files,
)
from tests.helpers import REPO, popen_with_sigint

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHARD_TOKENS = 5_000
SOURCE = "hf:testowner/tinyweb:sample-10BT"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 0.5M tokens in 120 parquet row groups, in the Hub cache layout; and the shards one uninterrupted pass writes."""
    root = tmp_path_factory.mktemp("resume")
    cache = root / "hub"
    write_hub_cache(
        cache, "testowner/tinyweb", COMMIT, lambda snapshot: write_fineweb_layout(snapshot, documents(6_000))
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        reference = prepare(SOURCE, root / "reference", hub_cache=cache, shard_tokens=SHARD_TOKENS, workers=1)
    assert len(reference["shards"]["train"]) > 60
    return cache, reference


def start_prepare(out: Path, cache: Path) -> subprocess.Popen:
    python_path = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    command = [sys.executable, "-m", "gpt2jax.cli.prepare", "--source", SOURCE, "--out", str(out)]
    command += ["--hub_cache", str(cache), "--shard_tokens", str(SHARD_TOKENS), "--workers", "2"]
    env = dict(os.environ, PYTHONPATH=python_path, HF_HUB_OFFLINE="1")
    return popen_with_sigint(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def published(partial: Path) -> list[Path]:
    return sorted(partial.glob("train_*.bin"))


def wait_for_shards(process: subprocess.Popen, partial: Path, count: int) -> None:
    deadline = time.monotonic() + 120
    while len(published(partial)) < count:
        assert process.poll() is None, f"prepare ended before {count} shards: {process.communicate()}"
        assert time.monotonic() < deadline, "prepare published no shards in 120 s"
        time.sleep(0.005)


def children(pid: int) -> list[int]:
    """The live child processes of pid (its tokenizer workers and multiprocessing's resource tracker), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def wait_until_gone(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if Path(f"/proc/{pid}").exists() and _not_zombie(pid)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    return alive


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def identities(paths: list[Path]) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in paths}


def finish(out: Path, cache: Path, reference: dict, kept: dict) -> None:
    """Runs the prepare to its end: the shards of one uninterrupted pass, with the kept ones never rewritten."""
    process = start_prepare(out, cache)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    meta = json.loads(stdout)
    assert meta["shards"] == reference["shards"] and meta["train_tokens"] == reference["train_tokens"]
    assert sorted(path.name for path in out.parent.iterdir()) == [f".{out.name}.lock", out.name]
    assert identities([out / name for name in kept]) == kept


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")
def test_a_killed_prepare_loses_at_most_one_shard_and_ends_with_the_same_shards(corpus, tmp_path):
    cache, reference = corpus
    out = tmp_path / "out"
    partial = tmp_path / ".out.partial"
    kept = {}
    for kill_at in (3, 20, 45):  # three kills at different points, then a run to the end
        process = start_prepare(out, cache)
        wait_for_shards(process, partial, kill_at)
        workers = children(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert len(workers) >= 2 and wait_until_gone(workers) == [], "tokenizer workers outlived their prepare"
        journal = json.loads((partial / JOURNAL_FILE).read_text())
        journaled = [shard["file"] for shard in journal["splits"]["train"]["shards"]]
        # Every shard on disk but at most the last one is in the journal: at most one shard's work is lost.
        on_disk = [path.name for path in published(partial)]
        assert on_disk[: len(journaled)] == journaled and len(on_disk) - len(journaled) <= 1
        # What a previous run published and journaled is kept as it was, not written again.
        assert {name: kept[name] for name in kept} == {
            name: identity for name, identity in identities(published(partial)).items() if name in kept
        }
        kept = identities([partial / name for name in journaled])
    finish(out, cache, reference, kept)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")
def test_a_prepare_stopped_by_sigterm_unwinds_with_its_journal_and_continues(corpus, tmp_path):
    cache, reference = corpus
    out = tmp_path / "out"
    partial = tmp_path / ".out.partial"
    process = start_prepare(out, cache)
    wait_for_shards(process, partial, 10)
    workers = children(process.pid)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert wait_until_gone(workers, timeout=1) == []  # stopped by the prepare itself, before it exited
    journal = json.loads((partial / JOURNAL_FILE).read_text())
    # Stopped at a piece boundary with the journal written then: nothing on disk is unaccounted for.
    assert [shard["file"] for shard in journal["splits"]["train"]["shards"]] == [p.name for p in published(partial)]
    assert journal["done"] == {"train": 0, "val": 0}
    finish(out, cache, reference, identities(published(partial)))


def test_a_prepare_waiting_for_a_stopped_one_says_who_holds_the_lock_and_stops_waiting_on_ctrl_c(corpus, tmp_path):
    """A prepare of an --out another prepare held, stopped (SIGSTOP), waited silently forever."""
    cache, _ = corpus
    out = tmp_path / "out"
    holder = start_prepare(out, cache)
    waiter = None
    try:
        wait_for_shards(holder, tmp_path / ".out.partial", 1)
        holder.send_signal(signal.SIGSTOP)
        waiter = start_prepare(out, cache)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(waiter.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not any("waiting for" in line for line in lines) and waiter.poll() is None:
            assert time.monotonic() < deadline, "no word of the wait in 120 s"
            time.sleep(0.05)
        waiter.send_signal(signal.SIGINT)
        waiter.wait(timeout=60)
        reader.join(timeout=10)
        lock = tmp_path / ".out.lock"
        assert re.fullmatch(
            rf"prepare: waiting for pid {holder.pid} on host \S+ \(since [0-9-]+ [0-9:]+; it is stopped \(SIGSTOP\): "
            rf"kill -CONT {holder.pid} resumes it\), which is preparing {out} \(lock {lock}\); Ctrl-C stops waiting\.\n",
            lines[0],
        ), lines
        assert waiter.returncode == 130 and lines[-1] == (
            f"prepare: stopped by SIGINT while it waited for {lock}; nothing was written.\n"
        ), lines
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=120)
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
    assert holder.returncode == 128 + signal.SIGTERM


def test_a_journal_is_continued_only_for_the_same_input_and_stale_files_are_removed(tmp_path):
    files = write_parquet_files(tmp_path / "corpus", documents(300), files=2)
    source, out = f"parquet:{tmp_path}/corpus/*.parquet", tmp_path / "out"
    with interrupted_after_publishing(3):
        prepare(source, out, shard_tokens=1_000)
    partial = tmp_path / ".out.partial"
    with pytest.raises(ValueError, match="interrupted prepare with shard_tokens=1000; pass that"):
        prepare(source, out, shard_tokens=2_000)
    with pytest.raises(ValueError, match="with val_fraction=0.005 \\(not 0.1\\)"):
        prepare(source, out, shard_tokens=1_000, val_fraction=0.1)
    # A dead prepare's temporary files, and a shard it wrote past its journal, are not taken for work done.
    (partial / ".journal.json.k3x9q2ab").write_text("{")  # as files.atomic.write_atomically names its temporary
    (partial / "train_000042.bin").write_bytes(b"\0" * 2_000)
    meta = prepare(source, out, shard_tokens=1_000)
    assert meta["shards"] == prepare(source, tmp_path / "fresh", shard_tokens=1_000)["shards"]
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["meta.json"] + [shard["file"] for split in ("train", "val") for shard in meta["shards"][split]]
    )
    # Changed files behind the source: the journal is refused, not continued over other text.
    with interrupted_after_publishing(3):
        prepare(source, tmp_path / "again", shard_tokens=1_000)
    files[1].write_bytes(files[0].read_bytes())
    with pytest.raises(ValueError, match="changed since the prepare interrupted in .*again.partial began"):
        prepare(source, tmp_path / "again", shard_tokens=1_000)


def test_a_source_file_edited_in_place_to_the_same_size_is_not_continued_over(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = documents(60)
    for index in range(6):  # a .txt file is one document
        (corpus / f"{index}.txt").write_text(" ".join(texts[index * 10 : (index + 1) * 10]))
    source, out = f"text:{corpus}/*.txt", tmp_path / "out"
    with interrupted_after_publishing(2):
        prepare(source, out, shard_tokens=500)
    edited = corpus / "4.txt"
    stat = edited.stat()
    subprocess.run(["sed", "-i", "s/the/THE/g", str(edited)], check=True)  # the same size, another text
    assert edited.stat().st_size == stat.st_size and "THE" in edited.read_text()
    with pytest.raises(ValueError, match=r"the files of 'text:.*' changed since the prepare interrupted in .* began"):
        prepare(source, out, shard_tokens=500)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_among_the_text_files_is_refused_not_read_forever(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, text in enumerate(documents(4)):
        (corpus / f"{index}.txt").write_text(text)
    os.mkfifo(corpus / "5.txt")
    command = [
        sys.executable,
        "-m",
        "gpt2jax.cli.prepare",
        "--source",
        f"text:{corpus}/*",
        "--out",
        str(tmp_path / "o"),
    ]
    result = subprocess.run(
        command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {corpus / '5.txt'} is not a regular file (a named pipe, a device, a socket or a broken link); only "
        f"regular files are documents: remove it, or narrow the glob '{corpus}/*'."
    ], result.stderr[-2000:]
