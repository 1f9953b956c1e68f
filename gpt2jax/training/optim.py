"""Optax: the optimizers (AdamW, two that fit a small card, and Muon), weight decay on matrices only,
global-norm clipping, and schedules.

``train.optimizer`` chooses:
  adamw       AdamW with float32 moments: 8 bytes of state per parameter.
  adamw_bf16  AdamW with both moments stored in bfloat16 (computed in float32): 4 bytes. optax's
              ``scale_by_adam`` can store only the first moment in another dtype, hence
              ``scale_by_adam_in`` below.
  adafactor   Adafactor from optax's parts: a factored second moment (a row and a column per
              matrix), no first moment, updates clipped to RMS 1: about 0 bytes per parameter
              of the MLP kernels and embeddings. optax factors only where the two largest
              dimensions are at least 128, so the attention kernels, stored per head with
              head size 64 second-largest, keep a full float32 second moment (4 bytes a
              parameter, a third of each block's; at gpt2-medium 384 of the state's 386 MiB).
              Its learning rate is absolute (no scaling by the parameters' size), so the same
              rule sets it, and weight decay is AdamW's.
  muon        Muon (Jordan 2024; optax.contrib's Newton-Schulz orthogonalisation) on every hidden
              weight matrix, AdamW (the adamw above, at train.learning_rate) on the embeddings,
              head (tied to wte), biases and LayerNorms: ``MUON_RULES`` says which and how. Muon's
              peak rate is train.muon_learning_rate, on the same schedule; its weight decay per
              step is AdamW's (train.weight_decay x train.learning_rate's schedule), so the two
              optimizers differ in the direction of the update only. One float32 momentum per
              Muon parameter, Adam's two moments for the rest.
8-bit moments have no well-kept JAX implementation (bitsandbytes is PyTorch's). Where the state
lives (on the device, or in host memory: ``train.offload``) is the train step's choice
(``steps.HOST_RESIDENT``), not the optimizer's.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon
from optax.contrib._muon import scale_by_shape  # optax 0.2.8 does not export it; optax.contrib.muon uses it

from gpt2jax.trees import path_str

# The optimizers the dry run and the budget size by memory: AdamW and two smaller states of it, under
# one law. Muon is not among them: what it changes is the loss a FLOP buys, which the budget applies
# only as a measured multiplier (budget --optimizer muon).
OPTIMIZERS = ("adamw", "adamw_bf16", "adafactor")
ALL_OPTIMIZERS = (*OPTIMIZERS, "muon")

# (regex on the parameter's name, decayed?): weight decay on matrices (dense kernels and
# embeddings), none on biases and LayerNorm scales. A name no rule knows is refused, so a
# new parameter is never decayed, or left undecayed, by accident.
DECAY_RULES: tuple[tuple[str, bool], ...] = (
    (r"(^|_)kernel$", True),
    (r"^(wte|wpe)$", True),
    (r"(^|_)bias$", False),
    (r"^scale$", False),
)

# (regex on the parameter's path, how Muon sees it): the dimension numbers of a hidden weight matrix
# (its reduction axes, the input it reads, and output axes; every other axis, the stacked blocks'
# layer axis and qkv's q/k/v axis, is a batch of matrices orthogonalised one by one), or None for
# AdamW. Axes count from the end, so the layer axis in front changes nothing. q, k and v are each
# orthogonalised as ``train.muon_qkv`` says: "projection", the one D x (H*K) matrix of each; "head",
# H matrices of D x K (the head axis a batch too). The shape scale is 1 either way (H*K = D >= K).
# A path no rule names is refused: a new matrix left to AdamW by accident would bias the comparison.
MUON_QKV = {
    "projection": MuonDimensionNumbers(reduction_axis=-4, output_axis=(-2, -1)),
    "head": MuonDimensionNumbers(reduction_axis=-4, output_axis=-1),
}
MUON_RULES: tuple[tuple[str, MuonDimensionNumbers | dict | None], ...] = (
    (r"attn/qkv_kernel$", MUON_QKV),  # D x 3 x H x K
    (r"attn/out_kernel$", MuonDimensionNumbers(reduction_axis=(-3, -2), output_axis=-1)),  # H x K x D
    (r"mlp/(fc|proj)_kernel$", MuonDimensionNumbers(reduction_axis=-2, output_axis=-1)),  # D x F, F x D
    (r"(^|/)(wte|wpe)$", None),  # rows looked up, not a matrix applied to an input: wte is the head too
    (r"(^|[/_])bias$", None),
    (r"(^|/)scale$", None),
)
# Muon's momentum and Newton-Schulz steps: Jordan's defaults (optax's), untuned here.
MUON_MOMENTUM = 0.95
MUON_NS_STEPS = 5


def learning_rate_schedule(train_config):
    """Linear warmup from 0, then cosine, warmup-stable-decay (WSD) or constant: the rate at a step.

    Cosine and WSD end at ``learning_rate * min_lr_ratio``. WSD holds the peak rate and
    decays linearly over the last ``decay_fraction`` of the steps (Hägele et al. 2024).
    The same numbers as optax's warmup_cosine_decay_schedule and join_schedules of linear and
    constant schedules (tests/test_train.py holds them to optax's), computed by ``rate_at``.
    """
    args = schedule_args(train_config)
    return lambda step: rate_at(step, args)


def schedule_args(train_config) -> dict:
    """The numbers of ``train.schedule`` as float32 scalars: inputs of the compiled train step, not
    constants in it, so that the points of a sweep that share a shape (other budgets, rates, seeds)
    run one compiled step; as constants, every point compiled its own.

    Every schedule is three pieces: the warmup, the peak until ``decay_start``, then a decay over
    ``decay_steps`` (cosine where ``cosine`` is 1, else linear to ``decay_to``; constant decays from
    the peak to the peak). Differences and ratios are taken here in float64, as optax takes them.
    """
    peak = train_config.learning_rate
    warmup = train_config.warmup_steps
    total = train_config.steps
    floor = peak * train_config.min_lr_ratio
    schedule = train_config.schedule
    if schedule == "cosine":
        decay_start, decay_steps, decay_to = warmup, max(total, warmup + 1) - warmup, floor
    elif schedule == "constant":
        decay_start, decay_steps, decay_to = warmup, 1, peak
    elif schedule == "wsd":
        decay_start = wsd_stable_end(total, warmup, train_config.decay_fraction)
        decay_steps, decay_to = total - decay_start, floor
        if decay_steps <= 0:  # optax's linear schedule of no steps is its start value
            decay_steps, decay_to = 1, peak
    else:
        raise ValueError(f"train.schedule={schedule!r} is not one of cosine, wsd, constant.")
    alpha = 0.0 if peak == 0.0 else floor / peak
    numbers = {
        "peak": peak,
        "minus_peak": 0.0 - peak,
        "warmup": warmup,
        "warmup_steps": max(warmup, 1),  # a warmup of 0 steps is never read: its piece ends at step 0
        "decay_start": decay_start,
        "decay_steps": decay_steps,
        "decay_drop": peak - decay_to,
        "decay_to": decay_to,
        "alpha": alpha,
        "one_minus_alpha": 1 - alpha,
        "cosine": float(schedule == "cosine"),
    }
    return {name: np.float32(value) for name, value in numbers.items()}


def rate_at(step, args: dict):
    """The learning rate at ``step`` (an int or a traced int32) of the schedule ``schedule_args`` gave."""
    warmup_fraction = 1 - jnp.clip(step, 0, args["warmup_steps"]) / args["warmup_steps"]
    rate = args["minus_peak"] * warmup_fraction + args["peak"]
    rate = jnp.where(step < args["warmup"], rate, args["peak"])
    since = step - args["decay_start"]
    linear = args["decay_drop"] * (1 - jnp.clip(since, 0, args["decay_steps"]) / args["decay_steps"]) + args["decay_to"]
    cosine_decay = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(since, args["decay_steps"]) / args["decay_steps"]))
    cosine = args["peak"] * (args["one_minus_alpha"] * cosine_decay + args["alpha"])
    decayed = jnp.where(args["cosine"] > 0, cosine, linear)
    return jnp.where(step < args["decay_start"], rate, decayed)


def wsd_stable_end(total_steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """The step at which WSD starts to decay; up to it, WSD and constant give the same rates.

    A WSD run branched from a constant-rate trunk at this step is the run trained alone.
    """
    decay_steps = max(1, round(decay_fraction * total_steps))
    return max(warmup_steps, total_steps - decay_steps)


def _by_rule(params, rules, table: str, unknown: str, name_of=lambda full: full):
    """Each parameter's value in the first of ``rules`` (regex, value) whose pattern its ``name_of(path)``
    matches; a parameter no rule names is refused, so a new one never gets a choice by accident."""

    def lookup(path, _):
        full = path_str(path)
        for pattern, value in rules:
            if re.search(pattern, name_of(full)):
                return value
        raise ValueError(
            f"parameter {full} matches no rule in optim.{table}, so {unknown} is unknown; add a rule for it."
        )

    return jax.tree_util.tree_map_with_path(lookup, params)


def decay_mask(params):
    """True where ``DECAY_RULES`` decay a parameter, False where they do not; an unknown name is refused."""
    return _by_rule(
        params, DECAY_RULES, "DECAY_RULES", "whether weight decay applies to it", lambda full: full.rsplit("/", 1)[-1]
    )


def muon_dimension_numbers(params, qkv: str = "projection"):
    """``MUON_RULES``' dimension numbers of each parameter (q, k and v's as ``qkv`` names, a key of
    ``MUON_QKV``), None for one AdamW updates; an unknown path is refused."""
    # A parameter optax.partition gave to the other branch is a MaskedNode, with no leaf to look up.
    rules = tuple((pattern, value[qkv] if isinstance(value, dict) else value) for pattern, value in MUON_RULES)
    return _by_rule(params, rules, "MUON_RULES", "whether Muon or AdamW updates it")


def muon_labels(params):
    """'muon' or 'adamw' per parameter, as ``MUON_RULES`` say."""
    numbers = muon_dimension_numbers(params)
    return jax.tree.map(
        lambda dims: "adamw" if dims is None else "muon",
        numbers,
        is_leaf=lambda node: node is None or isinstance(node, MuonDimensionNumbers),
    )


def scale_by_adam_in(dtype, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam's scaling with both moments stored in ``dtype`` and every update computed in float32.

    bfloat16 keeps 8 bits of mantissa: an EMA step of (1 - b2) = 0.05 of the moment is well
    above its rounding (2^-8 relative), so the moments still move at GPT-2's betas.
    """

    def init(params):
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, dtype), params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update(updates, state, params=None):
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda m, g: b1 * m.astype(jnp.float32) + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v.astype(jnp.float32) + (1 - b2) * g * g, state.nu, updates)
        mu_hat = jax.tree.map(lambda m: m / (1 - b1**count), mu)
        nu_hat = jax.tree.map(lambda v: v / (1 - b2**count), nu)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
        stored = jax.tree.map(lambda x: x.astype(dtype), (mu, nu))
        return updates, optax.ScaleByAdamState(count=count, mu=stored[0], nu=stored[1])

    return optax.GradientTransformation(init, update)


