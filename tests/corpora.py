"""Small corpora the data tests write: the same documents as parquet, JSON Lines, Hub layouts and caches;
and a prepare interrupted after a chosen shard."""

from __future__ import annotations

import contextlib
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt2jax.data.shards import ShardWriter

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there had been one all we their its more when so what if would who no about some out them "
    "can do only my than into Zürich naïve café ☕ 1984 3.14 co-op <|endoftext|> \n\n"
).split(" ")


def documents(count: int, seed: int = 0, mean_words: int = 60) -> list[str]:
    """count documents of random words (a literal "<|endoftext|>", non-ASCII text, newlines), one of them empty."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    lengths = rng.integers(1, 2 * mean_words, count)
    texts = [" ".join(words[rng.integers(0, len(words), length)]) + "." for length in lengths]
    if count > 3:
        texts[3] = ""  # an empty document still counts for the carving rule
    return texts


def write_parquet(path: Path, texts: list[str], row_group_size: int = 50, column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": np.arange(len(texts)), column: texts})  # the text is not the first column
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_parquet_files(directory: Path, texts: list[str], files: int, name: str = "{index:03d}_00000.parquet"):
    """texts split over files parquet files named like FineWeb's, several row groups each."""
    return [
        write_parquet(directory / name.format(index=index, files=files), list(part))
        for index, part in enumerate(np.array_split(np.array(texts, dtype=object), files))
    ]


def write_json_gz(path: Path, texts: list[str], key: str = "text") -> Path:
    """JSON Lines, gzipped, as allenai/c4 ships them (``c4-train.00000-of-01024.json.gz``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as file:
        for index, text in enumerate(texts):
            file.write(json.dumps({key: text, "url": f"https://example.com/{index}"}) + "\n")
    return path


FINEWEB_CARD = """---
license: odc-by
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*/*
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
- config_name: sample-100BT
  data_files:
  - split: train
    path: sample/100BT/*
---
# A FineWeb-Edu-shaped test dataset
"""

C4_CARD = """---
configs:
- config_name: en
  default: true
  data_files:
  - split: train
    path: en/c4-train.*.json.gz
  - split: validation
    path: en/c4-validation.*.json.gz
- config_name: realnewslike
  data_files:
  - split: train
    path: realnewslike/c4-train.*.json.gz
---
"""


def write_fineweb_layout(root: Path, texts: list[str], files: int = 3) -> list[Path]:
    """A directory as snapshot_download leaves HuggingFaceFW/fineweb-edu: card, ``sample/10BT/*.parquet``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(FINEWEB_CARD)
    (root / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    write_parquet_files(root / "data" / "CC-MAIN-2024-10", documents(7, seed=99), 1)  # another config's files
    return write_parquet_files(root / "sample" / "10BT", texts, files)


def write_c4_layout(root: Path, train: list[str], validation: list[str]) -> None:
    """A directory as snapshot_download leaves allenai/c4's ``en`` files: ``en/c4-{split}.NNNNN-of-NNNNN.json.gz``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(C4_CARD)
    for index, part in enumerate(np.array_split(np.array(train, dtype=object), 2)):
        write_json_gz(root / "en" / f"c4-train.{index:05d}-of-00002.json.gz", list(part))
    write_json_gz(root / "en" / "c4-validation.00000-of-00001.json.gz", validation)


def write_hub_cache(cache: Path, repo_id: str, commit: str, make_snapshot) -> Path:
    """huggingface_hub's cache layout for a dataset: ``datasets--OWNER--NAME/{refs/main, snapshots/COMMIT/}``."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    make_snapshot(snapshot)
    return snapshot


def write_saved_dataset(root: Path, splits: dict[str, list[str]]) -> None:
    """What ``datasets.DatasetDict.save_to_disk`` writes: Arrow stream files and a state.json per split."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for split, texts in splits.items():
        directory = root / split
        directory.mkdir()
        halves = np.array_split(np.array(texts, dtype=object), 2)
        names = [f"data-{index:05d}-of-00002.arrow" for index in range(2)]
        for name, half in zip(names, halves):
            table = pa.table({"text": pa.array(list(half), pa.large_string()), "id": np.arange(len(half))})
            with pa.OSFile(str(directory / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=7)
        (directory / "state.json").write_text(json.dumps({"_data_files": [{"filename": name} for name in names]}))


@contextlib.contextmanager
def interrupted_after_publishing(shards: int):
    """The prepare run inside stops with KeyboardInterrupt (as at Ctrl-C) once it has published ``shards``
    shards; the block fails if it was not interrupted."""
    real_publish = ShardWriter.publish

    def publish_then_interrupt(self):
        real_publish(self)
        if len(self.published) == shards:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ShardWriter, "publish", publish_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            yield
