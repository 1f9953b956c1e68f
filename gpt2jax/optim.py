"""Optax: AdamW with weight decay on matrices only, global-norm clipping, and schedules."""

import re

import jax
import optax

from gpt2jax.trees import path_str

# (regex on the parameter's name, decayed?): weight decay on matrices (dense kernels and
# embeddings), none on biases and LayerNorm scales. A name no rule knows is refused, so a
# new parameter is never decayed, or left undecayed, by accident.
DECAY_RULES: tuple[tuple[str, bool], ...] = (
    (r"(^|_)kernel$", True),
    (r"^(wte|wpe)$", True),
    (r"(^|_)bias$", False),
    (r"^scale$", False),
)


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warmup from 0, then cosine, warmup-stable-decay (WSD) or constant.

    Cosine and WSD end at ``learning_rate * min_lr_ratio``. WSD holds the peak rate and
    decays linearly over the last ``decay_fraction`` of the steps (Hägele et al. 2024).
    """
    peak = train_config.learning_rate
    warmup = train_config.warmup_steps
    total = train_config.steps
    floor = peak * train_config.min_lr_ratio
    if train_config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), floor)
    if train_config.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    if train_config.schedule == "wsd":
        stable_end = wsd_stable_end(total, warmup, train_config.decay_fraction)
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, peak, warmup),
                optax.constant_schedule(peak),
                optax.linear_schedule(peak, floor, total - stable_end),
            ],
            [warmup, stable_end],
        )
    raise ValueError(f"train.schedule={train_config.schedule!r} is not one of cosine, wsd, constant.")


def wsd_stable_end(total_steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """The step at which WSD starts to decay; up to it, WSD and constant give the same rates.

    A WSD run branched from a constant-rate trunk at this step is the run trained alone.
    """
    decay_steps = max(1, round(decay_fraction * total_steps))
    return max(warmup_steps, total_steps - decay_steps)


def decay_mask(params):
    """True where ``DECAY_RULES`` decay a parameter, False where they do not; an unknown name is refused."""

    def decayed(path, _):
        full = path_str(path)
        name = full.rsplit("/", 1)[-1]
        for pattern, decay in DECAY_RULES:
            if re.search(pattern, name):
                return decay
        raise ValueError(
            f"parameter {full} matches no rule in optim.DECAY_RULES, so whether weight decay "
            "applies to it is unknown; add a rule for it."
        )

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip),
        optax.adamw(
            learning_rate_schedule(train_config),
            b1=train_config.beta1,
            b2=train_config.beta2,
            eps=train_config.eps,
            weight_decay=train_config.weight_decay,
            mask=decay_mask,
        ),
    )
