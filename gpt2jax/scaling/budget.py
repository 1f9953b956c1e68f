"""What one GPU's time buys, against GPT-2's original budget and the compute-optimal one.

``python -m gpt2jax.scaling budget`` prints it, three honest lines first:
1. the question's premise: the card's fp32 rate x utilization x time (an RTX 4070 Ti's
   40.1 TFLOP/s x 90% x one year is the 1.14e21 FLOPs the question names);
2. what its tensor cores offer at the training precision (bf16 by default): that peak x
   utilization x time, the budget everything below spends;
3. what a run really gets: the peak x MFU, from ``--mfu`` or from the last ``bench`` figure
   recorded for the card (``BENCH_RECORDS``), else an assumed 40%.

Compute-optimal allocations follow Epoch AI's refit of Chinchilla (``laws.EPOCH_REFIT``)
under C = 6ND; the other published laws stand beside it. Their predicted losses are in
Chinchilla's units: nats per token of MassiveText under a 32k SentencePiece vocabulary, not
GPT-2 BPE losses on web text. The memory-constrained optimum is the largest model whose
training step (parameters, AdamW state, gradients, the activations the backward pass keeps)
fits the card by ``memory.estimate``, the dry run's platform-independent figure.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib

from gpt2jax import flops, model
from gpt2jax.data.tokenizer import GPT2_VOCAB_SIZE
from gpt2jax.scaling.laws import EPOCH_REFIT, PUBLISHED_LAWS, ChinchillaLaw

SECONDS_PER_DAY = 86_400
DEFAULT_MFU = 0.4
# OpenAI published WebText's size (40 GB of text, Radford et al. 2019) but not how many tokens
# GPT-2 trained on; about 10B is the usual estimate and the figure this project's question uses.
GPT2_ORIGINAL_TOKENS = 10e9
GPT2_CONTEXT = 1024
FIT_CONSTANTS = ("E", "A", "B", "alpha", "beta")
HEADLINE_LAW = EPOCH_REFIT
LOSS_UNITS = (
    "Chinchilla's units: nats per token of MassiveText under a 32k SentencePiece vocabulary "
    "(Hoffmann et al. 2022), not GPT-2 BPE losses on web text"
)
# `python -m gpt2jax.cli.bench --json >> bench/records.jsonl` records a measured step; the budget
# reads the last record of the card it is asked about.
BENCH_RECORDS = pathlib.Path(__file__).resolve().parents[2] / "bench" / "records.jsonl"
# The memory-constrained optimum's training step: GPT-2's context, bfloat16 compute, remat=dots
# (the README's memory table: a twelfth of the activations of remat=none for ~8% more time), and
# micro-batches of one sequence, any global batch being reached by accumulation.
MEMORY_STEP = {"block_size": GPT2_CONTEXT, "dtype": "bfloat16", "remat": "dots", "micro_batch": 1}
HEAD_SIZE = 64


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


def recorded_bench(gpu: str, path=BENCH_RECORDS) -> dict | None:
    """The last ``bench --json`` record in ``path`` (JSON lines) whose device is ``gpu``, or None."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    found = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(
                f"{path} line {number} is not JSON; each line must be one `bench --json` output."
            ) from None
        if flops.device_key(str(record.get("device", ""))) == gpu and record.get("model_flops_per_s"):
            found = record
    return found


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} is {value}; give a fraction of peak in (0, 1].")


def _memory_config(n_layer: int, n_embd: int):
    from gpt2jax.config import base_config

    config = base_config()
    config.model.update(
        n_layer=n_layer,
        n_head=n_embd // HEAD_SIZE,
        n_embd=n_embd,
        block_size=MEMORY_STEP["block_size"],
        dtype=MEMORY_STEP["dtype"],
        remat=MEMORY_STEP["remat"],
    )
    config.train.update(batch_size=MEMORY_STEP["micro_batch"], grad_accum_steps=1)
    return config


@functools.cache
def training_step_bytes(n_layer: int, n_embd: int) -> int:
    """``memory.estimate``'s total for one device training this shape with ``MEMORY_STEP``; compiles nothing."""
    import jax

    from gpt2jax import memory, train

    return memory.estimate(train.build_trainer(_memory_config(n_layer, n_embd), devices=jax.devices()[:1]))["total"]


