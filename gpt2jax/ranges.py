"""Every numeric setting of a run config, its valid range declared once, and the one check that reads them.

A value outside its range never fails where it should: ``train.beta2=1.5`` and
``train.min_lr_ratio=5`` trained to exit 0 (the rate climbed to 3x its peak by step 3), a NaN
learning rate stopped at step 2 advising ``learning_rate=nan``, ``model.n_layer=0`` ended in a
ZeroDivisionError, ``train.batch_size=0`` was refused only after the workdir held its config.
So every number a run reads has a ``Range`` in ``RUN_CONFIG_RANGES`` (``tests/test_config.py``
fails for a numeric key without one), checked by ``build_trainer`` before anything runs, and by
``GPTConfig.validate`` for the model keys wherever a model is built. The sweep config's own
numbers have their table in ``scaling/plan.py``, read by the same ``check``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers


@dataclasses.dataclass(frozen=True)
class Range:
    """``low`` to ``high`` (each excluded where ``*_open``), finite, a whole number where ``whole``;
    ``special`` values outside it mean something of their own (a mesh axis of -1: the devices left)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    whole: bool = False
    special: tuple = ()

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if value in self.special:
            return True
        if self.whole and not isinstance(value, numbers.Integral):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def describe(self) -> str:
        """``a whole number of at least 1``, ``a number in [0, 1)``, ``a finite number above 0``..."""
        kind = "a whole number" if self.whole else "a finite number" if math.isinf(self.high) else "a number"
        if math.isinf(self.low) and math.isinf(self.high):
            text = kind
        elif math.isinf(self.high):
            text = f"{kind} {'above' if self.low_open else 'of at least'} {self.low:g}"
        elif math.isinf(self.low):
            text = f"{kind} {'below' if self.high_open else 'of at most'} {self.high:g}"
        else:
            text = (
                f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
            )
        return text + "".join(f", or {value:g}" for value in self.special)


def whole(low: int, high: float = math.inf, special: tuple = ()) -> Range:
    return Range(low, high, whole=True, special=special)


POSITIVE = Range(0.0, low_open=True)  # a finite number above 0
NON_NEGATIVE = Range(0.0)
FRACTION = Range(0.0, 1.0)  # [0, 1]
DECAY = Range(0.0, 1.0, high_open=True)  # [0, 1): an average's decay (1 never forgets its start)
COUNT = whole(1)
MESH_AXIS = whole(1, special=(-1,))
LIMIT = Range(0.0, low_open=True, special=(math.inf,))  # a finite number above 0, or inf: no limit

# The run config's numeric keys (their meaning: config.base_config's comments and GPTConfig's fields).
RUN_CONFIG_RANGES: dict[str, Range] = {
    "model.n_layer": COUNT,
    "model.n_head": COUNT,
    "model.n_embd": COUNT,
    "model.block_size": COUNT,
    "model.vocab_size": whole(2),  # the divergence stop reads ln(vocab_size): one token predicts nothing
    "model.vocab_multiple": COUNT,
    "model.dropout": DECAY,
    "data.val_fraction": Range(0.0, 1.0, low_open=True, high_open=True),  # both splits hold tokens
    "data.synthetic_train_tokens": COUNT,
    "data.synthetic_val_tokens": COUNT,
    "data.max_tokens": whole(0),  # 0: the whole corpus
    "data.shard_tokens": COUNT,
    "data.workers": whole(0),  # 0: every core
    "train.batch_size": COUNT,
    "train.grad_accum_steps": COUNT,
    "train.steps": COUNT,
    # 0 trains nothing and keeps the weights to the bit (tests/test_interop.py imports weights that way).
    "train.learning_rate": NON_NEGATIVE,
    "train.muon_learning_rate": POSITIVE,  # optim.py divides by it (Muon's decay is AdamW's per step)
    "train.warmup_steps": whole(0),
    "train.min_lr_ratio": FRACTION,  # of the peak: 5 made the rate climb to 3x its peak
    "train.decay_fraction": FRACTION,
    "train.weight_decay": NON_NEGATIVE,
    "train.beta1": DECAY,
    "train.beta2": DECAY,
    "train.eps": POSITIVE,
    "train.grad_clip": POSITIVE,  # the global norm clipped to; 0 would zero every update
    "train.seed": whole(0),
    "train.log_every": COUNT,
    "train.eval_every": COUNT,
    "train.eval_batches": COUNT,
    "train.eval_limit": whole(0),  # 0: every example
    "train.checkpoint_every": COUNT,
    "train.keep_checkpoints": COUNT,
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": MESH_AXIS,
    "mesh.tensor": MESH_AXIS,
}


def refusals(values: dict, table: dict[str, Range], prefix: str = "", shown: str | None = None) -> list[str]:
    """``KEY=VALUE must be RANGE`` for each of ``values`` (or each item of a list value) outside its range in
    ``table`` (keyed ``prefix + key``, named ``shown + key``); keys the table lacks are not numbers."""
    found = []
    for key, value in values.items():
        bounds = table.get(prefix + key)
        if bounds is None:
            continue
        items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
        for index, item in items:
            if not bounds.holds(item):
                name = (prefix if shown is None else shown) + key + (f"[{index}]" if index is not None else "")
                found.append(f"{name}={item!r} must be {bounds.describe()}")
    return found


def check(values: dict, table: dict[str, Range], prefix: str = "") -> None:
    """Refuses, in one sentence naming each, the values ``refusals`` finds out of range."""
    found = refusals(values, table, prefix)
    if found:
        raise ValueError("; ".join(found) + ".")
