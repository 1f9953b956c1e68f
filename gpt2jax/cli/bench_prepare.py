"""Time prepare against tiktoken's ceiling on the same text and cores (drives ``data.throughput``).

``python -m gpt2jax.cli.bench_prepare`` prints, for 1, 2 and every core, tokens/s of tiktoken's
``encode_ordinary_batch`` alone and of a whole prepare of the same text, end to end and without
the fixed cost of starting its worker pool, and tokens per CPU-second (what a shared machine
can still measure), each with its share of tiktoken's rate.
"""

import json

from gpt2jax import cli


def main(argv: list[str] | None = None) -> None:
    from gpt2jax import flops
    from gpt2jax.data import throughput

    parser = cli.ArgumentParser(
        prog="python -m gpt2jax.cli.bench_prepare",
        description="Tokens/s of prepare against tiktoken's encode_ordinary_batch on the same text and cores.",
    )
    parser.add_argument("--source", default=None, help="a data source to sample (default: generated text)")
    parser.add_argument("--text_key", default="text", help="field or column holding the text")
    parser.add_argument("--hub_cache", default=None, help="where hf: datasets are downloaded")
    parser.add_argument("--megabytes", type=float, default=32.0, help="text to tokenize, in MB")
    parser.add_argument("--workers", default=None, help="comma-separated core counts (default: 1, 2 and all)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, the fastest kept")
    parser.add_argument("--json", action="store_true", help="print one JSON object per core count")
    args = parser.parse_args(argv)
    try:
        worker_counts = [int(count) for count in args.workers.split(",")] if args.workers else None
    except ValueError:
        parser.error(f"--workers takes comma-separated integers, got {args.workers!r}")
    worker_counts = worker_counts or sorted({1, min(2, flops.available_cores()), flops.available_cores()})
    if args.megabytes <= 0 or args.repeats < 1 or min(worker_counts) < 1:
        raise ValueError("--megabytes, --repeats and every --workers count must be positive.")
    if args.source:
        texts = throughput.source_sample(args.source, args.megabytes, text_key=args.text_key, hub_cache=args.hub_cache)
    else:
        texts = throughput.generated_sample(args.megabytes)
    rows = throughput.benchmark(texts, worker_counts, args.repeats)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{row['cores']:>3} cores: tiktoken {flops.format_count(row['ceiling_tokens_per_s'])} tokens/s; "
                f"prepare {flops.format_count(row['prepare_tokens_per_s'])} tokens/s ({row['ratio']:.0%}), "
                f"{flops.format_count(row['steady_tokens_per_s'])} tokens/s ({row['steady_ratio']:.0%}) "
                f"without the {row['pool_start_s']:.1f} s pool start; per CPU-second "
                f"{flops.format_count(row['ceiling_tokens_per_cpu_s'])} and "
                f"{flops.format_count(row['prepare_tokens_per_cpu_s'])} ({row['cpu_ratio']:.0%}); "
                f"{flops.format_count(row['tokens'])} tokens"
            )


def entry(argv: list[str] | None = None) -> None:
    cli.run_argparse(main, argv)


if __name__ == "__main__":
    entry()
