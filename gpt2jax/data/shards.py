"""Token shards on disk: their names, the writer that publishes them, and meta.json's account of them.

A prepared directory holds, per split, shards ``train_000000.bin``, ``train_000001.bin``, ...
(``val_...`` likewise) of raw little-endian uint16 token ids, each ``shard_tokens`` long but the
last, and ``meta.json``, written last, which lists them in order with their token counts and
sha256. Read in order, a split's shards are one token stream.

While a prepare runs, the shard being filled is ``<name>.bin.partial``; it is renamed to
``<name>.bin`` once full (atomic), and only a shard that the prepare's journal lists counts as
published. A directory of the first format (one ``train.bin`` and one ``val.bin``, format 1)
still reads, as one shard per split.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from pathlib import Path

import numpy as np

from gpt2jax.files.workdir import read_json

FORMAT_VERSION = 2
SINGLE_FILE_FORMAT_VERSION = 1  # train.bin and val.bin, before shards
TOKEN_DTYPE = np.dtype("<u2")  # uint16, little-endian on every machine
META_FILE = "meta.json"
SPLITS = ("train", "val")
PARTIAL_SUFFIX = ".partial"
_HASH_CHUNK_BYTES = 1 << 24


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


class ShardWriter:
    """Appends one split's tokens into shards of shard_tokens, up to an optional budget.

    ``published`` and ``open_tokens`` restore a writer from the journal of an interrupted
    prepare: the shard being filled is truncated back to the ``open_tokens`` the journal
    recorded, and its hash is recomputed from what stays.
    """

    def __init__(
        self,
        directory: Path,
        split: str,
        shard_tokens: int,
        budget: int | None,
        published: list[dict] | None = None,
        open_tokens: int = 0,
    ):
        self.directory = directory
        self.split = split
        self.shard_tokens = shard_tokens
        self.budget = budget
        self.published = list(published or [])
        self.open_tokens = 0
        self.just_published = False
        self._file = None
        self._sha256 = hashlib.sha256()
        if open_tokens:
            self._reopen(open_tokens)

    @property
    def count(self) -> int:
        """Tokens written to this split so far, published or not."""
        return sum(shard["tokens"] for shard in self.published) + self.open_tokens

    @property
    def full(self) -> bool:
        return self.budget is not None and self.count >= self.budget

    @property
    def _open_path(self) -> Path:
        return self.directory / (shard_name(self.split, len(self.published)) + PARTIAL_SUFFIX)

    def _reopen(self, open_tokens: int) -> None:
        path = self._open_path
        renamed = self.directory / shard_name(self.split, len(self.published))
        if not path.exists() and renamed.exists():
            os.rename(renamed, path)  # published by a run killed before its journal said so
        size = path.stat().st_size if path.exists() else 0
        if size < open_tokens * TOKEN_DTYPE.itemsize:
            raise ValueError(
                f"{path} holds {size // TOKEN_DTYPE.itemsize} tokens but the journal of the interrupted prepare "
                f"says {open_tokens}; delete {self.directory} to prepare from the start."
            )
        self._file = open(path, "r+b")
        self._file.truncate(open_tokens * TOKEN_DTYPE.itemsize)
        while chunk := self._file.read(_HASH_CHUNK_BYTES):
            self._sha256.update(chunk)
        self.open_tokens = open_tokens

    def append(self, tokens: np.ndarray) -> int:
        """Writes as many of tokens as fit in the open shard and the budget; returns how many.

        A shard that fills is published at once, and ``just_published`` says so until the next call.
        """
        self.just_published = False
        room = self.shard_tokens - self.open_tokens
        if self.budget is not None:
            room = min(room, self.budget - self.count)
        tokens = tokens[:room]
        if len(tokens):
            if self._file is None:
                self._file = open(self._open_path, "wb")
            data = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).tobytes()
            self._file.write(data)
            self._sha256.update(data)
            self.open_tokens += len(tokens)
        if self.open_tokens == self.shard_tokens:
            self.publish()
        return len(tokens)

    def sync(self) -> None:
        """Puts the open shard's bytes on disk, before a journal records them."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def publish(self) -> None:
        """Renames the open shard to its final name (a no-op for an empty one)."""
        if not self.open_tokens:
            return
        self.sync()
        self._file.close()
        self._file = None
        name = shard_name(self.split, len(self.published))
        os.rename(self._open_path, self.directory / name)
        self.published.append({"file": name, "tokens": self.open_tokens, "sha256": self._sha256.hexdigest()})
        self._sha256 = hashlib.sha256()
        self.open_tokens = 0
        self.just_published = True

    def state(self) -> dict:
        return {"shards": self.published, "open_tokens": self.open_tokens}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_meta(data_dir: str | Path) -> dict:
    """meta.json of a complete prepared directory, after checking every shard's size against it."""
    data_dir = Path(data_dir)
    meta_path = data_dir / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{data_dir} holds no prepared data (no {META_FILE}); run "
            f"`python -m gpt2jax.cli.prepare --source SOURCE --out {data_dir}`."
        )
    meta = read_json(meta_path, remedy=f"delete {data_dir} and prepare it again")
    if meta.get("format_version") not in (FORMAT_VERSION, SINGLE_FILE_FORMAT_VERSION):
        raise ValueError(
            f"{data_dir} has data format {meta.get('format_version')}, this code reads "
            f"{SINGLE_FILE_FORMAT_VERSION} and {FORMAT_VERSION}; delete it and prepare it again."
        )
    for split in SPLITS:
        for shard in split_shards(meta, split):
            path = data_dir / shard["file"]
            found = path.stat().st_size // TOKEN_DTYPE.itemsize if path.is_file() else 0
            if found != shard["tokens"]:
                raise ValueError(
                    f"{path} holds {found} tokens but {META_FILE} says {shard['tokens']}; "
                    f"delete {data_dir} and prepare it again."
                )
    return meta


