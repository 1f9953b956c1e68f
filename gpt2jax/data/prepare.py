"""Turns a source into GPT-2 token files, atomically (``python -m gpt2jax.cli.prepare --source S --out DIR``).

A prepared directory holds
  train.bin, val.bin  raw little-endian uint16 token ids, each document followed by <|endoftext|>;
  meta.json           written last, so its presence marks the directory complete.
Everything is written into a hidden sibling ``.DIR.tmp-<pid>-<random>`` that is renamed to DIR at the
end; an interrupted run leaves only that hidden directory, never a DIR that looks complete.
An existing DIR with a valid meta.json for the same settings is reused; an existing non-empty DIR
without one is refused rather than overwritten, since it may hold the user's own files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt2jax.data import sources
from gpt2jax.data.synthetic import SOURCE_PREFIX as SYNTHETIC_PREFIX
from gpt2jax.data.synthetic import SyntheticLanguage
from gpt2jax.data.tokenizer import EOT_TOKEN_ID, GPT2_VOCAB_SIZE, get_tokenizer

FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u2")  # uint16, little-endian on every machine
SPLIT_FILES = {"train": "train.bin", "val": "val.bin"}
META_FILE = "meta.json"
_BATCH_CHARS = 1_000_000  # text tokenized per call: enough to keep every thread busy, bounded in memory
_BATCH_DOCUMENTS = 4096
_NUM_THREADS = min(8, os.cpu_count() or 1)


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
    """The arguments that decide which tokens get written (a data dir's identity), normalised."""
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


def read_meta(data_dir: str | Path) -> dict:
    """meta.json of a complete prepared directory, after checking the token files' sizes against it."""
    data_dir = Path(data_dir)
    meta_path = data_dir / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{data_dir} holds no prepared data (no {META_FILE}); run "
            f"`python -m gpt2jax.cli.prepare --source SOURCE --out {data_dir}`."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{meta_path} is not valid JSON; delete {data_dir} and prepare it again.") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{data_dir} has data format {meta.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}; delete it and prepare it again."
        )
    for split, file_name in SPLIT_FILES.items():
        path = data_dir / file_name
        found = path.stat().st_size // TOKEN_DTYPE.itemsize if path.is_file() else 0
        expected = meta.get(f"{split}_tokens")
        if found != expected:
            raise ValueError(
                f"{path} holds {found} tokens but {META_FILE} says {expected}; delete {data_dir} and prepare it again."
            )
    return meta


class _TokenFile:
    """Appends token ids to a file up to an optional budget, counting and hashing them on the way."""

    def __init__(self, path: Path, budget: int | None):
        self.budget = budget
        self.count = 0
        self.sha256 = hashlib.sha256()
        self._file = open(path, "wb")

    @property
    def full(self) -> bool:
        return self.budget is not None and self.count >= self.budget

    def append(self, tokens: np.ndarray) -> None:
        if self.budget is not None:
            tokens = tokens[: self.budget - self.count]
        data = tokens.astype(TOKEN_DTYPE).tobytes()
        self._file.write(data)
        self.sha256.update(data)
        self.count += len(tokens)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())  # the data must be on disk before the rename publishes it
        self._file.close()


