"""Documents from text sources, cut into pieces that tokenizer workers read on their own.

Sources:
  ``text:GLOB``     local ``.txt``/``.txt.gz`` (one document per file) and JSON Lines
                    ``.jsonl``, ``.json`` (+ ``.gz``: allenai/c4's ``.json.gz``), one object per line
                    with the document under ``text_key``;
  ``parquet:GLOB``  local parquet files with a string column ``text_key``;
  ``hf:OWNER/NAME[:CONFIG][@REVISION]`` or ``hf:DIR[:CONFIG]``  a Hugging Face dataset, downloaded
                    from the Hub or already on disk (``data/hub.py`` finds its files);
  ``tfds:NAME[/CONFIG]``  a TFDS dataset prepared as ArrayRecord, read without TensorFlow.

Files are read in sorted path order and rows in file order, so a source always yields the same
documents in the same order. Opening a source checks what can be checked before any token is
written (the files exist and have the text column, parquet footers are intact, the config exists)
and plans its pieces: a parquet row group, 32 MB of a ``.jsonl``, one compressed or ``.txt`` file, or
a run of TFDS records. A worker reads a piece with ``read_documents`` and nothing else.

A corpus without a validation split of its own has one carved out: counting its documents in
order from 0 (empty ones included), document i goes to val when ``i % round(1 / val_fraction) == 1``,
so any corpus of two or more documents has a val split, and the rule needs no pass over the whole
corpus before the first document is written. Pieces marked ``carve`` are split by that rule; a
source with its own validation split marks its pieces ``train`` or ``val``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import glob
import gzip
import hashlib
import importlib
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gpt2jax.data.formats import PARQUET_SUFFIX, TEXT_SUFFIXES, file_kind
from gpt2jax.errors import first_line

TEXT_PREFIX = "text:"
PARQUET_PREFIX = "parquet:"
HF_PREFIX = "hf:"
TFDS_PREFIX = "tfds:"
CARVED = "carved from train"  # the val origin of a corpus without its own validation split
JSONL_PIECE_BYTES = 32 << 20  # an uncompressed .jsonl is read in pieces of this many bytes
TFDS_PIECE_RECORDS = 8192
_PARQUET_BATCH_ROWS = 1024  # rows a worker decodes at a time: its text, not the row group's, sits in memory
_TFDS_READ_CHUNK = 256  # records per random-access read


def check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5], got {val_fraction}.")


def carve_stride(val_fraction: float) -> int:
    """Document i of a corpus without a validation split goes to val when i % stride == 1."""
    return round(1 / val_fraction)


def carved_to_val(first_document: int, num_documents: int, val_fraction: float) -> np.ndarray:
    """[num_documents] bool: which of the documents first_document, first_document + 1, ... go to val."""
    return (first_document + np.arange(num_documents)) % carve_stride(val_fraction) == 1


@dataclasses.dataclass(frozen=True)
class Piece:
    """What one worker reads: a row group, a byte range, a whole file or a run of TFDS records."""

    path: str  # a file, or a TFDS dataset's name
    kind: str  # parquet | arrow | jsonl | txt | tfds
    role: str  # carve | train | val
    start: int = 0  # parquet: the row group; jsonl: first byte; tfds: first record
    stop: int = 0  # jsonl: the byte after the range; tfds: the record after the run
    size: int = 0  # input bytes it covers, for the progress bar's ETA
    text_key: str = "text"
    split: str = ""  # tfds: the TFDS split
    data_dir: str = ""  # tfds: the data directory


@dataclasses.dataclass(frozen=True)
class Plan:
    """An opened source: its pieces in reading order and what meta.json says about where they came from."""

    pieces: tuple[Piece, ...]
    val_origin: str
    origin: dict = dataclasses.field(default_factory=dict)  # e.g. the Hub revision the files came from

    @property
    def input_bytes(self) -> int:
        return sum(piece.size for piece in self.pieces)

    @functools.cached_property
    def file_hashes(self) -> dict[str, str]:
        """The sha256 of each file the pieces read, taken once per prepare, before its workers read them.

        A file edited in place to the same size (``sed -i``) keeps its name, size and ranges;
        only its content tells. One read at 0.56 s per GB on one core of the project's 2-core
        AMD EPYC, a thread per core: seconds for a 10B-token corpus (about 40 GB of text) on
        a 16-core machine, against the hours its tokenization takes.
        """
        paths = sorted({piece.path for piece in self.pieces if piece.kind != "tfds"})  # tfds: a dataset's name
        if not paths:
            return {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
            return dict(zip(paths, pool.map(_file_sha256, paths)))

    def fingerprint(self) -> str:
        """A hash of the pieces (files, sizes, ranges) and the files' content: a resumed prepare must read exactly these."""
        identity = [dataclasses.astuple(piece) for piece in self.pieces]
        return hashlib.sha256(json.dumps([identity, self.origin, self.file_hashes]).encode()).hexdigest()


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def open_source(
    source: str,
    *,
    val_fraction: float,
    text_key: str = "text",
    tfds_data_dir: str | None = None,
    hub_cache: str | Path | None = None,
    revision: str | None = None,
) -> Plan:
    """Parses a source, checks it can be read, and plans its pieces; downloads an ``hf:`` dataset first.

    revision pins an ``hf:`` Hub dataset to a commit (a resumed prepare passes the one it started with).
    """
    check_val_fraction(val_fraction)
    if source.startswith(TEXT_PREFIX):
        paths = _glob_files(source.removeprefix(TEXT_PREFIX), TEXT_SUFFIXES, "text:corpus/*.jsonl")
        return Plan(_file_pieces(paths, "carve", text_key), CARVED)
    if source.startswith(PARQUET_PREFIX):
        paths = _glob_files(source.removeprefix(PARQUET_PREFIX), (PARQUET_SUFFIX,), "parquet:corpus/*.parquet")
        return Plan(_file_pieces(paths, "carve", text_key), CARVED)
    if source.startswith(HF_PREFIX):
        from gpt2jax.data import hub

        dataset = hub.resolve(source.removeprefix(HF_PREFIX), cache_dir=hub_cache, revision=revision)
        if dataset.val_split is None:
            return Plan(_file_pieces(dataset.files["train"], "carve", text_key), CARVED, dataset.origin)
        pieces = _file_pieces(dataset.files["train"], "train", text_key) + _file_pieces(
            dataset.files["val"], "val", text_key
        )
        return Plan(pieces, dataset.val_split, dataset.origin)
    if source.startswith(TFDS_PREFIX):
        return _tfds_plan(source.removeprefix(TFDS_PREFIX), text_key, tfds_data_dir or None)
    raise ValueError(
        f"unknown data source {source!r}; use 'synthetic', 'text:GLOB', 'parquet:GLOB', "
        "'hf:OWNER/NAME[:CONFIG]', 'hf:DIR' or 'tfds:NAME[/CONFIG]'."
    )


