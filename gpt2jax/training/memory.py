"""The dry run: parameter counts, FLOPs per token and a train step's memory per device, training nothing.

``python -m gpt2jax.main --config C --dry_run`` prints it. The step is lowered and compiled
for the config's mesh, as a real run would compile it, and never run.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp

from gpt2jax import flops
from gpt2jax.model import REMAT_POLICIES, attention_implementation, scans_layers
from gpt2jax.training import steps
from gpt2jax.training.footprint import (
    aval_bytes,
    host_bytes,
    micro_batch_tokens,
    saved_for_backward_bytes,
    shard_bytes,
    state_bytes,
)
from gpt2jax.training.optim import OPTIMIZERS
from gpt2jax.training.trainer import Trainer, build_trainer

CARDS_GIB = (12, 24, 80)


def usable_fraction() -> float:
    """The share of a card's memory JAX lets XLA use: XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 unless set."""
    return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", 0.75))


GIB = 2**30
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: a container's own limit, below the host's


def host_available_bytes() -> int | None:
    """Memory this process may still take: /proc/meminfo's MemAvailable, less where a cgroup's limit leaves
    less; None where neither can be read (not Linux)."""
    figures = []
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                figures.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            figures.append(int(limit) - int((CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(figures) if figures else None


def step_memory(trainer: Trainer) -> tuple[int, int, str] | None:
    """(bytes the run needs, bytes available to it, what they count and where), or None where unknown.

    On a GPU or TPU each device holds its share of the step (``estimate``) within what XLA may
    allocate on it (``bytes_limit``, XLA_PYTHON_CLIENT_MEM_FRACTION of the card); the host's
    share is ``host_memory``'s. On a CPU the devices are the host: ``host_memory`` counts both.
    """
    devices = _local_devices(trainer)
    if devices[0].platform == "cpu":
        return host_memory(trainer)
    limits = [(device.memory_stats() or {}).get("bytes_limit") for device in devices]
    if None in limits:
        return None
    return estimate(trainer)["total"], min(limits), f"the train step on one {devices[0].device_kind}"


def _local_devices(trainer: Trainer) -> list:
    return [device for device in trainer.mesh.devices.flat if device.process_index == jax.process_index()]


def host_memory(trainer: Trainer, available: int | None = None) -> tuple[int, int, str] | None:
    """(host bytes the run needs, host bytes ``available``, what they count), or None where unknown.

    Each local device's ``host_estimate``: the state ``train.offload`` keeps in host memory and the
    copy of the state an asynchronous checkpoint writes from. On a CPU every device's step lives in
    the host's memory too: a 102M-parameter run (n_embd 1024, 4 layers) estimated at 2.65 GiB peaked
    at 3.98 GiB resident, the estimate plus its 1.14 GiB state and the runtime.
    ``available``: ``host_available_bytes()`` unless given.
    """
    devices = _local_devices(trainer)
    available = host_available_bytes() if available is None else available
    if available is None:
        return None
    host = host_estimate(trainer)
    if devices[0].platform == "cpu":
        needed = len(devices) * (estimate(trainer)["total"] + host["total"])
        return needed, available, "the train step and a checkpoint's copy of its state in this host's memory"
    offloaded = host["total"] - host["checkpoint_copy"]
    what = (
        f"the state offloaded to this host ({len(devices) * offloaded / GIB:.1f} GiB, train.offload="
        f"{trainer.config.train.offload}) and a checkpoint's copy of it"
        if offloaded
        else "a checkpoint's copy of the train state in this host's memory"
    )
    return len(devices) * host["total"], available, what


HOST_ADVICE = (
    "offload less (--config.train.offload=optimizer or none), keep a smaller optimizer state "
    "(--config.train.optimizer=adamw_bf16 or adafactor), or use a host with more memory; --dry_run shows both memories."
)
DEVICE_ADVICE = (
    "make the model smaller (model.n_embd, model.n_layer) or the micro-batch (raise train.grad_accum_steps), "
    "or keep less (model.remat=full); --dry_run shows what fits."
)


def refuse_unfit(needed: int, available: int, what: str, advice: str = DEVICE_ADVICE) -> None:
    """Refuses, in one sentence, a run that needs more bytes than are ``available``.

    Checked before anything is allocated: a run with n_embd=4096 on a 23 GB host grew past 17 GB in a
    minute, silently, until the kernel killed it (the dry run estimated its step at 21.3 GiB).
    """
    if needed <= available:
        return
    raise ValueError(
        f"{what} need about {needed / GIB:.1f} GiB by the dry run's estimate, more than the "
        f"{available / GIB:.1f} GiB available; {advice}"
    )


def check_host_fits(trainer: Trainer, available: int | None = None) -> None:
    """``refuse_unfit`` for what this trainer keeps in host memory; nothing where the memory available is unknown.

    On a CPU the device's step is in the host's memory too, and the advice is the device's.
    """
    memory = host_memory(trainer, available)
    if memory is not None:
        cpu = _local_devices(trainer)[0].platform == "cpu"
        refuse_unfit(*memory, advice=DEVICE_ADVICE if cpu else HOST_ADVICE)


def check_step_fits(trainer: Trainer, corpus_bytes: int = 0) -> None:
    """``refuse_unfit`` for this trainer on its devices and on its host; nothing where the memory available is
    unknown. The loop and the benchmark call it before anything is allocated.

    ``corpus_bytes``: the train split that ``data.on_device`` copies to every device, checked beside the
    step once the loop knows its size (on a CPU each device's copy is in the host's memory).
    """
    devices = _local_devices(trainer)
    memory = step_memory(trainer)
    if memory is None:
        if devices[0].platform != "cpu":
            check_host_fits(trainer)
        return
    needed, available, what = memory
    if corpus_bytes:
        copies = len(devices) if devices[0].platform == "cpu" else 1
        needed += copies * corpus_bytes
        copied = f"{copies} copies" if copies > 1 else "a copy"
        what += f" and {copied} of the {corpus_bytes / GIB:.2f} GiB train split (data.on_device)"
        advice = f"leave data.on_device off (--config.data.on_device=False), or {DEVICE_ADVICE}"
    else:
        advice = DEVICE_ADVICE
    refuse_unfit(needed, available, what, advice)
    if devices[0].platform != "cpu":
        check_host_fits(trainer)


def dry_run(config) -> dict:
    """Parameter counts, FLOPs per token and the compiled step's memory per device, training nothing.

    ``fits`` says whether the step fits a 12, 24 or 80 GiB card by the platform-independent
    ``estimate``, against the share of the card JAX lets XLA use: XLA_PYTHON_CLIENT_MEM_FRACTION,
    0.75 unless set.
    """
    trainer = build_trainer(config)
    summary = {
        "model": dict(config.model),
        "mesh": dict(trainer.mesh.shape),
        "platform": jax.default_backend(),
        "attention": attention_implementation(trainer.model_config),
        "scan_layers": scans_layers(trainer.model_config),
        "loss_chunk": trainer.model_config.loss_chunk,
    }
    summary.update(flops.model_accounting(trainer.model_config))
    micro = trainer.micro_batch_size
    block = trainer.model_config.block_size
    batch = jax.ShapeDtypeStruct(
        (trainer.accum_steps, micro, block), jnp.int32, sharding=trainer.batch_sharding(leading_unsharded=1)
    )
    compiled = trainer.train_step.lower(trainer.abstract_state, batch, batch, trainer.schedule).compile()
    summary["per_device_bytes"] = per_device_bytes(trainer, compiled)
    summary["per_device_host_bytes"] = host_estimate(trainer)
    summary["offload"] = trainer.config.train.offload
    summary["estimate_by_offload"] = estimate_by_offload(trainer, summary["per_device_bytes"]["estimate_total"])
    usable = usable_fraction()
    summary["fits"] = {
        f"{gib} GiB": summary["per_device_bytes"]["estimate_total"] <= usable * gib * 2**30 for gib in CARDS_GIB
    }
    summary["activations_saved_for_backward_by_remat"] = {
        policy: saved_for_backward_bytes(trainer.with_model(remat=policy)) for policy in REMAT_POLICIES
    }
    summary["optimizer_state_by_optimizer"] = {name: optimizer_state_bytes(config, name) for name in OPTIMIZERS}
    summary["xla_flops_per_token"] = xla_flops_per_token(trainer)
    summary.update(grad_accum_steps=trainer.accum_steps, micro_batch_size=trainer.micro_batch_size)
    return summary


def format_dry_run(summary: dict) -> str:
    """The dry run's readable summary: sizes in GiB, whether each card fits, and what would fit one that does not.

    Two totals, each said with what it counts: the estimate from shapes, which the fits read, and XLA's
    buffer assignment for the platform the dry run compiled on (its JSON's ``xla_total``), which
    counts the state and batch, plus what the step allocates. A header that printed only the estimate
    (29.62 GiB) beside a JSON xla_total of 44.6 GiB on a CPU left users to guess which one held
    (XLA:CPU keeps bfloat16 activations at float32 cost; at float32 it can fall below the estimate).
    """
    gib = GIB
    parts = summary["per_device_bytes"]
    usable = usable_fraction()
    total = parts["estimate_total"]
    saved_now = summary["activations_saved_for_backward_by_remat"][summary["model"]["remat"]]
    lines = [
        f"{summary['n_params'] / 1e6:.1f}M parameters ({summary['n_params_non_embedding'] / 1e6:.1f}M non-embedding), "
        f"mesh {summary['mesh']}, attention {summary['attention']}, "
        f"layers {'scanned' if summary.get('scan_layers', True) else 'unrolled'}",
        f"train step per device, estimated from shapes (JSON estimate_total): {total / gib:.2f} GiB = parameters {parts['params'] / gib:.2f}"
        f" + optimizer {parts['optimizer_state'] / gib:.2f} + gradients {parts['gradients'] / gib:.2f}"
        f" + kept activations {parts['activations_saved_for_backward'] / gib:.2f}"
        f" + largest temporaries {parts['largest_temporaries'] / gib:.2f}"
        + (f" + offloaded update's stream {parts['offload_stream'] / gib:.2f}" if parts.get("offload_stream") else ""),
    ]
    if "per_device_host_bytes" in summary:
        host = summary["per_device_host_bytes"]
        lines.append(
            f"host memory per device, train.offload={summary['offload']} (JSON per_device_host_bytes): "
            f"{host['total'] / gib:.2f} GiB = master weights {host['master_params'] / gib:.2f}"
            f" + optimizer {host['optimizer_state'] / gib:.2f}"
            + (f" + gradient sum {host['gradient_sum'] / gib:.2f}" if host.get("gradient_sum") else "")
            + " + a checkpoint's copy of the state "
            f"{host['checkpoint_copy'] / gib:.2f}"
        )
    if "xla_total" in parts:
        allocated = parts["xla_activations_and_temporaries"]
        lines.append(
            f"XLA's buffers for this step on {summary['platform']} (JSON xla_total): {parts['xla_total'] / gib:.2f} GiB"
            f" = state, batch and undonated outputs {(parts['xla_total'] - allocated) / gib:.2f} + activations, "
            f"gradients and temporaries {allocated / gib:.2f}; platform-dependent, so the fits below read the estimate"
        )
    for card, fits in summary["fits"].items():
        room = usable * int(card.split()[0]) * gib
        if fits:
            lines.append(f"  {card} card ({room / gib:.1f} GiB usable): fits")
            continue
        hint = (
            _fitting_change(summary, total - saved_now, room)
            or _fitting_offload(summary, saved_now, room)
            or _fitting_optimizer(summary, total - saved_now, room)
        )
        hint = (
            f"fits with {hint}"
            if hint
            else "no remat policy, micro-batch, offload or optimizer fits it: add devices (mesh.fsdp)"
        )
        lines.append(f"  {card} card ({room / gib:.1f} GiB usable): does not fit; {hint}")
    return "\n".join(lines)


def _fitting_change(summary: dict, without_activations: int, room: float) -> str | None:
    """The cheapest change that fits ``room``: a remat policy at the same micro-batch, then smaller micro-batches.

    What the backward pass keeps scales with the rows of a micro-batch; the rest of the step does
    not. ``full`` recomputes the whole forward pass, so it comes after every other change.
    """
    accum, rows = summary["grad_accum_steps"], summary["micro_batch_size"]
    saved = summary["activations_saved_for_backward_by_remat"]
    partial = [policy for policy in saved if policy != "full"]
    splits = [2**k for k in range(rows.bit_length()) if rows % 2**k == 0]
    candidates = [(policy, split) for split in splits for policy in partial] + [("full", split) for split in splits]
    for policy, split in candidates:
        if without_activations + saved[policy] / split <= room:
            more = f" --config.train.grad_accum_steps={accum * split}" if split > 1 else ""
            return f"--config.model.remat={policy}{more}"
    return None


def _fitting_offload(summary: dict, saved_now: int, room: float) -> str | None:
    """A ``train.offload`` layout that fits ``room`` with the cheapest remat change it then needs, the optimizer
    kept: the optimizer state in host memory before the master weights too, each said with the host memory it takes."""
    for mode, totals in summary.get("estimate_by_offload", {}).items():
        if mode == summary["offload"] or totals["device"] >= summary["per_device_bytes"]["estimate_total"]:
            continue
        change = _fitting_change(summary, totals["device"] - saved_now, room)
        if change:
            return f"--config.train.offload={mode} {change} ({totals['host'] / GIB:.1f} GiB of host memory a device)"
    return None


def _fitting_optimizer(summary: dict, without_activations: int, room: float) -> str | None:
    """An optimizer with less state that fits ``room`` (with the cheapest remat change it then needs), the
    closest to AdamW first: bfloat16 moments before a factored second moment."""
    current = summary["per_device_bytes"]["optimizer_state"]
    for name, state in summary.get("optimizer_state_by_optimizer", {}).items():
        if state < current:
            change = _fitting_change(summary, without_activations - current + state, room)
            if change:
                return f"--config.train.optimizer={name} {change}"
    return None


def optimizer_state_bytes(config, optimizer: str) -> int:
    """This device's bytes of ``optimizer``'s state for ``config``'s model and mesh, from shapes alone."""
    config = copy.deepcopy(config)
    config.train.optimizer = optimizer
    config.train.offload = "none"  # where the state lives changes not its bytes, and not every optimizer offloads
    return shard_bytes(build_trainer(config).abstract_state["opt_state"])


def xla_flops_per_token(trainer: Trainer) -> float | None:
    """FLOPs per token of the whole train step (accumulation and optimizer included), as XLA counts them.

    XLA's cost analysis counts a loop's body once (jax-ml/jax#18672), which for a scanned
    GPT-2 small counts one of its 12 layers. Here every ``scan`` in the step's jaxpr, at
    any depth, is costed on its own and multiplied by its trip count (``scanned_flops``).
    Lowered abstractly and unsharded for XLA:CPU, without compiling: no memory is spent, and the
    count is the same wherever it runs (a module lowered for a GPU carries no cost analysis, which
    read as 0 FLOPs on an H200). None, never 0, where XLA:CPU cannot lower the step (cuDNN attention).
    """
    step = functools.partial(steps.train_step, graphdef=trainer.graphdef, optimizer=trainer.optimizer)
    batch = jax.ShapeDtypeStruct(
        (trainer.accum_steps, trainer.micro_batch_size, trainer.model_config.block_size), jnp.int32
    )
    state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), trainer.abstract_state)
    tokens_per_step = trainer.config.train.batch_size * trainer.model_config.block_size
    try:
        return scanned_flops(jax.make_jaxpr(step)(state, batch, batch, trainer.schedule)) / tokens_per_step
    except UncountableError:
        return None


def scanned_flops(closed_jaxpr) -> float:
    """XLA's FLOP count of a closed jaxpr with every scan body counted as often as it runs.

    XLA's count counts each body once, so each scan adds (length - 1) more of its body's
    own count, and length times whatever its body's nested scans add in turn.
    """
    return _xla_flops(closed_jaxpr) + _uncounted_scan_flops(closed_jaxpr.jaxpr)


class UncountableError(Exception):
    """XLA:CPU gives no FLOP count for a jaxpr."""


def _xla_flops(closed_jaxpr) -> float:
    from jax.extend.core import jaxpr_as_fun

    args = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed_jaxpr.jaxpr.invars]
    try:
        lowered = jax.jit(jaxpr_as_fun(closed_jaxpr)).trace(*args).lower(lowering_platforms=("cpu",))
    except NotImplementedError as error:  # an op with no CPU lowering, such as cuDNN's attention
        raise UncountableError(str(error)) from None
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost or "flops" not in cost:
        raise UncountableError("XLA's cost analysis has no flops")
    return float(cost["flops"])


