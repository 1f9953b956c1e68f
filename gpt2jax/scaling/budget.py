"""What one GPU's time buys, against GPT-2's original budget and the compute-optimal one.

``python -m gpt2jax.scaling budget`` answers first (``answer_lines``): whether the card trains
GPT-2 in the time, and GPT-2's own allocation beside the compute-optimal one for the FLOPs a run
gets. Three FLOP totals appear in its output, and the first screen says in a line each which is
which, since a reader saw three and could not tell which one answered:
1. the question's premise: the card's fp32 rate x utilization x time (an RTX 4070 Ti's
   40.1 TFLOP/s x 90% x one year is the 1.14e21 FLOPs the question names);
2. what its tensor cores offer at the training precision (bf16 by default): that peak x
   utilization x time, the budget of the laws' table;
3. what a run really gets, the one the answers spend: the peak x MFU x time, the MFU from
   ``--mfu`` or from the last ``bench`` figure recorded for the card (``BENCH_RECORDS``), else an
   assumed 40%.
Utilization is the share of the time the card runs; MFU is the share of its peak a training step
reaches. Then the detail (``verdict_lines``: each GPT-2 size, the best model that fits) and the
arithmetic behind it.

Compute-optimal allocations follow Epoch AI's refit of Chinchilla (``laws.EPOCH_REFIT``)
under C = 6ND; the other published laws stand beside it. Their predicted losses are in
Chinchilla's units: nats per token of MassiveText under a 32k SentencePiece vocabulary, not
GPT-2 BPE losses on web text. The memory-constrained optimum is, for each optimizer of
``training/optim.py``, the largest model whose training step (parameters, optimizer state,
gradients, the activations the backward pass keeps) fits the card by ``memory.estimate``, the
dry run's platform-independent figure, spending the FLOPs the run gets at its MFU. Every
allocation is set against the corpus: its epochs over the corpus's unique tokens, marked
beyond the corpus past one, and marked an extrapolation past the tokens per parameter the
law was fitted on.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib

from gpt2jax import flops, model
from gpt2jax.data.hub import PUBLISHED_TOKENS
from gpt2jax.data.tokenizer import GPT2_VOCAB_SIZE
from gpt2jax.scaling.laws import EPOCH_REFIT, PUBLISHED_LAWS, ChinchillaLaw
from gpt2jax.training import steps
from gpt2jax.training.footprint import OFFLOAD_MODES
from gpt2jax.training.optim import OPTIMIZERS

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
# GPT-2's step (512 sequences of 1024) accumulated over micro-batches of one: the step keeps a float32
# gradient sum beside each micro-batch's gradients (footprint.state_bytes); 2 micro-batches count it as 512 do.
MEMORY_STEP = {"block_size": GPT2_CONTEXT, "remat": "dots", "micro_batch": 1, "grad_accum_steps": 2}
# The compute dtype a step counted at each precision runs in: an fp32 or tf32 budget is a float32 step.
STEP_DTYPES = {"bf16": "bfloat16", "tf32": "float32", "fp32": "float32"}
HEAD_SIZE = 64
# The sweep that fits a law in GPT-2's own units (BPE nats on FineWeb-Edu): what the budget names,
# with its cost on the card, when no --fit is given. Absent from an installed wheel.
GPU_SWEEP = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "gpu_sweep.py"
FIT_UNITS = "GPT-2 BPE nats per token on the sweep's corpus"
# --corpus's names for the corpora a GPT-2 run here reads, and the data.source each one is; their
# published token counts are data.hub's (FineWeb-Edu's sample-10BT, sample-100BT, and all 1.3T).
CORPUS_SOURCES = {
    "fineweb-edu-10BT": "hf:HuggingFaceFW/fineweb-edu:sample-10BT",
    "fineweb-edu-100BT": "hf:HuggingFaceFW/fineweb-edu:sample-100BT",
    "fineweb-edu": "hf:HuggingFaceFW/fineweb-edu",
}
NAMED_CORPORA = {name: PUBLISHED_TOKENS[source] for name, source in CORPUS_SOURCES.items()}
DEFAULT_CORPUS = "fineweb-edu-10BT"  # the shipped GPT-2 configs' data.source


# The inputs' sane range: a century of one card, and a fraction of peak of at least 0.1%.
MAX_DAYS = 36_500.0
MIN_FRACTION = 0.001


def _read_json_with(path: pathlib.Path, what: str, keys, remedy: str) -> dict:
    """The JSON object in ``path`` holding every one of ``keys``; else one sentence naming ``what`` and ``remedy``."""
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{what} {path} is not JSON; {remedy}.") from None
    missing = [key for key in keys if not isinstance(values, dict) or key not in values]
    if missing:
        raise ValueError(f"{what} {path} lacks {', '.join(missing)}; {remedy}.")
    return values


def load_fit_law(path) -> ChinchillaLaw:
    """The approach-3 law in a JSON written by ``python -m gpt2jax.scaling fit --json``."""
    path = pathlib.Path(path)
    remedy = "write one with python -m gpt2jax.scaling fit --json"
    if not path.is_file():
        raise ValueError(f"fit file {path} does not exist; {remedy}.")
    values = _read_json_with(path, "fit file", FIT_CONSTANTS, remedy)
    constants = {name: values[name] for name in FIT_CONSTANTS}
    # L = E + A/N^alpha + B/D^beta: its optimum divides by alpha and beta, and a NaN would print as a row.
    wrong = [
        f"{name}={value!r}"
        for name, value in constants.items()
        if isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (value < 0 if name == "E" else value <= 0)
    ]
    if wrong:
        raise ValueError(
            f"fit file {path} holds {', '.join(wrong)}; a law needs finite constants, E at least 0 and "
            "A, B, alpha, beta above 0: write it again with python -m gpt2jax.scaling fit --json."
        )
    if values.get("unidentified"):
        which = "; ".join(values["unidentified"].values())
        raise ValueError(
            f"fit file {path} says its points do not identify its constants ({which}): its compute-optimal "
            "allocation would mean nothing; fit a sweep whose points pin them down."
        )
    spanned = values.get("tokens_per_param")  # the fitted points' range; a file without it gets Chinchilla's
    return ChinchillaLaw(
        **{name: float(value) for name, value in constants.items()},
        name="fit",
        source=f"{path} (python -m gpt2jax.scaling fit)",
        **({"max_tokens_per_param": float(spanned[1])} if spanned else {}),
    )


def gpt2_param_counts(column: str = "n_params") -> dict[str, int]:
    """Parameters of each GPT-2 preset at OpenAI's vocabulary (unpadded) and context; ``column``
    'n_params_non_embedding' counts them as a sweep whose N leaves the embeddings out does."""
    return {
        name: flops.count_params(flops.Shape(**preset, vocab_size=GPT2_VOCAB_SIZE, block_size=GPT2_CONTEXT))[column]
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
    if not MIN_FRACTION <= value <= 1.0:  # below it, every figure is a run that never ends
        raise ValueError(f"{name} is {value}; give a fraction of peak in [{MIN_FRACTION:g}, 1].")


def corpus_tokens(spec: str) -> tuple[str, float]:
    """(name, unique training tokens) of ``--corpus``: a name of ``NAMED_CORPORA``, a prepared data
    directory (its meta.json's train tokens), or a number of tokens."""
    if spec in NAMED_CORPORA:
        return spec, NAMED_CORPORA[spec]
    path = pathlib.Path(spec)
    if (path / "meta.json").is_file():
        from gpt2jax.data.shards import read_meta, split_shards

        return str(path), float(sum(shard["tokens"] for shard in split_shards(read_meta(path), "train")))
    try:
        tokens = float(spec)
    except ValueError:
        tokens = math.nan
    if not (math.isfinite(tokens) and tokens > 0):
        raise ValueError(
            f"--corpus {spec} is not one of {', '.join(NAMED_CORPORA)}, a prepared data directory with a meta.json, "
            "or a positive number of tokens."
        )
    return f"{tokens:.3g} tokens", tokens


def data_use(tokens: float, params: float, corpus: float, law: ChinchillaLaw) -> dict:
    """Epochs of an allocation over the corpus, and whether it is beyond the corpus or ``law``'s fitted range."""
    return {
        "epochs": tokens / corpus,
        "beyond_corpus": tokens > corpus,
        "extrapolated": tokens / params > law.max_tokens_per_param,
    }


def _memory_config(n_layer: int, n_embd: int, optimizer: str, dtype: str, remat: str = MEMORY_STEP["remat"]):
    from gpt2jax.config import base_config

    config = base_config()
    config.model.update(
        n_layer=n_layer,
        n_head=n_embd // HEAD_SIZE,
        n_embd=n_embd,
        block_size=MEMORY_STEP["block_size"],
        dtype=dtype,
        remat=remat,
    )
    accum = MEMORY_STEP["grad_accum_steps"]
    config.train.update(batch_size=MEMORY_STEP["micro_batch"] * accum, grad_accum_steps=accum, optimizer=optimizer)
    return config


@functools.cache
def _abstract_trainer(n_layer: int, n_embd: int, optimizer: str, dtype: str, remat: str):
    import jax

    from gpt2jax.training.trainer import build_trainer

    return build_trainer(_memory_config(n_layer, n_embd, optimizer, dtype, remat), devices=jax.devices()[:1])


def training_step_bytes(
    n_layer: int,
    n_embd: int,
    optimizer: str = "adamw",
    dtype: str = "bfloat16",
    offload: str = "none",
    remat: str = MEMORY_STEP["remat"],
) -> int:
    """``memory.estimate``'s device total for one device training this shape with ``MEMORY_STEP``'s micro-batch,
    ``remat`` and ``offload``; compiles nothing."""
    from gpt2jax.training import memory

    trainer = _abstract_trainer(n_layer, n_embd, optimizer, dtype, remat)
    # The step is traced once per shape, whatever the optimizer or offload (memory.traced_bytes).
    return memory.estimate(trainer, offload)["total"]


def training_offload_bytes(n_layer: int, n_embd: int, optimizer: str, dtype: str, offload: str) -> dict:
    """The host bytes (``memory.host_estimate``) and the bytes crossing the host link each step of GPT-2's recipe
    (``footprint.offload_traffic_bytes``, at ``MEMORY_STEP``'s micro-batch) of one device training this shape
    with ``offload``."""
    from gpt2jax.training import footprint, memory

    trainer = _abstract_trainer(n_layer, n_embd, optimizer, dtype, MEMORY_STEP["remat"])
    micro_batches = recipe_tokens_per_step() // (MEMORY_STEP["micro_batch"] * GPT2_CONTEXT)
    return {
        "host_bytes": memory.host_estimate(trainer, offload)["total"],
        "traffic_bytes": footprint.offload_traffic_bytes(trainer, offload, accum_steps=micro_batches),
    }


# The layouts the budget tries for each GPT-2 size: the train.offload layouts the optimizer allows
# (steps.offload_modes) x the remat policies whose recompute flops.REMAT_RECOMPUTED_FORWARD counts, at
# MEMORY_STEP's one-sequence micro-batch (the least the step keeps; a GPU's speed at larger ones is not measured here).
LAYOUT_REMATS = ("dots", "full")


def recipe_tokens_per_step() -> int:
    """Tokens in one optimizer step of GPT-2's recipe (``config.gpt2_recipe``: 512 sequences of 1024)."""
    from gpt2jax.config import gpt2_recipe

    recipe = gpt2_recipe("gpt2", learning_rate=6e-4, grad_accum_steps=1)
    return recipe.train.batch_size * recipe.model.block_size


def cheapest_layout(
    n_layer: int,
    n_embd: int,
    dtype: str,
    gpu: str,
    usable_bytes: float,
    flops_per_second: float,
    step_bytes=training_step_bytes,
    offload_bytes=training_offload_bytes,
) -> dict | None:
    """The cheapest layout whose step fits ``usable_bytes``: the optimizer closest to AdamW first (``OPTIMIZERS``'
    order), then the fastest of its offload x remat layouts by ``flops.step_seconds`` (a step of GPT-2's recipe
    at ``flops_per_second``, its recompute and its host-link traffic); None where none fits. Offload is not
    tried on a device whose host link the table does not state."""
    step_flops = 6.0 * _shape_params(n_layer, n_embd) * recipe_tokens_per_step()
    for optimizer in OPTIMIZERS:
        layouts = []
        for offload in steps.offload_modes(optimizer):
            moved = offload_bytes(n_layer, n_embd, optimizer, dtype, offload)
            for remat in LAYOUT_REMATS:
                seconds = flops.step_seconds(step_flops, flops_per_second, remat, moved["traffic_bytes"], gpu)
                if seconds is not None:
                    layouts.append(
                        dict(optimizer=optimizer, offload=offload, remat=remat, micro_batch=MEMORY_STEP["micro_batch"])
                        | moved
                        | seconds
                    )
        for layout in sorted(layouts, key=lambda layout: layout["step_seconds"]):
            device = step_bytes(n_layer, n_embd, optimizer, dtype, offload=layout["offload"], remat=layout["remat"])
            if device <= usable_bytes:
                return layout | {"device_bytes": device}
    return None


def _family_shape(size: int) -> tuple[int, int]:
    """GPT-2 small's aspect: ``size`` layers of width 64 x ``size`` (heads of 64); gpt2 is size 12."""
    return size, HEAD_SIZE * size


def _shape_params(n_layer: int, n_embd: int) -> int:
    return flops.count_params(flops.Shape(n_layer, n_embd // HEAD_SIZE, n_embd, GPT2_VOCAB_SIZE, GPT2_CONTEXT))[
        "n_params"
    ]


def largest_fitting_shape(usable_bytes: float, step_bytes) -> dict | None:
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


def memory_constrained_optimum(
    law: ChinchillaLaw, total_flops: float, usable_bytes: float, largest, step: dict | None = None
) -> dict:
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
        "training_step": step or MEMORY_STEP,
    }


def own_law_guidance(peak_flops_per_second: float, mfu: float) -> dict:
    """How to get a law in GPT-2's units when none is given: the GPU sweep, then ``fit --json``, and
    what the sweep costs on this card at ``mfu`` (its FLOPs by 6N + attention, branches shared, the
    tuning scan included)."""
    guidance = {
        "sweep": "python -m gpt2jax.scaling sweep --config experiments/gpu_sweep.py --workdir runs/gpu_sweep",
        "fit": "python -m gpt2jax.scaling fit --results runs/gpu_sweep/results.csv --json > fit.json",
    }
    if GPU_SWEEP.is_file():
        from gpt2jax.scaling import plan, tuning

        sweep_flops = tuning.spent_flops(plan.load_sweep_config(str(GPU_SWEEP)))
        guidance.update(flops=sweep_flops, days=sweep_flops / (peak_flops_per_second * mfu) / SECONDS_PER_DAY)
    return guidance


def budget_report(
    gpu: str,
    days: float,
    utilization: float,
    mfu: float | None = None,
    fit: ChinchillaLaw | None = None,
    precision: str = "bf16",
    bench_records=BENCH_RECORDS,
    step_bytes=training_step_bytes,
    corpus: str = DEFAULT_CORPUS,
    offload_bytes=training_offload_bytes,
) -> dict:
    """The whole comparison as a JSON-ready dict; ``fit`` adds the project's own law to ``laws``.

    ``mfu`` None: the last recorded bench figure for ``gpu`` in ``bench_records``, else DEFAULT_MFU.
    ``step_bytes(n_layer, n_embd, optimizer, dtype, offload=, remat=)``: the device memory a training step of
    that shape needs, and ``offload_bytes(n_layer, n_embd, optimizer, dtype, offload)`` its host memory and
    host-link traffic (tests pass stand-ins). ``corpus``: what ``corpus_tokens`` reads.
    """
    from gpt2jax.training.memory import usable_fraction

    if gpu not in flops.DEVICE_PEAKS:
        raise ValueError(f"unknown GPU {gpu!r}; known GPUs are {', '.join(sorted(flops.DEVICE_PEAKS))}.")
    if not (math.isfinite(days) and days > 0):
        raise ValueError(f"days is {days}; give a positive, finite number of days.")
    if days > MAX_DAYS:
        raise ValueError(f"days is {days:g}; give at most {MAX_DAYS:g} days (a century of one card).")
    if precision not in flops.PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(flops.PRECISIONS)}.")
    _check_fraction("utilization", utilization)
    device = flops.DEVICE_PEAKS[gpu]
    peak = device[precision]
    seconds = days * SECONDS_PER_DAY
    mfu, mfu_source = _run_mfu(gpu, peak, mfu, bench_records)
    corpus_name, corpus_size = corpus_tokens(corpus)
    memory_bytes = device["memory_gib"] * 2**30
    usable_bytes = usable_fraction() * memory_bytes
    dtype = STEP_DTYPES[precision]
    step = dict(MEMORY_STEP, dtype=dtype)

    def days_at_mfu(flop_count: float) -> float:
        return flop_count / (peak * mfu) / SECONDS_PER_DAY

    total = peak * seconds * utilization
    achieved = peak * seconds * mfu
    gpt2_params = gpt2_param_counts()
    xl_original = 6.0 * gpt2_params["gpt2-xl"] * GPT2_ORIGINAL_TOKENS
    fitting = {
        name: largest_fitting_shape(usable_bytes, lambda n_layer, n_embd: step_bytes(n_layer, n_embd, name, dtype))
        for name in OPTIMIZERS
    }
    largest_fitting = max((shape["params"] for shape in fitting.values() if shape), default=0)

    # The user's own fit, in GPT-2's units, leads the table; the published laws follow.
    laws = {
        law.name: _law_row(law, total, largest_fitting, corpus_size)
        for law in [*([fit] if fit is not None else []), *PUBLISHED_LAWS.values()]
    }
    models = {}
    for name, n_params in gpt2_params.items():
        shape = (model.PRESETS[name]["n_layer"], model.PRESETS[name]["n_embd"])
        estimated = {opt: step_bytes(*shape, opt, dtype) for opt in OPTIMIZERS}
        layout = cheapest_layout(*shape, dtype, gpu, usable_bytes, peak * mfu, step_bytes, offload_bytes)
        models[name] = _gpt2_row(name, n_params, days_at_mfu, estimated, layout, usable_bytes, corpus_size)

    headline = laws[HEADLINE_LAW.name]
    constrained = {}
    for name, shape in fitting.items():
        if shape is None:
            continue
        optimum = memory_constrained_optimum(HEADLINE_LAW, achieved, usable_bytes, shape, step)
        constrained[name] = dict(
            optimum, optimizer=name, **data_use(optimum["tokens"], optimum["params"], corpus_size, HEADLINE_LAW)
        )
    if not constrained:
        memory_constrained_optimum(HEADLINE_LAW, achieved, usable_bytes, None)  # raises, naming the card
    achieved_params, achieved_tokens = (float(value) for value in HEADLINE_LAW.compute_optimal(achieved))
    return {
        "gpu": gpu,
        "precision": precision,
        "peak_flops_per_second": peak,
        "memory_bytes": memory_bytes,
        "usable_memory_bytes": usable_bytes,
        "usable_fraction": usable_fraction(),
        "usable_fraction_set": "XLA_PYTHON_CLIENT_MEM_FRACTION" in os.environ,
        "host_link_bytes_per_second": device.get("host_link"),
        "tokens_per_step": recipe_tokens_per_step(),
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
        # The best model that fits, with the optimizer that fits it, on the FLOPs the run gets.
        "memory_constrained": min(constrained.values(), key=lambda row: row["predicted_loss"]),
        "memory_constrained_by_optimizer": constrained,
        "achieved_optimum": {
            "params": achieved_params,
            "tokens": achieved_tokens,
            "tokens_per_param": achieved_tokens / achieved_params,
            "predicted_loss": float(HEADLINE_LAW.loss(achieved_params, achieved_tokens)),
            "fits_in_memory": achieved_params <= largest_fitting,
            **data_use(achieved_tokens, achieved_params, corpus_size, HEADLINE_LAW),
        },
        "corpus": corpus_name,
        "corpus_tokens": corpus_size,
        # A law in GPT-2's units: the --fit's allocation of the FLOPs the run gets, else how to make one.
        "own_law": (
            _own_law_allocation(fit, achieved, corpus_size, largest_fitting)
            if fit is not None
            else own_law_guidance(peak, mfu)
        ),
        "gpt2_small_optimal_flops": models["gpt2"]["optimal_flops"],
        "gpt2_small_optimal_tokens": models["gpt2"]["optimal_tokens"],
        "laws": laws,
        "models": models,
    }


