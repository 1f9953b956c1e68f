"""Tests for gpt2jax.data: tokenizer, synthetic language, text sources, prepare, shards and loader (CPU, seconds).

Parquet and Hugging Face sources are tested in test_data_sources.py, killed and resumed prepares in
test_data_resume.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tensorflow_datasets.testing.mocking  # noqa: F401 (loads tfds.testing.mocking)
import tiktoken.load
import tiktoken.registry

from gpt2jax.cli.prepare import entry as prepare_command
from gpt2jax.data import prepare as prepare_module
from gpt2jax.data import shards
from gpt2jax.data.loader import (
    TokenStream,
    batch_for_step,
    ensure_prepared,
    eval_batches,
    open_prepared,
    prepared_data,
    prepared_dir_name,
)
from gpt2jax.data.prepare import prepare
from gpt2jax.data.shards import ShardWriter
from gpt2jax.data.synthetic import SyntheticLanguage
from gpt2jax.data.tokenizer import EOT_TOKEN_ID, GPT2_VOCAB_SIZE, VOCAB_BPE, get_tokenizer
from tests.corpora import write_json_gz
from tests.helpers import REPO, tiny_config

EOT = "<|endoftext|>"


def decode(tokens: TokenStream | np.ndarray) -> str:
    return get_tokenizer().decode(tokens[:].tolist())


def joined(documents: list[str]) -> str:
    return "".join(document + EOT for document in documents)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_files(meta: dict) -> dict:
    return {split: [shard["file"] for shard in meta["shards"][split]] for split in ("train", "val")}


# Tokenizer.


@pytest.mark.parametrize("cache_dir", [None, "empty"])
def test_tokenizer_loads_offline_from_packaged_files(monkeypatch, tmp_path, cache_dir):
    """Offline with no tiktoken cache, and with TIKTOKEN_CACHE_DIR set to a cache without GPT-2's
    files (as GPU images set it), which sent tiktoken's own loader to the network."""
    read_file = tiktoken.load.read_file

    def no_network(path):
        assert "://" not in path, f"tried to download {path}"
        return read_file(path)

    if cache_dir is None:
        monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget any encoding already loaded
    get_tokenizer.cache_clear()
    try:
        encoding = get_tokenizer()
        assert encoding.encode("Hello world") == [15496, 995]
        text = "Déjà vu, 12 345 tokens!\n\nNew paragraph."
        assert encoding.decode(encoding.encode(text)) == text
        assert encoding.n_vocab == GPT2_VOCAB_SIZE and encoding.eot_token == EOT_TOKEN_ID
        assert os.environ.get("TIKTOKEN_CACHE_DIR") == (None if cache_dir is None else str(tmp_path))
        assert list(tmp_path.iterdir()) == []  # nothing copied into the user's cache
    finally:
        get_tokenizer.cache_clear()


def test_tokenizer_encodes_as_tiktokens_own_gpt2(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(VOCAB_BPE.parent))  # tiktoken's loader, on the packaged files
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    reference = tiktoken.get_encoding("gpt2")
    texts = [
        "Hello world",
        "  two spaces,\tTabs\t\tand\n\n\nnewlines   \n",
        "I'm, you're, we'll, they've, she'd, it's, O'Neil's DON'T",
        "1234567 3.14159 -42 1e-9 ½ ² ①",
        "Déjà vu: naïve café, Ελληνικά, русский, 中文, 日本語, 한국어, emoji 🙂👍🏽",
        "<|endoftext|> is only special when allowed",
        "trailing space ",
        "x" * 300 + " " * 17 + "y",
    ]
    ours = get_tokenizer()
    for text in texts:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text), text
        assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all"), text


# Synthetic language.


def binary_entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def test_entropy_rate_matches_closed_form():
    # zipf_exponent=0: uniform over the support. A document has Geometric(p) words then one EOT,
    # so pi(EOT) = p / (1 + p); a word row has entropy h(p) + (1 - p) log S, the EOT row log S.
    p, support = 0.1, 16
    language = SyntheticLanguage(num_states=64, support_size=support, zipf_exponent=0.0, end_probability=p)
    pi_eot = p / (1 + p)
    expected = (1 - pi_eot) * (binary_entropy(p) + (1 - p) * math.log(support)) + pi_eot * math.log(support)
    assert language.entropy_rate_nats() == pytest.approx(expected, rel=1e-12)
    assert language.stationary_distribution()[-1] == pytest.approx(pi_eot, rel=1e-12)