def _uncounted_scan_flops(jaxpr) -> float:
    from jax.extend.core import jaxprs_in_params

    extra = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            body, length = eqn.params["jaxpr"], eqn.params["length"]
            extra += (length - 1) * _xla_flops(body) + length * _uncounted_scan_flops(body.jaxpr)
            continue
        for sub in jaxprs_in_params(eqn.params):
            extra += _uncounted_scan_flops(sub)
    return extra


def _intermediate_sizes(jaxpr) -> list[int]:
    """Sizes of the values one step of ``jaxpr`` computes, loop bodies included once.

    A loop's own outputs (the layers' stacked residuals and gradients) are left out: they
    are counted as saved activations and gradients.
    """
    sizes = []
    for eqn in jaxpr.eqns:
        looped = eqn.primitive.name in ("scan", "while")
        if not looped:
            sizes += [aval_bytes(v) for v in eqn.outvars]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    sizes += _intermediate_sizes(inner)
    return sizes


def largest_temporaries_bytes(trainer: Trainer) -> int:
    """The two largest values the forward and backward pass of one micro-batch compute, added.

    The op that writes the largest temporary (on GPT-2 small, the B x T x V logits or
    their gradient) reads another of about its size, so both are live at that moment.
    """
    grad_fn = jax.value_and_grad(lambda p, tokens: steps.loss_fn(p, trainer.graphdef, tokens, tokens))
    jaxpr = jax.make_jaxpr(grad_fn)(trainer.abstract_weights, micro_batch_tokens(trainer)).jaxpr
    return int(sum(sorted(_intermediate_sizes(jaxpr))[-2:]))


