"""The data files prepare reads, known by their names: parquet, Arrow, JSON Lines and plain text.

``.parquet`` (a text column), ``.arrow`` (the Arrow streams ``datasets``' save_to_disk writes),
``.jsonl`` and ``.json`` (JSON Lines: one object per line, as allenai/c4's ``.json.gz``), and ``.txt``
(one document per file); JSON Lines and text optionally gzipped.
"""

from __future__ import annotations

from pathlib import Path

PARQUET_SUFFIX = ".parquet"
ARROW_SUFFIX = ".arrow"
TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz")
DATA_SUFFIXES = (PARQUET_SUFFIX, ARROW_SUFFIX) + TEXT_SUFFIXES
READABLE = ".parquet, .arrow, .jsonl, .json and .txt files (JSON Lines and text optionally .gz)"


def file_kind(path: Path) -> str | None:
    """parquet, arrow, jsonl or txt: how a data file is read, from its name; None for a file prepare cannot read."""
    name = path.name
    if name.endswith(PARQUET_SUFFIX):
        return "parquet"
    if name.endswith(ARROW_SUFFIX):
        return "arrow"
    if name.endswith((".txt", ".txt.gz")):
        return "txt"
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return "jsonl"
    return None
