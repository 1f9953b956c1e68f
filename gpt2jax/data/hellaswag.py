"""HellaSwag's examples from what a researcher can download; only TFDS's copy needs TensorFlow to build.

``FILE.jsonl``
    the original release (github.com/rowanz/hellaswag: ``hellaswag_val.jsonl``), one JSON object a
    line with ``ctx`` (or ``ctx_a`` and ``ctx_b``), ``endings`` and ``label``, among others.
``hf:Rowan/hellaswag`` (or ``hf:DIR``)
    the Hub's parquet files, through ``data.hub`` as the data sources use it: only the split scored
    is downloaded (6 MB for validation), into ``hub_cache``, and with ``HF_HUB_OFFLINE=1`` a cached
    snapshot is read without the network.
``tfds``
    TFDS's ``hellaswag``, where it is already built as ArrayRecord (building it needs TensorFlow).

Each example becomes ``{"context", "endings", "label"}``. An example without one of those fields,
or whose label is not the index of one of its endings (the test split's labels are hidden), is
refused in one sentence that says where it is, before anything is scored.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from gpt2jax.data import hub
from gpt2jax.data.formats import file_kind

TFDS = "tfds"
SOURCES = "hellaswag_val.jsonl (github.com/rowanz/hellaswag), hf:Rowan/hellaswag, or tfds"


def read_examples(
    source: str,
    *,
    split: str = "validation",
    limit: int | None = None,
    hub_cache: str | Path | None = None,
    tfds_data_dir: str | None = None,
) -> list[dict]:
    """The first ``limit`` (all if None) examples of ``split`` from ``source``: a .jsonl file, hf:SPEC or tfds.

    A .jsonl file is one split already, so ``split`` applies to hf: and tfds only.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be at least 1.")
    if source == TFDS:
        return _tfds_examples(split, tfds_data_dir, limit)
    if source.startswith("hf:"):
        records = _file_records(hub.split_files(source.removeprefix("hf:"), split, cache_dir=hub_cache))
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"HellaSwag file {source} does not exist; give {SOURCES}.")
        records = _file_records([path])
    examples = []
    for where, record in records:
        if limit is not None and len(examples) == limit:
            break
        examples.append(checked_example(record, where))
    if not examples:
        raise ValueError(f"{source} holds no HellaSwag examples; give {SOURCES}.")
    return examples


def checked_example(record: dict, where: str) -> dict:
    """``{"context", "endings", "label"}`` of a rowanz-format record, refused in one sentence naming ``where``."""
    context = record.get("ctx")
    if context is None and record.get("ctx_a") is not None:
        # The release's ctx is ctx_a and ctx_b joined by a space (ctx_b is empty for WikiHow).
        context = " ".join(part for part in (record["ctx_a"], record.get("ctx_b") or "") if part)
    for field, value in (("ctx", context), ("endings", record.get("endings")), ("label", record.get("label"))):
        if value is None:
            raise ValueError(
                f"{where} has no {field!r} field; a HellaSwag example has ctx (or ctx_a and ctx_b), endings "
                "and label, as in the rowanz/hellaswag release."
            )
    endings = record["endings"]
    if not isinstance(endings, list) or not endings or not all(isinstance(ending, str) for ending in endings):
        raise ValueError(f"{where}'s endings are not a list of strings.")
    label = record["label"]
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)  # the Hub's copy writes labels as strings
    if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError(
            f"{where}'s label {label!r} is not the index of an ending; the test split's labels are hidden, "
            "so score the validation split."
        )
    if not 0 <= label < len(endings):
        raise ValueError(f"{where}'s label {label} is out of range for its {len(endings)} endings.")
    return {"context": str(context), "endings": endings, "label": label}


def _file_records(paths: Iterable[Path]) -> Iterator[tuple[str, dict]]:
    """(where, record) for each record of JSON Lines, parquet or Arrow stream files, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in paths:
        kind = file_kind(path)
        if kind == "jsonl":
            with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        record = None
                    if not isinstance(record, dict):
                        raise ValueError(f"{path} line {number} is not a JSON object.")
                    yield f"{path} line {number}", record
        elif kind in ("parquet", "arrow"):
            try:
                if kind == "parquet":
                    table = pq.read_table(path)
                else:
                    with pa.OSFile(str(path)) as stream:
                        table = pa.ipc.open_stream(stream).read_all()
            except (pa.ArrowException, OSError):
                raise ValueError(f"{path} is not a readable {kind} file.") from None
            for number, record in enumerate(table.to_pylist()):
                yield f"{path} row {number}", record
        else:
            raise ValueError(f"{path} is not a HellaSwag file; give .jsonl (the original) or .parquet (the Hub's).")


def _tfds_examples(split: str, data_dir: str | None, limit: int | None) -> list[dict]:
    """Examples of TFDS's prepared hellaswag, whose records hold bytes and name the context ``context``."""
    import tensorflow_datasets as tfds

    # Without TensorFlow, TFDS registers the HellaSwag builder only once its module is imported.
    import tensorflow_datasets.text.hellaswag  # noqa: F401

    builder = tfds.builder("hellaswag", data_dir=data_dir)
    try:
        records = builder.as_data_source(split=split)
    except (NotImplementedError, ValueError, AssertionError, FileNotFoundError):
        raise FileNotFoundError(
            f"HellaSwag is not prepared as ArrayRecord under {builder.data_dir_root}; read hellaswag_val.jsonl "
            "or hf:Rowan/hellaswag instead, build it with TensorFlow (`tfds build hellaswag "
            f"--file_format=array_record --data_dir={builder.data_dir_root}`), or pass --tfds_data_dir where it is."
        ) from None
    count = len(records) if limit is None else min(limit, len(records))
    return [
        checked_example(
            {
                "ctx": _text(record["context"]),
                "endings": [_text(ending) for ending in record["endings"]],
                "label": int(record["label"]),
            },
            f"TFDS hellaswag {split} record {index}",
        )
        for index, record in ((index, records[index]) for index in range(count))
    ]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