def _glob_files(pattern: str, suffixes: tuple[str, ...], example: str) -> list[Path]:
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    irregular = [match for match in matches if not os.path.isdir(match) and not os.path.isfile(match)]
    if irregular:  # a named pipe would block the prepare forever, a device would never end
        raise ValueError(
            f"{irregular[0]} is not a regular file (a named pipe, a device, a socket or a broken link); only regular "
            f"files are documents: remove it, or narrow the glob {pattern!r}."
        )
    paths = [Path(match) for match in matches if not os.path.isdir(match)]
    names = ", ".join(suffixes)
    if not paths:
        raise FileNotFoundError(f"no files match {pattern!r}; give a glob of {names} files, e.g. '{example}'.")
    unsupported = [str(path) for path in paths if not path.name.endswith(suffixes)]
    if unsupported:
        raise ValueError(f"{unsupported[0]} is not a {names} file; narrow the glob {pattern!r} to those.")
    return paths


def _file_pieces(paths: list[Path], role: str, text_key: str) -> tuple[Piece, ...]:
    pieces = []
    for path in paths:
        kind = file_kind(path)
        if kind == "parquet":
            pieces += _parquet_pieces(path, role, text_key)
            continue
        if kind == "arrow":
            _check_arrow_column(path, text_key)
        size = path.stat().st_size
        if kind == "jsonl" and not path.name.endswith(".gz") and size > JSONL_PIECE_BYTES:
            for start in range(0, size, JSONL_PIECE_BYTES):
                stop = min(start + JSONL_PIECE_BYTES, size)
                pieces.append(Piece(str(path), kind, role, start, stop, stop - start, text_key))
        else:
            pieces.append(Piece(str(path), kind, role, 0, size, size, text_key))
    return tuple(pieces)


