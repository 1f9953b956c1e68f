"""Documents from text sources: local files (``text:GLOB``) and TFDS datasets (``tfds:NAME[/CONFIG]``).

A source yields the documents of one split, ``train`` or ``val``, as strings. A corpus without
a validation split of its own has one carved out: counting its documents in order from 0
(empty ones included), document i goes to val when ``i % round(1 / val_fraction) == 1``, so
any corpus of two or more documents has a val split, and the rule needs no pass over the whole
corpus before the first document is written.

Text files: ``.txt`` and ``.txt.gz`` hold one document per file; ``.jsonl`` and ``.jsonl.gz``
hold one JSON object per line with the document under ``text_key``. Files are read in sorted
path order, UTF-8 only.
"""

from __future__ import annotations

import glob
import gzip
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

Split = Literal["train", "val"]

TEXT_PREFIX = "text:"
TFDS_PREFIX = "tfds:"
TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
CARVED = "carved from train"  # the val origin of a corpus without its own validation split
_TFDS_READ_CHUNK = 256  # records per random-access read


def check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5], got {val_fraction}.")


def _carve_stride(val_fraction: float) -> int:
    """Document i of a corpus without a validation split goes to val when i % stride == 1."""
    return round(1 / val_fraction)


class TextFiles:
    """Documents from local ``.txt[.gz]`` and ``.jsonl[.gz]`` files matching a glob."""

    val_origin = CARVED

    def __init__(self, pattern: str, *, val_fraction: float, text_key: str = "text"):
        check_val_fraction(val_fraction)
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        self.paths = [Path(match) for match in matches if not os.path.isdir(match)]
        if not self.paths:
            raise FileNotFoundError(
                f"no files match {pattern!r}; give a glob of .txt, .txt.gz, .jsonl or "
                ".jsonl.gz files, e.g. 'text:corpus/*.txt'."
            )
        unsupported = [str(path) for path in self.paths if not path.name.endswith(TEXT_SUFFIXES)]
        if unsupported:
            raise ValueError(
                f"{unsupported[0]} is not a .txt, .txt.gz, .jsonl or .jsonl.gz file; "
                f"narrow the glob {pattern!r} to those."
            )
        self.val_fraction = val_fraction
        self.text_key = text_key

    def documents(self, split: Split) -> Iterator[str]:
        stride, want_val = _carve_stride(self.val_fraction), split == "val"
        for index, text in enumerate(self._all_documents()):
            if text and (index % stride == 1) == want_val:
                yield text

    def _all_documents(self) -> Iterator[str]:
        for path in self.paths:
            try:
                yield from self._file_documents(path)
            except UnicodeDecodeError:
                raise ValueError(f"{path} is not UTF-8 text; convert or remove it.") from None
            except (OSError, EOFError) as error:  # EOFError: a truncated .gz
                reason = error.strerror if isinstance(error, OSError) and error.strerror else error
                raise ValueError(f"cannot read {path}: {reason}; fix or remove the file.") from None

    def _file_documents(self, path: Path) -> Iterator[str]:
        open_text = gzip.open if path.name.endswith(".gz") else open
        with open_text(path, "rt", encoding="utf-8") as file:
            if path.name.endswith((".txt", ".txt.gz")):
                yield file.read()
                return
            for line_number, line in enumerate(file, start=1):
                if line.strip():
                    yield self._jsonl_text(line, path, line_number)

    def _jsonl_text(self, line: str, path: Path, line_number: int) -> str:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path} line {line_number} is not JSON; each line must be one JSON object.") from None
        text = record.get(self.text_key) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ValueError(
                f"{path} line {line_number} has no string field {self.text_key!r}; "
                "pass --text_key with the field that holds the text."
            )
        return text


class TfdsDataset:
    """Documents from a TFDS dataset prepared on disk as ArrayRecord, read without TensorFlow."""

    def __init__(self, name: str, *, val_fraction: float, text_key: str = "text", data_dir: str | None = None):
        check_val_fraction(val_fraction)
        self.name = name
        self.val_fraction = val_fraction
        self.text_key = text_key
        self._builder = _tfds_builder(name, data_dir)
        features = list(self._builder.info.features.keys())
        if text_key not in features:
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {text_key!r} (it has "
                f"{', '.join(features)}); pass --text_key with the one that holds the text."
            )
        # Split names are known only from metadata on disk; none (e.g. under tfds.testing.mock_data)
        # means: read 'train', carve val from it.
        splits = set(self._builder.info.splits.keys())
        if splits and "train" not in splits:
            raise ValueError(f"TFDS dataset {name!r} has no 'train' split (it has {', '.join(sorted(splits))}).")
        self.val_origin = next((split for split in ("validation", "test") if split in splits), CARVED)
        # Opened now, so that an unprepared dataset is refused before prepare creates anything.
        train = self._data_source("train")
        self._records = {
            "train": train,
            "val": train if self.val_origin == CARVED else self._data_source(self.val_origin),
        }

    def documents(self, split: Split) -> Iterator[str]:
        records = self._records[split]
        carved, stride = self.val_origin == CARVED, _carve_stride(self.val_fraction)
        indices = range(1, len(records), stride) if carved and split == "val" else range(len(records))
        for start in range(0, len(indices), _TFDS_READ_CHUNK):
            chunk = indices[start : start + _TFDS_READ_CHUNK]
            if carved and split == "train":
                chunk = [i for i in chunk if i % stride != 1]
            # __getitems__ is the data source's batched read; one record at a time is much slower.
            for record in records.__getitems__(list(chunk)):
                text = record[self.text_key]
                text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
                if text:
                    yield text

    def _data_source(self, split: str):
        try:
            return self._builder.as_data_source(split=split)
        except (NotImplementedError, ValueError, AssertionError, FileNotFoundError):
            # TFDS reports an unprepared dataset, or one prepared as TFRecord, in several ways.
            raise FileNotFoundError(
                f"TFDS dataset {self.name!r} is not prepared as ArrayRecord under "
                f"{self._builder.data_dir_root}; build it with `tfds build {self.name} "
                f"--file_format=array_record --data_dir={self._builder.data_dir_root}`, or say where it is "
                "(--config.data.tfds_data_dir for training, --tfds_data_dir for prepare)."
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


def open_source(
    source: str, *, val_fraction: float, text_key: str = "text", tfds_data_dir: str | None = None
) -> TextFiles | TfdsDataset:
    """Parses ``text:GLOB`` or ``tfds:NAME[/CONFIG]`` and checks that the source can be read."""
    if source.startswith(TEXT_PREFIX):
        return TextFiles(source.removeprefix(TEXT_PREFIX), val_fraction=val_fraction, text_key=text_key)
    if source.startswith(TFDS_PREFIX):
        return TfdsDataset(
            source.removeprefix(TFDS_PREFIX),
            val_fraction=val_fraction,
            text_key=text_key,
            data_dir=tfds_data_dir or None,
        )
    raise ValueError(f"unknown data source {source!r}; use 'synthetic', 'text:GLOB' or 'tfds:NAME[/CONFIG]'.")
