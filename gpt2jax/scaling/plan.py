"""A sweep config expanded into training points, the jobs that run them, and each worker's share.

A sweep config (an ml_collections file in ``experiments/``, ``get_config(variant='')``) holds

  base       the training config every point starts from (``gpt2jax.config.base_config()``)
  shapes     the models, dicts of n_layer, n_head, n_embd
  grid       'isoflop': ``budgets`` are FLOPs C, each shape trains on D = C / (6N) tokens;
             'tokens': ``budgets`` are token counts D, every shape trains on each
  budgets    the FLOP or token budgets
  seeds      one point per seed; at least two, so each fit comes with its seed-to-seed spread
  params     'total' (default, Chinchilla's count) or 'non_embedding' (Kaplan's): the N in
             D = C / (6N) and in tokens per parameter
  schedule   'cosine', 'wsd' or 'constant': every point is a run of its own;
             'wsd_branches': per shape and seed, one constant-rate trunk, and each point a
             WSD cooldown branched from it (Hägele et al. 2024)
  rules      learning rate, batch size and warmup as functions of the model (see below)
  limits     min_steps, min_tokens_per_param, max_tokens_per_param: points outside are dropped;
             max_epochs: a grid whose points would read their corpus more often is refused
  lr_check   multipliers of the rule's learning rate (e.g. [0.5, 2.0]) that the smallest and
             the largest shape also train at, at their lowest budget and first seed
  lr_tuning  multipliers (e.g. [0.25, 0.5, 1, 2, 4]) of a scan those two shapes train at first,
             each at the lowest budget where it trains min_steps steps;
             the rule fitted to its best rates then sets every point's rate (``scaling.tuning``)
  allocations
             points outside the grid, each a dict of label, n_layer, n_head, n_embd and an
             isoflop budget, trained at that budget by every seed on the same rules, outside
             the tokens-per-parameter limits (not the step floor): two ways to spend one budget
             set side by side, such as GPT-2's 6.4 tokens per parameter and a fit's optimum
  smoke_test True lifts the floors below, for tests and quick trials; never for a fit
  evals_per_run, checkpoints_per_run
             how often a point evaluates (its loss curve) and saves (what a killed run loses)

The rules, since an untuned size biases the fitted exponents:
  learning_rate = rules.learning_rate * (rules.width_reference / n_embd) ** rules.lr_width_exponent
      Adam's best rate falls with width (muP's 1/width for hidden matrices); the exponent
      is tuned per sweep from short trials and written in its config.
  batch_size = rules.batch_size * (N / rules.params_reference) ** rules.batch_params_exponent,
      rounded to a power of two within [rules.min_batch_size, rules.max_batch_size]. It depends
      on the model, not on D, so a trunk and all its branches share one batch.
  warmup_steps = max(rules.min_warmup_steps, round(rules.warmup_fraction * steps)), with steps
      the point's own, or for a trunk its shortest branch's, so every branch shares the warmup.

N counts all parameters (flops.count_params with the model's true vocabulary), as
Chinchilla does, unless ``params`` says non_embedding, and FLOPs are 6ND unless a column says otherwise.

Floors the planner enforces (a config below them is refused, unless ``smoke_test``): at
least ``MIN_STEPS`` steps and ``MIN_TOKENS_PER_PARAM`` token per parameter per point, warmup
at most ``MAX_WARMUP_FRACTION`` of a point's steps, and ``MIN_SEEDS`` seeds. The old CPU
sweep had points of 73 steps, 10 of them warmup, and one seed; their losses carried more
schedule than model.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import ml_collections

from gpt2jax import flops, ranges
from gpt2jax.config import check_run_config, load_config_file
from gpt2jax.training.optim import wsd_stable_end

GRIDS = ("isoflop", "tokens")
BRANCHED = "wsd_branches"
SCHEDULES = ("cosine", "wsd", "constant", BRANCHED)
PARAM_COUNTS = {"total": "n_params", "non_embedding": "n_params_non_embedding"}
MIN_STEPS = 200
MIN_TOKENS_PER_PARAM = 1.0
MAX_WARMUP_FRACTION = 0.1
MIN_SEEDS = 2
# Muennighoff et al. (2023) find up to ~4 epochs nearly as good as fresh data, but a law fitted
# on repeated tokens mixes that effect into its D term; by default a point reads its corpus once.
DEFAULT_MAX_EPOCHS = 1.0


# A sweep config's keys: None marks a key it must set, anything else is the default of an optional one.
SWEEP_KEYS = {
    "base": None,
    "shapes": None,
    "grid": None,
    "budgets": None,
    "seeds": None,
    "schedule": None,
    "rules": None,
    "limits": None,
    "evals_per_run": None,
    "checkpoints_per_run": None,
    "params": "total",
    "lr_multipliers": [1.0],
    "lr_check": [],
    "lr_tuning": [],
    "allocations": [],
    "smoke_test": False,
}
RULE_KEYS = {
    "learning_rate": None,
    "width_reference": None,
    "lr_width_exponent": None,
    "batch_size": None,
    "params_reference": None,
    "batch_params_exponent": None,
    "min_batch_size": None,
    "max_batch_size": None,
    "warmup_fraction": None,
    "min_warmup_steps": None,
}
LIMIT_KEYS = {
    "min_steps": None,
    "min_tokens_per_param": None,
    "max_tokens_per_param": None,
    "max_epochs": DEFAULT_MAX_EPOCHS,
}
# The sweep config's numeric keys and their ranges (a list's every item); its shapes' and allocations'
# n_layer, n_head and n_embd have the model's (ranges.RUN_CONFIG_RANGES), and its base the run config's.
SWEEP_RANGES: dict[str, ranges.Range] = {
    "budgets": ranges.POSITIVE,
    "seeds": ranges.whole(0),
    "evals_per_run": ranges.COUNT,
    "checkpoints_per_run": ranges.COUNT,
    "lr_multipliers": ranges.POSITIVE,
    "lr_check": ranges.POSITIVE,
    "lr_tuning": ranges.POSITIVE,
    "allocations.budget": ranges.POSITIVE,
    "rules.learning_rate": ranges.POSITIVE,
    "rules.width_reference": ranges.POSITIVE,
    "rules.lr_width_exponent": ranges.Range(),
    "rules.batch_size": ranges.POSITIVE,
    "rules.params_reference": ranges.POSITIVE,
    "rules.batch_params_exponent": ranges.Range(),
    "rules.min_batch_size": ranges.COUNT,
    "rules.max_batch_size": ranges.COUNT,
    "rules.warmup_fraction": ranges.FRACTION,
    "rules.min_warmup_steps": ranges.whole(0),
    "limits.min_steps": ranges.COUNT,
    "limits.min_tokens_per_param": ranges.NON_NEGATIVE,
    "limits.max_tokens_per_param": ranges.LIMIT,
    "limits.max_epochs": ranges.LIMIT,
}


def load_sweep_config(spec: str) -> ml_collections.ConfigDict:
    """``experiments/X.py`` or ``experiments/X.py:VARIANT``: the file's ``get_config([VARIANT])``, checked."""
    return checked_sweep_config(load_config_file(spec))