def _parquet_pieces(path: Path, role: str, text_key: str) -> list[Piece]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path} is not a readable parquet file ({first_line(error)}); fix or remove it.") from None
    schema = metadata.schema.to_arrow_schema()
    _check_text_field(schema, text_key, path)
    return [
        Piece(str(path), "parquet", role, group, group + 1, metadata.row_group(group).total_byte_size, text_key)
        for group in range(metadata.num_row_groups)
        if metadata.row_group(group).num_rows
    ]


def _check_arrow_column(path: Path, text_key: str) -> None:
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            schema = pa.ipc.open_stream(source).schema
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path} is not a readable Arrow file ({first_line(error)}); fix or remove it.") from None
    _check_text_field(schema, text_key, path)


def _check_text_field(schema, text_key: str, path: Path) -> None:
    import pyarrow as pa

    if text_key not in schema.names:
        raise ValueError(
            f"{path} has no column {text_key!r} (it has {', '.join(schema.names)}); "
            "pass --text_key (data.text_key) with the column that holds the text."
        )
    field_type = schema.field(text_key).type
    if not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)):
        raise ValueError(
            f"column {text_key!r} of {path} holds {field_type}, not text; pass --text_key with a text one."
        )


# Reading a piece: this runs in the tokenizer workers.


def read_documents(piece: Piece) -> Iterator[str]:
    """The documents of one piece, in order; a missing or null text counts as an empty document."""
    readers = {"parquet": _parquet_documents, "arrow": _arrow_documents, "jsonl": _jsonl_documents}
    readers |= {"txt": _txt_documents, "tfds": _tfds_documents}
    try:
        yield from readers[piece.kind](piece)
    except UnicodeDecodeError:
        raise ValueError(f"{piece.path} is not UTF-8 text; convert or remove it.") from None
    except (OSError, EOFError, zlib.error) as error:  # EOFError: a truncated .gz; zlib.error: a damaged one
        reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
        raise ValueError(f"cannot read {piece.path}: {reason}; fix or remove the file.") from None


def _parquet_documents(piece: Piece) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(piece.path)
        batches = file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[piece.start], columns=[piece.text_key])
        for batch in batches:
            yield from (text or "" for text in batch.column(0).to_pylist())
    except (OSError, pa.ArrowException) as error:  # pyarrow reports damaged pages as either
        raise OSError(f"row group {piece.start} is damaged ({first_line(error).rstrip('.')})") from None


def _arrow_documents(piece: Piece) -> Iterator[str]:
    import pyarrow as pa

    try:
        with pa.memory_map(piece.path) as source:
            for batch in pa.ipc.open_stream(source):
                yield from (text or "" for text in batch.column(piece.text_key).to_pylist())
    except (OSError, pa.ArrowException) as error:
        raise OSError(f"the Arrow stream is damaged ({first_line(error).rstrip('.')})") from None


def _txt_documents(piece: Piece) -> Iterator[str]:
    open_binary = gzip.open if piece.path.endswith(".gz") else open
    with open_binary(piece.path, "rb") as file:
        yield file.read().decode("utf-8")


def _jsonl_documents(piece: Piece) -> Iterator[str]:
    """Lines of the piece's byte range: a line belongs to the range in which it starts."""
    if piece.path.endswith(".gz"):
        with gzip.open(piece.path, "rb") as file:
            yield from _jsonl_texts(file, piece, stop=None)
        return
    with open(piece.path, "rb") as file:
        if piece.start:
            file.seek(piece.start - 1)
            if file.read(1) != b"\n":
                file.readline()  # the rest of a line that began in the previous range
        yield from _jsonl_texts(file, piece, stop=piece.stop)


def _jsonl_texts(file, piece: Piece, stop: int | None) -> Iterator[str]:
    offset = file.tell()
    for index, line in enumerate(iter(file.readline, b"")):
        if stop is not None and offset >= stop:
            return
        if line.strip():
            yield _jsonl_text(line.decode("utf-8"), piece, index if not piece.start else None, offset)
        offset += len(line)


