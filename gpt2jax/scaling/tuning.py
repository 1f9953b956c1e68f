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
    return total + (costs(scan_plan(config, plan))["flops_spent"][formula] if config.lr_tuning else 0.0)


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
            f"the tuning scan's best rate for {worst['shape']} is its {edge} multiplier ({worst['losses']}): the "
            "optimum lies outside the scan; widen lr_tuning and run the sweep in a new --workdir."
        )
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
        "bracketed": not unbracketed,
        "shapes": shapes,
    }


def tuned_config(config, rule: dict) -> ml_collections.ConfigDict:
    """``config`` with the fitted rule in place of its learning-rate rule."""
    tuned = ml_collections.ConfigDict(config.to_dict())
    tuned.rules.update(learning_rate=rule["learning_rate"], lr_width_exponent=rule["lr_width_exponent"])
    tuned.lock()
    return tuned


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
    return "\n".join(lines)