def _checked_section(section, keys: dict, where: str) -> dict:
    values = dict(section)
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {', '.join(unknown)}; its keys are {', '.join(sorted(keys))}.")
    missing = sorted(key for key, default in keys.items() if default is None and key not in values)
    if missing:
        raise ValueError(f"{where} lacks the key(s) {', '.join(missing)}.")
    return {key: values.get(key, default) for key, default in keys.items()}


def checked_sweep_config(config) -> ml_collections.ConfigDict:
    """The sweep config with its optional keys filled in, locked; a misspelt or missing key is refused.

    A run config refuses a key it does not declare; a sweep config does the same, so a misspelt
    ``lr_check`` or ``smoke_test`` is an error rather than a sweep that silently skips it.
    """
    values = _checked_section(config, SWEEP_KEYS, "the sweep config")
    values["rules"] = _checked_section(config.rules, RULE_KEYS, "the sweep config's rules")
    values["limits"] = _checked_section(config.limits, LIMIT_KEYS, "the sweep config's limits")
    values["base"] = config.base
    checked = ml_collections.ConfigDict(values)
    checked.lock()
    return checked


@dataclasses.dataclass(frozen=True)
class Point:
    """One trained model and the row it adds to results.csv."""

    run: str  # its id and its workdir's name under points/
    n_layer: int
    n_head: int
    n_embd: int
    seed: int
    schedule: str  # of the final model: cosine | wsd | constant
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    budget: float  # the IsoFLOP budget; for a tokens grid, the point's own 6ND
    trunk: str = ""  # the constant-rate run it branches from, "" for a run of its own
    branch_step: int = 0  # the trunk step it starts from
    lr_multiplier: float = 1.0  # of the rule's rate: 1 for the grid, others for the learning-rate check


