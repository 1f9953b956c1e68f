"""Tokenize a data source into token files (drives ``data.prepare.prepare``); prints its meta.json.

``python -m gpt2jax.cli.prepare --source "text:corpus/*.jsonl" --out data/corpus``
"""

import json

from gpt2jax import cli


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(
        prog="python -m gpt2jax.cli.prepare",
        description="Tokenize a data source into train.bin, val.bin and meta.json.",
    )
    parser.add_argument("--source", required=True, help="synthetic[:key=value,...] | text:GLOB | tfds:NAME[/CONFIG]")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--val_fraction", type=float, default=0.005, help="share of documents carved out for val")
    parser.add_argument("--text_key", default="text", help="field holding the text in .jsonl and TFDS records")
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
    args = parser.parse_args(argv)
    from gpt2jax.data.prepare import prepare

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
    )
    print(json.dumps(meta, indent=2))


def entry(argv: list[str] | None = None) -> None:
    cli.run_argparse(main, argv)


if __name__ == "__main__":
    entry()
