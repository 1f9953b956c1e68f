"""How fast prepare tokenizes, against tiktoken's own ceiling on the same text and cores.

The ceiling is ``encode_ordinary_batch(texts, num_threads=n)`` on documents already in memory:
tokenizing and nothing else. The pipeline is a whole ``prepare`` of the same documents, stored as
parquet, with n workers: starting the pool, reading, tokenizing, writing and hashing the shards.
Their ratio is the share of the tokenizer's speed that the rest of prepare leaves. Starting the
pool (spawning n interpreters that import numpy, pyarrow and tiktoken and load the BPE) is a
fixed cost, a second or two, that a benchmark-sized input feels and a 10B-token prepare does not:
it is timed on its own, and the steady rate leaves it out.

On a machine other jobs share, wall-clock rates say more about the other jobs than about
prepare; the CPU seconds each run consumed (all its threads and worker processes) do not depend
on them, so tokens per CPU-second, and its ratio, are reported too.

Without a source, the text is generated: English words from GPT-2's vocabulary (its lower-case
words among the first 20,000 merges, drawn with Zipf weights by merge rank, so frequent words are
frequent), in sentences and paragraphs, about 1,600 characters and 4.4 characters a token, like web
text. Give
``source`` (e.g. a downloaded ``hf:HuggingFaceFW/fineweb-edu:sample-10BT``) to measure on real text.
"""

from __future__ import annotations

import re
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from gpt2jax.data import sources
from gpt2jax.data.prepare import prepare
from gpt2jax.data.tokenizer import get_tokenizer

_CORPUS_FILES = 4  # parquet files the sample is written as
_ROW_GROUP_BYTES = 1 << 20


def source_sample(source: str, megabytes: float, *, text_key: str = "text", hub_cache=None) -> list[str]:
    """The first documents of source (train and val alike, in order), up to megabytes of UTF-8 text."""
    plan = sources.open_source(source, val_fraction=0.5, text_key=text_key, hub_cache=hub_cache)
    texts, size = [], 0
    for piece in plan.pieces:
        for text in sources.read_documents(piece):
            texts.append(text)
            size += len(text.encode())
            if size >= megabytes * 1e6:
                return texts
    return texts