def _run_mfu(gpu: str, peak: float, mfu: float | None, bench_records) -> tuple[float, str]:
    """(MFU, where it came from): ``--mfu``, else the card's last bench record, else DEFAULT_MFU."""
    bench = None if mfu is not None else recorded_bench(gpu, bench_records)
    if mfu is not None:
        source = "--mfu"
    elif bench is not None:
        mfu = bench["model_flops_per_s"] / bench.get("n_devices", 1) / peak
        source = f"bench record in {bench_records} ({bench.get('n_params', '?')} parameters)"
    else:
        mfu, source = DEFAULT_MFU, "assumed: no --mfu, no bench record for this card"
    _check_fraction("mfu", mfu)
    return mfu, source


def _law_row(law: ChinchillaLaw, total_flops: float, largest_fitting: float, corpus_size: float) -> dict:
    """A law's compute-optimal allocation of ``total_flops``, its loss, memory and data use."""
    params, tokens = (float(value) for value in law.compute_optimal(total_flops))
    return {
        "params": params,
        "tokens": tokens,
        "tokens_per_param": tokens / params,
        "predicted_loss": float(law.loss(params, tokens)),
        "training_memory_bytes": flops.training_memory_bytes(math.ceil(params)),
        "fits_in_memory": params <= largest_fitting,
        "source": law.source,
        **data_use(tokens, params, corpus_size, law),
    }