def test_generated_tokens_have_the_exact_entropy_rate():
    language = SyntheticLanguage(num_states=128, support_size=16, zipf_exponent=1.1, end_probability=0.02, seed=3)
    tokens = language.generate(1_000_000, seed=0)
    state_of_token = np.full(GPT2_VOCAB_SIZE, -1)
    state_of_token[language.token_ids] = np.arange(len(language.token_ids))
    states = state_of_token[tokens]
    assert (states >= 0).all()
    num_states = len(language.token_ids)
    pair_counts = np.bincount(states[:-1] * num_states + states[1:], minlength=num_states**2)
    pair_counts = pair_counts.reshape(num_states, num_states).astype(np.float64)
    # A transition the chain cannot make never appears.
    assert not pair_counts[language.transition_matrix() == 0].any()
    row_counts = pair_counts.sum(axis=1, keepdims=True)
    seen = pair_counts > 0
    empirical = -np.sum(pair_counts[seen] * np.log((pair_counts / row_counts)[seen])) / pair_counts.sum()
    exact = language.entropy_rate_nats()
    assert 1.0 < exact < 3.0  # learnable, far from deterministic
    assert empirical == pytest.approx(exact, abs=0.01)
    # Document ends occur at the stationary rate.
    assert np.mean(tokens == EOT_TOKEN_ID) == pytest.approx(language.stationary_distribution()[-1], rel=0.05)


def test_generate_is_deterministic_in_the_seed():
    language = SyntheticLanguage(num_states=64, support_size=8)
    first = language.generate(20_000, seed=7)
    assert first.dtype == np.uint16 and first.shape == (20_000,)
    np.testing.assert_array_equal(first, SyntheticLanguage(num_states=64, support_size=8).generate(20_000, seed=7))
    assert not np.array_equal(first, language.generate(20_000, seed=8))
    assert not np.array_equal(first, SyntheticLanguage(num_states=64, support_size=8, seed=1).generate(20_000, seed=7))
    assert EOT_TOKEN_ID not in language.token_ids[:-1] and len(set(language.token_ids.tolist())) == 65


def test_synthetic_options_parse_and_bad_ones_are_refused():
    language = SyntheticLanguage.from_source("synthetic:num_states=64,zipf_exponent=1.5", seed=2)
    assert (language.num_states, language.zipf_exponent, language.seed) == (64, 1.5, 2)
    with pytest.raises(ValueError, match="bad synthetic option"):
        SyntheticLanguage.from_source("synthetic:states=64", seed=0)
    with pytest.raises(ValueError, match="support_size"):
        SyntheticLanguage.from_source("synthetic:num_states=4,support_size=8", seed=0)


# prepare: synthetic and text sources, written as shards.


def test_prepare_synthetic_in_shards(tmp_path):
    out = tmp_path / "syn"
    kwargs = dict(synthetic_train_tokens=50_000, synthetic_val_tokens=5_000, seed=1)
    meta = prepare("synthetic", out, shard_tokens=12_000, **kwargs)
    language = SyntheticLanguage(seed=1)
    assert meta["entropy_rate_nats_per_token"] == pytest.approx(language.entropy_rate_nats(), rel=1e-12)
    assert meta["synthetic"] == language.spec()
    assert (meta["train_tokens"], meta["val_tokens"]) == (50_000, 5_000)
    assert (meta["vocab_size"], meta["eot_token_id"], meta["tokenizer"], meta["format_version"]) == (
        GPT2_VOCAB_SIZE,
        EOT_TOKEN_ID,
        "gpt2",
        2,
    )
    # Five shards of 12,000 tokens but the last, listed in order with their counts and hashes.
    train_shards = meta["shards"]["train"]
    assert [shard["tokens"] for shard in train_shards] == [12_000] * 4 + [2_000]
    assert [shard["file"] for shard in train_shards] == [f"train_{index:06d}.bin" for index in range(5)]
    assert all(shard["sha256"] == sha256(out / shard["file"]) for shard in train_shards + meta["shards"]["val"])
    assert json.loads((out / "meta.json").read_text()) == meta
    data = open_prepared(out)
    np.testing.assert_array_equal(data.train[:], language.generate(50_000, seed=0))
    assert len(data.val) == 5_000 and data.val[:].dtype == np.uint16
    assert not np.array_equal(data.train[:5_000], data.val[:])  # train and val are independent samples
    # A second call reuses the directory, whatever its shard size, instead of writing it again.
    mtime = (out / "train_000000.bin").stat().st_mtime_ns
    assert prepare("synthetic", out, **kwargs) == meta
    assert (out / "train_000000.bin").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="seed=1 \\(not 2\\)"):
        prepare("synthetic", out, synthetic_train_tokens=50_000, synthetic_val_tokens=5_000, seed=2)