def estimate(trainer: Trainer, offload: str | None = None) -> dict:
    """Bytes one device needs for a train step, from shapes alone: the same on every platform.

    ``footprint.held_bytes``'s parts for ``offload`` (default: the config's ``train.offload``):
    parameters, optimizer state, the gradient accumulator, the activations the backward pass keeps,
    the offloaded update's working set; and the two largest temporaries. XLA's own buffer total
    depends on the platform it compiles for (XLA:CPU keeps bfloat16 activations at float32 cost);
    this estimate does not, and ``fits`` is read from it.
    """
    report = state_bytes(trainer, offload) | traced_bytes(trainer)
    report["total"] = sum(report.values())
    return report


def traced_bytes(trainer: Trainer) -> dict:
    """The parts of ``estimate`` read from the traced step, which no optimizer or offload changes: the
    activations the backward pass keeps and the two largest temporaries.

    Traced once per process for what the traces read (the graph, the weights' and a micro-batch's
    shapes, dtypes and shardings): a sweep checks each point's memory twice, and tracing took 0.74 s
    a check, 27% of the GPU study's smoke run on the CPU, where its points share three programs.
    """
    leaves, treedef = jax.tree.flatten(trainer.abstract_weights)
    key = (trainer.graphdef, treedef, tuple(leaves), micro_batch_tokens(trainer))
    if key not in _TRACED:
        _TRACED[key] = {
            "activations_saved_for_backward": saved_for_backward_bytes(trainer),
            "largest_temporaries": largest_temporaries_bytes(trainer),
        }
    return dict(_TRACED[key])


