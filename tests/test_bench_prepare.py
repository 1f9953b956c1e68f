"""The prepare benchmark command: same text for tiktoken's ceiling and prepare, every figure printed."""

import json

from gpt2jax.cli.bench_prepare import entry as bench_prepare_command
from gpt2jax.data import throughput
from gpt2jax.data.tokenizer import get_tokenizer


def test_generated_text_is_english_like_and_deterministic():
    texts = throughput.generated_sample(0.05)
    assert texts == throughput.generated_sample(0.05) and texts != throughput.generated_sample(0.05, seed=1)
    size = sum(len(text) for text in texts)
    assert 45_000 <= size < 55_000 and "\n\n" in texts[0]
    tokens = sum(len(ids) for ids in get_tokenizer().encode_ordinary_batch(texts))
    assert 3.5 < size / tokens < 5.5  # characters a token, near web text's 4.5


def test_the_benchmark_times_prepare_and_tiktoken_on_the_same_tokens(tmp_path, capsys):
    source = throughput.write_parquet_corpus(throughput.generated_sample(0.2), tmp_path / "corpus")
    bench_prepare_command(["--source", source, "--megabytes", "0.1", "--workers", "1,2", "--repeats", "1", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["cores"] for row in rows] == [1, 2]
    for row in rows:
        assert row["tokens"] > 20_000
        assert row["ratio"] == row["prepare_tokens_per_s"] / row["ceiling_tokens_per_s"]
        assert row["steady_tokens_per_s"] >= row["prepare_tokens_per_s"] > 0
        assert row["cpu_ratio"] == row["prepare_tokens_per_cpu_s"] / row["ceiling_tokens_per_cpu_s"] > 0
    assert rows[0]["pool_start_s"] == 0 < rows[1]["pool_start_s"]
