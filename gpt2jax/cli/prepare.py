"""Tokenize a data source into token shards (drives ``data.prepare.prepare``); prints its meta.json.

``python -m gpt2jax.cli.prepare --source "text:corpus/*.jsonl" --out data/corpus``
``python -m gpt2jax.cli.prepare --source hf:HuggingFaceFW/fineweb-edu:sample-10BT --out data/fineweb-edu``

Run it again after an interruption (SIGKILL, SIGTERM, Ctrl-C) and it continues after the last shard.
"""

import json
from pathlib import Path

from gpt2jax import cli


def main(argv: list[str] | None = None) -> None:
    from gpt2jax.data.prepare import DEFAULT_SHARD_TOKENS, prepare

    parser = cli.ArgumentParser(
        prog="python -m gpt2jax.cli.prepare",
        description="Tokenize a data source into train and val token shards and meta.json, resumably.",
    )
    parser.add_argument(
        "--source",
        required=True,
        help="synthetic[:key=value,...] | text:GLOB | parquet:GLOB | hf:OWNER/NAME[:CONFIG][@REVISION] | hf:DIR "
        "| tfds:NAME[/CONFIG]",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--val_fraction", type=float, default=0.005, help="share of documents carved out for val")
    parser.add_argument("--text_key", default="text", help="field or column holding the text")
    parser.add_argument("--tfds_data_dir", default=None, help="TFDS data directory (default: TFDS's own)")
    parser.add_argument("--synthetic_train_tokens", type=int, default=2_000_000)
    parser.add_argument("--synthetic_val_tokens", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic language")
    parser.add_argument(
        "--max_tokens",
        type=int,
        default=None,
        help="stop after this many train tokens (and val after max_tokens * val_fraction)",
    )
    parser.add_argument("--shard_tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: every core)")
    parser.add_argument("--hub_cache", default=None, help="where hf: datasets are downloaded (default: OUT/../hub)")
    args = parser.parse_args(argv)

    meta = prepare(
        args.source,
        args.out,
        val_fraction=args.val_fraction,
        text_key=args.text_key,
        tfds_data_dir=args.tfds_data_dir,
        synthetic_train_tokens=args.synthetic_train_tokens,
        synthetic_val_tokens=args.synthetic_val_tokens,
        seed=args.seed,
        max_tokens=args.max_tokens,
        shard_tokens=args.shard_tokens,
        workers=args.workers,
        hub_cache=args.hub_cache or Path(args.out).parent / "hub",
    )
    print(json.dumps(meta, indent=2))


def entry(argv: list[str] | None = None) -> None:
    cli.run_argparse(main, argv)


if __name__ == "__main__":
    entry()
