"""The tuning stage: a learning-rate scan before the sweep, and the rule fitted to its best rates.

A sweep config's ``lr_tuning`` (multipliers of the rule's rate, e.g. [0.25, 0.5, 1, 2, 4]) makes
the sweep train its smallest and its largest shape first, each at the lowest budget where it trains
``limits.min_steps`` steps (the tokens-per-parameter floor is the fit's, and these points are not
fitted) and the first seed, once per multiplier. The widest shape is scanned, not the widest of
the lowest budget: a rule fitted between widths 8 and 16 and carried to 48 was 1.5 seed spreads
off there in experiments/cpu_english.py's first run. Each shape's best rate is the vertex of a parabola in log(rate) through its best
scan point and the two beside it; the power law in width through those best rates,

    learning_rate(n_embd) = L * (width_reference / n_embd) ** e,

replaces the config's ``rules.learning_rate`` and ``rules.lr_width_exponent`` for every point of
the sweep (and for its ``lr_check``). DeepSeek LLM (2024) and Porian et al. (2024) fit the best
rate as a power law of compute or of N; the sweep's rule is one in width, so the fit is too.
The scan runs as a sweep of its own in ``WORKDIR/tuning/`` (resumable and shardable like any),
and the fitted rule is ``WORKDIR/tuning.json``, which the main sweep's plan then reads.

A best rate at the edge of the scan is not a best rate: the stage refuses to fit it (a smoke
test only warns). No batch-size scan: the batch rule stays the config's.

A sweep of ``train.optimizer=muon`` tunes each of its two rates, so that it is compared with a
tuned AdamW, not one borrowing AdamW's rate: the scan above tunes ``train.learning_rate`` (Muon's
AdamW branch: embeddings, biases, norms) at the config's Muon rate; then a second scan trains the
same shapes at that fitted rule and each ``lr_tuning`` multiple of ``train.muon_learning_rate``, one
sweep workdir per multiple in ``WORKDIR/tuning_muon/``. One pass of coordinate search, not a grid:
2 x 5 runs a shape instead of 25. Muon's best rate is one for every width (the geometric mean of the
two shapes'), since its updates are scaled by their shape to carry across widths (Jordan's
sqrt(fan_out / fan_in)); both shapes' best rates are kept in tuning.json to show whether they did.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import ml_collections
import numpy as np

from gpt2jax.files.atomic import write_atomically
from gpt2jax.files.workdir import read_json
from gpt2jax.scaling.plan import SweepPlan, costs, expand, extreme_shape_jobs, shape_name

TUNING_DIR = "tuning"  # the scan's own sweep workdir, under the sweep's
MUON_TUNING_DIR = "tuning_muon"  # Muon's rate's scan: a sweep workdir per multiplier, under the sweep's
RULE_FILE = "tuning.json"  # the fitted rule, beside results.csv


def scan_plan(config, plan: SweepPlan) -> SweepPlan:
    """The scan: the smallest and largest shape of ``plan``, each at the lowest budget where it trains the step
    floor, once per ``lr_tuning`` multiplier."""
    jobs = extreme_shape_jobs(config, plan.jobs, sorted(config.lr_tuning), step_floor_only=True)
    return SweepPlan(plan.config, tuple(jobs))


def spent_flops(config, formula: str = "6n_attention") -> float:
    """FLOPs the whole sweep spends, its tuning scan included (the rates it fits change no FLOP count)."""
    plan = expand(config)
    total = costs(plan)["flops_spent"][formula]
    scans = (2 if tunes_muon(config) else 1) if config.lr_tuning else 0  # Muon's scan trains the same runs
    return total + (scans * costs(scan_plan(config, plan))["flops_spent"][formula] if scans else 0.0)


def tunes_muon(config) -> bool:
    """Whether the sweep trains Muon, whose own rate the stage tunes too."""
    return config.base.train.optimizer == "muon"


def best_rate(multipliers_losses: dict[float, float], rule_rate: float) -> tuple[float, bool]:
    """(best rate, bracketed) of one shape's scan: the vertex of the parabola in log(rate) through the
    lowest loss and its two neighbours; the lowest point itself where it is the scan's edge."""
    multipliers = sorted(multipliers_losses)
    losses = [multipliers_losses[m] for m in multipliers]
    logs = np.log(multipliers)
    best = int(np.argmin(losses))
    if best in (0, len(multipliers) - 1):
        return rule_rate * multipliers[best], False
    x, y = logs[best - 1 : best + 2], np.asarray(losses[best - 1 : best + 2])
    curvature, slope, _ = np.polyfit(x, y, 2)
    vertex = -slope / (2 * curvature) if curvature > 0 else logs[best]
    return rule_rate * math.exp(float(np.clip(vertex, x[0], x[-1]))), True