def _gpt2_row(name: str, n_params: int, days_at_mfu, estimated: dict, layout, usable_bytes: float, corpus_size: float):
    """A GPT-2 size trained compute-optimally and on GPT-2's 10B tokens: FLOPs, days, epochs, its step's memory
    with each optimizer in ``MEMORY_STEP``'s layout (``estimated``), and the cheapest ``layout`` that fits the card
    (``cheapest_layout``), whose slowdown the days include."""
    optimal_flops = float(HEADLINE_LAW.optimal_flops(n_params))
    original_flops = 6.0 * n_params * GPT2_ORIGINAL_TOKENS
    slowdown = layout["slowdown"] if layout else 1.0
    return {
        "n_params": n_params,
        "training_memory_bytes": flops.training_memory_bytes(n_params),
        "estimated_memory_bytes": estimated["adamw"],
        "fits_in_memory": estimated["adamw"] <= usable_bytes,
        "estimated_memory_bytes_by_optimizer": estimated,
        "fits_with": [opt for opt in OPTIMIZERS if estimated[opt] <= usable_bytes],
        "layout": layout,
        "optimal_epochs": float(HEADLINE_LAW.optimal_tokens(n_params)) / corpus_size,
        "original_epochs": GPT2_ORIGINAL_TOKENS / corpus_size,
        "optimal_tokens": float(HEADLINE_LAW.optimal_tokens(n_params)),
        "optimal_flops": optimal_flops,
        "optimal_days": days_at_mfu(optimal_flops) * slowdown,
        "original_tokens": GPT2_ORIGINAL_TOKENS,
        "original_flops": original_flops,
        "original_days": days_at_mfu(original_flops) * slowdown,
    }


