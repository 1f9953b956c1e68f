"""Prepared token shards, memory-mapped as one stream per split, and the batches cut from them.

A training batch is a pure function of (seed, step): resuming needs only the step, and every
process draws the same global batch and keeps its own rows. Window starts are uniform over the
whole train stream; a window that crosses from one shard into the next is stitched from both, so
the shards read as one array, and no window reads past the last token. Evaluation reads the same
evenly spaced windows of the val split every time, so evaluations are comparable across a run.

Shape letters (the package's legend, ``gpt2jax/__init__.py``): G the global batch, B this process's rows
of it, N batches, T block_size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gpt2jax.data.prepare import DEFAULT_SHARD_TOKENS, prepare, reused, token_settings
from gpt2jax.data.shards import META_FILE, SPLITS, TOKEN_DTYPE, read_meta, split_shards, verify_token_files


class TokenStream:
    """A split's shards read as one array of tokens: ``len`` and contiguous slices across shards."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(shard) for shard in shards])  # [shards + 1]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        """tokens[start:stop] (a copy where it crosses shards); only step-1 slices."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a TokenStream is read by contiguous slices, e.g. tokens[start:stop].")
        start, stop, _ = key.indices(len(self))
        if start >= stop:
            return np.empty(0, dtype=TOKEN_DTYPE)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, stop, side="left")) - 1
        parts = [
            self.shards[index][max(start - self.starts[index], 0) : stop - self.starts[index]]
            for index in range(first, last + 1)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    path: Path
    meta: dict
    train: TokenStream  # [train_tokens] uint16, memory-mapped shards
    val: TokenStream  # [val_tokens] uint16, memory-mapped shards


def open_prepared(data_dir: str | Path) -> PreparedData:
    """Maps a prepared directory's shards, after checking their sizes, hashes and ids against meta.json.

    The content is checked every time (``shards.verify_token_files``: seconds for 10B tokens on a
    16-core machine): a process never trains on or scores tokens that are not the ones prepared.
    """
    path = Path(data_dir)
    meta = read_meta(path)
    verify_token_files(path, meta)
    train, val = (
        TokenStream(
            [np.memmap(path / shard["file"], dtype=TOKEN_DTYPE, mode="r") for shard in split_shards(meta, split)]
        )
        for split in SPLITS
    )
    return PreparedData(path=path, meta=meta, train=train, val=val)


def prepared_dir_name(source: str, **prepare_kwargs) -> str:
    """``<slug of source>-<hash of the settings that decide the tokens>``, e.g. ``synthetic-3f2a9c01d4``."""
    settings = _token_settings(source, prepare_kwargs)
    slug = re.sub(r"[^a-z0-9]+", "-", source.lower()).strip("-")[:48] or "data"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"{slug}-{digest}"


# prepare's arguments that change where inputs come from or how tokens are cut into files, not the tokens.
_LAYOUT_ONLY = ("tfds_data_dir", "hub_cache", "shard_tokens", "workers")


def _token_settings(source: str, prepare_kwargs: dict) -> dict:
    return token_settings(source, **{k: v for k, v in prepare_kwargs.items() if k not in _LAYOUT_ONLY})


def ensure_prepared(source: str, data_root: str | Path, **prepare_kwargs) -> Path:
    """The prepared directory for source under data_root, preparing (or resuming) it on first use.

    The name hashes the source string and settings, not file contents: after changing the files
    behind a ``text:`` glob, delete the directory to prepare it again. Processes on one machine
    wait for each other through prepare's lock file; across machines, its atomic rename keeps one copy.
    """
    out_dir = Path(data_root) / prepared_dir_name(source, **prepare_kwargs)
    if (out_dir / META_FILE).exists():  # checked before prepare's lock, so a read-only data_root works
        reused(out_dir, _token_settings(source, prepare_kwargs))
        return out_dir
    prepare(source, out_dir, **prepare_kwargs)
    return out_dir


def anchored(config, recorded_dir: str | None = None):
    """A copy of ``config`` whose data paths (``data.dir``, ``data.prepared``, ``data.hub_cache``) are absolute.

    A relative path is relative to the current directory, except a relative ``data.dir`` under
    which this config's data are not prepared while ``recorded_dir`` (the absolute data.dir a
    workdir's config.json records) holds them: a run resumed, or evaluated, from another
    directory prepared the corpus again there. Recorded absolute, a workdir's data are found
    from anywhere.
    """
    config = config.copy_and_resolve_references()
    data = config.data
    for key in ("prepared", "hub_cache"):
        if data.get(key):
            data[key] = str(Path(data[key]).absolute())
    if Path(data.dir).is_absolute():
        return config
    here = Path(data.dir).absolute()
    if recorded_dir and Path(recorded_dir).is_absolute() and not data.get("prepared"):
        name = prepared_dir_name(data.source, **_prepare_settings(data))
        if not (here / name / META_FILE).exists() and (Path(recorded_dir) / name / META_FILE).exists():
            here = Path(recorded_dir)
    data.dir = str(here)
    return config


def _prepare_settings(data) -> dict:
    """The keyword arguments of ``prepare`` (and of ``prepared_dir_name``) a config's data section gives."""
    return dict(
        val_fraction=data.val_fraction,
        text_key=data.text_key,
        tfds_data_dir=data.tfds_data_dir or None,
        synthetic_train_tokens=data.synthetic_train_tokens,
        synthetic_val_tokens=data.synthetic_val_tokens,
        max_tokens=data.max_tokens or None,
        shard_tokens=data.get("shard_tokens", DEFAULT_SHARD_TOKENS),
        workers=data.get("workers") or None,
        hub_cache=data.get("hub_cache") or Path(data.dir) / "hub",
    )


def prepared_data(config) -> PreparedData:
    """The prepared tokens of a run config's ``data`` section, preparing them on first use.

    Refuses data with ids past the model's embedding, which the gather would clip silently.
    """
    data = config.data
    if data.get("prepared"):
        return _checked_vocab(open_prepared(Path(data.prepared)), Path(data.prepared), config)
    data_dir = ensure_prepared(data.source, data.dir, **_prepare_settings(data))
    return _checked_vocab(open_prepared(data_dir), data_dir, config)


def _checked_vocab(prepared: PreparedData, data_dir: Path, config) -> PreparedData:
    if prepared.meta["vocab_size"] > config.model.vocab_size:
        raise ValueError(
            f"{data_dir} holds token ids up to {prepared.meta['vocab_size'] - 1} but model.vocab_size is "
            f"{config.model.vocab_size}; set model.vocab_size={prepared.meta['vocab_size']}."
        )
    return prepared


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of the process count {process_count}.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}.")
    return batch_size // process_count