def adamw(train_config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """AdamW at ``schedule`` with decoupled weight decay on ``decay_mask``'s parameters: ``adamw``, and Muon's
    branch for the parameters that are not hidden matrices."""
    return optax.adamw(
        schedule,
        b1=train_config.beta1,
        b2=train_config.beta2,
        eps=train_config.eps,
        weight_decay=train_config.weight_decay,
        mask=decay_mask,
    )


def make_optimizer(train_config) -> optax.GradientTransformation:
    """Global-norm clipping, then ``train.optimizer`` with decoupled weight decay on ``decay_mask``'s parameters,
    at a rate of 1: ``steps.train_step`` scales the update by the schedule's rate, an input of the step
    (``schedule_args``). The rate stays a schedule, so the optimizer state keeps its step count and a
    checkpoint of the schedule's state restores as before.
    """
    schedule_args(
        train_config
    )  # an unknown train.schedule is refused here with the other config errors, before a run starts
    schedule = optax.constant_schedule(1.0)
    name = train_config.optimizer
    if name == "adamw":
        update = adamw(train_config, schedule)
    elif name == "adamw_bf16":
        update = optax.chain(
            scale_by_adam_in(jnp.bfloat16, train_config.beta1, train_config.beta2, train_config.eps),
            optax.add_decayed_weights(train_config.weight_decay, decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    elif name == "muon":
        # The step scales every update by train.learning_rate's schedule (rate_at); Muon's branch runs at
        # train.muon_learning_rate on the same schedule, so its updates carry the ratio of the two peaks, a
        # constant of this optimizer (``compiled_train_keys``).
        ratio = train_config.muon_learning_rate / train_config.learning_rate
        if train_config.muon_qkv not in MUON_QKV:
            raise ValueError(f"train.muon_qkv={train_config.muon_qkv!r} is not one of {', '.join(MUON_QKV)}.")
        numbers = functools.partial(muon_dimension_numbers, qkv=train_config.muon_qkv)
        muon = optax.chain(
            scale_by_muon(beta=MUON_MOMENTUM, ns_steps=MUON_NS_STEPS, weight_dimension_numbers=numbers),
            # Jordan's sqrt(max(1, fan_out / fan_in)): twice the update for the MLP's D -> 4D matrix, as the
            # spectral condition for feature learning asks (Yang, Simon and Bernstein 2023).
            scale_by_shape(weight_dimension_numbers=numbers),
            # Decayed before the ratio scales it: wd / ratio x ratio x the schedule is AdamW's wd x lr.
            optax.add_decayed_weights(train_config.weight_decay / ratio, decay_mask),
            optax.scale_by_learning_rate(ratio),
        )
        update = optax.partition({"muon": muon, "adamw": adamw(train_config, schedule)}, muon_labels)
    elif name == "adafactor":
        # optax.adafactor adds weight_decay_rate * params after the learning rate (10% of every
        # weight a step at 0.1: the tiny config's loss stayed at 10.5); decay here is AdamW's,
        # scaled by the schedule like the update.
        update = optax.chain(
            optax.scale_by_factored_rms(),
            optax.clip_by_block_rms(1.0),
            optax.add_decayed_weights(train_config.weight_decay, decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    else:
        raise ValueError(f"train.optimizer={name!r} is not one of {', '.join(ALL_OPTIMIZERS)}.")
    return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), update)


def compiled_train_keys(train_config) -> tuple[str, ...]:
    """The schedule keys (``trainer.PER_RUN_KEYS``) whose values ``make_optimizer`` compiles into the optimizer
    rather than leaving to the step's schedule input: Muon's branch carries muon_learning_rate / learning_rate."""
    return ("learning_rate",) if train_config.optimizer == "muon" else ()