def _own_law_allocation(fit: ChinchillaLaw, total_flops: float, corpus_size: float, largest_fitting: float) -> dict:
    params, tokens = (float(value) for value in fit.compute_optimal(total_flops))
    return {
        "law": fit.name,
        "source": fit.source,
        "units": FIT_UNITS,
        "params": params,
        "tokens": tokens,
        "predicted_loss": float(fit.loss(params, tokens)),
        "fits_in_memory": params <= largest_fitting,
        **data_use(tokens, params, corpus_size, fit),
    }


def _data_marks(row: dict) -> str:
    marks = []
    if row["beyond_corpus"]:
        marks.append(f"{row['epochs']:.1f} epochs: beyond the corpus")
    if row["extrapolated"]:
        marks.append(f"{row['tokens_per_param']:.0f} tokens/param: an extrapolation")
    return "; ".join(marks)


def _names(sizes: dict) -> str:
    """'gpt2 (124M) and gpt2-medium (355M)', or with commas before the last 'and' for more."""
    named = [f"{name} ({flops.format_count(size['n_params'])})" for name, size in sizes.items()]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]


def _is_plain(layout: dict) -> bool:
    """Whether a layout is ``MEMORY_STEP``'s own: nothing offloaded, no recompute beyond its remat."""
    return layout["offload"] == "none" and layout["remat"] == MEMORY_STEP["remat"]