def split_shards(meta: dict, split: str) -> list[dict]:
    """A split's shards in stream order, ``{"file", "tokens"}`` each, for both formats."""
    if meta["format_version"] == SINGLE_FILE_FORMAT_VERSION:
        return [{"file": f"{split}.bin", "tokens": meta[f"{split}_tokens"]}]
    return meta["shards"][split]


def recorded_hashes(meta: dict) -> dict[str, str]:
    """{token file: sha256} as meta.json records them: per shard, or per split file in the first format."""
    if "shards" in meta:
        return {shard["file"]: shard["sha256"] for split in meta["shards"].values() for shard in split}
    return dict(meta.get("sha256", {}))


_VERIFIED: set[tuple] = set()  # the _identity of each token file this process read and found good


def _identity(path: Path, recorded: str | None) -> tuple:
    """A token file as this process saw it: any write since, even one that restores the mtime, changes the ctime."""
    stat = path.stat()
    return path, recorded, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _read_checked(path: Path) -> tuple[str, int]:
    """(sha256, largest token id) of a token file, from one read in chunks (memory stays flat for a 200 MB shard)."""
    digest, largest = hashlib.sha256(), -1
    chunk = bytearray(_HASH_CHUNK_BYTES)
    with path.open("rb") as file:
        while size := file.readinto(chunk):
            view = memoryview(chunk)[:size]
            digest.update(view)
            largest = max(largest, int(np.frombuffer(view, dtype=TOKEN_DTYPE).max()))
    return digest.hexdigest(), largest


def verify_token_files(data_dir: str | Path, meta: dict) -> None:
    """Every token file of a prepared directory checked by its content, the first time a process opens it.

    Its sha256 must be the one meta.json records, and every id below meta.json's vocab_size
    (a file of the first format, which records no hashes, gets the second check only). Its
    name, size or modification time prove nothing: a restored backup, a copy tool or a bad
    disk keeps them while changing the bytes. Both checks are one read: 0.65 s per GB on one
    core of the project's 2-core AMD EPYC (sha256 with SHA-NI 0.56 s/GB, the max 0.04 s/GB),
    so 10B tokens (20 GB) take 13 s on one core; the files are read by a thread per core
    (hashlib and numpy release the GIL), a second or two on a 16-core GPU machine whose page
    cache or disk keeps up. A sweep opens the same files for every point: each is read once
    per process, and again only if written since (its ctime moved).
    """
    data_dir = Path(data_dir).resolve()
    recorded = recorded_hashes(meta)
    files = [shard["file"] for split in SPLITS for shard in split_shards(meta, split)]
    identities = {name: _identity(data_dir / name, recorded.get(name)) for name in files}
    unread = [name for name in files if identities[name] not in _VERIFIED]
    if not unread:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(unread), os.cpu_count() or 1)) as pool:
        checked = dict(zip(unread, pool.map(lambda name: _read_checked(data_dir / name), unread)))
    for name in unread:
        digest, largest = checked[name]
        if name in recorded and digest != recorded[name]:
            raise ValueError(
                f"{data_dir / name} does not match the sha256 its {META_FILE} records, so it changed after it "
                f"was prepared; delete {data_dir} and prepare it again."
            )
        if largest >= meta["vocab_size"]:
            raise ValueError(
                f"{data_dir / name} holds token id {largest}, outside the vocabulary of {meta['vocab_size']} its "
                f"{META_FILE} records; delete {data_dir} and prepare it again."
            )
        _VERIFIED.add(identities[name])