def _family_shape(size: int) -> tuple[int, int]:
    """GPT-2 small's aspect: ``size`` layers of width 64 x ``size`` (heads of 64); gpt2 is size 12."""
    return size, HEAD_SIZE * size


def _shape_params(n_layer: int, n_embd: int) -> int:
    return flops.count_params(flops.Shape(n_layer, n_embd // HEAD_SIZE, n_embd, GPT2_VOCAB_SIZE, GPT2_CONTEXT))[
        "n_params"
    ]


def largest_fitting_shape(usable_bytes: float, step_bytes=training_step_bytes) -> dict | None:
    """The biggest shape of GPT-2 small's aspect (``_family_shape``) whose training step fits ``usable_bytes``.

    The estimate grows with the size, so a bisection over sizes 1 to 128 finds it in 8 estimates.
    """
    low, high = 0, 128  # low fits (0: nothing yet), high does not
    while high - low > 1:
        middle = (low + high) // 2
        if step_bytes(*_family_shape(middle)) <= usable_bytes:
            low = middle
        else:
            high = middle
    if low == 0:
        return None
    n_layer, n_embd = _family_shape(low)
    return {
        "n_layer": n_layer,
        "n_head": n_embd // HEAD_SIZE,
        "n_embd": n_embd,
        "params": _shape_params(n_layer, n_embd),
        "estimated_memory_bytes": step_bytes(n_layer, n_embd),
    }


def memory_constrained_optimum(law: ChinchillaLaw, total_flops: float, usable_bytes: float, largest) -> dict:
    """The best model under ``law`` at ``total_flops`` whose training step fits: the optimum if it fits, else
    ``largest`` (``largest_fitting_shape``'s answer), since the loss is unimodal in N along C = 6ND."""
    n_opt, d_opt = (float(value) for value in law.compute_optimal(total_flops))
    optimal_loss = float(law.loss(n_opt, d_opt))
    if largest is None:
        raise ValueError(
            f"not even a one-layer model of width {HEAD_SIZE} fits {usable_bytes / 2**30:.1f} GiB; "
            "choose a card with more memory."
        )
    binding = largest["params"] < n_opt
    params = float(largest["params"]) if binding else n_opt
    tokens = total_flops / (6.0 * params)
    loss = float(law.loss(params, tokens))
    return {
        **largest,
        "params": params,
        "tokens": tokens,
        "tokens_per_param": tokens / params,
        "predicted_loss": loss,
        "loss_gap": loss - optimal_loss,
        "memory_binds": binding,
        "usable_memory_bytes": usable_bytes,
        "training_step": MEMORY_STEP,
    }


def budget_report(
    gpu: str,
    days: float,
    utilization: float,
    mfu: float | None = None,
    fit: ChinchillaLaw | None = None,
    precision: str = "bf16",
    bench_records=BENCH_RECORDS,
    step_bytes=training_step_bytes,
) -> dict:
    """The whole comparison as a JSON-ready dict; ``fit`` adds the project's own law to ``laws``.

    ``mfu`` None: the last recorded bench figure for ``gpu`` in ``bench_records``, else DEFAULT_MFU.
    ``step_bytes(n_layer, n_embd)``: the memory a training step of that shape needs (tests pass a stand-in).
    """
    from gpt2jax.memory import usable_fraction

    if gpu not in flops.DEVICE_PEAKS:
        raise ValueError(f"unknown GPU {gpu!r}; known GPUs are {', '.join(sorted(flops.DEVICE_PEAKS))}.")
    if not (math.isfinite(days) and days > 0):
        raise ValueError(f"days is {days}; give a positive, finite number of days.")
    if precision not in flops.PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(flops.PRECISIONS)}.")
    _check_fraction("utilization", utilization)
    device = flops.DEVICE_PEAKS[gpu]
    peak = device[precision]
    seconds = days * SECONDS_PER_DAY
    bench = None if mfu is not None else recorded_bench(gpu, bench_records)
    if mfu is not None:
        mfu_source = "--mfu"
    elif bench is not None:
        mfu = bench["model_flops_per_s"] / bench.get("n_devices", 1) / peak
        mfu_source = f"bench record in {bench_records} ({bench.get('n_params', '?')} parameters)"
    else:
        mfu, mfu_source = DEFAULT_MFU, "assumed (no --mfu, no bench record for this card)"
    _check_fraction("mfu", mfu)
    memory_bytes = device["memory_gib"] * 2**30
    usable_bytes = usable_fraction() * memory_bytes

    def days_at_mfu(flop_count: float) -> float:
        return flop_count / (peak * mfu) / SECONDS_PER_DAY

    total = peak * seconds * utilization
    gpt2_params = gpt2_param_counts()
    xl_original = 6.0 * gpt2_params["gpt2-xl"] * GPT2_ORIGINAL_TOKENS
    fitting = largest_fitting_shape(usable_bytes, step_bytes)
    largest_fitting = fitting["params"] if fitting else 0

    laws = {}
    for law in [*PUBLISHED_LAWS.values(), *([fit] if fit is not None else [])]:
        params, tokens = (float(value) for value in law.compute_optimal(total))
        laws[law.name] = {
            "params": params,
            "tokens": tokens,
            "tokens_per_param": tokens / params,
            "predicted_loss": float(law.loss(params, tokens)),
            "training_memory_bytes": flops.training_memory_bytes(math.ceil(params)),
            "fits_in_memory": params <= largest_fitting,
            "source": law.source,
        }

    models = {}
    for name, n_params in gpt2_params.items():
        optimal_flops = float(HEADLINE_LAW.optimal_flops(n_params))
        original_flops = 6.0 * n_params * GPT2_ORIGINAL_TOKENS
        preset = model.PRESETS[name]
        estimated = step_bytes(preset["n_layer"], preset["n_embd"])
        models[name] = {
            "n_params": n_params,
            "training_memory_bytes": flops.training_memory_bytes(n_params),
            "estimated_memory_bytes": estimated,
            "fits_in_memory": estimated <= usable_bytes,
            "optimal_tokens": float(HEADLINE_LAW.optimal_tokens(n_params)),
            "optimal_flops": optimal_flops,
            "optimal_days": days_at_mfu(optimal_flops),
            "original_tokens": GPT2_ORIGINAL_TOKENS,
            "original_flops": original_flops,
            "original_days": days_at_mfu(original_flops),
        }

    headline = laws[HEADLINE_LAW.name]
    return {
        "gpu": gpu,
        "precision": precision,
        "peak_flops_per_second": peak,
        "memory_bytes": memory_bytes,
        "usable_memory_bytes": usable_bytes,
        "days": days,
        "utilization": utilization,
        "mfu": mfu,
        "mfu_source": mfu_source,
        "premise": {
            "fp32_peak_flops_per_second": device["fp32"],
            "flops": device["fp32"] * seconds * utilization,
        },
        "tensor_flops": device["bf16"] * seconds * utilization,
        "achieved_flops": peak * seconds * mfu,
        "total_flops": total,
        "budget_days_at_mfu": days_at_mfu(total),
        "gpt2_original_tokens": GPT2_ORIGINAL_TOKENS,
        "gpt2_xl_original_flops": xl_original,
        "ratio_to_gpt2_xl_original": total / xl_original,
        "optimal_law": HEADLINE_LAW.name,
        "compute_optimal_params": headline["params"],
        "compute_optimal_tokens": headline["tokens"],
        "predicted_loss": headline["predicted_loss"],
        "loss_units": LOSS_UNITS,
        "memory_constrained": memory_constrained_optimum(HEADLINE_LAW, total, usable_bytes, fitting),
        "gpt2_small_optimal_flops": models["gpt2"]["optimal_flops"],
        "gpt2_small_optimal_tokens": models["gpt2"]["optimal_tokens"],
        "laws": laws,
        "models": models,
    }