def _layout_name(layout: dict) -> str:
    return f"{layout['optimizer']}, train.offload={layout['offload']}, remat={layout['remat']}"


def _layout_cost(layout: dict, tokens_per_step: int) -> str:
    """'8.7 GiB on the card, 23.2 GiB of host memory; 1.0 s over PCIe and 224 s of compute a 524k-token step (x1.34)'."""
    return (
        f"{layout['device_bytes'] / 2**30:.1f} GiB on the card, {layout['host_bytes'] / 2**30:.1f} GiB of host "
        f"memory; {layout['host_link_seconds']:.1f} s over PCIe and {layout['compute_seconds']:.0f} s of compute a "
        f"{flops.format_count(tokens_per_step)}-token step, x{layout['slowdown']:.2f} the time of one without "
        "offload or recompute"
    )


def _fraction_phrase(report: dict) -> str:
    """The share of the card the fits are judged on, and how to change it."""
    usable, fraction = report["usable_memory_bytes"] / 2**30, report["usable_fraction"]
    if report["usable_fraction_set"]:
        return f"judged on {usable:.1f} GiB, the {fraction:.0%} of the card XLA_PYTHON_CLIENT_MEM_FRACTION gives XLA"
    return (
        f"judged on {usable:.1f} GiB, the {fraction:.0%} of the card JAX gives XLA by default "
        "(XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 raises it)"
    )