def test_prepare_synthetic_compact_vocabulary(tmp_path):
    source = "synthetic:num_states=64,support_size=8,vocabulary=compact"
    meta = prepare(source, tmp_path / "compact", synthetic_train_tokens=20_000, synthetic_val_tokens=2_000)
    assert (meta["vocab_size"], meta["eot_token_id"]) == (65, 64) and "not GPT-2 BPE" in meta["tokenizer"]
    train = open_prepared(tmp_path / "compact").train[:]
    assert train.max() == 64 and np.sum(train == 64) > 0
    # The chain of the GPT-2-id language with the same options, its states renamed 0..64.
    wide = SyntheticLanguage(num_states=64, support_size=8)
    compact = SyntheticLanguage.from_source(source, seed=0)
    assert meta["entropy_rate_nats_per_token"] == pytest.approx(wide.entropy_rate_nats(), rel=1e-12)
    np.testing.assert_array_equal(wide.token_ids[compact.generate(5_000, seed=3)], wide.generate(5_000, seed=3))
    with pytest.raises(ValueError, match="vocabulary must be one of gpt2, compact"):
        SyntheticLanguage.from_source("synthetic:vocabulary=tiny", seed=0)


def make_text_corpus(root) -> list[str]:
    """Writes .txt, .txt.gz, .jsonl[.gz] and .json.gz files; returns their documents in the order prepare reads them."""
    root.mkdir()
    txt = ["First document.\nIt has two lines.\n", "Second document, with a literal <|endoftext|> in it."]
    txt_gz = "Third document, compressed: café ☕."
    jsonl = [f"JSON document {i}." for i in range(6)]
    jsonl_gz = "Last document, from .jsonl.gz."
    (root / "a.txt").write_text(txt[0])
    (root / "b.txt").write_text(txt[1])
    with gzip.open(root / "c.txt.gz", "wt", encoding="utf-8") as file:
        file.write(txt_gz)
    lines = [json.dumps({"text": text, "id": i}) for i, text in enumerate(jsonl)]
    (root / "d.jsonl").write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")  # a blank line
    with gzip.open(root / "e.jsonl.gz", "wt", encoding="utf-8") as file:
        file.write(json.dumps({"text": jsonl_gz}) + "\n")
    c4_like = ["From a .json.gz file, as allenai/c4 ships them.", "Its second line."]
    write_json_gz(root / "f.json.gz", c4_like)
    return txt + [txt_gz] + jsonl + [jsonl_gz] + c4_like


def test_prepare_text_files(tmp_path):
    documents = make_text_corpus(tmp_path / "corpus")
    meta = prepare(f"text:{tmp_path}/corpus/*", tmp_path / "out", val_fraction=0.25)
    # Documented rule: document i goes to val when i % round(1 / val_fraction) == 1.
    val = [doc for i, doc in enumerate(documents) if i % 4 == 1]
    train = [doc for i, doc in enumerate(documents) if i % 4 != 1]
    data = open_prepared(tmp_path / "out")
    assert decode(data.train) == joined(train) and decode(data.val) == joined(val)
    # Every document ends in exactly one separator; the literal "<|endoftext|>" stays plain text.
    assert np.sum(data.train[:] == EOT_TOKEN_ID) == len(train) and np.sum(data.val[:] == EOT_TOKEN_ID) == len(val)
    assert meta["val_split"] == "carved from train"
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(data.train), len(data.val))
    assert meta["shards"]["val"][0]["sha256"] == sha256(tmp_path / "out" / "val_000000.bin")


def test_prepare_max_tokens_caps_train_and_val(tmp_path):
    make_text_corpus(tmp_path / "corpus")
    meta = prepare(f"text:{tmp_path}/corpus/*", tmp_path / "out", val_fraction=0.5, max_tokens=12, shard_tokens=5)
    assert (meta["train_tokens"], meta["val_tokens"]) == (12, 6)
    assert [shard["tokens"] for shard in meta["shards"]["train"]] == [5, 5, 2]
    prepare(f"text:{tmp_path}/corpus/*", tmp_path / "full", val_fraction=0.5)
    full = open_prepared(tmp_path / "full")
    np.testing.assert_array_equal(open_prepared(tmp_path / "out").train[:], full.train[:12])