def format_report(report: dict) -> str:
    """The report as readable text."""
    gib = report["usable_memory_bytes"] / 2**30
    xl = report["models"]["gpt2-xl"]
    year = f"{report['days']:g} days at {report['utilization']:.0%}"
    premise = report["premise"]
    precision = report["precision"]
    constrained = report["memory_constrained"]
    step = constrained["training_step"]
    lines = [
        f"{report['gpu']}, {year}:",
        f"  the question's premise: its {premise['fp32_peak_flops_per_second'] / 1e12:.1f} TFLOP/s fp32 rate "
        f"x {year}: {premise['flops']:.3g} FLOPs",
        f"  its tensor cores at {precision}: {report['peak_flops_per_second'] / 1e12:.1f} TFLOP/s x {year}: "
        f"{report['total_flops']:.3g} FLOPs, the budget below",
        f"  what a run really gets: {report['peak_flops_per_second'] / 1e12:.1f} TFLOP/s x {report['mfu']:.0%} MFU "
        f"({report['mfu_source']}) x {report['days']:g} days: {report['achieved_flops']:.3g} FLOPs; "
        f"spending the budget takes {report['budget_days_at_mfu']:.0f} days",
        "",
        f"  {report['ratio_to_gpt2_xl_original']:.1f} x GPT-2 xl's original budget "
        f"(6 x {flops.format_count(xl['n_params'])} params x {flops.format_count(report['gpt2_original_tokens'])} "
        f"tokens = {report['gpt2_xl_original_flops']:.3g} FLOPs)",
        "",
        f"compute-optimal use of {report['total_flops']:.3g} FLOPs (C = 6ND), headline law {report['optimal_law']}; "
        f"losses in {report['loss_units']}",
        f"  {'law':<24}{'params':>9}{'tokens':>9}{'tokens/param':>14}{'loss':>8}  fits {gib:.1f} GiB",
    ]
    for name, law in report["laws"].items():
        lines.append(
            f"  {name:<24}{flops.format_count(law['params']):>9}{flops.format_count(law['tokens']):>9}"
            f"{law['tokens_per_param']:>14.1f}{law['predicted_loss']:>8.3f}  {'yes' if law['fits_in_memory'] else 'no'}"
        )
    lines += [
        "",
        f"memory-constrained optimum: {'the largest model whose training step fits' if constrained['memory_binds'] else 'the optimum itself, which fits'}"
        f" ({step['dtype']}, remat={step['remat']}, micro-batch {step['micro_batch']} x {step['block_size']}, "
        f"{gib:.1f} GiB usable of {report['memory_bytes'] / 2**30:g})",
        f"  {constrained['n_layer']} layers x {constrained['n_embd']} wide: {flops.format_count(constrained['params'])} params"
        f" ({constrained['estimated_memory_bytes'] / 2**30:.1f} GiB for the largest that fits) on "
        f"{flops.format_count(constrained['tokens'])} tokens ({constrained['tokens_per_param']:.0f} per param), loss "
        f"{constrained['predicted_loss']:.3f}, {constrained['loss_gap']:+.3f} from the unconstrained optimum",
        "",
        f"GPT-2 sizes on this card at {report['mfu']:.0%} MFU: compute-optimal under {report['optimal_law']}, "
        f"and the original {flops.format_count(report['gpt2_original_tokens'])} tokens",
        f"  {'model':<13}{'params':>8}{'step GiB':>10}  fits{'opt tokens':>12}{'opt FLOPs':>11}{'days':>8}"
        f"{'orig FLOPs':>12}{'days':>8}",
    ]
    for name, size in report["models"].items():
        lines.append(
            f"  {name:<13}{flops.format_count(size['n_params']):>8}{size['estimated_memory_bytes'] / 2**30:>10.1f}"
            f"  {'yes' if size['fits_in_memory'] else 'no':<4}{flops.format_count(size['optimal_tokens']):>12}"
            f"{size['optimal_flops']:>11.3g}{size['optimal_days']:>8.1f}"
            f"{size['original_flops']:>12.3g}{size['original_days']:>8.1f}"
        )
    lines.append(
        f"  (step GiB: parameters, AdamW state, gradients and kept activations by memory.estimate, "
        f"{step['dtype']}, remat={step['remat']}, micro-batch {step['micro_batch']})"
    )
    return "\n".join(lines)
