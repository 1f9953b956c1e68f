"""Per-device training memory of the four GPT-2 sizes, as a markdown table.

    python scripts/memory_table.py [--micro_batch 8] [--remat none,dots,attention,full] [--sizes small,medium,large,xl]

For each size (configs/<size>.py: bfloat16 compute, float32 parameters and AdamW state)
and remat policy, ``memory.dry_run`` compiles the train step at a micro-batch of
``--micro_batch`` sequences of 1024 tokens, keeping the config's 512-sequence batch
through gradient accumulation. Nothing runs; the mesh is every device here along fsdp.

Columns: the shards of parameters and optimizer state; the activations the backward
pass keeps and the largest temporaries, traced before XLA (the same on every platform);
the estimate, those plus the parameters, AdamW state and float32 gradients
(``memory.estimate``); and XLA's total for the step as compiled here. XLA:CPU keeps
bfloat16 activations at float32 cost and lays buffers out for a CPU, so on a CPU the
estimate decides ``fits``; on a GPU, XLA's own total does. ``fits`` holds that figure
against the share of a 12, 24 or 80 GiB card that JAX lets XLA use
(XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 unless set).
"""

import argparse
import sys
import time

GIB = 2**30
CARDS_GIB = (12, 24, 80)


def load_config(size: str, micro_batch: int, remat: str):
    from gpt2jax.config import load_config_file

    config = load_config_file(size)
    if config.train.batch_size % micro_batch:
        raise ValueError(f"--micro_batch={micro_batch} does not divide the {size} batch of {config.train.batch_size}.")
    config.train.grad_accum_steps = config.train.batch_size // micro_batch
    config.model.remat = remat
    return config


def table_rows(sizes: list[str], remats: list[str], micro_batch: int, usable_fraction: float, platform: str):
    from gpt2jax.training.memory import dry_run

    for size in sizes:
        for remat in remats:
            started = time.perf_counter()
            memory = dry_run(load_config(size, micro_batch, remat))["per_device_bytes"]
            print(f"{size} remat={remat}: compiled in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            deciding = memory["estimate_total"] if platform == "cpu" else memory["xla_total"]
            fits = " / ".join("yes" if deciding <= usable_fraction * gib * GIB else "no" for gib in CARDS_GIB)
            gib = {key: value / GIB for key, value in memory.items()}
            yield (
                f"| {size} | {remat} | {gib['params']:.2f} | {gib['optimizer_state']:.2f} "
                f"| {gib['activations_saved_for_backward']:.2f} | {gib['largest_temporaries']:.2f} "
                f"| {gib['estimate_total']:.2f} | {gib['xla_total']:.2f} | {fits} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro_batch", type=int, default=8, help="sequences of 1024 tokens per micro-batch")
    parser.add_argument("--remat", default="none,dots,attention,full", help="comma-separated model.remat policies")
    parser.add_argument("--sizes", default="small,medium,large,xl", help="comma-separated configs/<size>.py")
    args = parser.parse_args()

    import jax

    devices = jax.devices()
    from gpt2jax.training.memory import usable_fraction as memory_usable_fraction

    usable_fraction = memory_usable_fraction()
    print(
        f"GiB per device on {len(devices)} x {devices[0].device_kind} (mesh fsdp={len(devices)}), "
        f"micro-batch {args.micro_batch} x 1024 tokens, bfloat16 compute; fits: within "
        f"{usable_fraction:g} of a {' / '.join(map(str, CARDS_GIB))} GiB card.\n"
    )
    platform = devices[0].platform
    print(
        "| model | remat | params | optimizer state | activations saved for backward | largest temporaries "
        f"| estimate | XLA total on {platform} | fits 12 / 24 / 80 GiB ({'estimate' if platform == 'cpu' else 'XLA'}) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row in table_rows(args.sizes.split(","), args.remat.split(","), args.micro_batch, usable_fraction, platform):
        print(row, flush=True)


if __name__ == "__main__":
    main()