def _trains_answer(report: dict) -> str:
    """Which GPT-2 sizes one card trains in the time and in which layout, which it holds but does not finish, and
    which it cannot hold; then the share of the card that decides it."""
    gib, days = report["memory_bytes"] / 2**30, report["days"]
    models = report["models"]
    held = {name: size for name, size in models.items() if size["layout"]}
    finish = {name: size for name, size in held.items() if max(size["optimal_days"], size["original_days"]) <= days}
    slow = {name: size for name, size in held.items() if name not in finish}
    too_big = {name: size for name, size in models.items() if name not in held}
    offloaded = {name: size["layout"] for name, size in held.items() if not _is_plain(size["layout"])}
    parts = []
    if finish:
        taken = ", ".join(f"{size['original_days']:.1f}" for size in finish.values())
        taken = " and ".join(taken.rsplit(", ", 1))
        tokens = flops.format_count(report["gpt2_original_tokens"])
        parts.append(f"yes for {_names(finish)}, in {taken} days on GPT-2's {tokens} tokens")
    if slow:
        parts.append(f"{_names(slow)} fit but do not finish in {days:g} days")
    if offloaded:
        parts.append(
            f"{' and '.join(offloaded)} with state in host memory ("
            + "; ".join(f"{name}: {_layout_name(layout)}" for name, layout in offloaded.items())
            + ")"
        )
    if too_big:
        parts.append(f"{_names(too_big)} {'does' if len(too_big) == 1 else 'do'} not fit {gib:g} GiB in any layout")
    return ("" if finish else "no: ") + "; ".join(parts) + f"; {_fraction_phrase(report)}"


def _allocation_phrase(row: dict) -> str:
    """'2.8B params on 60.3B tokens (loss 2.305), which does not fit the card (6.0 epochs: beyond the corpus)'."""
    marks = _data_marks(row)
    return (
        f"{flops.format_count(row['params'])} params on {flops.format_count(row['tokens'])} tokens "
        f"(loss {row['predicted_loss']:.3f}), which {'fits' if row['fits_in_memory'] else 'does not fit'} the card"
        + (f" ({marks})" if marks else "")
    )


def _leading_optimum(report: dict) -> tuple[str, dict]:
    """The law the answer allocates the run's FLOPs by, and its allocation: the user's fit when one is given
    (it is in GPT-2's units), else the headline published law."""
    own = report["own_law"]
    return (f"your fit ({own['units']})", own) if "law" in own else (report["optimal_law"], report["achieved_optimum"])


def _optimum_answer(report: dict) -> str:
    """GPT-2's own allocation beside the compute-optimal one for the FLOPs a run gets, and the best model the
    card holds when the optimum does not fit."""
    law, optimum = _leading_optimum(report)
    best = report["memory_constrained"]
    xl = report["models"]["gpt2-xl"]
    return (
        f"GPT-2 xl trained {flops.format_count(xl['n_params'])} params on "
        f"{flops.format_count(report['gpt2_original_tokens'])} tokens; the {report['achieved_flops']:.3g} FLOPs a run "
        f"here gets buy, by {law}, {_allocation_phrase(optimum)}"
        + (
            ""
            if optimum["fits_in_memory"]
            else f"; the best it holds without offload: {flops.format_count(best['params'])} params with {best['optimizer']}, "
            f"{best['loss_gap']:+.3f} in loss"
        )
    )


def answer_lines(report: dict) -> list[str]:
    """The budget's first screen: one answer to each question it is asked, then each FLOP total in a line.

    Three totals appear in the output and only one is spent by the answers, so each says what it
    is: the question's premise (the fp32 rate while the card runs), the tensor-core peak while it
    runs (the laws' table), and what a run gets at its MFU. Utilization and MFU are two different
    shares, and a reader who typed ``--utilization 0.9`` and sees 40% MFU is told which is which.
    """
    premise, precision = report["premise"], report["precision"]
    # fp32 runs on the CUDA cores; tf32 and bf16 on the tensor cores.
    units = "CUDA cores at fp32" if precision == "fp32" else f"tensor cores at {precision}"
    peak, days = report["peak_flops_per_second"] / 1e12, report["days"]
    running = f"{report['utilization']:.0%} of {days:g} days"
    return [
        f"One {report['gpu']} ({report['memory_bytes'] / 2**30:g} GiB) for {days:g} days:",
        f"  Does it train GPT-2? {_trains_answer(report)}",
        f"  GPT-2's budget against a compute-optimal one? {_optimum_answer(report)}",
        f"The answers spend {report['achieved_flops']:.3g} FLOPs, what a run gets: {days:g} days at "
        f"{report['mfu']:.0%} MFU of its {peak:.1f} TFLOP/s {precision} peak. The other two totals:",
        f"  {premise['flops']:.3g}, the question's premise: the card's "
        f"{premise['fp32_peak_flops_per_second'] / 1e12:.1f} TFLOP/s fp32 rate x {running}",
        f"  {report['total_flops']:.3g}, its {units} at full peak ({peak:.1f} TFLOP/s) x {running}: the budget of "
        "the laws' table",
        f"  --utilization {report['utilization']:g} is the share of the time the card runs, which those two count; "
        f"MFU is the share of its peak a training step reaches ({report['mfu']:.0%}, {report['mfu_source']})",
    ]