def test_prepare_tfds_mocked_registered_dataset(tmp_path, monkeypatch):
    # tfds.testing.mock_data serves tfds.data_source without TensorFlow, but its batched read
    # (__getitems__) is installed unbound and misses `self`; give it a version that needs none.
    monkeypatch.setattr(
        tfds.testing.mocking,
        "_getitems",
        lambda record_keys, generator, serialized=False: [generator[k] for k in record_keys],
    )
    with tfds.testing.mock_data(num_examples=12):
        meta = prepare("tfds:tiny_shakespeare", tmp_path / "out", val_fraction=0.25)
        records = tfds.data_source("tiny_shakespeare", split="train")
        documents = [records[i]["text"] for i in range(len(records))]
    # Mocked metadata has no split names, so val is carved from train.
    assert meta["val_split"] == "carved from train"
    data = open_prepared(tmp_path / "out")
    assert decode(data.train) == joined([doc for i, doc in enumerate(documents) if i % 4 != 1])
    assert decode(data.val) == joined([doc for i, doc in enumerate(documents) if i % 4 == 1])


class Gpt2jaxTestCorpus(tfds.core.GeneratorBasedBuilder):
    """A two-split text dataset that the test really builds as ArrayRecord, without TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({"body": tfds.features.Text(), "id": tfds.features.Scalar(np.int64)}),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 7), "validation": self._generate_examples(100, 2)}

    def _generate_examples(self, first, count):
        for i in range(first, first + count):
            yield i, {"body": f"Record {i}: naïve text.", "id": i}


def test_prepare_tfds_array_record_dataset_uses_its_validation_split(tmp_path):
    tfds_dir = tmp_path / "tfds"
    Gpt2jaxTestCorpus(data_dir=tfds_dir, file_format="array_record").download_and_prepare()
    name = Gpt2jaxTestCorpus.name
    with pytest.raises(ValueError, match="no feature 'text'.*--text_key"):
        prepare(f"tfds:{name}", tmp_path / "out", tfds_data_dir=str(tfds_dir))
    meta = prepare(f"tfds:{name}", tmp_path / "out", tfds_data_dir=str(tfds_dir), text_key="body")
    assert meta["val_split"] == "validation"
    data = open_prepared(tmp_path / "out")
    for split, tfds_split in (("train", "train"), ("val", "validation")):
        records = tfds.data_source(name, split=tfds_split, data_dir=tfds_dir)  # in TFDS's shuffled order
        documents = [records[i]["body"].decode() for i in range(len(records))]
        assert len(documents) == (7 if split == "train" else 2)
        assert decode(getattr(data, split)) == joined(documents)


# prepare: refusals, each one sentence, leaving nothing behind that passes for prepared data.


@pytest.mark.parametrize(
    "files, source, error, message",
    [
        ({}, "text:{root}/*.txt", FileNotFoundError, "no files match"),
        ({"a.txt": b"", "b.txt": b""}, "text:{root}/*.txt", ValueError, "contains no text"),
        ({"a.txt": b"only one document"}, "text:{root}/*.txt", ValueError, "at least two non-empty documents"),
        ({"a.md": b"markdown"}, "text:{root}/*", ValueError, "not a .txt, .txt.gz, .jsonl, .jsonl.gz, .json, .json.gz"),
        ({"a.txt": b"\xff\xfe bad bytes", "b.txt": b"ok"}, "text:{root}/*.txt", ValueError, "is not UTF-8 text"),
        ({"a.txt.gz": b"not gzip", "b.txt": b"ok"}, "text:{root}/*", ValueError, "cannot read .*a.txt.gz"),
        ({"a.json.gz": gzip.compress(b"{}")[:12]}, "text:{root}/*", ValueError, "cannot read .*a.json.gz"),
        ({"a.jsonl": b'{"body": "x"}\n'}, "text:{root}/*", ValueError, "line 1 has no string field 'text'"),
        ({"a.jsonl": b'{"text": "x"}\nnot json\n'}, "text:{root}/*", ValueError, "line 2 is not JSON"),
        ({}, "tfds:tiny_shakespeare", FileNotFoundError, "not prepared as ArrayRecord.*needs TensorFlow"),
        ({}, "tfds:no_such_dataset_anywhere", ValueError, "TFDS has no dataset 'no_such_dataset_anywhere'"),
        # c4 is registered only once its module is imported, which the source does when TFDS misses it.
        ({}, "tfds:c4/en", FileNotFoundError, "'c4/en' is not prepared as ArrayRecord.*Apache Beam"),
        ({}, "wikipedia", ValueError, "unknown data source"),
    ],
)
def test_bad_sources_are_refused_clearly(tmp_path, files, source, error, message):
    root = tmp_path / "in"
    root.mkdir()
    for name, content in files.items():
        (root / name).write_bytes(content)
    out = tmp_path / "prepared" / "out"
    with pytest.raises(error, match=message) as raised:
        prepare(source.format(root=root), out, tfds_data_dir=str(tmp_path / "empty_tfds"))
    assert "\n" not in str(raised.value)
    # A source refused when opened leaves nothing; one found bad while reading, only the lock file.
    assert not out.parent.exists() or [path.name for path in out.parent.iterdir()] in ([], [".out.lock"])


def test_cli_reports_errors_in_one_line_and_prints_meta(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_command(["--source", f"text:{tmp_path}/missing/*.txt", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("error: no files match") and error.count("\n") == 1
    make_text_corpus(tmp_path / "corpus")
    prepare_command(
        ["--source", f"text:{tmp_path}/corpus/*.txt", "--out", str(tmp_path / "out"), "--val_fraction", "0.5"]
        + ["--shard_tokens", "4"]
    )
    printed = capsys.readouterr()
    meta = json.loads(printed.out)
    assert meta == open_prepared(tmp_path / "out").meta and len(meta["shards"]["train"]) > 1
    # The closing line names both splits (it named the train tokens only).
    assert printed.err.startswith(
        f"prepared {tmp_path / 'out'} ({meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, val "
        "carved from train); train on it with"
    )


def test_a_prepared_folder_renamed_to_another_settings_name_is_refused_not_trusted_by_its_name(tmp_path):
    """A prepared directory is what its meta.json records: ensure_prepared took any folder of the right name."""
    settings = dict(synthetic_train_tokens=5_000, synthetic_val_tokens=1_000)
    seed_0 = ensure_prepared("synthetic", tmp_path, seed=0, **settings)
    seed_1 = tmp_path / prepared_dir_name("synthetic", seed=1, **settings)
    seed_0.rename(seed_1)
    with pytest.raises(ValueError, match=rf"^{seed_1} holds data prepared with seed=0 \(not 1\); choose another"):
        ensure_prepared("synthetic", tmp_path, seed=1, **settings)


def test_a_val_split_carved_from_too_few_documents_is_refused_in_one_sentence(tmp_path):
    """Two one-document files and val_fraction 0.005 sent 51% of the tokens to val (34% with three files)."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text(f"The document of {name}, alone in its file. " * 50)
    source = f"text:{tmp_path}/*.txt"
    with pytest.raises(
        ValueError,
        match=r"holds 2 documents, too few to carve a val split of val_fraction=0.005 \(one document in every 200\): "
        r"its val split would be 5\d% of the tokens; give at least 200 documents, a --val_fraction of at least 0.5, or "
        r"a source with its own validation split\.$",
    ):
        prepare(source, tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == [".out.lock", "a.txt", "b.txt"]  # nothing to trip over
    meta = prepare(source, tmp_path / "out", val_fraction=0.5)  # the corrected command
    assert 0.4 < meta["val_tokens"] / meta["train_tokens"] < 1.1


# prepare: atomicity.


def test_an_interrupted_prepare_leaves_nothing_that_counts_as_prepared(tmp_path, monkeypatch):
    make_text_corpus(tmp_path / "corpus")
    source = f"text:{tmp_path}/corpus/*"  # 12 documents: val_fraction 0.1 carves one in every 10
    out = tmp_path / "prepared" / "out"
    real_append = ShardWriter.append
    calls = []

    def append_then_interrupt(self, tokens):
        real_append(self, tokens)  # the tokens reach the disk, the interrupt comes before anything else
        calls.append(len(tokens))
        if len(calls) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "append", append_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, out, shard_tokens=8, val_fraction=0.1)
    assert not out.exists() and all(path.name.startswith(".") for path in out.parent.iterdir())
    with pytest.raises(FileNotFoundError, match="no prepared data"):
        open_prepared(out)
    monkeypatch.undo()
    # Started again, it ends with the shards an uninterrupted prepare writes.
    meta = prepare(source, out, shard_tokens=8, val_fraction=0.1)
    assert meta == open_prepared(out).meta
    assert meta["shards"] == prepare(source, out.parent / "again", shard_tokens=8, val_fraction=0.1)["shards"]
    assert sorted(path.name for path in out.parent.iterdir()) == [".again.lock", ".out.lock", "again", "out"]


