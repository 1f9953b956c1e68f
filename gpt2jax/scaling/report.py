"""Sweeps' findings in Markdown (``python -m gpt2jax.scaling report`` writes them).

Every number in the report comes from each sweep's results.csv, sweep.json and sessions.jsonl,
the prediction JSON ``scaling backtest --predict`` wrote before the held-out points were trained,
``gpt2jax/flops.py``, ``gpt2jax/scaling/budget.py`` and the laws in ``scaling/laws.py``. Per sweep:
the points, the prediction set against what was then trained (losses with their intervals, and
N_opt), the law fitted on every point with its bootstrap intervals and the seed-to-seed spread,
the fitted E against a synthetic source's entropy rate, the tuning scan, the learning-rate check, and
(``--compare``) WSD branches against separate runs of the same size. Then what the fits do and
do not say about GPT-2, beside the budget command's answer from the published laws.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from gpt2jax.files.workdir import SESSIONS_FILE, SWEEP_FILE, read_json, read_jsonl, results_path
from gpt2jax.flops import format_count
from gpt2jax.scaling import budget as budget_module
from gpt2jax.scaling import fit
from gpt2jax.scaling.backtest import CONFIDENCE, error_summary, has_optimum, interval_text
from gpt2jax.scaling.laws import PUBLISHED_LAWS
from gpt2jax.scaling.plan import shape_name
from gpt2jax.scaling.results import (
    PARAM_COLUMNS,
    PARAM_NAMES,
    load_results,
    read_rows,
    scored_tasks,
    sweep_param_count,
    task_score,
)
from gpt2jax.scaling.tuning import RULE_FILE, TUNING_DIR
from gpt2jax.training.eval_tasks import GPT2_124M

# The study's goals (issue 12): held-out loss within 1% mean absolute relative error, coverage
# near 95%, N_opt within a factor of 1.5.
GOAL_MEAN_ERROR = 0.01
GOAL_N_OPT_FACTOR = 1.5


def _sweep_files(workdir: Path) -> tuple[dict, list[dict]]:
    sweep_file = workdir / SWEEP_FILE
    if not sweep_file.is_file():
        raise FileNotFoundError(
            f"{workdir} holds no {SWEEP_FILE}; is it the --workdir of python -m gpt2jax.scaling sweep?"
        )
    return read_json(sweep_file), read_jsonl(workdir / SESSIONS_FILE)


def _rules_text(config: dict) -> str:
    rules = config["rules"]
    return (
        f"learning rate {rules['learning_rate']:g} x ({rules['width_reference']} / n_embd)^{rules['lr_width_exponent']:g}; "
        f"batch {rules['batch_size']} sequences x (N / {rules['params_reference']:g})^{rules['batch_params_exponent']:g}, "
        f"a power of two in [{rules['min_batch_size']}, {rules['max_batch_size']}]; warmup "
        f"max({rules['min_warmup_steps']}, {rules['warmup_fraction']:g} x steps)"
    )


def _sessions_text(sessions: list[dict]) -> str:
    if not sessions:
        return "no sessions recorded"

    def one(session) -> str:
        return (
            f"{session['elapsed_s'] / 60:.1f} min on {session['host']} ({session['cpus']} CPUs, load average "
            f"{session['load_average_start']:.1f} at the start and {session['load_average_end']:.1f} at the end)"
        )

    total = sum(session["elapsed_s"] for session in sessions) / 60
    return f"{total:.1f} minutes in {len(sessions)} worker session(s): " + "; ".join(one(s) for s in sessions)


def allocation_rows(laws: dict, gpt2: dict, one_gpu_flops: float) -> list[dict]:
    """GPT-2's allocations and the compute-optimal ones at the same FLOPs, under each law."""
    cases = [(f"{name} on 10B tokens", gpt2[name], budget_module.GPT2_ORIGINAL_TOKENS) for name in ("gpt2", "gpt2-xl")]
    xl = gpt2["gpt2-xl"]
    cases.append((f"gpt2-xl on all of {one_gpu_flops:.3g} FLOPs", xl, one_gpu_flops / (6.0 * xl)))
    rows = []
    for label, n_params, tokens in cases:
        compute = 6.0 * n_params * tokens
        for law_name, law in laws.items():
            n_opt, d_opt = (float(value) for value in law.compute_optimal(compute))
            gpt2_loss, optimal_loss = float(law.loss(n_params, tokens)), float(law.loss(n_opt, d_opt))
            rows.append(
                {
                    "case": label,
                    "law": law_name,
                    "flops": compute,
                    "n_params": n_params,
                    "tokens": tokens,
                    "gpt2_loss": gpt2_loss,
                    "n_opt": n_opt,
                    "d_opt": d_opt,
                    "optimal_loss": optimal_loss,
                    "gain": gpt2_loss - optimal_loss,
                }
            )
    return rows