_TRACED: dict[tuple, dict] = {}


def estimate_by_offload(trainer: Trainer, total: int) -> dict:
    """Each ``train.offload`` layout's device and host totals per device, from ``total`` (this trainer's own
    ``estimate``): only the state's parts differ between layouts, and they need no tracing."""
    own = sum(state_bytes(trainer).values())
    return {
        mode: {
            "device": total - own + sum(state_bytes(trainer, mode).values()),
            "host": host_estimate(trainer, mode)["total"],
        }
        for mode in steps.offload_modes(trainer.config.train.optimizer)
    }


def host_estimate(trainer: Trainer, offload: str | None = None) -> dict:
    """Bytes the host keeps for one device through a run, from shapes alone: ``footprint.host_bytes``'s parts
    (master weights and optimizer state where ``offload`` puts them, a checkpoint's copy of the state) and their total."""
    report = host_bytes(trainer, offload)
    report["total"] = sum(report.values())
    return report


def per_device_bytes(trainer: Trainer, compiled) -> dict:
    """Bytes one device holds during a train step: ``estimate``'s parts, and XLA's buffer assignment (``xla_bytes``)."""
    report = {f"estimate_{key}" if key == "total" else key: value for key, value in estimate(trainer).items()}
    report.update(xla_bytes(compiled))
    return report


def xla_bytes(compiled) -> dict:
    """XLA's buffer assignment of a compiled step, per device; empty where XLA gives none.

    ``xla_activations_and_temporaries``: everything the step allocates besides its arguments
    (saved activations, gradients and their accumulator, workspace); ``xla_total``: that, the
    arguments (state and batch), and the outputs the donated state does not absorb.
    The benchmark reports it per variant, since a process's peak counts every step it ran before.
    """
    memory = compiled.memory_analysis()
    if memory is None:
        return {}
    return {
        "xla_activations_and_temporaries": int(memory.temp_size_in_bytes),
        "xla_total": int(
            memory.argument_size_in_bytes
            + memory.temp_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
        ),
    }