def _check_length(tokens: TokenStream | np.ndarray, block_size: int, split: str) -> None:
    if len(tokens) < block_size + 1:
        raise ValueError(
            f"the {split} split holds {len(tokens)} tokens, fewer than block_size + 1 = "
            f"{block_size + 1}; prepare more data or lower block_size."
        )


def _windows(tokens: TokenStream | np.ndarray, starts_B: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    window_BxT1 = np.stack([tokens[start : start + block_size + 1] for start in starts_B]).astype(np.int32)
    return np.ascontiguousarray(window_BxT1[:, :-1]), np.ascontiguousarray(window_BxT1[:, 1:])


SAMPLINGS = ("uniform", "epochs")
_FEISTEL_ROUNDS = 4


def _permuted(index: np.ndarray, size: int, key: np.ndarray) -> np.ndarray:
    """A permutation of [0, size) applied to ``index``: a keyed Feistel network on the smallest even
    power of two above ``size``, walked until it lands inside (each walk stays in the cycle of its
    start, so the map is a bijection). A pure function of (index, key) with nothing stored: a
    10B-token corpus has 10M windows, whose explicit permutation would take 80 MB per epoch."""
    half_bits = max(1, (int(size - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half_bits) - 1)
    out = index.astype(np.uint64)
    pending = np.ones(len(out), bool)
    while pending.any():
        value = out[pending]
        left, right = value >> np.uint64(half_bits), value & mask
        for round_key in key[:_FEISTEL_ROUNDS]:
            mixed = (right * np.uint64(0x9E3779B97F4A7C15) + np.uint64(round_key)) & np.uint64(2**64 - 1)
            mixed ^= mixed >> np.uint64(29)
            left, right = right, left ^ (mixed & mask)
        value = (left << np.uint64(half_bits)) | right
        out[pending] = value
        pending[pending] = value >= size
    return out.astype(np.int64)


def window_starts(seed: int, step: int, batch_size: int, n_tokens: int, block_size: int, sampling: str) -> np.ndarray:
    """The global batch's window starts at ``step``: a pure function of (seed, step).

    ``uniform``: anywhere in the stream, drawn with replacement, so tokens repeat long before an
    epoch ends (after E epochs a token has been read with probability 1 - exp(-E)).
    ``epochs``: the stream cut into non-overlapping windows, each read once per epoch in an order
    permuted by (seed, epoch), with the cut shifted by an offset drawn per epoch; under one epoch
    no token is read twice, so ``epochs`` in the metrics means passes over the data.
    """
    if sampling == "uniform":
        return np.random.default_rng([seed, step]).integers(0, n_tokens - block_size, size=batch_size)
    if sampling != "epochs":
        raise ValueError(f"train.sampling={sampling!r} is not one of {', '.join(SAMPLINGS)}.")
    windows = (n_tokens - 1) // block_size - 1  # one window spare for the epoch's offset
    rows = step * batch_size + np.arange(batch_size, dtype=np.int64)  # each row's index since step 0
    epoch, position = rows // windows, rows % windows
    starts = np.empty(batch_size, np.int64)
    for this_epoch in np.unique(epoch):
        rng = np.random.default_rng([seed, int(this_epoch), 7])
        key, offset = rng.integers(0, 2**63, size=_FEISTEL_ROUNDS, dtype=np.uint64), int(rng.integers(block_size))
        chosen = epoch == this_epoch
        starts[chosen] = offset + block_size * _permuted(position[chosen], windows, key)
    return starts


def step_starts(
    tokens: TokenStream | np.ndarray, *, seed: int, step: int, batch_size: int, block_size: int, sampling: str
) -> np.ndarray:
    """The global batch's window starts at ``step`` in ``tokens`` (``window_starts``), after checking that
    the split holds a window and that seed and step are whole; what ``batch_for_step`` cuts, or the device gathers."""
    _check_length(tokens, block_size, "train")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got {seed} and {step}.")
    return window_starts(seed, step, batch_size, len(tokens), block_size, sampling)


def batch_for_step(
    tokens: TokenStream | np.ndarray,
    *,
    seed: int,
    step: int,
    batch_size: int,
    block_size: int,
    process_index: int = 0,
    process_count: int = 1,
    sampling: str = "uniform",
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [b, T], targets [b, T]) int32 for this process, b = batch_size // process_count.

    The global batch's windows are ``window_starts``'; this process takes rows
    [process_index * b, (process_index + 1) * b).
    """
    local_batch_size = _local_batch_size(batch_size, process_index, process_count)
    starts_G = step_starts(
        tokens, seed=seed, step=step, batch_size=batch_size, block_size=block_size, sampling=sampling
    )
    starts_B = starts_G[process_index * local_batch_size : (process_index + 1) * local_batch_size]
    return _windows(tokens, starts_B, block_size)


def eval_batches(
    tokens: TokenStream | np.ndarray,
    *,
    batch_size: int,
    block_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """num_batches (inputs [b, T], targets [b, T]) int32 batches of fixed, evenly spaced val windows.

    The num_batches * batch_size window starts are spread evenly from the first to the last
    possible one. A val split shorter than the windows need makes them overlap: the batch count
    and shapes stay as asked (no recompilation), and every evaluation still reads the same tokens.
    """
    local_batch_size = _local_batch_size(batch_size, process_index, process_count)
    _check_length(tokens, block_size, "val")
    if num_batches <= 0:
        raise ValueError(f"num_batches must be positive, got {num_batches}.")
    last_start = len(tokens) - block_size - 1
    starts_NxG = np.linspace(0, last_start, num_batches * batch_size).round().astype(np.int64)
    starts_NxG = starts_NxG.reshape(num_batches, batch_size)
    starts_NxB = starts_NxG[:, process_index * local_batch_size : (process_index + 1) * local_batch_size]
    return (_windows(tokens, starts_B, block_size) for starts_B in starts_NxB)