def _comparison(rows: list[dict], compare_rows: list[dict]) -> list[str]:
    """Branched WSD points against separate runs of the same shape, tokens and seed."""

    def key(row):
        return tuple(row[name] for name in ("n_layer", "n_head", "n_embd", "n_tokens", "seed"))

    separate = {key(row): row for row in compare_rows}
    pairs = [(row, separate[key(row)]) for row in rows if key(row) in separate]
    if not pairs:
        return ["The comparison sweep has no point of the same shape, tokens and seed as this one."]
    lines = [
        "| run | N | D | branched WSD loss | separate run's loss | schedule | difference |",
        "|---|---|---|---|---|---|---|",
    ]
    differences = []
    for branched, alone in pairs:
        difference = float(branched["loss"]) - float(alone["loss"])
        differences.append(difference)
        lines.append(
            f"| {branched['run']} | {format_count(float(branched['n_params']))} | {format_count(float(branched['n_tokens']))} "
            f"| {float(branched['loss']):.4f} | {float(alone['loss']):.4f} | {alone['schedule']} | {difference:+.4f} |"
        )
    lines += [
        "",
        f"Mean difference (branched minus separate) {np.mean(differences):+.4f} nats, from "
        f"{min(differences):+.4f} to {max(differences):+.4f}, over {len(pairs)} points.",
    ]
    return lines


def _lr_multiplier(row: dict) -> float:
    return float(row.get("lr_multiplier") or 1.0)


def lr_check(rows: list[dict]) -> list[dict]:
    """For each shape, budget and seed trained at other multiples of the rule's rate: the losses by multiple."""
    groups: dict[tuple, dict[float, float]] = {}
    for row in rows:
        key = (row["n_layer"], row["n_head"], row["n_embd"], float(row["budget"]), row["seed"])
        groups.setdefault(key, {})[_lr_multiplier(row)] = float(row["loss"])
    checks = []
    for (n_layer, n_head, n_embd, budget, seed), losses in groups.items():
        if len(losses) > 1 and 1.0 in losses:
            best = min(losses, key=losses.get)
            checks.append(
                {
                    "shape": f"L{n_layer}H{n_head}W{n_embd}",
                    "budget": budget,
                    "seed": seed,
                    "losses": dict(sorted(losses.items())),
                    "best_multiplier": best,
                    "rule_is_best": best == 1.0,
                }
            )
    return checks


def _lr_lines(checks: list[dict], spread: dict | None) -> list[str]:
    if not checks:
        return ["No point was trained at another multiple of the rule's learning rate."]
    multipliers = sorted({m for check in checks for m in check["losses"]})
    lines = [
        "| shape | budget | seed | " + " | ".join(f"x{m:g}" for m in multipliers) + " | best |",
        "|---|---|---|" + "---|" * len(multipliers) + "---|",
    ]
    for check in checks:
        cells = " | ".join(f"{check['losses'][m]:.4f}" if m in check["losses"] else "" for m in multipliers)
        lines.append(
            f"| {check['shape']} | {check['budget']:.3g} | {check['seed']} | {cells} | x{check['best_multiplier']:g} |"
        )
    noise = spread["mean_std"] if spread else 0.0  # a tuned rule's rate is within one seed spread of the best
    verdicts = []
    for check in checks:
        others = {m: loss for m, loss in check["losses"].items() if m != 1.0}
        best_other = min(others, key=others.get)
        margin = others[best_other] - check["losses"][1.0]
        if margin >= 0:
            verdicts.append(f"at {check['shape']} the rule's rate was the best")
        elif -margin <= noise:
            verdicts.append(
                f"at {check['shape']} x{best_other:g} was {-margin:.4f} nats better, within one seed spread"
            )
        else:
            verdicts.append(
                f"at {check['shape']} x{best_other:g} was {-margin:.4f} nats better, more than one seed spread: "
                "the rule's rate was not the best"
            )
    spread_text = f" (one seed spread: loss std {spread['mean_std']:.4f} between seeds, on average)" if spread else ""
    text = "; ".join(verdicts)
    return lines + ["", text[0].upper() + text[1:] + spread_text + "."]


