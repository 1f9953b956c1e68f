"""The dry run: parameter counts, FLOPs per token and a train step's memory per device, training nothing.

``python -m gpt2jax.main --config C --dry_run`` prints it. The step is lowered and compiled
for the config's mesh, as a real run would compile it, and never run.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp

from gpt2jax import flops
from gpt2jax.model import REMAT_POLICIES, attention_implementation
from gpt2jax.training import steps
from gpt2jax.training.optim import OPTIMIZERS
from gpt2jax.training.trainer import Trainer, build_trainer

CARDS_GIB = (12, 24, 80)


def usable_fraction() -> float:
    """The share of a card's memory JAX lets XLA use: XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 unless set."""
    return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", 0.75))


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
        "attention": attention_implementation(trainer.model_config),
    }
    summary.update(flops.model_accounting(trainer.model_config))
    micro = trainer.micro_batch_size
    block = trainer.model_config.block_size
    batch = jax.ShapeDtypeStruct(
        (trainer.accum_steps, micro, block), jnp.int32, sharding=trainer.batch_sharding(leading_unsharded=1)
    )
    compiled = trainer.train_step.lower(trainer.abstract_state, batch, batch).compile()
    summary["per_device_bytes"] = per_device_bytes(trainer, compiled)
    usable = usable_fraction()
    summary["fits"] = {
        f"{gib} GiB": summary["per_device_bytes"]["estimate_total"] <= usable * gib * 2**30 for gib in CARDS_GIB
    }
    summary["activations_saved_for_backward_by_remat"] = {
        policy: saved_for_backward_bytes(_with_remat(trainer, policy)) for policy in REMAT_POLICIES
    }
    summary["optimizer_state_by_optimizer"] = {name: optimizer_state_bytes(config, name) for name in OPTIMIZERS}
    summary["xla_flops_per_token"] = xla_flops_per_token(trainer)
    summary.update(grad_accum_steps=trainer.accum_steps, micro_batch_size=trainer.micro_batch_size)
    return summary


def format_dry_run(summary: dict) -> str:
    """The dry run's readable summary: sizes in GiB, whether each card fits, and what would fit one that does not."""
    gib = 2**30
    parts = summary["per_device_bytes"]
    usable = usable_fraction()
    total = parts["estimate_total"]
    saved_now = summary["activations_saved_for_backward_by_remat"][summary["model"]["remat"]]
    lines = [
        f"{summary['n_params'] / 1e6:.1f}M parameters ({summary['n_params_non_embedding'] / 1e6:.1f}M non-embedding), "
        f"mesh {summary['mesh']}, attention {summary['attention']}",
        f"train step per device (estimate from shapes): {total / gib:.2f} GiB = parameters {parts['params'] / gib:.2f}"
        f" + optimizer {parts['optimizer_state'] / gib:.2f} + gradients {parts['gradients'] / gib:.2f}"
        f" + kept activations {parts['activations_saved_for_backward'] / gib:.2f}"
        f" + largest temporaries {parts['largest_temporaries'] / gib:.2f}",
    ]
    for card, fits in summary["fits"].items():
        room = usable * int(card.split()[0]) * gib
        if fits:
            lines.append(f"  {card} card ({room / gib:.1f} GiB usable): fits")
            continue
        hint = _fitting_change(summary, total - saved_now, room) or _fitting_optimizer(summary, total - saved_now, room)
        hint = (
            f"fits with {hint}"
            if hint
            else "no remat policy, micro-batch or optimizer fits it: add devices (mesh.fsdp)"
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
    return _shard_bytes(build_trainer(config).abstract_state["opt_state"])


def _with_remat(trainer: Trainer, policy: str) -> Trainer:
    """The same trainer with another ``model.remat``: its graphdef is all that the traced step reads of it."""
    from gpt2jax.model import abstract_model

    model_config = dataclasses.replace(trainer.model_config, remat=policy)
    return dataclasses.replace(trainer, model_config=model_config, graphdef=abstract_model(model_config)[0])


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
        return scanned_flops(jax.make_jaxpr(step)(state, batch, batch)) / tokens_per_step
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


def _shard_bytes(tree) -> int:
    """Bytes of this device's shards of a pytree of ShapeDtypeStructs carrying shardings."""
    return int(
        sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))
    )


def _aval_bytes(var) -> int:
    return math.prod(var.aval.shape) * var.aval.dtype.itemsize


def _micro_batch_tokens(trainer: Trainer):
    """This device's rows of one micro-batch, as the abstract token array the step's loss reads."""
    rows = trainer.micro_batch_size // (trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"])
    return jax.ShapeDtypeStruct((rows, trainer.model_config.block_size), jnp.int32)


def saved_for_backward_bytes(trainer: Trainer) -> int:
    """What the backward pass of this device's rows of one micro-batch keeps, read from the traced step.

    The figure ``model.remat`` trades for recompute, the same on every platform (counted
    whole along the tensor axis, so an upper bound when mesh.tensor > 1).
    """
    from jax.extend.core import Var

    def pullback(params, tokens_BxT):
        return jax.vjp(lambda p: steps.loss_fn(p, trainer.graphdef, tokens_BxT, tokens_BxT), params)[1]

    # The pullback closes over the residuals; the parameters it merely reads are its inputs.
    jaxpr = jax.make_jaxpr(pullback)(trainer.abstract_state["params"], _micro_batch_tokens(trainer)).jaxpr
    inputs = set(jaxpr.invars)
    return int(sum(_aval_bytes(v) for v in jaxpr.outvars if isinstance(v, Var) and v not in inputs))


def _intermediate_sizes(jaxpr) -> list[int]:
    """Sizes of the values one step of ``jaxpr`` computes, loop bodies included once.

    A loop's own outputs (the layers' stacked residuals and gradients) are left out: they
    are counted as saved activations and gradients.
    """
    sizes = []
    for eqn in jaxpr.eqns:
        looped = eqn.primitive.name in ("scan", "while")
        if not looped:
            sizes += [_aval_bytes(v) for v in eqn.outvars]
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
    jaxpr = jax.make_jaxpr(grad_fn)(trainer.abstract_state["params"], _micro_batch_tokens(trainer)).jaxpr
    return int(sum(sorted(_intermediate_sizes(jaxpr))[-2:]))


def estimate(trainer: Trainer) -> dict:
    """Bytes one device needs for a train step, from shapes alone: the same on every platform.

    The float32 parameters and AdamW moments (this device's shards), the float32 gradients
    of one micro-batch and their running sum (``steps.train_step`` sums micro-batches in a
    scan whatever their number), the activations the
    backward pass keeps, and the two largest temporaries. XLA's own buffer total depends
    on the platform it compiles for (XLA:CPU keeps bfloat16 activations at float32 cost);
    this estimate does not, and ``fits`` is read from it.
    """
    params = _shard_bytes(trainer.abstract_state["params"])
    report = {
        "params": params,
        "optimizer_state": _shard_bytes(trainer.abstract_state["opt_state"]),
        "gradients": 2 * params,
        "activations_saved_for_backward": saved_for_backward_bytes(trainer),
        "largest_temporaries": largest_temporaries_bytes(trainer),
    }
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
