"""What one GPU's time buys, against GPT-2's original budget and Chinchilla's compute-optimal one.

``python -m gpt2jax.scaling budget`` prints it. The budget is peak x time x utilization.
Compute-optimal allocations follow Chinchilla's laws under C = 6ND; wall times divide FLOPs by peak x MFU, the fraction of peak a training run
actually turns into model FLOPs.
"""

from __future__ import annotations

import json
import math
import pathlib

from gpt2jax import flops, model
from gpt2jax.data.tokenizer import GPT2_VOCAB_SIZE
from gpt2jax.scaling.laws import HOFFMANN_ROUNDED, PUBLISHED_LAWS, ChinchillaLaw

SECONDS_PER_DAY = 86_400
DEFAULT_MFU = 0.4
# OpenAI published WebText's size (40 GB of text, Radford et al. 2019) but not how many tokens
# GPT-2 trained on; about 10B is the usual estimate and the figure this project's question uses.
GPT2_ORIGINAL_TOKENS = 10e9
GPT2_CONTEXT = 1024
FIT_CONSTANTS = ("E", "A", "B", "alpha", "beta")


def load_fit_law(path) -> ChinchillaLaw:
    """The approach-3 law in a JSON written by ``python -m gpt2jax.scaling fit --json``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"fit file {path} does not exist; write one with python -m gpt2jax.scaling fit --json.")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"fit file {path} is not JSON; write one with python -m gpt2jax.scaling fit --json.") from None
    missing = [name for name in FIT_CONSTANTS if not isinstance(values, dict) or name not in values]
    if missing:
        raise ValueError(
            f"fit file {path} lacks {', '.join(missing)}; write one with python -m gpt2jax.scaling fit --json."
        )
    return ChinchillaLaw(
        **{name: float(values[name]) for name in FIT_CONSTANTS},
        name="fit",
        source=f"{path} (python -m gpt2jax.scaling fit)",
    )


def gpt2_param_counts() -> dict[str, int]:
    """Parameters of each GPT-2 preset at OpenAI's vocabulary (unpadded) and context."""
    return {
        name: flops.count_params(flops.Shape(**preset, vocab_size=GPT2_VOCAB_SIZE, block_size=GPT2_CONTEXT))["n_params"]
        for name, preset in model.PRESETS.items()
    }


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} is {value}; give a fraction of peak in (0, 1].")


def budget_report(
    gpu: str,
    days: float,
    utilization: float,
    mfu: float = DEFAULT_MFU,
    fit: ChinchillaLaw | None = None,
) -> dict:
    """The whole comparison as a JSON-ready dict; ``fit`` adds the project's own law to ``laws``."""
    if gpu not in flops.DEVICE_PEAKS:
        raise ValueError(f"unknown GPU {gpu!r}; known GPUs are {', '.join(sorted(flops.DEVICE_PEAKS))}.")
    if not days > 0:
        raise ValueError(f"days is {days}; give a positive number of days.")
    _check_fraction("utilization", utilization)
    _check_fraction("mfu", mfu)
    device = flops.DEVICE_PEAKS[gpu]
    peak = device["bf16"]
    memory_bytes = device["memory_gib"] * 2**30

    def days_at_mfu(flop_count: float) -> float:
        return flop_count / (peak * mfu) / SECONDS_PER_DAY

    total = peak * days * SECONDS_PER_DAY * utilization
    gpt2_params = gpt2_param_counts()
    xl_original = 6.0 * gpt2_params["gpt2-xl"] * GPT2_ORIGINAL_TOKENS

    laws = {}
    for law in [*PUBLISHED_LAWS.values(), *([fit] if fit is not None else [])]:
        params, tokens = (float(value) for value in law.compute_optimal(total))
        laws[law.name] = {
            "params": params,
            "tokens": tokens,
            "tokens_per_param": tokens / params,
            "predicted_loss": float(law.loss(params, tokens)),
            "training_memory_bytes": flops.training_memory_bytes(math.ceil(params)),
            "fits_in_memory": flops.training_memory_bytes(math.ceil(params)) <= memory_bytes,
            "source": law.source,
        }

    models = {}
    for name, n_params in gpt2_params.items():
        optimal_flops = float(HOFFMANN_ROUNDED.optimal_flops(n_params))
        original_flops = 6.0 * n_params * GPT2_ORIGINAL_TOKENS
        models[name] = {
            "n_params": n_params,
            "training_memory_bytes": flops.training_memory_bytes(n_params),
            "fits_in_memory": flops.training_memory_bytes(n_params) <= memory_bytes,
            "optimal_tokens": float(HOFFMANN_ROUNDED.optimal_tokens(n_params)),
            "optimal_flops": optimal_flops,
            "optimal_days": days_at_mfu(optimal_flops),
            "original_tokens": GPT2_ORIGINAL_TOKENS,
            "original_flops": original_flops,
            "original_days": days_at_mfu(original_flops),
        }

    rounded = laws[HOFFMANN_ROUNDED.name]
    return {
        "gpu": gpu,
        "peak_flops_per_second": peak,
        "memory_bytes": memory_bytes,
        "days": days,
        "utilization": utilization,
        "mfu": mfu,
        "total_flops": total,
        "budget_days_at_mfu": days_at_mfu(total),
        "gpt2_original_tokens": GPT2_ORIGINAL_TOKENS,
        "gpt2_xl_original_flops": xl_original,
        "ratio_to_gpt2_xl_original": total / xl_original,
        "optimal_law": HOFFMANN_ROUNDED.name,
        "compute_optimal_params": rounded["params"],
        "compute_optimal_tokens": rounded["tokens"],
        "gpt2_small_optimal_flops": models["gpt2"]["optimal_flops"],
        "gpt2_small_optimal_tokens": models["gpt2"]["optimal_tokens"],
        "laws": laws,
        "models": models,
    }