def tuning_lines(workdir: Path) -> list[str]:
    """The tuning scan's losses by multiple of the starting rule, each shape's best rate and the rule fitted
    through them; nothing for a sweep that was not tuned."""
    if not (workdir / RULE_FILE).is_file():
        return []
    rule = read_json(workdir / RULE_FILE)
    where = {  # each scanned shape's budget and steps, by the name tuning.json gives it
        shape_name({key: int(row[key]) for key in ("n_layer", "n_head", "n_embd")}): row
        for row in read_rows(results_path(workdir / TUNING_DIR))
    }
    multipliers = sorted({float(m) for shape in rule["shapes"] for m in shape["losses"]})
    lines = [
        "| shape | budget | steps | " + " | ".join(f"x{m:g}" for m in multipliers) + " | best rate | starting rule's |",
        "|---|---|---|" + "---|" * len(multipliers) + "---|---|",
    ]
    for shape in rule["shapes"]:
        losses = {float(m): loss for m, loss in shape["losses"].items()}
        cells = " | ".join(f"{losses[m]:.4f}" if m in losses else "" for m in multipliers)
        row = where[shape["shape"]]
        best = f"{shape['best_rate']:.3g}" + ("" if shape["bracketed"] else " (at the scan's edge)")
        lines.append(
            f"| {shape['shape']} | {float(row['budget']):.3g} | {row['steps']} | {cells} | {best} | "
            f"{shape['rule_rate']:.3g} |"
        )
    untuned = rule["untuned"]
    return lines + [
        "",
        f"Every point of the sweep trained at the power law through the best rates, learning rate "
        f"{rule['learning_rate']:.3g} x ({rule['width_reference']} / n_embd)^{rule['lr_width_exponent']:.3f} "
        f"(the starting rule: {untuned['learning_rate']:g} x ({rule['width_reference']} / n_embd)^"
        f"{untuned['lr_width_exponent']:g}); the best rate is the vertex of a parabola in log(rate) through "
        "each shape's lowest loss and its two neighbours.",
    ]


def _observed_n_opt(points, budget: float) -> float | None:
    return next((p.n_opt for p in fit.isoflop_profiles(points) if math.isclose(p.budget, budget)), None)


def verify_prediction(prediction: dict, rows: list[dict], points) -> dict:
    """The prediction's points and N_opt set against what was trained afterwards (rows of results.csv)."""
    observed = {row["run"]: float(row["loss"]) for row in rows}
    checked = []
    for row in prediction["points"]:
        if row["run"] not in observed:
            continue
        loss = observed[row["run"]]
        low, high = row["interval"]
        checked.append(
            {
                **row,
                "observed_loss": loss,
                "relative_error": (row["predicted_loss"] - loss) / loss,
                "inside": low <= loss <= high,
            }
        )
    n_opt = []
    for row in prediction["n_opt"]:
        observed_n = _observed_n_opt(points, row["budget"])
        cells = {}
        for name in ("approach2", "approach3"):
            cell = row.get(name)
            cells[name] = (
                None if cell is None else {**cell, "ratio": cell["predicted"] / observed_n if observed_n else None}
            )
        n_opt.append({"budget": row["budget"], "observed": observed_n, **cells})
    return {
        "points": checked,
        "missing": len(prediction["points"]) - len(checked),
        **error_summary(checked),
        "n_opt": n_opt,
        "allocations": verify_allocations(prediction.get("allocations", []), observed),
    }


def verify_allocations(allocations: list[dict], observed: dict[str, float]) -> list[dict]:
    """Each predicted allocation with its trained losses (one a seed, in the order of its runs), their
    mean, and the measured gap to the first allocation, seed by seed and on average."""
    checked = []
    for row in allocations:
        losses = [observed[run] for run in row["runs"] if run in observed]
        checked.append({**row, "observed_losses": losses, "observed_loss": float(np.mean(losses)) if losses else None})
    for row in checked:
        reference = checked[0]["observed_losses"]
        trained = len(row["observed_losses"]) == len(reference) == len(row["runs"]) and reference
        row["measured_gap"] = (
            {
                "mean": row["observed_loss"] - checked[0]["observed_loss"],
                "seeds": [mine - theirs for mine, theirs in zip(row["observed_losses"], reference)],
            }
            if trained
            else None
        )
    return checked


