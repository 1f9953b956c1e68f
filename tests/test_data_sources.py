"""Parquet files and Hugging Face datasets (local directories, the Hub's cache, a mirrored download) as sources.

No test reaches the network: the Hub is a directory laid out as snapshot_download leaves it, read
by huggingface_hub itself in offline mode, or served by a stand-in for snapshot_download.
"""

from __future__ import annotations

import fnmatch
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors

from gpt2jax.data import hub, sources
from gpt2jax.data.loader import open_prepared
from gpt2jax.data.prepare import prepare
from gpt2jax.data.sources import carved_to_val
from tests.corpora import (
    documents,
    interrupted_after_publishing,
    write_c4_layout,
    write_fineweb_layout,
    write_hub_cache,
    write_json_gz,
    write_parquet,
    write_parquet_files,
    write_saved_dataset,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
NEWER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def token_shards(meta: dict) -> dict:
    """What decides the tokens a run reads: the shards, not the source string."""
    return {split: [(shard["tokens"], shard["sha256"]) for shard in meta["shards"][split]] for split in meta["shards"]}


@pytest.fixture
def offline(monkeypatch):
    """huggingface_hub with HF_HUB_OFFLINE=1, as it reads it when imported."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def test_parquet_hf_directory_and_text_of_the_same_documents_give_the_same_tokens(tmp_path):
    texts = documents(400)
    kwargs = dict(val_fraction=0.1, shard_tokens=2_000, hub_cache=tmp_path / "hub")
    parquet_files = write_parquet_files(tmp_path / "parquet", texts, files=3)
    for path in parquet_files:
        assert pq.ParquetFile(path).metadata.num_row_groups > 1  # pieces are row groups
    write_json_gz(tmp_path / "c4" / "c4-train.00000-of-00001.json.gz", texts)
    write_fineweb_layout(tmp_path / "fineweb-edu", texts)
    write_saved_dataset(tmp_path / "saved", {"train": texts})
    metas = {
        "parquet": prepare(f"parquet:{tmp_path}/parquet/*.parquet", tmp_path / "p", **kwargs),
        "text": prepare(f"text:{tmp_path}/c4/*.json.gz", tmp_path / "t", **kwargs),
        "hf_dir": prepare(f"hf:{tmp_path}/fineweb-edu:sample-10BT", tmp_path / "h", **kwargs),
        "saved": prepare(f"hf:{tmp_path}/saved", tmp_path / "s", **kwargs),
        "two_workers": prepare(f"parquet:{tmp_path}/parquet/*.parquet", tmp_path / "w", workers=2, **kwargs),
    }
    reference = token_shards(metas["parquet"])
    assert len(reference["train"]) > 3
    assert all(token_shards(meta) == reference for meta in metas.values())
    # The carving rule over all documents, an empty one included, in file and row order.
    to_val = carved_to_val(0, len(texts), 0.1)
    data = open_prepared(tmp_path / "h")
    eot = "<|endoftext|>"
    assert _decode(data.train) == "".join(text + eot for text, val in zip(texts, to_val) if text and not val)
    assert _decode(data.val) == "".join(text + eot for text, val in zip(texts, to_val) if text and val)
    assert metas["hf_dir"]["origin"] == {"directory": str(tmp_path / "fineweb-edu"), "config": "sample-10BT"}


def _decode(tokens) -> str:
    from gpt2jax.data.tokenizer import get_tokenizer

    return get_tokenizer().decode(tokens[:].tolist())


def test_jsonl_read_in_byte_ranges_gives_the_tokens_of_the_whole_file(tmp_path, monkeypatch):
    texts = documents(300)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    whole = prepare(f"text:{path}", tmp_path / "whole", shard_tokens=1_000)
    monkeypatch.setattr(sources, "JSONL_PIECE_BYTES", 997)  # cuts inside lines
    plan = sources.open_source(f"text:{path}", val_fraction=0.005)
    assert len(plan.pieces) == -(-path.stat().st_size // 997)
    assert token_shards(prepare(f"text:{path}", tmp_path / "ranges", shard_tokens=1_000)) == token_shards(whole)
    # A bad line deep in the file is named by its line number, though its piece starts mid-file.
    lines = path.read_text().splitlines(keepends=True)
    lines[250] = "{not json\n"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match="corpus.jsonl line 251 is not JSON"):
        prepare(f"text:{path}", tmp_path / "bad")


def test_a_dataset_with_a_validation_split_uses_it(tmp_path):
    train, validation = documents(60, seed=1), documents(9, seed=2)
    write_c4_layout(tmp_path / "c4", train, validation)
    meta = prepare(f"hf:{tmp_path}/c4", tmp_path / "out", hub_cache=tmp_path / "hub")  # "en" is the default
    assert meta["val_split"] == "validation" and meta["origin"]["config"] == "en"
    data = open_prepared(tmp_path / "out")
    eot = "<|endoftext|>"
    assert _decode(data.train) == "".join(text + eot for text in train if text)
    assert _decode(data.val) == "".join(text + eot for text in validation if text)


def test_a_directory_without_a_card_follows_the_hubs_file_naming(tmp_path):
    train, validation, test = documents(40, seed=1), documents(6, seed=2), documents(5, seed=3)
    write_parquet(tmp_path / "plain_text" / "train-00000-of-00002.parquet", train[:20])
    write_parquet(tmp_path / "plain_text" / "train-00001-of-00002.parquet", train[20:])
    write_parquet(tmp_path / "plain_text" / "test-00000-of-00001.parquet", test)
    write_parquet(tmp_path / "plain_text" / "validation-00000-of-00001.parquet", validation)
    found = hub.resolve(f"{tmp_path}:plain_text")
    assert [path.name for path in found.files["train"]] == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    assert [path.name for path in found.files["val"]] == ["validation-00000-of-00001.parquet"]
    (tmp_path / "plain_text" / "validation-00000-of-00001.parquet").unlink()
    assert hub.resolve(str(tmp_path)).val_split == "test"
    for path in (tmp_path / "plain_text").glob("t*"):
        path.rename(path.with_name(path.name.replace("train", "part").replace("test", "more")))
    unnamed = hub.resolve(str(tmp_path))
    assert len(unnamed.files["train"]) == 3 and unnamed.val_split is None


def test_a_hub_name_is_read_from_the_cache_offline(tmp_path, offline):
    texts = documents(200)
    cache = tmp_path / "hub"
    write_hub_cache(cache, "testowner/tinyweb", COMMIT, lambda snapshot: write_fineweb_layout(snapshot, texts))
    meta = prepare("hf:testowner/tinyweb:sample-10BT", tmp_path / "out", hub_cache=cache, shard_tokens=3_000)
    assert meta["origin"] == {"hub": "testowner/tinyweb", "config": "sample-10BT", "revision": COMMIT}
    write_parquet_files(tmp_path / "plain", texts, files=3)
    assert token_shards(meta) == token_shards(
        prepare(f"parquet:{tmp_path}/plain/*", tmp_path / "p", shard_tokens=3_000)
    )


class MirroredHub:
    """snapshot_download over a local mirror: copies what allow_patterns match into the cache layout.

    ``fail_after`` files, it raises as a dropped connection would; the next call continues.
    """

    def __init__(self, mirror_of_commit: dict, fail_after: int | None = None):
        self.mirrors = mirror_of_commit  # commit -> directory; the last one is what main points to
        self.fail_after = fail_after
        self.calls = []

    def __call__(self, *, repo_id, repo_type, revision, cache_dir, allow_patterns):
        assert repo_type == "dataset"
        self.calls.append({"revision": revision, "allow_patterns": allow_patterns})
        commit = revision or list(self.mirrors)[-1]
        if commit not in self.mirrors:
            raise hub_error(hub_errors.RevisionNotFoundError, f"no revision {commit}")
        mirror = self.mirrors[commit]
        snapshot = cache_dir / f"datasets--{repo_id.replace('/', '--')}" / "snapshots" / commit
        for path in sorted(mirror.rglob("*")):
            relative = path.relative_to(mirror).as_posix()
            target = snapshot / relative
            if path.is_dir() or target.exists() or not any(fnmatch.fnmatch(relative, p) for p in allow_patterns):
                continue
            if self.fail_after is not None and self.fail_after == 0:
                self.fail_after = None
                raise OSError("Connection reset by peer")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            self.fail_after = None if self.fail_after is None else self.fail_after - 1
        return str(snapshot)


def test_a_hub_download_fetches_only_the_configs_files_and_continues_after_a_failure(tmp_path, monkeypatch):
    texts = documents(200)
    mirror = tmp_path / "mirror"
    write_fineweb_layout(mirror, texts)
    download = MirroredHub({COMMIT: mirror}, fail_after=2)
    monkeypatch.setattr(hub, "_snapshot_download", download)
    out, cache = tmp_path / "out", tmp_path / "hub"
    with pytest.raises(OSError, match="Connection reset"):
        prepare("hf:testowner/tinyweb:sample-10BT", out, hub_cache=cache)
    assert not out.exists()
    meta = prepare("hf:testowner/tinyweb:sample-10BT", out, hub_cache=cache)
    # The card first, then the config's files at the card's commit; other configs' files stay on the Hub.
    assert download.calls[-2:] == [
        {"revision": None, "allow_patterns": ["README.md"]},
        {"revision": COMMIT, "allow_patterns": ["sample/10BT/*"]},
    ]
    snapshot = cache / "datasets--testowner--tinyweb" / "snapshots" / COMMIT
    assert not (snapshot / "data").exists()
    write_parquet_files(tmp_path / "plain", texts, files=3)
    assert token_shards(meta) == token_shards(prepare(f"parquet:{tmp_path}/plain/*", tmp_path / "p"))


def test_a_resumed_hub_prepare_reads_the_revision_it_started_with(tmp_path, monkeypatch):
    old, new = tmp_path / "old", tmp_path / "new"
    write_fineweb_layout(old, documents(300, seed=1))
    write_fineweb_layout(new, documents(300, seed=2))
    download = MirroredHub({COMMIT: old})
    monkeypatch.setattr(hub, "_snapshot_download", download)
    out, cache = tmp_path / "out", tmp_path / "hub"
    with interrupted_after_publishing(2):
        prepare("hf:testowner/tinyweb:sample-10BT", out, hub_cache=cache, shard_tokens=1_000)
    download.mirrors[NEWER_COMMIT] = new  # meanwhile the dataset changed on the Hub
    meta = prepare("hf:testowner/tinyweb:sample-10BT", out, hub_cache=cache, shard_tokens=1_000)
    assert download.calls[-2]["revision"] == COMMIT and meta["origin"]["revision"] == COMMIT
    fresh = prepare("hf:testowner/tinyweb:sample-10BT", tmp_path / "fresh", hub_cache=cache, shard_tokens=1_000)
    assert fresh["origin"]["revision"] == NEWER_COMMIT
    write_parquet_files(tmp_path / "plain", documents(300, seed=1), files=3)
    assert token_shards(meta) == token_shards(
        prepare(f"parquet:{tmp_path}/plain/*", tmp_path / "p", shard_tokens=1_000)
    )


def hub_error(kind: type, message: str = "refused") -> Exception:
    """An instance of one of huggingface_hub's errors, whose constructors want an HTTP response."""
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    return error


def _raising(kind):
    def raise_it(**_):
        raise hub_error(kind)

    return raise_it


@pytest.mark.parametrize(
    "make, source, message",
    [
        (
            None,
            "hf:testowner/nothing-cached",
            "hf:testowner/nothing-cached is not in the local cache .*, and the Hub cannot be reached",
        ),
        (
            hub_errors.RepositoryNotFoundError,
            "hf:testowner/no-such-dataset",
            "the Hub has no dataset 'testowner/no-such-dataset'",
        ),
        (hub_errors.GatedRepoError, "hf:testowner/gated", "is gated; accept its terms"),
        (hub_errors.RevisionNotFoundError, "hf:testowner/tinyweb@v9", "has no revision 'v9'"),
        (
            "fineweb",
            "hf:{root}/fineweb:sample-1BT",
            "has no config 'sample-1BT'; its configs are default, sample-10BT, sample-100BT",
        ),
        (
            "fineweb",
            "hf:{root}/fineweb:sample-100BT",
            "lists files sample/100BT/\\* for its train split, but .* holds none",
        ),
        ("c4-without-default", "hf:{root}/fineweb", "several configs and no default; name one as .*:CONFIG"),
        ("nothing", "hf:{root}/empty", "holds no data files"),
        ("csv", "hf:{root}/csv", "has files prepare cannot read, e.g. train.csv"),
        (None, "hf:not a name", "neither a local directory nor a Hub dataset name"),
        (None, "parquet:{root}/nothing/*.parquet", "no files match"),
        ("no-text-column", "parquet:{root}/*.parquet", "has no column 'text' \\(it has id, body\\); pass --text_key"),
        ("corrupt", "parquet:{root}/*.parquet", "bad.parquet is not a readable parquet file"),
        ("corrupt", "hf:{root}", "bad.parquet is not a readable parquet file"),
        ("damaged-page", "parquet:{root}/*.parquet", "cannot read .*bad.parquet: row group 0 is damaged \\(Corrupt"),
    ],
)
def test_bad_hub_and_parquet_sources_are_refused_in_one_sentence(tmp_path, monkeypatch, offline, make, source, message):
    root = tmp_path / "in"
    root.mkdir()
    if isinstance(make, type):
        monkeypatch.setattr(hub, "_snapshot_download", _raising(make))
    elif make == "fineweb":
        write_fineweb_layout(root / "fineweb", documents(20))
    elif make == "c4-without-default":
        write_fineweb_layout(root / "fineweb", documents(20))
        card = (root / "fineweb" / "README.md").read_text().replace("config_name: default", "config_name: all")
        (root / "fineweb" / "README.md").write_text(card)
    elif make == "nothing":
        (root / "empty").mkdir()
    elif make == "csv":
        (root / "csv").mkdir()
        (root / "csv" / "train.csv").write_text("text\nhello\n")
        (root / "csv" / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: train.csv\n---\n")
    elif make == "no-text-column":
        pq.write_table(pa.table({"id": [1, 2], "body": ["a", "b"]}), root / "a.parquet")
    elif make == "corrupt":
        write_parquet(root / "a.parquet", documents(20))
        (root / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    elif make == "damaged-page":
        write_parquet(root / "a.parquet", documents(20))
        good = write_parquet(root / "bad.parquet", documents(20, seed=5), row_group_size=20).read_bytes()
        page = len(good) // 3  # inside the first row group's data, footer intact
        (root / "bad.parquet").write_bytes(good[:page] + bytes(len(good[page : page + 64])) + good[page + 64 :])
    out = tmp_path / "prepared" / "out"
    with pytest.raises((ValueError, OSError, RuntimeError), match=message) as raised:
        prepare(source.format(root=root), out, hub_cache=tmp_path / "prepared" / "hub", val_fraction=0.5)
    assert "\n" not in str(raised.value)
    assert not out.exists()
    leftovers = sorted(path.name for path in out.parent.iterdir()) if out.parent.exists() else []
    assert leftovers in ([], ["hub"], [".out.lock"])