def test_damaged_or_foreign_directories_are_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists but holds no prepared data"):
        prepare("synthetic", foreign, synthetic_train_tokens=1000, synthetic_val_tokens=100)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "out"
    prepare("synthetic", out, synthetic_train_tokens=1000, synthetic_val_tokens=100, shard_tokens=400)
    with open(out / "train_000001.bin", "r+b") as file:
        file.truncate(100)
    with pytest.raises(ValueError, match="train_000001.bin holds 50 tokens but meta.json says 400"):
        open_prepared(out)


def test_losing_a_publish_race_keeps_the_winners_copy(tmp_path, monkeypatch):
    # Two hosts whose filesystem shares no locks: the other one renames its copy into place first.
    out = tmp_path / "out"
    kwargs = dict(synthetic_train_tokens=2000, synthetic_val_tokens=200)
    real_write = prepare_module._write_synthetic

    def another_host_publishes_first(*args):
        written = real_write(*args)
        monkeypatch.setattr(prepare_module, "_write_synthetic", real_write)
        prepare("synthetic", tmp_path / "elsewhere" / "out", **kwargs)
        os.rename(tmp_path / "elsewhere" / "out", out)
        return written

    monkeypatch.setattr(prepare_module, "_write_synthetic", another_host_publishes_first)
    meta = prepare("synthetic", out, **kwargs)
    assert meta == open_prepared(out).meta
    assert sorted(path.name for path in tmp_path.iterdir()) == [".out.lock", "elsewhere", "out"]