def generated_sample(megabytes: float, seed: int = 0) -> list[str]:
    """About megabytes of English-like documents: Zipf-drawn GPT-2 words in sentences and paragraphs."""
    encoder = get_tokenizer()
    words = np.array(
        [w for w in (encoder.decode([token]) for token in range(20_000)) if re.fullmatch(r" [a-z]{2,}", w)]
    )
    zipf = 1.0 / np.arange(1, len(words) + 1)
    rng = np.random.default_rng(seed)
    drawn = words[rng.choice(len(words), size=int(megabytes * 1e6 / 5), p=zipf / zipf.sum())]  # ~5 bytes a word
    ends = np.cumsum(rng.integers(5, 25, size=len(drawn) // 5))  # sentences of 5 to 24 words
    sentences = [
        "".join(drawn[start:end]).strip() for start, end in zip(np.append(0, ends[:-1]), ends[ends <= len(drawn)])
    ]
    sentences = [sentence.capitalize() + rng.choice([".", ".", ".", "?", "!"]) for sentence in sentences]
    documents, start = [], 0
    while start < len(sentences):  # paragraphs of 2 to 7 sentences, documents of 2 to 8 paragraphs
        paragraphs = []
        for _ in range(rng.integers(2, 9)):
            count = rng.integers(2, 8)
            paragraphs.append(" ".join(sentences[start : start + count]))
            start += count
        documents.append("\n\n".join(paragraph for paragraph in paragraphs if paragraph))
    return documents


def write_parquet_corpus(texts: list[str], directory: Path) -> str:
    """texts as parquet files in directory; returns the ``parquet:`` source that reads them back in order.

    Row groups (prepare's pieces) hold about 1 MB of text each, as FineWeb's hold 1,000 documents,
    so that every core gets many pieces whatever the documents' lengths.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    group_of_text = (np.cumsum([len(text) for text in texts]) // _ROW_GROUP_BYTES).astype(int)
    groups = [np.flatnonzero(group_of_text == group) for group in np.unique(group_of_text)]
    for index, file_groups in enumerate(np.array_split(np.arange(len(groups)), _CORPUS_FILES)):
        schema = pa.schema([("text", pa.string())])
        with pq.ParquetWriter(directory / f"{index:03d}.parquet", schema) as writer:
            for group in file_groups:
                writer.write_table(pa.table({"text": [texts[i] for i in groups[group]]}, schema=schema))
    return f"parquet:{directory}/*.parquet"


def _cpu_seconds() -> float:
    """CPU time of this process's threads and of its children that have been waited for."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(part.ru_utime + part.ru_stime for part in usage)


def ceiling(texts: list[str], threads: int) -> dict:
    """tiktoken's encode_ordinary_batch over texts with threads: tokens, seconds and CPU seconds."""
    encoder = get_tokenizer()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    token_lists = encoder.encode_ordinary_batch(texts, num_threads=threads)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    tokens = sum(map(len, token_lists)) + sum(1 for text in texts if text)  # and one <|endoftext|> each
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds}


def pool_start(workers: int, scratch: Path) -> float:
    """Seconds to start a pool of workers and have each tokenize a one-word document (0 for one worker)."""
    from gpt2jax.data.workers import Tokenizers

    if workers == 1:
        return 0.0
    write_parquet_corpus(["word"], scratch / "one-word")
    piece = sources.Piece(str(scratch / "one-word" / "000.parquet"), "parquet", "carve")
    start = time.perf_counter()
    with Tokenizers(workers) as tokenizers:
        list(tokenizers.in_order(((index, piece) for index in range(workers)), lambda: False))
    return time.perf_counter() - start


def pipeline(source: str, workers: int, scratch: Path) -> dict:
    """A whole prepare of source with workers tokenizer processes: tokens written, seconds and CPU seconds."""
    out = scratch / f"prepared-{workers}"
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    meta = prepare(source, out, workers=workers, val_fraction=0.005)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start  # the pool is joined by now
    shutil.rmtree(out)
    return {"tokens": meta["train_tokens"] + meta["val_tokens"], "seconds": seconds, "cpu_seconds": cpu_seconds}


def benchmark(texts: list[str], worker_counts: list[int], repeats: int = 2) -> list[dict]:
    """Per worker count: the best of repeats for the ceiling and the pipeline, measured alternately.

    Alternating them, on a machine that other work shares, puts the same load on both.
    """
    with tempfile.TemporaryDirectory(prefix="gpt2jax-bench-prepare-") as scratch:
        scratch = Path(scratch)
        source = write_parquet_corpus(texts, scratch / "corpus")
        rows = []
        for workers in worker_counts:
            runs = {"ceiling": [], "prepare": []}
            starts = []
            for _ in range(repeats):
                runs["ceiling"].append(ceiling(texts, workers))
                runs["prepare"].append(pipeline(source, workers, scratch))
                starts.append(pool_start(workers, scratch))
            best = {name: min(results, key=lambda run: run["seconds"]) for name, results in runs.items()}
            assert best["ceiling"]["tokens"] == best["prepare"]["tokens"], "the two runs read different text"
            tokens = best["prepare"]["tokens"]
            ceiling_rate = tokens / best["ceiling"]["seconds"]
            prepare_rate = tokens / best["prepare"]["seconds"]
            steady_rate = tokens / max(best["prepare"]["seconds"] - min(starts), 1e-9)
            cpu_rate = {name: tokens / min(run["cpu_seconds"] for run in results) for name, results in runs.items()}
            rows.append(
                {
                    "cores": workers,
                    "tokens": tokens,
                    "ceiling_tokens_per_s": ceiling_rate,
                    "prepare_tokens_per_s": prepare_rate,
                    "ratio": prepare_rate / ceiling_rate,
                    "pool_start_s": min(starts),
                    "steady_tokens_per_s": steady_rate,
                    "steady_ratio": steady_rate / ceiling_rate,
                    "ceiling_tokens_per_cpu_s": cpu_rate["ceiling"],
                    "prepare_tokens_per_cpu_s": cpu_rate["prepare"],
                    "cpu_ratio": cpu_rate["prepare"] / cpu_rate["ceiling"],
                }
            )
    return rows