def format_report(report: dict) -> str:
    """The report as readable text."""
    gib = report["memory_bytes"] / 2**30
    xl = report["models"]["gpt2-xl"]
    lines = [
        f"{report['gpu']} for {report['days']:g} days at {report['utilization']:.0%} of its "
        f"{report['peak_flops_per_second'] / 1e12:.1f} TFLOP/s bf16 peak: {report['total_flops']:.3g} FLOPs",
        f"  {report['ratio_to_gpt2_xl_original']:.1f} x GPT-2 xl's original budget "
        f"(6 x {flops.format_count(xl['n_params'])} params x {flops.format_count(report['gpt2_original_tokens'])} tokens = "
        f"{report['gpt2_xl_original_flops']:.3g} FLOPs)",
        f"  at {report['mfu']:.0%} MFU, spending it takes {report['budget_days_at_mfu']:.0f} days",
        "",
        f"compute-optimal use of {report['total_flops']:.3g} FLOPs (C = 6ND; AdamW state vs {gib:g} GiB)",
        f"  {'law':<24}{'params':>9}{'tokens':>9}{'tokens/param':>14}{'loss':>8}  fits",
    ]
    for name, law in report["laws"].items():
        lines.append(
            f"  {name:<24}{flops.format_count(law['params']):>9}{flops.format_count(law['tokens']):>9}{law['tokens_per_param']:>14.1f}"
            f"{law['predicted_loss']:>8.3f}  {'yes' if law['fits_in_memory'] else 'no'}"
        )
    lines += [
        "",
        f"GPT-2 sizes on this card at {report['mfu']:.0%} MFU: compute-optimal under {report['optimal_law']}, "
        f"and the original {flops.format_count(report['gpt2_original_tokens'])} tokens",
        f"  {'model':<13}{'params':>8}{'AdamW GB':>10}  fits{'opt tokens':>12}{'opt FLOPs':>11}{'days':>8}"
        f"{'orig FLOPs':>12}{'days':>8}",
    ]
    for name, size in report["models"].items():
        lines.append(
            f"  {name:<13}{flops.format_count(size['n_params']):>8}{size['training_memory_bytes'] / 1e9:>10.1f}"
            f"  {'yes' if size['fits_in_memory'] else 'no':<4}{flops.format_count(size['optimal_tokens']):>12}"
            f"{size['optimal_flops']:>11.3g}{size['optimal_days']:>8.1f}"
            f"{size['original_flops']:>12.3g}{size['original_days']:>8.1f}"
        )
    lines.append("  (AdamW state only, 16 B/param; activations come on top)")
    return "\n".join(lines)