def _jsonl_text(line: str, piece: Piece, line_index: int | None, offset: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        problem = "is not JSON; each line must be one JSON object"
    else:
        text = record.get(piece.text_key) if isinstance(record, dict) else None
        if isinstance(text, str):
            return text
        problem = (
            f"has no string field {piece.text_key!r}; pass --text_key (data.text_key) with the field that holds it"
        )
    # Counted only now: a piece that starts mid-file knows its byte offset, not its line number.
    line_number = line_index + 1 if line_index is not None else _line_number(piece.path, offset)
    raise ValueError(f"{piece.path} line {line_number} {problem}.")


def _line_number(path: str, offset: int) -> int:
    with open(path, "rb") as file:
        return file.read(offset).count(b"\n") + 1


# TFDS.


def _tfds_plan(name: str, text_key: str, data_dir: str | None) -> Plan:
    builder = _tfds_builder(name, data_dir)
    features = list(builder.info.features.keys())
    if text_key not in features:
        raise ValueError(
            f"TFDS dataset {name!r} has no feature {text_key!r} (it has "
            f"{', '.join(features)}); pass --text_key with the one that holds the text."
        )
    # Split names are known only from metadata on disk; none (e.g. under tfds.testing.mock_data)
    # means: read 'train', carve val from it.
    splits = set(builder.info.splits.keys())
    if splits and "train" not in splits:
        raise ValueError(f"TFDS dataset {name!r} has no 'train' split (it has {', '.join(sorted(splits))}).")
    val_origin = next((split for split in ("validation", "test") if split in splits), CARVED)
    bytes_per_record = _tfds_bytes_per_record(builder)
    split_roles = [("train", "carve")] if val_origin == CARVED else [("train", "train"), (val_origin, "val")]
    pieces = []
    for split, role in split_roles:
        # Opened now, so that an unprepared dataset is refused before prepare creates anything.
        num_records = len(_tfds_data_source(builder, name, split))
        pieces += [
            Piece(name, "tfds", role, start, stop, (stop - start) * bytes_per_record, text_key, split, data_dir or "")
            for start in range(0, num_records, TFDS_PIECE_RECORDS)
            for stop in [min(start + TFDS_PIECE_RECORDS, num_records)]
        ]
    return Plan(tuple(pieces), val_origin)


def _tfds_bytes_per_record(builder) -> int:
    info = builder.info
    try:
        num_examples = sum(split.num_examples for split in info.splits.values())
        return int(info.dataset_size) // num_examples if num_examples else 0
    except (TypeError, AttributeError):
        return 0


def _tfds_documents(piece: Piece) -> Iterator[str]:
    records = _tfds_records(piece.path, piece.data_dir or None, piece.split)
    for start in range(piece.start, piece.stop, _TFDS_READ_CHUNK):
        # __getitems__ is the data source's batched read; one record at a time is much slower.
        for record in records.__getitems__(list(range(start, min(start + _TFDS_READ_CHUNK, piece.stop)))):
            text = record[piece.text_key]
            yield text.decode("utf-8") if isinstance(text, bytes) else str(text)


@functools.lru_cache(maxsize=4)
def _tfds_records(name: str, data_dir: str | None, split: str):
    return _tfds_data_source(_tfds_builder(name, data_dir), name, split)


def _tfds_data_source(builder, name: str, split: str):
    try:
        return builder.as_data_source(split=split)
    except (NotImplementedError, ValueError, AssertionError, FileNotFoundError):
        # TFDS reports an unprepared dataset, or one prepared as TFRecord, in several ways.
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared as ArrayRecord under {builder.data_dir_root}; "
            f"building it needs TensorFlow (and Apache Beam for Beam datasets such as c4): "
            f"`pip install tensorflow apache-beam`, then `tfds build {name} --file_format=array_record "
            f"--data_dir={builder.data_dir_root}`, or say where it is (--config.data.tfds_data_dir for training, --tfds_data_dir for prepare)."
        ) from None


def _tfds_builder(name: str, data_dir: str | None):
    # Imported here: training on synthetic or local text never needs TFDS installed.
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        pass
    # Without TensorFlow installed, some builders (c4, hellaswag, wikipedia, ...) are registered
    # only once their module is imported.
    base_name = name.split("/")[0].split(":")[0]
    for module in (f"tensorflow_datasets.text.{base_name}", f"tensorflow_datasets.datasets.{base_name}"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is None or not module.startswith(error.name):
                raise ValueError(f"TFDS dataset {base_name!r} needs the package {error.name!r}; install it.") from None
            continue
        try:
            return tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            break
    raise ValueError(
        f"TFDS has no dataset {name!r}; check the name in the TFDS catalog "
        "(https://www.tensorflow.org/datasets/catalog)."
    )