@dataclasses.dataclass(frozen=True)
class Job:
    """What one worker runs under one lock: a point of its own, or a trunk and its branches."""

    name: str
    points: tuple[Point, ...]

    @property
    def is_branched(self) -> bool:
        return bool(self.points[0].trunk)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    config: ml_collections.ConfigDict
    jobs: tuple[Job, ...]

    @property
    def points(self) -> list[Point]:
        return [point for job in self.jobs for point in job.points]

    @property
    def block_size(self) -> int:
        return self.config.base.model.block_size

    def shape(self, point: Point) -> flops.Shape:
        model = self.config.base.model
        return flops.Shape(point.n_layer, point.n_head, point.n_embd, model.vocab_size, model.block_size)

    def tokens(self, point: Point, steps: int | None = None) -> int:
        return (point.steps if steps is None else steps) * point.batch_size * self.block_size

    @property
    def max_epochs(self) -> float:
        return self.config.limits.max_epochs

    @property
    def param_count(self) -> str:
        """The accounting key of the N this sweep's budgets and floors use."""
        return PARAM_COUNTS[self.config.params]

    def epochs(self, point: Point, unique_tokens: int) -> float:
        """How many times the point reads its corpus of ``unique_tokens`` training tokens."""
        return self.tokens(point) / unique_tokens

    def accounting(self, point: Point) -> dict:
        """Parameter counts, and training FLOPs by each formula, of the point trained alone."""
        shape = self.shape(point)
        counts = flops.count_params(shape)
        tokens = self.tokens(point)
        per_token = flops.flops_per_token(shape)
        return {
            "n_params": counts["n_params"],
            "n_params_non_embedding": counts["n_params_non_embedding"],
            "n_tokens": tokens,
            "flops": 6.0 * counts["n_params"] * tokens,
            **{f"flops_{name}": value * tokens for name, value in per_token.items()},
        }

    def spent_steps(self, point: Point) -> int:
        """Steps this point adds to the sweep: all of its own, or a branch's trunk segment and cooldown.

        A trunk segment is the stretch since the previous branch's start, so the steps of a
        family add up to its trunk's length plus every cooldown.
        """
        if not point.trunk:
            return point.steps
        family = next(job.points for job in self.jobs if job.name == point.trunk)
        index = family.index(point)
        segment_start = family[index - 1].branch_step if index else 0
        return point.branch_step - segment_start + point.steps - point.branch_step

    def spent_flops(self, point: Point, formula: str = "6n") -> float:
        """FLOPs (by ``formula``: 6n, 6n_attention or chinchilla) this point adds to the sweep."""
        per_token = flops.flops_per_token(self.shape(point))[formula]
        return per_token * self.tokens(point, self.spent_steps(point))

    def job_flops(self, job: Job, formula: str = "6n") -> float:
        return sum(self.spent_flops(point, formula) for point in job.points)

    def train_config(self, point: Point, workdir_of) -> ml_collections.ConfigDict:
        """The full training config of a point; ``workdir_of(run)`` is the workdir of a run id."""
        config = self._run_config(point, point.schedule, start=point.branch_step, steps=point.steps)
        if point.trunk:
            config.train.init_from = f"checkpoint:{workdir_of(point.trunk)}@{point.branch_step}"
        return config

    def trunk_config(self, job: Job, steps: int) -> ml_collections.ConfigDict:
        """The constant-rate trunk of a branched job, trained up to ``steps``.

        A constant schedule does not depend on train.steps, so resuming the trunk with more
        steps continues the same run. It keeps every checkpoint a branch may start from.
        """
        config = self._run_config(job.points[-1], "constant", start=0, steps=job.points[-1].branch_step)
        config.train.steps = steps
        config.train.keep_checkpoints = len(job.points) + self.config.checkpoints_per_run + 1
        return config

    def _run_config(self, point: Point, schedule: str, start: int, steps: int) -> ml_collections.ConfigDict:
        """A run from step ``start`` to ``steps``, evaluating and saving a few times over that span.

        Its log windows depend on ``steps`` alone, so a branch's last training-loss window is
        the one the same run trained alone would log.
        """
        config = ml_collections.ConfigDict(self.config.base.to_dict())
        config.model.update(n_layer=point.n_layer, n_head=point.n_head, n_embd=point.n_embd)
        span = steps - start
        config.train.update(
            steps=steps,
            schedule=schedule,
            seed=point.seed,
            batch_size=point.batch_size,
            learning_rate=point.learning_rate,
            warmup_steps=point.warmup_steps,
            init_from="resume",
            sampling="epochs",  # every window once before any repeats: a point's epochs are passes over the data
            eval_every=max(1, span // self.config.evals_per_run),
            checkpoint_every=max(1, span // self.config.checkpoints_per_run),
            log_every=max(1, min(config.train.log_every, steps // 20)),
        )
        return config

    def shard(self, index: int, count: int) -> list[Job]:
        """Worker ``index`` of ``count``'s jobs: biggest first, each to the least-loaded worker.

        Deterministic, so every worker computes the same split; the shares are disjoint and
        cover every job, and their FLOPs differ by at most the biggest job.
        """
        if not 0 <= index < count:
            raise ValueError(f"--shard {index}/{count} is out of range; give i/n with 0 <= i < n.")
        loads = [0.0] * count
        mine = []
        for job in sorted(self.jobs, key=lambda job: (-self.job_flops(job), job.name)):
            worker = min(range(count), key=lambda k: (loads[k], k))
            loads[worker] += self.job_flops(job)
            if worker == index:
                mine.append(job)
        return mine


def learning_rate(rules, n_embd: int) -> float:
    return rules.learning_rate * (rules.width_reference / n_embd) ** rules.lr_width_exponent


def batch_size(rules, n_params: int) -> int:
    raw = rules.batch_size * (n_params / rules.params_reference) ** rules.batch_params_exponent
    return int(min(max(2 ** round(math.log2(raw)), rules.min_batch_size), rules.max_batch_size))


def warmup_steps(rules, steps: int) -> int:
    return max(rules.min_warmup_steps, round(rules.warmup_fraction * steps))


def shape_name(shape: dict) -> str:
    return f"L{shape['n_layer']}H{shape['n_head']}W{shape['n_embd']}"


def repeated_fraction(epochs: float) -> float:
    """The share of a point's tokens that repeat ones it already read. A sweep's points read every
    window once per epoch (``train.sampling='epochs'``), so only what lies past the first epoch repeats."""
    return max(0.0, 1.0 - 1.0 / epochs) if epochs > 0 else 0.0


def _check_floors(config) -> None:
    """Refuses limits, rules and seeds below the floors, unless the config is a smoke test."""
    if config.smoke_test:
        return
    limits, rules = config.limits, config.rules
    below = []
    if limits.min_steps < MIN_STEPS:
        below.append(f"limits.min_steps={limits.min_steps} (at least {MIN_STEPS})")
    if limits.min_tokens_per_param < MIN_TOKENS_PER_PARAM:
        below.append(f"limits.min_tokens_per_param={limits.min_tokens_per_param:g} (at least {MIN_TOKENS_PER_PARAM:g})")
    if rules.warmup_fraction > MAX_WARMUP_FRACTION:
        below.append(f"rules.warmup_fraction={rules.warmup_fraction:g} (at most {MAX_WARMUP_FRACTION:g})")
    if len(config.seeds) < MIN_SEEDS:
        below.append(f"{len(config.seeds)} seed(s) (at least {MIN_SEEDS}, for the seed-to-seed spread)")
    if below:
        raise ValueError(
            f"the sweep is below the planner's floors: {'; '.join(below)}; raise them, or set smoke_test=True "
            "for a trial whose points no fit should use."
        )


def _check_warmup(plan: "SweepPlan") -> None:
    if plan.config.smoke_test:
        return
    for point in plan.points:
        shortest = min(p.steps for p in plan.points if p.trunk == point.trunk) if point.trunk else point.steps
        if point.warmup_steps > MAX_WARMUP_FRACTION * shortest:
            raise ValueError(
                f"point {point.run} warms up for {point.warmup_steps} of its {shortest} steps, more than "
                f"{MAX_WARMUP_FRACTION:.0%}; lower rules.min_warmup_steps or raise limits.min_steps."
            )


def unique_train_tokens(config) -> int | None:
    """Training tokens of the sweep's corpus if known before training: a synthetic source's count, a
    prepared directory's meta.json, a named Hub corpus's published size less its validation share, at
    most ``data.max_tokens``; None when only preparing it tells."""
    from gpt2jax.data import loader, prepare
    from gpt2jax.data.hub import PUBLISHED_TOKENS

    data = config.base.data
    if prepare.is_synthetic(data.source):
        return min(data.synthetic_train_tokens, data.max_tokens or data.synthetic_train_tokens)
    kwargs = dict(val_fraction=data.val_fraction, text_key=data.text_key, max_tokens=data.max_tokens or None)
    prepared = Path(data.dir) / loader.prepared_dir_name(data.source, **kwargs)
    if (prepared / prepare.META_FILE).is_file():
        return prepare.read_meta(prepared)["train_tokens"]
    if data.source in PUBLISHED_TOKENS:
        published = int(PUBLISHED_TOKENS[data.source] * (1 - data.val_fraction))
        return min(published, data.max_tokens or published)
    return data.max_tokens or None


def check_repetition(plan: "SweepPlan", unique_tokens: int | None) -> None:
    """Refuses a grid whose points would read their corpus more than ``limits.max_epochs`` times."""
    if unique_tokens is None:
        return
    limit = plan.max_epochs
    worst = max(plan.points, key=lambda point: plan.tokens(point))
    epochs = plan.epochs(worst, unique_tokens)
    if epochs > limit:
        raise ValueError(
            f"point {worst.run} reads {plan.tokens(worst):,} tokens, {epochs:.2f} epochs of the corpus's "
            f"{unique_tokens:,} ({repeated_fraction(epochs):.0%} of them repeats), beyond limits.max_epochs="
            f"{limit:g}; give the sweep more data (data.max_tokens) or smaller budgets."
        )


def _check_ranges(config) -> None:
    """Refuses, in one sentence naming each, a sweep's numbers outside their ranges (``SWEEP_RANGES``), its
    shapes' outside the model's, and its base's outside the run config's, before any point is planned."""
    found = ranges.refusals(dict(config), SWEEP_RANGES)
    for section in ("rules", "limits"):
        found += ranges.refusals(dict(config[section]), SWEEP_RANGES, prefix=f"{section}.")
    for kind in ("shapes", "allocations"):
        for index, shape in enumerate(config[kind]):
            found += ranges.refusals(dict(shape), ranges.RUN_CONFIG_RANGES, prefix="model.", shown=f"{kind}[{index}].")
            found += ranges.refusals(dict(shape), SWEEP_RANGES, prefix=f"{kind}.", shown=f"{kind}[{index}].")
    ordered = (
        ("rules", "min_batch_size", "max_batch_size"),
        ("limits", "min_tokens_per_param", "max_tokens_per_param"),
    )
    for section, low, high in ordered if not found else ():
        if config[section][low] > config[section][high]:
            found.append(
                f"{section}.{low}={config[section][low]!r} must be at most {section}.{high}={config[section][high]!r}"
            )
    if found:
        raise ValueError("; ".join(found) + ".")
    check_run_config(config.base, shown="base.")


def _check(config) -> None:
    _check_ranges(config)
    if config.params not in PARAM_COUNTS:
        raise ValueError(f"sweep params={config.params!r} is not one of {', '.join(PARAM_COUNTS)}.")
    if config.grid not in GRIDS:
        raise ValueError(f"sweep grid={config.grid!r} is not one of {', '.join(GRIDS)}.")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"sweep schedule={config.schedule!r} is not one of {', '.join(SCHEDULES)}.")
    if not config.shapes or not config.budgets or not config.seeds:
        raise ValueError("a sweep needs at least one shape, one budget and one seed.")
    for allocation in config.allocations:
        missing = {"label", "n_layer", "n_head", "n_embd", "budget"} - set(allocation)
        if missing:
            raise ValueError(f"allocation {dict(allocation)} lacks {', '.join(sorted(missing))}.")
    for shape in [*config.shapes, *config.allocations]:
        if shape["n_embd"] % shape["n_head"]:
            raise ValueError(
                f"shape {shape_name(shape)}: n_embd={shape['n_embd']} must be divisible by n_head={shape['n_head']}."
            )


def _budget_steps(config, n_params: int, tokens_per_step: int, budgets, allocated=()) -> dict[int, float]:
    """steps -> budget of one shape's points inside the limits; budgets that round to one step count make one point.
    ``allocated`` budgets (an allocation's) need only the step floor."""
    limits = config.limits
    budget_steps = {}
    for budget in sorted({*budgets, *allocated}):
        nominal_tokens = budget / (6.0 * n_params) if config.grid == "isoflop" else budget
        steps = round(nominal_tokens / tokens_per_step)
        tokens_per_param = steps * tokens_per_step / n_params
        within = limits.min_tokens_per_param <= tokens_per_param <= limits.max_tokens_per_param
        if steps >= limits.min_steps and (within or budget in allocated):
            budget_steps.setdefault(
                steps, budget if config.grid == "isoflop" else 6.0 * n_params * steps * tokens_per_step
            )
    return budget_steps


def shape_params(config, shape: dict, count: str | None = None) -> int:
    """The shape's N in the sweep's count (``params``), or in ``count`` (total, non_embedding)."""
    model = config.base.model
    counts = flops.count_params(
        flops.Shape(shape["n_layer"], shape["n_head"], shape["n_embd"], model.vocab_size, model.block_size)
    )
    return counts[PARAM_COUNTS[count or config.params]]


def _shape_budget_steps(config, shape: dict, budgets, allocated=()) -> tuple[int, dict[int, float]]:
    """(batch, steps -> budget) of one shape: the batch rule reads total parameters, as it always has."""
    batch = batch_size(config.rules, shape_params(config, shape, "total"))
    tokens_per_step = batch * config.base.model.block_size
    return batch, _budget_steps(config, shape_params(config, shape), tokens_per_step, budgets, allocated)


def _shape_jobs(config, shape: dict, seed: int, lr_multiplier: float, budgets=None, allocated=()) -> list[Job]:
    rules = config.rules
    batch, budget_steps = _shape_budget_steps(config, shape, config.budgets if budgets is None else budgets, allocated)
    if not budget_steps:
        return []
    common = dict(
        **{key: shape[key] for key in ("n_layer", "n_head", "n_embd")},
        seed=seed,
        batch_size=batch,
        learning_rate=lr_multiplier * learning_rate(rules, shape["n_embd"]),
        lr_multiplier=lr_multiplier,
    )
    lr_tag = "" if lr_multiplier == 1 else f"_lr{lr_multiplier:g}x"
    name = shape_name(shape)
    if config.schedule == BRANCHED:
        warmup = warmup_steps(rules, min(budget_steps))
        trunk = f"{name}_trunk_b{batch}{lr_tag}_s{seed}"
        return [
            Job(
                trunk,
                tuple(
                    Point(
                        run=f"{name}_wsd_{steps}x{batch}{lr_tag}_s{seed}",
                        schedule="wsd",
                        steps=steps,
                        warmup_steps=warmup,
                        budget=budget,
                        trunk=trunk,
                        branch_step=wsd_stable_end(steps, warmup, config.base.train.decay_fraction),
                        **common,
                    )
                    for steps, budget in budget_steps.items()
                ),
            )
        ]
    jobs = []
    for steps, budget in budget_steps.items():
        run = f"{name}_{config.schedule}_{steps}x{batch}{lr_tag}_s{seed}"
        jobs.append(
            Job(
                run,
                (
                    Point(
                        run=run,
                        schedule=config.schedule,
                        steps=steps,
                        warmup_steps=warmup_steps(rules, steps),
                        budget=budget,
                        **common,
                    ),
                ),
            )
        )
    return jobs


def expand(config) -> SweepPlan:
    """Every point of the sweep, grouped into jobs; points outside ``limits`` are left out.

    ``lr_multipliers`` (optional, default [1]): every point once per multiplier of the rule's
    learning rate, a scan to tune the rule with. ``lr_check`` (optional): the smallest and the
    largest shape that have points also train at each multiplier, at their lowest budget and
    the first seed, so the report can say whether the rule's rate was the best of the three.
    """
    config = checked_sweep_config(config)
    _check(config)
    _check_floors(config)
    grid_shapes = {shape_name(shape): shape for shape in config.shapes}
    allocated = allocation_budgets(config)
    shapes = {**grid_shapes, **{name: shape for name, (shape, _) in allocated.items() if name not in grid_shapes}}
    jobs = [
        job
        for seed in config.seeds
        for name, shape in shapes.items()
        for multiplier in config.lr_multipliers
        for job in _shape_jobs(
            config,
            shape,
            seed,
            multiplier,
            budgets=config.budgets if name in grid_shapes else [],
            allocated=allocated.get(name, (None, ()))[1],
        )
    ]
    if not jobs:
        raise ValueError("no point of the sweep is inside its limits; widen limits or change budgets or shapes.")
    jobs += extreme_shape_jobs(config, jobs, [m for m in config.lr_check if m != 1.0])
    plan = SweepPlan(config, tuple(jobs))
    _check_warmup(plan)
    check_repetition(plan, unique_train_tokens(config))
    return plan


def allocation_budgets(config) -> dict[str, tuple[dict, tuple[float, ...]]]:
    """shape name -> (shape, budgets) of the config's ``allocations``."""
    allocated: dict[str, tuple[dict, tuple[float, ...]]] = {}
    for allocation in config.allocations:
        shape = {key: allocation[key] for key in ("n_layer", "n_head", "n_embd")}
        name = shape_name(shape)
        allocated[name] = (shape, allocated.get(name, (shape, ()))[1] + (float(allocation["budget"]),))
    return allocated


def allocation_points(plan: "SweepPlan") -> dict[str, list[Point]]:
    """label -> the points (one a seed) that train each of the config's ``allocations``."""
    return {
        allocation["label"]: [
            point
            for point in plan.points
            if point.lr_multiplier == 1.0
            and shape_name(dataclasses.asdict(point)) == shape_name(allocation)
            and math.isclose(point.budget, allocation["budget"])
        ]
        for allocation in plan.config.allocations
    }


def extreme_shape_jobs(config, jobs, multipliers, step_floor_only: bool = False) -> list[Job]:
    """The smallest and largest shape with points in ``jobs``, at their lowest budget and first seed, once
    per multiplier of the rule's rate (the learning-rate check's jobs). With ``step_floor_only`` (the
    tuning stage's scan) each is at the lowest budget where it trains ``limits.min_steps`` steps, whatever
    its tokens per parameter: the scan's points are not fitted, and the rule it fits must hold at the
    sweep's widest shape, which often has points only at the top budget."""
    if not multipliers:
        return []
    trained = {shape_name(dict(n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd)) for j in jobs for p in j.points}
    shapes = sorted((s for s in config.shapes if shape_name(s) in trained), key=lambda s: shape_params(config, s))

    def floors_only(budget: float) -> list[float]:  # budgets _budget_steps holds to the step floor alone
        return [budget] if step_floor_only else []

    scan = []
    for shape in {shape_name(s): s for s in (shapes[0], shapes[-1])}.values():
        budget = next(b for b in sorted(config.budgets) if _shape_budget_steps(config, shape, [b], floors_only(b))[1])
        for multiplier in multipliers:
            scan += _shape_jobs(config, shape, config.seeds[0], multiplier, [budget], floors_only(budget))
    return scan


def costs(plan: SweepPlan) -> dict:
    """Total FLOPs by each formula: of every point trained alone, and of the sweep as it runs.

    They differ when points branch from shared trunks; ``saved`` is the fraction branching saves.
    """
    formulas = ("6n", "6n_attention", "chinchilla")
    separate = {name: sum(plan.accounting(point)[f"flops_{name}"] for point in plan.points) for name in formulas}
    spent = {name: sum(plan.spent_flops(point, name) for point in plan.points) for name in formulas}
    return {
        "points": len(plan.points),
        "jobs": len(plan.jobs),
        "flops_separate": separate,
        "flops_spent": spent,
        "saved": 1.0 - spent["6n"] / separate["6n"],
    }


def format_plan(plan: SweepPlan) -> str:
    """The points and their FLOPs as a table (``walltime`` says how long they take on a device)."""
    unique = unique_train_tokens(plan.config)
    count = plan.param_count
    lines = [
        f"{'run':<38}{'N':>10}{'D':>12}{'D/N':>8}{'steps':>7}{'batch':>6}{'lr':>9}{'warmup':>7}{'budget':>10}"
        f"{'epochs':>8}"
    ]
    for point in plan.points:
        counts = plan.accounting(point)
        epochs = f"{plan.epochs(point, unique):>8.2f}" if unique else f"{'?':>8}"
        lines.append(
            f"{point.run:<38}{counts[count]:>10}{counts['n_tokens']:>12}"
            f"{counts['n_tokens'] / counts[count]:>8.1f}{point.steps:>7}{point.batch_size:>6}"
            f"{point.learning_rate:>9.2e}{point.warmup_steps:>7}{point.budget:>10.3g}{epochs}"
        )
    total = costs(plan)
    floors = (
        "smoke test: the floors are off, no fit should use these points"
        if plan.config.smoke_test
        else f"floors: >= {MIN_STEPS} steps, >= {MIN_TOKENS_PER_PARAM:g} token per parameter, warmup <= "
        f"{MAX_WARMUP_FRACTION:.0%} of the steps, >= {MIN_SEEDS} seeds"
    )
    most = max(plan.tokens(point) for point in plan.points)
    data = (
        f"the corpus has {unique:,} training tokens; the longest point reads {most / unique:.2f} epochs "
        f"({repeated_fraction(most / unique):.0%} repeats), limit {plan.max_epochs:g} epochs"
        if unique
        else f"the corpus's size is known once it is prepared; the limit is {plan.max_epochs:g} epochs"
    )
    lines += [
        f"N counts {count.removeprefix('n_').replace('_', ' ')}; {floors}",
        data,
        f"{total['points']} points in {total['jobs']} jobs; FLOPs (6N / 6N+attention / Chinchilla):",
    ]
    for label, key in (("each point trained alone", "flops_separate"), ("this sweep spends", "flops_spent")):
        values = total[key]
        lines.append(f"  {label:<25}{values['6n']:.3g} / {values['6n_attention']:.3g} / {values['chinchilla']:.3g}")
    lines.append(f"  branching saves {total['saved']:.1%}")
    return "\n".join(lines)