def fit_rule(config, rows: list[dict]) -> dict:
    """The rule fitted to the scan's rows (results.csv rows of ``scan_plan``'s points)."""
    scans: dict[tuple, dict[float, float]] = {}
    rule_rates: dict[tuple, float] = {}
    for row in rows:
        key = (int(row["n_layer"]), int(row["n_head"]), int(row["n_embd"]))
        multiplier = float(row["lr_multiplier"])
        scans.setdefault(key, {})[multiplier] = float(row["loss"])
        rule_rates[key] = float(row["learning_rate"]) / multiplier
    shapes = _best_rates(config, scans, rule_rates, "rate")
    reference = config.rules.width_reference
    narrow, wide = shapes[0], shapes[-1]
    if wide["n_embd"] != narrow["n_embd"]:
        exponent = math.log(narrow["best_rate"] / wide["best_rate"]) / math.log(wide["n_embd"] / narrow["n_embd"])
    else:  # one width scanned: its rate, the config's exponent
        exponent = config.rules.lr_width_exponent
    at_reference = [s["best_rate"] * (s["n_embd"] / reference) ** exponent for s in shapes]
    return {
        "learning_rate": float(np.exp(np.mean(np.log(at_reference)))),
        "lr_width_exponent": float(exponent),
        "width_reference": reference,
        "untuned": {"learning_rate": config.rules.learning_rate, "lr_width_exponent": config.rules.lr_width_exponent},
        "bracketed": all(s["bracketed"] for s in shapes),
        "shapes": shapes,
    }


def fit_muon_rate(config, rows_by_multiplier: dict[float, list[dict]]) -> dict:
    """Muon's rate fitted to its scan: ``rows_by_multiplier[m]`` are the results.csv rows of the scan at m x
    the config's ``train.muon_learning_rate``; one rate for every width, the geometric mean of the shapes'."""
    untuned = config.base.train.muon_learning_rate
    scans: dict[tuple, dict[float, float]] = {}
    for multiplier, rows in rows_by_multiplier.items():
        for row in rows:
            key = (int(row["n_layer"]), int(row["n_head"]), int(row["n_embd"]))
            scans.setdefault(key, {})[multiplier] = float(row["loss"])
    shapes = _best_rates(config, scans, dict.fromkeys(scans, untuned), "Muon rate")
    return {
        "muon_learning_rate": float(np.exp(np.mean([math.log(s["best_rate"]) for s in shapes]))),
        "muon_untuned": untuned,
        "muon_bracketed": all(s["bracketed"] for s in shapes),
        "muon_shapes": shapes,
    }


def _best_rates(config, scans: dict[tuple, dict[float, float]], rule_rates: dict[tuple, float], what: str) -> list:
    """Each scanned shape's best rate, narrowest first; one at the scan's edge is refused unless a smoke test."""
    shapes = []
    for key in sorted(scans, key=lambda key: key[2]):
        n_layer, n_head, n_embd = key
        rate, bracketed = best_rate(scans[key], rule_rates[key])
        shapes.append(
            dict(
                shape=shape_name(dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd)),
                n_embd=n_embd,
                rule_rate=rule_rates[key],
                best_rate=rate,
                bracketed=bracketed,
                losses={f"{m:g}": loss for m, loss in sorted(scans[key].items())},
            )
        )
    unbracketed = [s for s in shapes if not s["bracketed"]]
    if unbracketed and not config.smoke_test:
        worst = unbracketed[0]
        edge = "highest" if worst["best_rate"] > worst["rule_rate"] else "lowest"
        raise ValueError(
            f"the tuning scan's best {what} for {worst['shape']} is its {edge} multiplier ({worst['losses']}): the "
            "optimum lies outside the scan; widen lr_tuning and run the sweep in a new --workdir."
        )
    return shapes


def tuned_config(config, rule: dict) -> ml_collections.ConfigDict:
    """``config`` with the fitted rule in place of its learning-rate rule."""
    tuned = ml_collections.ConfigDict(config.to_dict())
    tuned.rules.update(learning_rate=rule["learning_rate"], lr_width_exponent=rule["lr_width_exponent"])
    if "muon_learning_rate" in rule:
        tuned.base.train.muon_learning_rate = rule["muon_learning_rate"]
    tuned.lock()
    return tuned