def verdict_lines(report: dict) -> list[str]:
    """The answers in detail, for this card, time and MFU: each GPT-2 size, and what the FLOPs buy."""
    gib = report["memory_bytes"] / 2**30
    days = report["days"]
    lines = [f"In detail, at {report['mfu']:.0%} MFU:"]
    for name, size in report["models"].items():
        layout = size["layout"]
        if not layout:
            how = (
                f"does not fit {gib:g} GiB in any layout ({', '.join(OPTIMIZERS)} x train.offload "
                f"{'/'.join(OFFLOAD_MODES)} x remat {'/'.join(LAYOUT_REMATS)}, micro-batch {MEMORY_STEP['micro_batch']})"
            )
        else:
            optimal, original = size["optimal_days"], size["original_days"]
            in_time = "trains" if max(optimal, original) <= days else "does not finish"
            fits = (
                ", ".join(size["fits_with"])
                if _is_plain(layout)
                else f"{_layout_name(layout)}: {_layout_cost(layout, report['tokens_per_step'])}"
            )
            how = (
                f"{in_time}: compute-optimally ({flops.format_count(size['optimal_tokens'])} tokens) in {optimal:.1f} days, "
                f"on GPT-2's {flops.format_count(size['original_tokens'])} in {original:.1f}; its step fits with {fits}"
            )
        lines.append(f"  {name} ({flops.format_count(size['n_params'])}) {how}")
    own = report["own_law"]
    optimum, best = report["achieved_optimum"], report["memory_constrained"]
    best_line = (
        f"  the best that fits: {flops.format_count(best['params'])} params ({best['n_layer']} layers x {best['n_embd']}) "
        f"with {best['optimizer']} on {flops.format_count(best['tokens'])} tokens, loss {best['predicted_loss']:.3f} "
        f"({best['loss_gap']:+.3f} from the optimum)" + (f"; {_data_marks(best)}" if _data_marks(best) else "")
    )
    # The answer gives the leading law's optimum; the detail adds the other: with a fit, the published
    # law's optimum; without one, the way to make a law in GPT-2's units.
    if "law" in own:
        other = (
            f"  by {report['optimal_law']}, in Chinchilla's units: the {report['achieved_flops']:.3g} FLOPs buy "
            + _allocation_phrase(optimum)
        )
    else:
        cost = (
            f": {own['flops']:.3g} FLOPs, {own['days']:.1f} days on this card at {report['mfu']:.0%} MFU"
            if "flops" in own
            else ""
        )
        other = (
            f"  in GPT-2's units no law yet: the GPU sweep makes one{cost} ({own['sweep']}; then {own['fit']}; "
            "then pass --fit fit.json)"
        )
    lines += [best_line, other]
    lines.append(
        f"  against {report['corpus']} ({flops.format_count(report['corpus_tokens'])} unique tokens); the published "
        "laws' losses are in Chinchilla's units (see below)"
    )
    return lines


def format_report(report: dict) -> str:
    """The report as readable text: the answers, their detail, then the arithmetic behind them."""
    gib = report["usable_memory_bytes"] / 2**30
    xl = report["models"]["gpt2-xl"]
    year = f"{report['days']:g} days at {report['utilization']:.0%}"
    step = report["memory_constrained"]["training_step"]
    lines = (
        answer_lines(report)
        + [""]
        + verdict_lines(report)
        + [
            "",
            f"the laws' budget, {report['total_flops']:.3g} FLOPs ({year}), is "
            f"{report['ratio_to_gpt2_xl_original']:.1f} x GPT-2 xl's original "
            f"(6 x {flops.format_count(xl['n_params'])} params x {flops.format_count(report['gpt2_original_tokens'])} "
            f"tokens = {report['gpt2_xl_original_flops']:.3g} FLOPs); spending it at {report['mfu']:.0%} MFU takes "
            f"{report['budget_days_at_mfu']:.0f} days",
            "",
            f"compute-optimal use of {report['total_flops']:.3g} FLOPs (C = 6ND), headline law {report['optimal_law']}; "
            + (
                f"losses in {report['loss_units']}"
                if "law" not in report["own_law"]
                else f"your fit's losses in {FIT_UNITS}, the published laws' in {report['loss_units']}"
            ),
            f"  {'law':<24}{'params':>9}{'tokens':>9}{'tokens/param':>14}{'loss':>8}{'epochs':>8}  fits {gib:.1f} GiB",
        ]
    )
    for name, law in report["laws"].items():
        lines.append(
            f"  {name:<24}{flops.format_count(law['params']):>9}{flops.format_count(law['tokens']):>9}"
            f"{law['tokens_per_param']:>14.1f}{law['predicted_loss']:>8.3f}{law['epochs']:>8.1f}  "
            f"{'yes' if law['fits_in_memory'] else 'no'}" + (f"  ({_data_marks(law)})" if _data_marks(law) else "")
        )
    lines += [
        "",
        f"memory-constrained optimum on the {report['achieved_flops']:.3g} FLOPs the run gets, per optimizer "
        f"({step['dtype']}, remat={step['remat']}, micro-batch {step['micro_batch']} x {step['block_size']}, "
        f"{gib:.1f} GiB usable of {report['memory_bytes'] / 2**30:g})",
    ]
    for name, row in report["memory_constrained_by_optimizer"].items():
        lines.append(
            f"  {name:<11} {row['n_layer']} layers x {row['n_embd']}: {flops.format_count(row['params'])} params "
            f"({row['estimated_memory_bytes'] / 2**30:.1f} GiB) on {flops.format_count(row['tokens'])} tokens "
            f"({row['tokens_per_param']:.0f} per param, {row['epochs']:.1f} epochs), loss {row['predicted_loss']:.3f}, "
            f"{row['loss_gap']:+.3f} from the optimum" + (f"  ({_data_marks(row)})" if _data_marks(row) else "")
        )
    lines += [
        "",
        f"GPT-2 sizes on this card at {report['mfu']:.0%} MFU: compute-optimal under {report['optimal_law']}, "
        f"and the original {flops.format_count(report['gpt2_original_tokens'])} tokens",
        f"  {'model':<13}{'params':>8}{'step GiB by optimizer':>26}  {'fits with':<26}{'opt tokens':>11}{'days':>7}"
        f"{'orig days':>10}",
    ]
    for name, size in report["models"].items():
        by_optimizer = "/".join(
            f"{value / 2**30:.1f}" for value in size["estimated_memory_bytes_by_optimizer"].values()
        )
        lines.append(
            f"  {name:<13}{flops.format_count(size['n_params']):>8}{by_optimizer:>26}  "
            f"{', '.join(size['fits_with']) or 'none':<26}{flops.format_count(size['optimal_tokens']):>11}"
            f"{size['optimal_days']:>7.1f}{size['original_days']:>10.1f}"
            + (f"  {_layout_name(size['layout'])}" if size["layout"] and not _is_plain(size["layout"]) else "")
        )
    lines.append(
        f"  (step GiB for {'/'.join(OPTIMIZERS)}: parameters, optimizer state, gradients and kept activations by "
        f"memory.estimate, {step['dtype']}, remat={step['remat']}, micro-batch {step['micro_batch']}; the days are "
        "those of the cheapest layout that fits, named after them where it is not that step)"
    )
    return "\n".join(lines)


