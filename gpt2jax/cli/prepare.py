"""Tokenize a data source into token shards (drives ``data.prepare.prepare``); prints its meta.json.

``python -m gpt2jax.cli.prepare --source "text:corpus/*.jsonl" --out data/corpus``
``python -m gpt2jax.cli.prepare --config small``: the data a training run of that config reads,
where it reads it (``data.dir``), e.g. in a CPU job before the GPU job starts.

Run it again after an interruption (SIGKILL, SIGTERM, Ctrl-C) and it continues after the last shard.
"""

import json
import sys
from pathlib import Path

from gpt2jax import cli


def main(argv: list[str] | None = None) -> None:
    from gpt2jax.data.prepare import DEFAULT_SHARD_TOKENS

    parser = cli.ArgumentParser(
        prog="python -m gpt2jax.cli.prepare",
        description="Tokenize a data source into train and val token shards and meta.json, resumably.",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="a config file or shipped config's name: prepare its data section into data.dir (instead of --source)",
    )
    parser.add_argument("--data_dir", default=None, help="with --config: data.dir to prepare into")
    parser.add_argument(
        "--source",
        help="synthetic[:key=value,...] | text:GLOB | parquet:GLOB | hf:OWNER/NAME[:CONFIG][@REVISION] | hf:DIR "
        "| tfds:NAME[/CONFIG]",
    )
    parser.add_argument("--out", help="output directory (with --source)")
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
    if args.config is not None:
        if args.source or args.out:
            parser.error("give --config, or --source and --out, not both")
        print(json.dumps(_prepare_config(args.config, args.data_dir), indent=2))
        return
    if not (args.source and args.out):
        parser.error("give --source and --out (or --config)")
    from gpt2jax.data.prepare import prepare
    from gpt2jax.data.shards import split_shards

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
    tokens = {split: sum(shard["tokens"] for shard in split_shards(meta, split)) for split in ("train", "val")}
    print(
        f"prepared {args.out} ({tokens['train']:,} train and {tokens['val']:,} val tokens, val "
        f"{meta['val_split']}); train on it with python -m gpt2jax.main --config CONFIG --workdir WORKDIR "
        f"--config.data.prepared={args.out}",
        file=sys.stderr,
    )


def _prepare_config(spec: str, data_dir: str | None) -> dict:
    from gpt2jax.config import load_config_file
    from gpt2jax.data.loader import prepared_data

    config = load_config_file(spec)
    if data_dir is not None:
        config.data.dir = data_dir
    prepared = prepared_data(config)
    return {"dir": str(prepared.path)} | prepared.meta


def entry(argv: list[str] | None = None) -> None:
    cli.run_argparse(main, argv, stops_at_checkpoints=True)


if __name__ == "__main__":
    entry()