def muon_scan_configs(config, rule: dict) -> dict[float, ml_collections.ConfigDict]:
    """For each ``lr_tuning`` multiplier of Muon's rate: the sweep config at the fitted ``rule`` and that multiple
    of ``train.muon_learning_rate``, whose ``scan_plan`` trains the scanned shapes once."""
    configs = {}
    for multiplier in sorted(config.lr_tuning):
        scanned = ml_collections.ConfigDict(tuned_config(config, rule).to_dict())
        scanned.base.train.muon_learning_rate = multiplier * config.base.train.muon_learning_rate
        scanned.lr_tuning = [1.0]
        scanned.lock()
        configs[multiplier] = scanned
    return configs


@dataclasses.dataclass
class TuningStage:
    """The scan of a sweep in ``workdir``: run it, fit its rule, read the rule back."""

    config: ml_collections.ConfigDict
    plan: SweepPlan  # the untuned sweep, whose extreme shapes the scan trains
    workdir: Path

    @property
    def scan(self) -> SweepPlan:
        return scan_plan(self.config, self.plan)

    @property
    def rule_path(self) -> Path:
        return Path(self.workdir) / RULE_FILE

    def muon_scan_dir(self, multiplier: float) -> Path:
        return Path(self.workdir) / MUON_TUNING_DIR / f"{multiplier:g}x"

    def rule(self) -> dict | None:
        """The fitted rule, if this workdir's scan has been fitted."""
        return read_json(self.rule_path) if self.rule_path.is_file() else None

    def run(self, config_spec: str, shard: tuple[int, int], stale_after: float, log=print) -> dict | None:
        """Runs this worker's share of the scan; once every scan point is done, fits and writes the rule."""
        from gpt2jax.scaling.results import read_rows
        from gpt2jax.scaling.sweep import Sweep

        scan = Sweep(self.scan, Path(self.workdir) / TUNING_DIR)
        scan.start(config_spec)
        session = scan.run(shard, stale_after, log=log)
        if not all(point.run in scan.finished_runs() for point in self.scan.points):
            log(f"tuning: {session['skipped_locked']} are held by other workers; run again once they finish.")
            return None
        rule = fit_rule(self.config, read_rows(scan.results_path))
        if tunes_muon(self.config):
            muon_rows = {}
            for multiplier, config in muon_scan_configs(self.config, rule).items():
                muon_scan = Sweep(scan_plan(config, expand(config)), self.muon_scan_dir(multiplier))
                muon_scan.start(config_spec)
                session = muon_scan.run(shard, stale_after, log=log)
                if not all(point.run in muon_scan.finished_runs() for point in muon_scan.plan.points):
                    log(f"tuning: {session['skipped_locked']} are held by other workers; run again once they finish.")
                    return None
                muon_rows[multiplier] = read_rows(muon_scan.results_path)
            rule.update(fit_muon_rate(self.config, muon_rows))
        write_atomically(self.rule_path, json.dumps(rule, indent=2) + "\n")
        log(describe(rule))
        return rule


def describe(rule: dict) -> str:
    """One line per scanned shape and the rule they give."""
    lines = [
        f"tuning: {s['shape']} best rate {s['best_rate']:.3g} (the untuned rule's {s['rule_rate']:.3g}"
        f"{'' if s['bracketed'] else '; at the edge of the scan'})"
        for s in rule["shapes"]
    ]
    lines.append(
        f"tuning: rule learning_rate = {rule['learning_rate']:.3g} x ({rule['width_reference']} / n_embd) ^ "
        f"{rule['lr_width_exponent']:.3f} (untuned: {rule['untuned']['learning_rate']:.3g}, "
        f"^ {rule['untuned']['lr_width_exponent']:.3f})"
    )
    if "muon_learning_rate" in rule:
        lines += [
            f"tuning: {s['shape']} best Muon rate {s['best_rate']:.3g}{'' if s['bracketed'] else ' (at the edge)'}"
            for s in rule["muon_shapes"]
        ]
        lines.append(
            f"tuning: Muon's rate = {rule['muon_learning_rate']:.3g} at every width (untuned: {rule['muon_untuned']:.3g})"
        )
    return "\n".join(lines)