def test_a_directory_in_the_single_file_format_still_reads(tmp_path, monkeypatch):
    # Format 1 wrote one train.bin and one val.bin.
    out = tmp_path / "old"
    out.mkdir()
    train, val = np.arange(300, dtype="<u2"), np.arange(40, dtype="<u2")
    (out / "train.bin").write_bytes(train.tobytes())
    (out / "val.bin").write_bytes(val.tobytes())
    meta = {"format_version": 1, "source": "text:x", "settings": {}, "vocab_size": GPT2_VOCAB_SIZE}
    (out / "meta.json").write_text(json.dumps(meta | {"train_tokens": 300, "val_tokens": 40}))
    data = open_prepared(out)
    np.testing.assert_array_equal(data.train[:], train)
    np.testing.assert_array_equal(data.val[:], val)
    real_read = shards._read_checked
    monkeypatch.setattr(shards, "_read_checked", lambda path: pytest.fail(f"{path} read twice by one process"))
    open_prepared(out)  # a sweep opens the same files for every point: each file is read once
    monkeypatch.setattr(shards, "_read_checked", real_read)
    val[7] = 65535  # it records no hashes, so only the id check can tell
    (out / "val.bin").write_bytes(val.tobytes())  # a write since the first read: read again
    with pytest.raises(ValueError, match=r"old/val.bin holds token id 65535, outside the vocabulary of 50257"):
        open_prepared(out)


# loader.