# --optimizer muon. The measurement the Muon experiment writes (issue 36): the compute AdamW needs to
# reach Muon's loss, over Muon's. Absent, the budget applies nothing and names the published figures.
MULTIPLIER_FILE = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "cpu_muon" / "multiplier.json"
MULTIPLIER_KEYS = ("multiplier", "interval", "where", "params")
PUBLISHED_MULTIPLIERS = (
    "Wen et al. 2025, against a tuned AdamW: ~1.4x at 0.1B falling to ~1.1x at 1.2B",
    "modded-nanogpt: 1.35x (GPT-2 small's tokens to its target loss, 5B to 3.7B)",
    "Moonlight (Liu et al. 2025): ~2x",
)


def load_multiplier(path) -> dict | None:
    """The measured multiplier in ``path`` (multiplier, its interval [low, high], where it was measured and
    the parameter counts [smallest, largest] it was measured at), or None where there is no such file."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    remedy = "write it again with the Muon experiment, or remove it"
    values = _read_json_with(path, "multiplier file", MULTIPLIER_KEYS, remedy)
    if not all(isinstance(values[key], list) and len(values[key]) == 2 for key in ("interval", "params")):
        raise ValueError(f"multiplier file {path}: interval and params must each be a pair [low, high]; {remedy}.")
    numbers = [values["multiplier"], *values["interval"], *values["params"]]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in numbers):
        raise ValueError(
            f"multiplier file {path} holds a multiplier, interval or params that are not positive; {remedy}."
        )
    low, high = values["interval"]
    if not low <= values["multiplier"] <= high:
        raise ValueError(
            f"multiplier file {path}: the multiplier {values['multiplier']:g} lies outside its interval "
            f"[{low:g}, {high:g}]; {remedy}."
        )
    return values


def optimizer_section(report: dict, optimizer: str, multiplier_path=MULTIPLIER_FILE) -> dict | None:
    """What ``--optimizer`` changes in ``report``: nothing for adamw; for muon, each GPT-2 size's days divided
    by the measured multiplier (Muon reaching AdamW's loss on 1/m of its FLOPs), or no change without one."""
    if optimizer == "adamw":
        return None
    if optimizer != "muon":
        raise ValueError(f"--optimizer {optimizer} is not one of adamw, muon.")
    measured = load_multiplier(multiplier_path)
    section = {"optimizer": optimizer, "multiplier_file": str(multiplier_path), "measured": measured}
    if measured is None:
        return section
    factor = measured["multiplier"]
    section["achieved_flops_as_adamw"] = report["achieved_flops"] * factor
    section["days"] = {
        name: {"optimal_days": size["optimal_days"] / factor, "original_days": size["original_days"] / factor}
        for name, size in report["models"].items()
    }
    return section


def optimizer_lines(section: dict | None) -> list[str]:
    """``optimizer_section`` as text: the measured multiplier with where, at what scale and its interval, and
    the days it gives; or the one line saying there is none, with the published figures as context."""
    if section is None:
        return []
    measured, name = section["measured"], section["optimizer"]
    published = "; ".join(PUBLISHED_MULTIPLIERS)
    if measured is None:
        return [
            f"--optimizer {name}: no measured multiplier ({section['multiplier_file']} does not exist), so every "
            f"figure above is AdamW's; published, for context and not applied: {published}"
        ]
    low, high = measured["interval"]
    smallest, largest = measured["params"]
    lines = [
        f"--optimizer {name}: a compute multiplier of {measured['multiplier']:.2f} (interval {low:.2f}-{high:.2f}), "
        f"measured {measured['where']} at {flops.format_count(smallest)}-{flops.format_count(largest)} params "
        f"({section['multiplier_file']}); applied to GPT-2's sizes it is an extrapolation",
        f"  the run's FLOPs reach the loss AdamW reaches on {section['achieved_flops_as_adamw']:.3g}; days to "
        "AdamW's loss, compute-optimally and on GPT-2's tokens:",
    ]
    lines += [
        f"  {model_name:<13}{days['optimal_days']:>7.1f}{days['original_days']:>10.1f}"
        for model_name, days in section["days"].items()
    ]
    lines.append(f"  published, for context: {published}")
    return lines
