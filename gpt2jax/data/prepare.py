"""Turns a source into GPT-2 token shards, in parallel and resumably (``python -m gpt2jax.cli.prepare``).

A prepared directory DIR holds each split's shards and ``meta.json`` (``data/shards.py``); each
document is followed by <|endoftext|>. The work happens in a hidden sibling ``.DIR.partial``,
renamed to DIR once meta.json is written, so nothing that looks complete exists before it is.
An existing DIR with a valid meta.json for the same settings is reused; an existing non-empty DIR
without one is refused rather than overwritten, since it may hold the user's own files.

Resuming: after every published shard, ``.DIR.partial/journal.json`` records the shards so far,
how far the shard being filled has got, and where in the source's pieces that is. A prepare
started again (killed by SIGKILL, stopped by SIGTERM or Ctrl-C, or failed on a full disk) reads
the journal, truncates the shard being filled to what the journal recorded, and continues from
that point: it loses at most one shard's work and writes exactly the shards an uninterrupted
prepare writes. SIGTERM (what SLURM sends before it kills a job) and SIGINT stop the prepare at the
next piece boundary with the journal up to date, and it exits 143 (130 for SIGINT). One prepare
at a time writes a directory: a lock file ``.DIR.lock`` beside it serialises processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np

from gpt2jax import flops
from gpt2jax.data import sources
from gpt2jax.data.shards import (
    FORMAT_VERSION,
    META_FILE,
    PARTIAL_SUFFIX,
    SPLITS,
    TOKEN_DTYPE,
    ShardWriter,
    read_meta,
    shard_name,
)
from gpt2jax.data.synthetic import SOURCE_PREFIX as SYNTHETIC_PREFIX
from gpt2jax.data.synthetic import SyntheticLanguage
from gpt2jax.data.tokenizer import EOT_TOKEN_ID, GPT2_VOCAB_SIZE
from gpt2jax.data.workers import Tokenizers
from gpt2jax.errors import check_stop, stop_requested, stopping_at_checkpoints
from gpt2jax.files.atomic import fsync_directory, write_atomically

DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB a shard, as build-nanogpt and llm.c write FineWeb
JOURNAL_FILE = "journal.json"
# Inputs smaller than this are tokenized in this process when the worker count is left to prepare:
# starting the pool costs about as long as one core takes to tokenize them.
POOL_MIN_INPUT_BYTES = 16 << 20
_LOG_EVERY_S = 60.0  # progress lines when stderr is not a terminal (SLURM logs)


def is_synthetic(source: str) -> bool:
    return source == SYNTHETIC_PREFIX or source.startswith(SYNTHETIC_PREFIX + ":")


def token_settings(
    source: str,
    *,
    val_fraction: float = 0.005,
    text_key: str = "text",
    synthetic_train_tokens: int = 2_000_000,
    synthetic_val_tokens: int = 100_000,
    seed: int = 0,
    max_tokens: int | None = None,
) -> dict:
    """The arguments that decide which tokens get written (a data dir's identity), normalised.

    How the tokens are cut into shards, how many workers cut them and where downloads are
    cached do not change the token stream, so they are not part of it.
    """
    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"max_tokens must be positive (or 0 / None for no limit), got {max_tokens}.")
    settings = {"source": source, "max_tokens": max_tokens or None}
    if is_synthetic(source):
        if synthetic_train_tokens <= 0 or synthetic_val_tokens <= 0:
            raise ValueError("synthetic_train_tokens and synthetic_val_tokens must be positive.")
        return settings | {
            "seed": seed,
            "synthetic_train_tokens": synthetic_train_tokens,
            "synthetic_val_tokens": synthetic_val_tokens,
        }
    sources.check_val_fraction(val_fraction)
    return settings | {"val_fraction": val_fraction, "text_key": text_key}


@stopping_at_checkpoints()
def prepare(
    source: str,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.005,
    text_key: str = "text",
    tfds_data_dir: str | None = None,
    synthetic_train_tokens: int = 2_000_000,
    synthetic_val_tokens: int = 100_000,
    seed: int = 0,
    max_tokens: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    workers: int | None = None,
    hub_cache: str | Path | None = None,
) -> dict:
    """Writes source's token shards and meta.json into out_dir, or reuses them; returns the metadata.

    source: ``synthetic[:key=value,...]``, ``text:GLOB``, ``parquet:GLOB``, ``hf:OWNER/NAME[:CONFIG]``,
    ``hf:DIR`` or ``tfds:NAME[/CONFIG]``. max_tokens (None or 0: no limit) caps the train split, and a
    text source's val split at ceil(max_tokens * val_fraction). workers: tokenizer processes (None:
    every core this process may use, or none for a small input). hub_cache: where ``hf:`` datasets
    are downloaded (None: huggingface_hub's default cache).
    """
    out_dir = Path(out_dir)
    settings = token_settings(
        source,
        val_fraction=val_fraction,
        text_key=text_key,
        synthetic_train_tokens=synthetic_train_tokens,
        synthetic_val_tokens=synthetic_val_tokens,
        seed=seed,
        max_tokens=max_tokens,
    )
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be at least 1, got {shard_tokens}.")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1 (or unset for every core), got {workers}.")
    if (out_dir / META_FILE).exists():
        return reused(out_dir, settings)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists but holds no prepared data; choose another output directory or delete it.")
    # Open the source first, so that a bad one is refused before anything is created.
    partial = out_dir.parent / f".{out_dir.name}{PARTIAL_SUFFIX}"
    if is_synthetic(source):
        opened = SyntheticLanguage.from_source(source, seed=seed)
    else:
        # A resumed prepare reads the Hub revision it started with, whatever the Hub serves now.
        started = _read_journal(partial)
        revision = started.get("origin", {}).get("revision") if started.get("settings") == settings else None
        opened = sources.open_source(
            source,
            val_fraction=val_fraction,
            text_key=text_key,
            tfds_data_dir=tfds_data_dir,
            hub_cache=hub_cache,
            revision=revision,
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir) as locked:
        if (out_dir / META_FILE).exists():  # another process finished it while this one waited
            return reused(out_dir, settings)
        if not locked:  # a filesystem without locks: a private work directory, never resumed
            partial = partial.with_name(f"{partial.name}-{socket.gethostname()}-{os.getpid()}")
        if isinstance(opened, SyntheticLanguage):
            written = _write_synthetic(opened, partial, settings, shard_tokens)
        else:
            if workers is None:
                workers = flops.available_cores() if opened.input_bytes >= POOL_MIN_INPUT_BYTES else 1
            written = _write_pieces(opened, partial, settings, shard_tokens, workers)
        meta = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "settings": settings,
            "tokenizer": "gpt2",
            "vocab_size": GPT2_VOCAB_SIZE,
            "eot_token_id": EOT_TOKEN_ID,
            "dtype": TOKEN_DTYPE.name,
            "shard_tokens": shard_tokens,
        } | written
        write_atomically(partial / META_FILE, json.dumps(meta, indent=2) + "\n")
        (partial / JOURNAL_FILE).unlink(missing_ok=True)
        return _publish(partial, out_dir, settings)


def reused(out_dir: Path, settings: dict) -> dict:
    """The meta.json of prepared data in out_dir, refused unless prepared with ``settings``: a directory is
    what its meta.json records, not what its name says (a prepared folder renamed or copied by hand)."""
    meta = read_meta(out_dir)
    if meta["settings"] != settings:
        raise ValueError(
            f"{out_dir} holds data prepared with {_differences(meta['settings'], settings)}; "
            "choose another output directory or delete it."
        )
    return meta


def _differences(found: dict, wanted: dict) -> str:
    keys = list(found) + [key for key in wanted if key not in found]
    return ", ".join(
        f"{key}={found.get(key)!r} (not {wanted.get(key)!r})" for key in keys if found.get(key) != wanted.get(key)
    )


LOCK_SAY_AFTER_S = 2.0  # a wait shorter than this (another prepare finishing) goes unsaid
LOCK_POLL_S = 0.2


@contextlib.contextmanager
def _exclusive(out_dir: Path):
    """Holds ``.DIR.lock`` beside out_dir; yields False where the filesystem refuses locks.

    The holder writes its pid, host and start time into the file, so a prepare that waits
    says who it waits for (a stopped prepare, SIGSTOP, used to keep the next one waiting
    silently forever). The wait polls, so a stop (SIGTERM, Ctrl-C) ends it within LOCK_POLL_S.
    """
    path = out_dir.parent / f".{out_dir.name}.lock"
    with open(path, "a+") as lock:
        said = False
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes, or the process dies
                break
            except BlockingIOError:
                pass
            except OSError:
                yield False
                return
            check_stop(lambda name: f"prepare: stopped by {name} while it waited for {path}; nothing was written.")
            if not said and time.monotonic() - started >= LOCK_SAY_AFTER_S:
                said = True
                print(
                    f"prepare: waiting for {_lock_holder(path)}, which is preparing {out_dir} (lock {path}); "
                    "Ctrl-C stops waiting.",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(LOCK_POLL_S)
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        lock.flush()
        yield True


def _lock_holder(path: Path) -> str:
    """Who holds a prepare's lock, as its file records it, and whether that process is stopped."""
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or type(holder.get("pid")) is not int:
        return "another prepare"
    pid = holder["pid"]
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = ""
    here = holder.get("host") == socket.gethostname()
    stopped = "; it is stopped (SIGSTOP): kill -CONT {pid} resumes it" if here and state in ("T", "t") else ""
    return f"pid {pid} on host {holder.get('host', '?')} (since {since}{stopped.format(pid=pid)})"


def _publish(partial: Path, out_dir: Path, settings: dict) -> dict:
    """Renames the finished partial directory to out_dir, or keeps the copy of a process that got there first."""
    try:
        os.rename(partial, out_dir)  # atomic; replaces out_dir only if it is an empty directory
    except OSError:
        # Another host published first (on one host, the lock prevents this).
        shutil.rmtree(partial, ignore_errors=True)
        meta = read_meta(out_dir)
        if meta["settings"] != settings:
            raise ValueError(
                f"another process meanwhile filled {out_dir} with data prepared with "
                f"{_differences(meta['settings'], settings)}; choose another output directory."
            ) from None
        return meta
    fsync_directory(out_dir.parent)
    return read_meta(out_dir)


# Synthetic data: generated at once, so there is nothing to resume.


def _write_synthetic(language: SyntheticLanguage, partial: Path, settings: dict, shard_tokens: int) -> dict:
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    train_tokens = min(settings["synthetic_train_tokens"], settings["max_tokens"] or math.inf)
    split_tokens = {
        "train": language.generate(train_tokens, seed=0),
        "val": language.generate(settings["synthetic_val_tokens"], seed=1),
    }
    shards = {}
    for split in SPLITS:
        writer = ShardWriter(partial, split, shard_tokens, budget=None)
        tokens = split_tokens[split]
        while len(tokens):
            tokens = tokens[writer.append(tokens) :]
        writer.publish()
        shards[split] = writer.published
    # A compact vocabulary's ids are not GPT-2 BPE: a decoder must not read them as text.
    tokenizer = "gpt2" if language.vocabulary == "gpt2" else "none (compact synthetic ids, not GPT-2 BPE)"
    return {
        "val_split": "independent sample",
        "train_tokens": len(split_tokens["train"]),
        "val_tokens": len(split_tokens["val"]),
        "shards": shards,
        "tokenizer": tokenizer,
        "vocab_size": language.vocab_size,
        "eot_token_id": language.eot_token_id,
        "entropy_rate_nats_per_token": language.entropy_rate_nats(),
        "synthetic": language.spec(),
    }


# Text sources: pieces tokenized by workers, written in order, journaled after every shard.


class _Position:
    """Where the writing stands: the piece being written, and the split counts when it began.

    A piece's tokens already written are the splits' counts now minus those, so the journal can
    never claim more or fewer than the shards hold. documents counts the carved source's
    documents before the piece, for the carving rule.
    """

    def __init__(self, writers: dict, journal: dict | None):
        self.writers = writers
        self.piece = journal["piece"] if journal else 0
        self.documents = journal["documents"] if journal else 0
        done = journal["done"] if journal else {split: 0 for split in SPLITS}
        self.counts_before = {split: writer.count - done[split] for split, writer in writers.items()}

    def done(self, split: str) -> int:
        return self.writers[split].count - self.counts_before[split]

    def start(self, piece: int) -> None:
        """Moves to piece; a resumed piece keeps what it had written, any other starts from nothing."""
        if piece != self.piece:
            self.piece = piece
            self.counts_before = {split: writer.count for split, writer in self.writers.items()}

    def state(self) -> dict:
        return {"piece": self.piece, "done": {split: self.done(split) for split in SPLITS}, "documents": self.documents}


def _write_pieces(plan: sources.Plan, partial: Path, settings: dict, shard_tokens: int, workers: int) -> dict:
    plan.fingerprint()  # the files' content hashed now, before the workers read them, and kept for the journal
    journal = _resume(partial, settings, shard_tokens, plan)
    max_tokens = settings["max_tokens"]
    budgets = {"train": max_tokens, "val": math.ceil(max_tokens * settings["val_fraction"]) if max_tokens else None}
    writers = {
        split: ShardWriter(partial, split, shard_tokens, budgets[split], **_writer_state(journal, split))
        for split in SPLITS
    }
    position = _Position(writers, journal)

    def write_journal() -> None:
        for writer in writers.values():
            writer.sync()
        record = {
            "settings": settings,
            "shard_tokens": shard_tokens,
            "fingerprint": plan.fingerprint(),
            "origin": plan.origin,
            **position.state(),
            "splits": {split: writer.state() for split, writer in writers.items()},
        }
        write_atomically(partial / JOURNAL_FILE, json.dumps(record, indent=2) + "\n")

    def needed(piece: sources.Piece) -> bool:
        wanted = {"train": ("train",), "val": ("val",), "carve": SPLITS}[piece.role]
        return not all(writers[split].full for split in wanted)

    progress = _Progress(settings["source"], plan, budgets)
    completed = False
    try:
        with Tokenizers(workers) as tokenizers:
            todo = ((index, plan.pieces[index]) for index in range(position.piece, len(plan.pieces)))
            for index, (tokens, lengths) in tokenizers.in_order(
                ((index, piece) for index, piece in todo if needed(piece)), lambda: stop_requested() is not None
            ):
                position.start(index)
                piece = plan.pieces[index]
                _write_piece(piece, tokens, lengths, writers, position, settings["val_fraction"], write_journal)
                position.documents += len(lengths) if piece.role == "carve" else 0
                position.start(index + 1)
                progress.update(sum(writer.count for writer in writers.values()), index + 1)
                if all(writer.full for writer in writers.values()):
                    break
            published = sum(len(writer.published) for writer in writers.values())
            check_stop(
                lambda name: (
                    f"prepare: stopped by {name} with {published} shards published; "
                    "the same command continues from there."
                )
            )
        for writer in writers.values():
            writer.publish()
        completed = True
    except ValueError:
        shutil.rmtree(partial, ignore_errors=True)  # bad input: the journal could not be resumed
        raise
    finally:
        if not completed and partial.exists():
            write_journal()  # an interrupted or failed prepare continues from here
        for writer in writers.values():
            writer.close()
        progress.close()
    counts = {split: writer.count for split, writer in writers.items()}
    _check_carved_split(settings, plan, position.documents, counts, partial)
    if counts["train"] == 0 or counts["val"] == 0:
        shutil.rmtree(partial, ignore_errors=True)
        if counts["train"] == 0:
            raise ValueError(f"source {settings['source']!r} contains no text.")
        raise ValueError(
            f"source {settings['source']!r} gave no validation text ({plan.val_origin}); "
            "a carved val split needs at least two non-empty documents."
        )
    return {
        "val_split": plan.val_origin,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "shards": {split: writer.published for split, writer in writers.items()},
    } | ({"origin": plan.origin} if plan.origin else {})


# How many times val_fraction a carved val split may hold before it is refused (``_check_carved_split``).
MAX_VAL_SHARE_OVER_FRACTION = 4


def _check_carved_split(settings: dict, plan: sources.Plan, documents: int, counts: dict, partial: Path) -> None:
    """Refuses a val split carved from so few documents that it holds far more than the fraction asked.

    A carved val split takes one document in every ``round(1 / val_fraction)``, and at least
    one; with fewer documents than that, its one document is no fraction of anything: two
    one-document files and val_fraction 0.005 sent 51% of the tokens to val. A share up to
    MAX_VAL_SHARE_OVER_FRACTION times the fraction is kept (66 documents at 0.005: 1%, a val
    split still small beside train); past it the split is refused.
    """
    stride = sources.carve_stride(settings["val_fraction"])
    if plan.val_origin != sources.CARVED or not 2 <= documents < stride:
        return
    if settings["max_tokens"] and counts["train"] >= settings["max_tokens"]:
        return  # stopped by its budget, before the rest of the documents
    share = counts["val"] / max(counts["train"] + counts["val"], 1)
    if share <= MAX_VAL_SHARE_OVER_FRACTION * settings["val_fraction"]:
        return
    shutil.rmtree(partial, ignore_errors=True)
    raise ValueError(
        f"source {settings['source']!r} holds {documents} documents, too few to carve a val split of "
        f"val_fraction={settings['val_fraction']:g} (one document in every {stride}): its val split would be "
        f"{share:.0%} of the tokens; give at least {stride} documents, a --val_fraction of at least "
        f"{1 / documents:.2g}, or a source with its own validation split."
    )


def _write_piece(piece, tokens, lengths, writers, position: _Position, val_fraction: float, write_journal) -> None:
    """Appends one piece's documents to their splits, past what position.done says is already written."""
    if piece.role == "carve":
        to_val = sources.carved_to_val(position.documents, len(lengths), val_fraction)
    else:
        to_val = np.full(len(lengths), piece.role == "val")
    token_to_val = np.repeat(to_val, lengths)
    for split, part in (("train", tokens[~token_to_val]), ("val", tokens[token_to_val])):
        writer = writers[split]
        while position.done(split) < len(part) and not writer.full:
            writer.append(part[position.done(split) :])
            if writer.just_published:
                write_journal()


def _read_journal(partial: Path) -> dict:
    """The journal of an interrupted prepare; an unreadable one, or one that is no JSON object, is none."""
    try:
        journal = json.loads((partial / JOURNAL_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return journal if isinstance(journal, dict) else {}


def _writer_state(journal: dict | None, split: str) -> dict:
    if not journal:
        return {}
    state = journal["splits"][split]
    return {"published": state["shards"], "open_tokens": state["open_tokens"]}


def _resume(partial: Path, settings: dict, shard_tokens: int, plan: sources.Plan) -> dict | None:
    """The journal of an interrupted prepare to continue, after removing what it does not list; None to start afresh."""
    journal = _read_journal(partial)
    if not journal:
        shutil.rmtree(partial, ignore_errors=True)  # nothing published yet: nothing to keep
        partial.mkdir(parents=True)
        return None
    if journal.get("settings") != settings:
        raise ValueError(
            f"{partial} holds an interrupted prepare with {_differences(journal.get('settings', {}), settings)}; "
            "prepare with those settings to continue it, or delete it."
        )
    if journal.get("shard_tokens") != shard_tokens:
        raise ValueError(
            f"{partial} holds an interrupted prepare with shard_tokens={journal.get('shard_tokens')}; pass that "
            "to continue it, or delete it."
        )
    if journal.get("fingerprint") != plan.fingerprint():
        raise ValueError(
            f"the files of {settings['source']!r} changed since the prepare interrupted in {partial} began; "
            "delete it to prepare from the start."
        )
    keep = {JOURNAL_FILE}
    for split in SPLITS:
        shards = journal["splits"][split]["shards"]
        keep |= {shard["file"] for shard in shards}
        keep |= {shard_name(split, len(shards)), shard_name(split, len(shards)) + PARTIAL_SUFFIX}
        for shard in shards:
            path = partial / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * TOKEN_DTYPE.itemsize:
                raise ValueError(f"{path} is missing or damaged; delete {partial} to prepare from the start.")
    for path in partial.iterdir():
        if path.name not in keep:
            path.unlink()  # a stale temporary file of the dead prepare
    return journal


class _Progress:
    """A progress bar (tokens, tokens/s, ETA) on a terminal; a line a minute otherwise, for logs."""

    def __init__(self, source: str, plan: sources.Plan, budgets: dict):
        from tqdm import tqdm

        self.plan = plan
        self.budget = None if None in budgets.values() else sum(budgets.values())
        self._cumulative_bytes = np.cumsum([0] + [piece.size for piece in plan.pieces])
        self._start = time.monotonic()
        self._last_line = self._start
        self._start_tokens = None
        self._source = source
        self._bar = None
        if sys.stderr.isatty():
            self._bar = tqdm(desc=f"prepare {source}", unit="tok", unit_scale=True, dynamic_ncols=True)

    def update(self, tokens: int, pieces_done: int) -> None:
        if self._start_tokens is None:
            self._start_tokens = tokens  # a resumed prepare's rate counts only this run's tokens
        fraction = self._cumulative_bytes[pieces_done] / max(self._cumulative_bytes[-1], 1)
        estimate = tokens / fraction if fraction > 0 else None
        total = min(filter(None, (estimate, self.budget)), default=None)
        if self._bar is not None:
            self._bar.total = round(total) if total else None
            self._bar.update(tokens - self._bar.n)
            return
        now = time.monotonic()
        if now - self._last_line >= _LOG_EVERY_S:
            self._last_line = now
            rate = (tokens - self._start_tokens) / (now - self._start)
            eta = f", ETA {(total - tokens) / rate / 60:.0f} min" if total and rate > 0 else ""
            print(
                f"prepare {self._source}: {flops.format_count(tokens)} tokens, "
                f"{flops.format_count(rate)} tokens/s, {fraction:.0%} of the input{eta}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