def _document_batches(documents: Iterable[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for document in documents:
        batch.append(document)
        chars += len(document)
        if chars >= _BATCH_CHARS or len(batch) >= _BATCH_DOCUMENTS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _write_documents(documents: Iterable[str], token_file: _TokenFile, description: str) -> None:
    encoder = get_tokenizer()
    # disable=None: no progress bar when stderr is not a terminal (logs, CI).
    with tqdm(total=token_file.budget, desc=description, unit="tok", unit_scale=True, disable=None) as progress:
        for batch in _document_batches(documents):
            # encode_ordinary: text that spells "<|endoftext|>" is tokenized as text, not as the separator.
            token_lists = encoder.encode_ordinary_batch(batch, num_threads=_NUM_THREADS)
            tokens = np.fromiter(
                itertools.chain.from_iterable(ids + [EOT_TOKEN_ID] for ids in token_lists), dtype=TOKEN_DTYPE
            )
            before = token_file.count
            token_file.append(tokens)
            progress.update(token_file.count - before)
            if token_file.full:
                return


def _write_text_source(text_source: sources.TextFiles | sources.TfdsDataset, work_dir: Path, settings: dict) -> dict:
    source = settings["source"]
    max_tokens = settings["max_tokens"]
    val_budget = math.ceil(max_tokens * settings["val_fraction"]) if max_tokens else None
    budgets = {"train": max_tokens, "val": val_budget}
    counts, hashes = {}, {}
    for split, file_name in SPLIT_FILES.items():
        token_file = _TokenFile(work_dir / file_name, budgets[split])
        try:
            _write_documents(text_source.documents(split), token_file, f"{source} {split}")
        finally:
            token_file.close()
        counts[split], hashes[file_name] = token_file.count, token_file.sha256.hexdigest()
    if counts["train"] == 0:
        raise ValueError(f"source {source!r} contains no text.")
    if counts["val"] == 0:
        raise ValueError(
            f"source {source!r} gave no validation text ({text_source.val_origin}); "
            "a carved val split needs at least two non-empty documents."
        )
    return {
        "val_split": text_source.val_origin,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "sha256": hashes,
    }


def _write_synthetic_source(language: SyntheticLanguage, work_dir: Path, settings: dict) -> dict:
    train_tokens = min(settings["synthetic_train_tokens"], settings["max_tokens"] or math.inf)
    split_tokens = {
        "train": language.generate(train_tokens, seed=0),
        "val": language.generate(settings["synthetic_val_tokens"], seed=1),
    }
    meta = {"val_split": "independent sample", "sha256": {}}
    for split, file_name in SPLIT_FILES.items():
        token_file = _TokenFile(work_dir / file_name, budget=None)
        try:
            token_file.append(split_tokens[split])
        finally:
            token_file.close()
        meta[f"{split}_tokens"], meta["sha256"][file_name] = token_file.count, token_file.sha256.hexdigest()
    # A compact vocabulary's ids are not GPT-2 BPE: a decoder must not read them as text.
    tokenizer = "gpt2" if language.vocabulary == "gpt2" else "none (compact synthetic ids, not GPT-2 BPE)"
    return meta | {
        "tokenizer": tokenizer,
        "vocab_size": language.vocab_size,
        "eot_token_id": language.eot_token_id,
        "entropy_rate_nats_per_token": language.entropy_rate_nats(),
        "synthetic": language.spec(),
    }


def _differences(found: dict, wanted: dict) -> str:
    keys = list(found) + [key for key in wanted if key not in found]
    return ", ".join(
        f"{key}={found.get(key)!r} (not {wanted.get(key)!r})" for key in keys if found.get(key) != wanted.get(key)
    )


def _publish(work_dir: Path, out_dir: Path, settings: dict) -> dict:
    """Renames work_dir to out_dir, or keeps the copy of a process that got there first."""
    try:
        os.rename(work_dir, out_dir)  # atomic; replaces out_dir only if it is an empty directory
    except OSError:
        # Another process published first (on one machine, ensure_prepared's lock prevents this).
        meta = read_meta(out_dir)
        if meta["settings"] != settings:
            raise ValueError(
                f"another process meanwhile filled {out_dir} with data prepared with "
                f"{_differences(meta['settings'], settings)}; choose another output "
                "directory."
            ) from None
        return meta
    return read_meta(out_dir)


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
) -> dict:
    """Writes train.bin, val.bin and meta.json for source into out_dir, or reuses them; returns the metadata.

    source: ``synthetic[:key=value,...]``, ``text:GLOB`` or ``tfds:NAME[/CONFIG]``. max_tokens (None or 0:
    no limit) caps train.bin, and a text source's val.bin at ceil(max_tokens * val_fraction).
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
    if (out_dir / META_FILE).exists():
        meta = read_meta(out_dir)
        if meta["settings"] != settings:
            raise ValueError(
                f"{out_dir} holds data prepared with "
                f"{_differences(meta['settings'], settings)}; choose another output "
                "directory or delete it."
            )
        return meta
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists but holds no prepared data; choose another output directory or delete it.")
    # Open the source first, so that a bad one is refused before anything is created.
    if is_synthetic(source):
        opened = SyntheticLanguage.from_source(source, seed=seed)
    else:
        opened = sources.open_source(source, val_fraction=val_fraction, text_key=text_key, tfds_data_dir=tfds_data_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        if isinstance(opened, SyntheticLanguage):
            written = _write_synthetic_source(opened, work_dir, settings)
        else:
            written = _write_text_source(opened, work_dir, settings)
        meta = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "settings": settings,
            "tokenizer": "gpt2",
            "vocab_size": GPT2_VOCAB_SIZE,
            "eot_token_id": EOT_TOKEN_ID,
            "dtype": TOKEN_DTYPE.name,
        } | written
        (work_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return _publish(work_dir, out_dir, settings)
    finally:
        if work_dir.exists():
            shutil.rmtree(work_dir)  # an interrupted or failed run leaves nothing behind