def test_ensure_prepared_names_dirs_by_settings_and_serialises_processes(tmp_path):
    kwargs = dict(synthetic_train_tokens=3000, synthetic_val_tokens=300)
    paths = []
    threads = [
        threading.Thread(target=lambda: paths.append(ensure_prepared("synthetic", tmp_path, **kwargs)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 1 and len(paths) == 4
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([paths[0].name, f".{paths[0].name}.lock"])
    assert open_prepared(paths[0]).meta["train_tokens"] == 3000
    assert paths[0].name.startswith("synthetic-")
    # Settings that change the tokens change the name; how they are cut and where inputs come from do not.
    assert prepared_dir_name("synthetic", seed=1, **kwargs) != paths[0].name
    layout = dict(tfds_data_dir="/elsewhere", hub_cache="/cache", shard_tokens=7, workers=3)
    assert prepared_dir_name("synthetic", **layout, **kwargs) == paths[0].name
    assert prepared_dir_name("synthetic", max_tokens=0, **kwargs) == prepared_dir_name("synthetic", **kwargs)


def test_token_stream_reads_shards_as_one_array():
    stream_N = np.arange(1000, dtype=np.uint16)
    cuts = [0, 1, 7, 300, 301, 640, 1000]  # shards of 1, 6, 293, 1, 339 and 360 tokens
    stream = TokenStream([stream_N[a:b] for a, b in zip(cuts[:-1], cuts[1:])])
    assert len(stream) == 1000
    for start, stop in [(0, 1000), (0, 1), (5, 9), (6, 302), (299, 301), (639, 641), (990, 1000), (1000, 1000)]:
        np.testing.assert_array_equal(stream[start:stop], stream_N[start:stop])
    np.testing.assert_array_equal(stream[-10:], stream_N[-10:])
    with pytest.raises(TypeError, match="contiguous slices"):
        stream[::2]


def test_batches_over_shards_are_the_batches_of_the_whole_stream():
    tokens_N = np.random.default_rng(0).integers(0, 50000, 4000).astype(np.uint16)
    shards = TokenStream([tokens_N[start : start + 100] for start in range(0, 4000, 100)])  # every window crosses one
    args = dict(batch_size=8, block_size=128)
    for step in range(20):
        for got, want in zip(
            batch_for_step(shards, seed=3, step=step, **args), batch_for_step(tokens_N, seed=3, step=step, **args)
        ):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(
        eval_batches(shards, num_batches=3, **args), eval_batches(tokens_N, num_batches=3, **args), strict=True
    ):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_prepared_shards_give_the_batches_of_one_file(tmp_path):
    config = tiny_config(tmp_path / "data")
    config.data.update(shard_tokens=1_000)  # 50 shards for 50,000 train tokens
    sharded = prepared_data(config)
    config.data.update(shard_tokens=1_000_000, dir=str(tmp_path / "one"))
    single = prepared_data(config)
    assert len(sharded.meta["shards"]["train"]) == 50 and len(single.meta["shards"]["train"]) == 1
    for step in (0, 1, 77):
        np.testing.assert_array_equal(
            batch_for_step(sharded.train, seed=0, step=step, batch_size=16, block_size=64)[0],
            batch_for_step(single.train, seed=0, step=step, batch_size=16, block_size=64)[0],
        )


def test_batch_for_step_is_a_pure_function_of_seed_and_step():
    tokens = np.arange(5000, dtype=np.uint16)
    args = dict(batch_size=8, block_size=16)
    inputs, targets = batch_for_step(tokens, seed=0, step=3, **args)
    assert inputs.shape == targets.shape == (8, 16) and inputs.dtype == targets.dtype == np.int32
    again = batch_for_step(tokens, seed=0, step=3, **args)
    np.testing.assert_array_equal(inputs, again[0])
    np.testing.assert_array_equal(targets, again[1])
    assert not np.array_equal(inputs, batch_for_step(tokens, seed=0, step=4, **args)[0])
    assert not np.array_equal(inputs, batch_for_step(tokens, seed=1, step=3, **args)[0])
    # Each row is a contiguous window; targets are the next tokens.
    np.testing.assert_array_equal(inputs, inputs[:, :1] + np.arange(16))
    np.testing.assert_array_equal(targets, inputs + 1)
    # Over many steps the windows reach both ends of the stream and never past it.
    starts = np.concatenate([batch_for_step(tokens, seed=0, step=s, **args)[0][:, 0] for s in range(400)])
    assert starts.min() < 50 and 5000 - 17 - 50 < starts.max() <= 5000 - 17


def test_processes_split_the_global_batch_exactly():
    tokens = np.arange(5000, dtype=np.uint16)
    global_inputs, global_targets = batch_for_step(tokens, seed=5, step=9, batch_size=8, block_size=4)
    parts = [
        batch_for_step(tokens, seed=5, step=9, batch_size=8, block_size=4, process_index=i, process_count=4)
        for i in range(4)
    ]
    assert all(part[0].shape == (2, 4) for part in parts)
    np.testing.assert_array_equal(np.concatenate([part[0] for part in parts]), global_inputs)
    np.testing.assert_array_equal(np.concatenate([part[1] for part in parts]), global_targets)
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        batch_for_step(tokens, seed=0, step=0, batch_size=8, block_size=4, process_count=3)
    with pytest.raises(ValueError, match="fewer than block_size"):
        batch_for_step(tokens[:4], seed=0, step=0, batch_size=8, block_size=4)


def test_eval_batches_are_fixed_evenly_spaced_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = list(eval_batches(tokens, batch_size=4, block_size=10, num_batches=3))
    assert len(batches) == 3 and batches[0][0].shape == (4, 10)
    starts = np.concatenate([inputs[:, 0] for inputs, _ in batches])
    np.testing.assert_array_equal(starts, np.round(np.linspace(0, 1000 - 11, 12)))
    assert batches[-1][1][-1, -1] == 999  # the last window ends on the last token
    again = list(eval_batches(tokens, batch_size=4, block_size=10, num_batches=3))
    for (inputs, targets), (inputs_again, targets_again) in zip(batches, again):
        np.testing.assert_array_equal(inputs, inputs_again)
        np.testing.assert_array_equal(targets, targets_again)
    halves = [
        list(eval_batches(tokens, batch_size=4, block_size=10, num_batches=3, process_index=i, process_count=2))
        for i in range(2)
    ]
    for batch, (first, second) in enumerate(zip(*halves)):
        np.testing.assert_array_equal(np.concatenate([first[0], second[0]]), batches[batch][0])
    # A short val split gives overlapping windows, still as many batches as asked.
    short = list(eval_batches(tokens[:30], batch_size=4, block_size=10, num_batches=2))
    assert len(short) == 2 and short[-1][1][-1, -1] == 29
    with pytest.raises(ValueError, match="val split holds 10 tokens, fewer than block_size \\+ 1 = 11"):
        eval_batches(tokens[:10], batch_size=4, block_size=10, num_batches=2)


def test_training_metrics_count_epochs_over_the_unique_train_tokens(tmp_path):
    from gpt2jax.files.workdir import read_metrics
    from gpt2jax.training.loop import run

    config = tiny_config(tmp_path / "data", steps=2, log_every=1, eval_every=2, eval_batches=1, checkpoint_every=2)
    config.model.update(n_layer=1, n_head=2, n_embd=16, vocab_size=65, vocab_multiple=8)
    # 8 x 16 tokens a step over 1,000 unique tokens: 0.128 epochs a step.
    config.data.update(source="synthetic:num_states=64,vocabulary=compact", synthetic_train_tokens=1_000)
    run(config, tmp_path / "run")
    assert [record["epochs"] for record in read_metrics(tmp_path / "run")] == [0.128, 0.256]


def test_the_prepare_command_prepares_a_configs_data_where_training_reads_it(tmp_path, capsys):
    prepare_command(["--config", "tiny", "--data_dir", str(tmp_path)])
    printed = json.loads(capsys.readouterr().out)
    config = tiny_config(tmp_path)
    config.data.update(synthetic_train_tokens=1_000_000, synthetic_val_tokens=50_000)  # configs/tiny.py's
    assert printed["dir"] == str(prepared_data(config).path) and printed["train_tokens"] == 1_000_000
    with pytest.raises(SystemExit) as exit_info:
        prepare_command(["--config", "tiny", "--source", "synthetic"])
    assert exit_info.value.code == 2


def test_epoch_sampling_reads_every_window_once_before_any_repeats():
    """Under one epoch no token is read twice; the order is a pure function of (seed, step)."""
    from gpt2jax.data.loader import window_starts

    n_tokens, block, batch = 20_001, 16, 8
    windows = (n_tokens - 1) // block - 1
    steps = windows // batch
    first = np.concatenate([window_starts(3, step, batch, n_tokens, block, "epochs") for step in range(steps)])
    assert len(np.unique(first)) == len(first) == steps * batch
    assert np.all(np.diff(np.sort(first)) >= block)  # windows do not overlap: no token twice in the epoch
    assert np.array_equal(first[:batch], window_starts(3, 0, batch, n_tokens, block, "epochs"))
    assert not np.array_equal(first[:batch], window_starts(4, 0, batch, n_tokens, block, "epochs"))
    # The next epoch reads the windows again, in another order and at another offset.
    second = np.concatenate(
        [window_starts(3, step, batch, n_tokens, block, "epochs") for step in range(steps + 1, 2 * steps)]
    )
    assert not np.array_equal(second[:batch], first[:batch])
    uniform = np.concatenate([window_starts(3, step, batch, n_tokens, block, "uniform") for step in range(steps)])
    assert len(np.unique(uniform // block)) < 0.8 * len(uniform)  # drawn with replacement: ~37% repeats
    with pytest.raises(ValueError, match="train.sampling='shuffled' is not one of uniform, epochs"):
        window_starts(0, 0, batch, n_tokens, block, "shuffled")


def test_a_hand_prepared_directory_trains_as_it_is(tmp_path):
    """prepare --out DIR names the flag that trains on DIR, and main with it tokenizes nothing again."""
    out = tmp_path / "prepared"
    result = subprocess.run(
        [sys.executable, "-m", "gpt2jax.cli.prepare", "--source", "synthetic", "--out", str(out),
         "--synthetic_train_tokens", "20000", "--synthetic_val_tokens", "2000"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"--config.data.prepared={out}" in result.stderr
    from gpt2jax.training.loop import run

    config = tiny_config(tmp_path / "elsewhere", steps=3, eval_every=3, checkpoint_every=3, log_every=3)
    config.data.prepared = str(out)
    final = run(config, tmp_path / "run")
    assert final["step"] == 3
    assert not (tmp_path / "elsewhere").exists()  # nothing was prepared under data.dir