def _allocation_lines(allocations: list[dict]) -> list[str]:
    if not allocations:
        return []
    first = allocations[0]["label"]
    lines = [
        "",
        f"Allocations of the budget {allocations[0]['budget']:.3g}, predicted before training, then trained on every seed:",
        "",
        "| allocation | N | D | D/N | predicted | interval | observed (mean of seeds) | inside |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in allocations:
        observed = row["observed_loss"]
        inside = "" if observed is None else ("yes" if row["interval"][0] <= observed <= row["interval"][1] else "no")
        lines.append(
            f"| {row['label']} | {format_count(row['n_params'])} | {format_count(row['n_tokens'])} "
            f"| {row['tokens_per_param']:.1f} | {row['predicted_loss']:.4f} | {interval_text(row['interval'])} "
            f"| {'not trained' if observed is None else f'{observed:.4f}'} | {inside} |"
        )
    for row in allocations[1:]:
        gap, measured = row["gap"], row["measured_gap"]
        predicted = f"{gap['predicted']:+.4f} nats" + (
            f" (bootstrap 95% {interval_text(gap['interval'], lambda v: f'{v:+.4f}')})" if gap["interval"] else ""
        )
        outcome = (
            "not measured yet"
            if measured is None
            else f"measured **{measured['mean']:+.4f}** (seed by seed: {', '.join(f'{g:+.4f}' for g in measured['seeds'])})"
        )
        lines += ["", f"{row['label']} minus {first}: predicted **{predicted}**; {outcome}."]
    return lines


def _interval_kind(prediction: dict) -> str:
    calibration = prediction.get("calibration", {})
    if "rate" in calibration:
        return (
            f"the intervals are {prediction['confidence']:.0%} prediction intervals calibrated on "
            f"{calibration['samples']} predictions of {calibration['folds']} lower fits (backtest.calibrate)"
        )
    return (
        f"the intervals are {prediction['confidence']:.0%} bootstrap prediction intervals ({prediction['bootstrap_fits']} "
        "refits, each with a residual of the fit drawn on top), uncalibrated"
    )


def _prediction_lines(prediction: dict, outcome: dict, spread: dict | None) -> list[str]:
    law = prediction["law"]
    lines = [
        f"Predicted at **{prediction['predicted_at']}** by `python -m gpt2jax.scaling backtest --predict`, from the "
        f"{prediction['n_train']} points with budgets up to {prediction['train_below']:.3g} FLOPs, before any of the "
        f"{len(prediction['points'])} points above was trained: approach 3 gave E = {law['E']:.4g}, A = {law['A']:.4g}, "
        f"B = {law['B']:.4g}, alpha = {law['alpha']:.4g}, beta = {law['beta']:.4g} (N_opt ~ C^{prediction['exponents']['a']:.3f}); "
        f"{_interval_kind(prediction)}.",
        "",
        "| run | N | D | predicted | interval | observed | error | inside |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in outcome["points"]:
        lines.append(
            f"| {row['run']} | {format_count(row['n_params'])} | {format_count(row['n_tokens'])} | {row['predicted_loss']:.4f} "
            f"| {interval_text(row['interval'])} | {row['observed_loss']:.4f} | {row['relative_error']:+.2%} | {'yes' if row['inside'] else 'no'} |"
        )
    if outcome["mean_abs_rel_error"] is None:
        return (
            lines
            + ["", "None of the predicted points has been trained yet."]
            + _allocation_lines(outcome["allocations"])
        )
    goal_error = outcome["mean_abs_rel_error"] <= GOAL_MEAN_ERROR
    lines += [
        "",
        f"Mean absolute relative error **{outcome['mean_abs_rel_error']:.2%}** (goal {GOAL_MEAN_ERROR:.0%}: "
        f"{'met' if goal_error else 'not met'}), at most {outcome['max_abs_rel_error']:.2%}; "
        f"{outcome['over_predicted']} over-predicted and {outcome['under_predicted']} under-predicted; "
        f"**{outcome['coverage']:.0%}** of the observed losses inside their intervals (goal: near {CONFIDENCE:.0%})."
        + (
            f" For scale, two seeds of one point differ by {spread['mean_relative_std']:.2%} (std) on average."
            if spread
            else ""
        ),
        "",
        "| budget | N_opt, approach 2 | N_opt, approach 3 | observed (IsoFLOP minimum) |",
        "|---|---|---|---|",
    ]
    for row in outcome["n_opt"]:
        cells = []
        for name in ("approach2", "approach3"):
            cell = row[name]
            cells.append(
                "skipped"
                if cell is None
                else f"{format_count(cell['predicted'])} {interval_text(cell['interval'], format_count)}"
                + (f", x{cell['ratio']:.2f}" if cell["ratio"] else "")
            )
        observed = format_count(row["observed"]) if row["observed"] else "no minimum inside the sizes"
        lines.append(f"| {row['budget']:.3g} | {cells[0]} | {cells[1]} | {observed} |")
    ratios = [
        row[name]["ratio"]
        for row in outcome["n_opt"]
        for name in ("approach2", "approach3")
        if row[name] and row[name]["ratio"]
    ]
    if ratios:
        within = all(1 / GOAL_N_OPT_FACTOR <= ratio <= GOAL_N_OPT_FACTOR for ratio in ratios)
        lines += [
            "",
            f"N_opt within a factor of {GOAL_N_OPT_FACTOR:g} of the observed minimum: {'met' if within else 'not met'}.",
        ]
    return lines + _allocation_lines(outcome["allocations"])


def _e_check_lines(law, boot_laws, entropy: float, lowest: float) -> tuple[list[str], bool]:
    """E against the entropy rate: it passes when the interval holds the rate and is narrower than the
    gap from the rate to the lowest loss any point reached (an interval wider than that says nothing)."""
    interval = fit.percentile_interval([boot.E for boot in boot_laws], CONFIDENCE)
    inside = interval is not None and interval[0] <= entropy <= interval[1]
    narrow = interval is not None and interval[1] - interval[0] < lowest - entropy
    passes = inside and narrow
    lines = [
        f"The source's entropy rate is {entropy:.4f} nats/token, the loss no model can beat. The fitted "
        f"irreducible loss E is {law.E:.4f} ({CONFIDENCE:.0%} interval {interval_text(interval)}), {law.E - entropy:+.4f} from it; "
        f"the interval {'contains' if inside else 'does not contain'} it and is "
        f"{'narrower' if narrow else 'not narrower'} than the {lowest - entropy:.4f} nats between the rate and the "
        f"lowest loss reached ({lowest:.4f}). "
        + (
            "So the fit finds the floor it should: a check of the fitter itself."
            if passes
            else (
                "So the interval is too wide to say anything, and the check says nothing about the fitter."
                if not narrow
                else "So the fitted E is where these shapes and this recipe level off as the fit extrapolates "
                "them, not the source's floor: the check does not pass, and says nothing about the fitter."
            )
        )
    ]
    return lines, passes


def _eval_task_lines(rows: list[dict], figures: Path | None) -> list[str]:
    """Each point's final eval-task scores, beside OpenAI's GPT-2 124M; nothing for a sweep that scored none.
    ``figures``: the figures' folder relative to the report, where they were drawn."""
    lines = []
    for task in scored_tasks(rows):
        reference = GPT2_124M.get(f"{task}_acc_norm")
        lines += [
            "",
            f"### {task}",
            "",
            "Each point's score at its last step (completion-style, acc_norm with its 95% Wilson interval)"
            + (f"; OpenAI's GPT-2 124M scores {reference} on the whole validation set." if reference else "."),
            "",
        ]
        if figures:
            lines += [f"![{task} against compute]({figures / 'eval_tasks.png'})", ""]
        lines += ["| run | seed | C = 6ND | acc | acc_norm | 95% interval | n |", "|---|---|---|---|---|---|---|"]
        for row in sorted(rows, key=lambda row: (float(row["flops"]), row["seed"])):
            accuracy, n, (low, high) = task_score(row, task)
            lines.append(
                f"| {row['run']} | {row['seed']} | {float(row['flops']):.3g} | {float(row[f'{task}_acc']):.3f} | "
                f"{accuracy:.3f} | [{low:.3f}, {high:.3f}] | {n} |"
            )
    return lines


def _study_section(workdir: Path, prediction_path, figures, out: Path, n_bootstrap, seed, starts, compare) -> dict:
    """One sweep's section of the report, and the numbers the closing sections use."""
    description, sessions = _sweep_files(workdir)
    config = description["config"]
    path = results_path(workdir)
    all_rows = read_rows(path)
    rows = [row for row in all_rows if _lr_multiplier(row) == 1.0]
    params = sweep_param_count(workdir)
    count_column = PARAM_COLUMNS[params]
    points = load_results(path, params=params)
    parametric, boot_laws = fit.parametric_bootstrap(points, n_bootstrap, seed, starts)
    summary = fit.fit_summary(
        points, n_bootstrap=n_bootstrap, seed=seed, starts=starts, bootstrap=(parametric, boot_laws)
    )
    law = parametric.law
    meta = description["data_meta"]
    entropy = meta.get("entropy_rate_nats_per_token")
    separate = sum(float(row["flops"]) for row in all_rows)
    spent = sum(float(row["flops_spent"]) for row in all_rows)
    shapes = sorted({(int(r["n_layer"]), int(r["n_embd"])) for r in rows})
    lines = [
        f"## `{description['config_spec']}`: `{meta['source']}`",
        "",
        f"- Data: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, vocabulary of "
        f"{meta['vocab_size']}, tokenizer {meta['tokenizer']}"
        + (f"; entropy rate {entropy:.4f} nats/token." if entropy else "."),
        f"- Grid: {config['grid']} over budgets {', '.join(f'{b:.3g}' for b in config['budgets'])} FLOPs "
        f"(6ND, N counting {PARAM_NAMES[params]}); {len(shapes)} shapes "
        f"({', '.join(f'L{layers} W{width}' for layers, width in shapes)}), seeds {list(config['seeds'])}, schedule "
        f"{config['schedule']}, context {config['base']['model']['block_size']}.",
        f"- Rules: {_rules_text(config)}. Floors: at least {config['limits']['min_steps']} steps and "
        f"{config['limits']['min_tokens_per_param']:g} token per parameter a point, at most "
        f"{config['limits']['max_tokens_per_param']:g}; at most {config['limits'].get('max_epochs', 1.0):g} epoch of the corpus.",
        f"- FLOPs (6N): {spent:.3g} spent; {separate:.3g} had every point been trained alone.",
        f"- Wall time: {_sessions_text(sessions)}.",
        "",
    ]
    if figures:
        relative = Path(os.path.relpath(figures, out.absolute().parent))  # links that work beside the report
        lines += [
            f"![loss against compute]({relative / 'loss_vs_compute.png'})",
            f"![IsoFLOP profiles]({relative / 'isoflop.png'})",
            "",
        ]
    lines += [
        "| run | seed | N | D | D/N | C = 6ND | epochs | val loss | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda row: (float(row[count_column]), float(row["n_tokens"]), row["seed"])):
        n = float(row[count_column])
        lines.append(
            f"| {row['run']} | {row['seed']} | {format_count(n)} | {format_count(float(row['n_tokens']))} | "
            f"{float(row['n_tokens']) / n:.1f} | {6 * n * float(row['n_tokens']):.3g} | {row.get('epochs') or ''} | "
            f"{float(row['loss']):.4f} | {float(row['wall_s']):.0f} |"
        )
    lines += _eval_task_lines(rows, relative if figures else None)
    outcome = None
    if prediction_path:
        prediction = json.loads(Path(prediction_path).read_text())
        outcome = verify_prediction(prediction, rows, points)
        lines += ["", "### Predicted, then trained", ""]
        lines += _prediction_lines(prediction, outcome, summary["seed_spread"])
    lines += ["", "### The law fitted on every point", "", "```", fit.format_summary(summary, str(path)), "```", ""]
    e_passes = False
    if entropy:
        e_lines, e_passes = _e_check_lines(law, boot_laws, entropy, float(points.loss.min()))
        lines += ["### E against the entropy rate", "", *e_lines, ""]
    tuned = tuning_lines(workdir)
    if tuned:
        lines += ["### The tuning scan", "", *tuned, ""]
    lines += ["### The learning-rate check", ""]
    lines += _lr_lines(lr_check(all_rows), summary["seed_spread"])
    sweep_budgets = (
        np.array(sorted(set(points.budget))) if points.budget is not None else np.array([points.flops.max()])
    )
    lines += [
        "",
        "### Compute-optimal tokens per parameter",
        "",
        "Under the fitted law, D_opt / N_opt is "
        + ", ".join(f"{float(law.tokens_per_parameter(c)):.1f} at {c:.3g}" for c in sweep_budgets)
        + " FLOPs."
        if has_optimum(law)
        else f"The fitted law has alpha = {law.alpha:.3g} and beta = {law.beta:.3g}: its loss does not fall with both "
        "N and D, so it has no compute-optimal allocation.",
    ]
    approach2 = summary["approach2"]
    lines.append(
        "The IsoFLOP minima (approach 2) give "
        + ", ".join(f"{p['d_opt'] / p['n_opt']:.1f} at {p['flops']:.3g}" for p in approach2["points"])
        + "."
        if "points" in approach2
        else f"Approach 2 was skipped: {approach2['skipped']}"
    )
    if compare:
        lines += ["", "### WSD branches against separate runs", ""]
        lines += _comparison(rows, read_rows(results_path(Path(compare))))
    return {
        "lines": lines,
        "law": law,
        "points": points,
        "source": meta["source"],
        "params": params,
        "entropy_check": e_passes,
        "outcome": outcome,
        "config_spec": description["config_spec"],
    }


def _reproduce_commands(workdirs, predictions, figures, out, command) -> list[str]:
    """Per sweep: the lower budgets, the prediction, the rest, the outcome and the figures; then the report."""
    commands = []
    for index, workdir in enumerate(workdirs):
        spec = _sweep_files(Path(workdir))[0]["config_spec"]
        results = results_path(Path(workdir))
        if index < len(predictions):
            prediction = json.loads(Path(predictions[index]).read_text())
            below, params = f"{prediction['train_below']:g}", prediction.get("params", "total")
            law = f" --params {params}" if params != "total" else ""
            commands += [
                f"python -m gpt2jax.scaling sweep --config {spec} --workdir {workdir} --max_budget {below}",
                f"python -m gpt2jax.scaling backtest --results {results} --train_below {below}{law} "
                f"--predict {spec} --json > {predictions[index]}",
                f"python -m gpt2jax.scaling sweep --config {spec} --workdir {workdir}",
                f"python -m gpt2jax.scaling backtest --results {results} --train_below {below}{law}",
            ]
        else:
            commands.append(f"python -m gpt2jax.scaling sweep --config {spec} --workdir {workdir}")
        if index < len(figures):
            rule = Path(workdir) / RULE_FILE
            kept = [results, Path(workdir) / SESSIONS_FILE] + ([rule] if rule.is_file() else [])
            commands += [
                f"python -m gpt2jax.scaling plot --workdir {workdir} --out {figures[index]}",
                f"cp {' '.join(map(str, kept))} {figures[index]}/",
            ]
    commands.append(command or f"python -m gpt2jax.scaling report --workdir {' '.join(map(str, workdirs))} --out {out}")
    return commands


def write_report(
    workdirs,
    out,
    *,
    predictions=None,
    compare=None,
    figures=None,
    n_bootstrap=100,
    seed=0,
    starts=fit.HOFFMANN_STARTS,
    one_gpu=("rtx-4070-ti", 365.0, 0.9),
    command=None,
    preamble: str = "",
) -> str:
    """Writes the report to ``out`` and returns its text; ``command`` is the command line that wrote it.

    ``workdirs``: one sweep workdir or several; ``predictions`` and ``figures`` pair with them in order.
    ``preamble``: Markdown placed after the title (the commands that made the predictions, say).
    """
    workdirs = [Path(w) for w in ([workdirs] if isinstance(workdirs, (str, Path)) else workdirs)]
    out = Path(out)
    predictions = list(predictions or [])
    figures = list(figures or [])
    studies = [
        _study_section(
            workdir,
            predictions[index] if index < len(predictions) else None,
            figures[index] if index < len(figures) else None,
            out,
            n_bootstrap,
            seed,
            starts,
            compare if index == 0 else None,
        )
        for index, workdir in enumerate(workdirs)
    ]
    specs = ", ".join(f"`{study['config_spec']}`" for study in studies)
    lines = [
        f"# Scaling-law report: {specs}",
        "",
        "Written by `python -m gpt2jax.scaling report`. Every number here comes from the sweeps' `results.csv`, "
        "`sweep.json` and `sessions.jsonl`, the predictions `scaling backtest --predict` wrote before the held-out "
        "points were trained, `gpt2jax/flops.py` and `gpt2jax/scaling/laws.py`; rerun the commands below to reproduce it.",
        "",
    ]
    if preamble:
        lines += [preamble.rstrip(), ""]
    lines += ["## Reproduce", "", "```", *_reproduce_commands(workdirs, predictions, figures, out, command), "```", ""]
    for study in studies:
        lines += study["lines"] + [""]

    gpu, days, utilization = one_gpu
    answer = budget_module.budget_report(gpu, days, utilization)
    gpt2 = budget_module.gpt2_param_counts()
    one_gpu_flops = answer["premise"]["flops"]
    laws = {
        f"fit: {study['source']}": study["law"]
        for study in studies
        if study["params"] == "total" and has_optimum(study["law"])
    }
    laws.update(PUBLISHED_LAWS)
    sources = "; ".join(f"`{study['source']}`" for study in studies)
    largest = max(float(np.max(study["points"].n_params)) for study in studies)
    counted = " or ".join(sorted({PARAM_NAMES[study["params"]] for study in studies}))
    top = max(float(np.max(study["points"].flops)) for study in studies)
    lines += [
        "## What these fits say, and do not say, about GPT-2 on web text",
        "",
        "They say how well this project's machinery predicts a scaling law's next half-decade when the data, "
        "tokenizer, model family and training recipe stay fixed: the table above is that test, made before the "
        "compute was spent. They do not say how GPT-2 should spend a GPU-year on web text. Their exponents and "
        f"constants are properties of their sources ({sources}), of models of at most {format_count(largest)} "
        f"{counted}, and of a learning-rate rule tuned at this scale; carried to {one_gpu_flops:.2g} "
        f"FLOPs, {math.log10(one_gpu_flops / top):.1f} decades past their largest point, nothing in these points "
        "bounds the error. For GPT-2 the answer comes from the published laws, fitted on models of 70M to 16B "
        "parameters, and its honest error bar is the spread between them.",
        "",
        f"The budget command's answer (`python -m gpt2jax.scaling budget --gpu {gpu} --days {days:g} --utilization "
        f"{utilization:g}`): the question's premise, the card's fp32 rate x {utilization:.0%} x {days:g} days, is "
        f"{one_gpu_flops:.3g} FLOPs; its tensor cores in bf16 offer {answer['total_flops']:.3g}; at "
        f"{answer['mfu']:.0%} MFU a run gets {answer['achieved_flops']:.3g} in those days. At "
        f"{answer['total_flops']:.3g} FLOPs, {answer['optimal_law']} puts the optimum at "
        f"{format_count(answer['compute_optimal_params'])} parameters on {format_count(answer['compute_optimal_tokens'])} "
        f"tokens (loss {answer['predicted_loss']:.3f} in {answer['loss_units']}); the card's memory holds at most "
        f"{format_count(answer['memory_constrained']['params'])} parameters in training, which on the same FLOPs "
        f"costs {answer['memory_constrained']['loss_gap']:+.3f} nats. The laws disagree by "
        + ", ".join(
            f"{name} {format_count(law['params'])}/{format_count(law['tokens'])}"
            for name, law in answer["laws"].items()
        )
        + ".",
        "",
        f"GPT-2's allocations against compute-optimal ones at equal FLOPs (sizes by flops.count_params, vocabulary "
        f"50257, context 1024, ~10B tokens; the last case spends the premise's {one_gpu_flops:.3g} FLOPs):",
        "",
        "| case | law | C | GPT-2's loss | N_opt | D_opt | optimal loss | GPT-2 minus optimal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in allocation_rows(laws, gpt2, one_gpu_flops):
        lines.append(
            f"| {row['case']} | {row['law']} | {row['flops']:.3g} | {row['gpt2_loss']:.3f} | {format_count(row['n_opt'])} "
            f"| {format_count(row['d_opt'])} | {row['optimal_loss']:.3f} | {row['gain']:+.3f} |"
        )
    lines.append("")
    lines.append(
        "Losses under the published laws are in Chinchilla's units (MassiveText, a 32k SentencePiece vocabulary); "
        "under a fit, in its own source's units; neither is a GPT-2 BPE loss on web text."
    )
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
