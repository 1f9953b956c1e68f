"""A sweep's findings in Markdown (``python -m gpt2jax.scaling report`` writes them).

Every number in the report comes from the sweep's results.csv, sweep.json and sessions.jsonl,
``gpt2jax/flops.py``, ``gpt2jax/scaling/budget.py`` and the laws in ``scaling/laws.py``: the fitted law with
its bootstrap intervals, the compute-optimal tokens per parameter, GPT-2's allocations
against the compute-optimal ones at equal FLOPs under the fit and the published laws, how
wide the fit's uncertainty is that far out, the fitted E against a synthetic source's
entropy rate, and (``--compare``) WSD branches against separate runs of the same size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from gpt2jax.flops import format_count
from gpt2jax.scaling import budget as budget_module
from gpt2jax.scaling import fit, records
from gpt2jax.scaling.laws import PUBLISHED_LAWS
from gpt2jax.scaling.results import load_results
from gpt2jax.workdir import SESSIONS_FILE, SWEEP_FILE, read_json, read_jsonl, results_path

CONFIDENCE = 0.95


def _interval(values, formatter=lambda value: f"{value:.3g}") -> str:
    interval = fit.percentile_interval(values, CONFIDENCE)
    return "n/a" if interval is None else f"[{formatter(interval[0])}, {formatter(interval[1])}]"


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
    spent_branched = sum(float(branched["flops_spent"]) for branched, _ in pairs)
    spent_alone = sum(float(alone["flops_spent"]) for _, alone in pairs)
    lines += [
        "",
        f"Mean difference (branched minus separate) {np.mean(differences):+.4f} nats, from "
        f"{min(differences):+.4f} to {max(differences):+.4f}, over {len(pairs)} points. The separate runs "
        f"spent {spent_alone:.3g} FLOPs (6N) on them; the branches' share of their trunks and cooldowns was "
        f"{spent_branched:.3g}. A branch is the WSD run of its length to float precision (tests/test_sweep.py), "
        f"so differences up to {max(abs(d) for d in differences):.3f} nats are the two schedules' own, at "
        "a learning rate tuned on cosine runs: how much a point moves with the schedule, and a floor under "
        "how precisely one point pins the law.",
    ]
    return lines


def _reproduce_commands(workdir, out, path, config_spec, compare, figures, command) -> list[str]:
    """The sweeps, plots, copies of the results beside the figures, and this report."""
    commands = [f"python -m gpt2jax.scaling sweep --config {config_spec} --workdir {workdir}"]
    if compare:
        commands.append(
            f"python -m gpt2jax.scaling sweep --config {_sweep_files(Path(compare))[0]['config_spec']} "
            f"--workdir {compare}"
        )
    if figures:
        commands += [
            f"python -m gpt2jax.scaling plot --workdir {workdir} --out {figures}",
            f"cp {path} {Path(figures) / 'results.csv'}",
        ]
        if compare:
            commands.append(f"cp {results_path(Path(compare))} {Path(figures) / (Path(compare).name + '_results.csv')}")
    default = (
        f"python -m gpt2jax.scaling report --workdir {workdir}"
        + (f" --compare {compare}" if compare else "")
        + (f" --figures {figures}" if figures else "")
        + f" --out {out}"
    )
    commands.append(command or default)
    commands.append(f"python -m gpt2jax.scaling fit --results {Path(figures) / 'results.csv' if figures else path}")
    return commands


def write_report(
    workdir,
    out,
    *,
    compare=None,
    figures=None,
    n_bootstrap=100,
    seed=0,
    starts=fit.HOFFMANN_STARTS,
    one_gpu=("rtx-4070-ti", 365.0, 0.9),
    command=None,
) -> str:
    """Writes the report to ``out`` and returns its text; ``command`` is the command line that wrote it."""
    workdir, out = Path(workdir), Path(out)
    path = results_path(workdir)
    description, sessions = _sweep_files(workdir)
    config = description["config"]
    rows = records.read_rows(path)
    points = load_results(path)
    parametric, boot_laws = fit.parametric_bootstrap(points, n_bootstrap, seed, starts)
    summary = fit.fit_summary(
        points, n_bootstrap=n_bootstrap, seed=seed, starts=starts, bootstrap=(parametric, boot_laws)
    )
    law = parametric.law
    gpt2 = budget_module.gpt2_param_counts()
    one_gpu_flops = budget_module.budget_report(*one_gpu)["total_flops"]
    separate = sum(float(row["flops"]) for row in rows)
    spent = sum(float(row["flops_spent"]) for row in rows)
    meta = description["data_meta"]
    config_spec = description["config_spec"]

    lines = [
        f"# Scaling-law report: `{config_spec}`",
        "",
        f"Written by `python -m gpt2jax.scaling report` from `{path}` ({len(rows)} points). Every number here "
        "comes from that file, the sweep's `sweep.json` and `sessions.jsonl`, `gpt2jax/flops.py` and "
        "`gpt2jax/scaling/laws.py`; rerun the commands below to reproduce it.",
        "",
        "## Reproduce",
        "",
        "```",
        *_reproduce_commands(workdir, out, path, config_spec, compare, figures, command),
        "```",
        "",
    ]

    entropy = meta.get("entropy_rate_nats_per_token")
    lines += [
        "## The sweep",
        "",
        f"- Data: `{meta['source']}` ({meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
        f"vocabulary of {meta['vocab_size']}, tokenizer {meta['tokenizer']})"
        + (f"; entropy rate {entropy:.4f} nats/token, the loss no model can beat." if entropy else "."),
        f"- Grid: {config['grid']} over budgets {', '.join(f'{b:.3g}' for b in config['budgets'])}; "
        f"{len({(r['n_layer'], r['n_head'], r['n_embd']) for r in rows})} shapes, schedule {config['schedule']}, "
        f"context {config['base']['model']['block_size']}.",
        f"- Rules: {_rules_text(config)}.",
        f"- FLOPs (6N): {spent:.3g} spent; {separate:.3g} had every point been trained alone"
        + (f": branching off shared trunks saved {1 - spent / separate:.1%}." if spent < separate else "."),
        f"- Wall time: {_sessions_text(sessions)}.",
        "",
    ]
    if figures:
        relative = Path(os.path.relpath(figures, out.absolute().parent))  # links that work beside the report
        lines += [
            f"![loss against compute]({relative / 'loss_vs_compute.png'})",
            f"![IsoFLOP profiles]({relative / 'isoflop.png'})",
            f"![compute-optimal allocation]({relative / 'allocation.png'})",
            "",
        ]
    lines += ["| run | N | D | D/N | C = 6ND | train loss | val loss | wall s |", "|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda row: (float(row["n_params"]), float(row["n_tokens"]))):
        lines.append(
            f"| {row['run']} | {format_count(float(row['n_params']))} | {format_count(float(row['n_tokens']))} | "
            f"{float(row['n_tokens']) / float(row['n_params']):.1f} | {float(row['flops']):.3g} | "
            f"{float(row['train_loss']):.4f} | {float(row['loss']):.4f} | {float(row['wall_s']):.0f} |"
        )

    lines += ["", "## The fitted law", "", "```", fit.format_summary(summary, str(path)), "```", ""]
    ci = summary["ci"]
    if entropy:
        e_interval = ci["E"]
        inside = e_interval is not None and e_interval[0] <= entropy <= e_interval[1]
        lines += [
            "### The fitter's built-in check: E against the entropy rate",
            "",
            f"The source's entropy rate is {entropy:.4f} nats/token; the fitted irreducible loss E is "
            f"{law.E:.4f} ({CONFIDENCE:.0%} interval {_interval([boot.E for boot in boot_laws])}), "
            f"{law.E - entropy:+.4f} from it, and the interval "
            f"{'contains' if inside else 'does not contain'} it. "
            f"The lowest loss any point reached is {points.loss.min():.4f}, "
            f"{points.loss.min() - entropy:+.4f} above the entropy rate.",
            "",
        ]

    sweep_budgets = (
        np.array(sorted(set(points.budget))) if points.budget is not None else np.array([points.flops.max()])
    )
    ratio_text = ", ".join(f"{float(law.tokens_per_parameter(c)):.1f} at {c:.3g}" for c in sweep_budgets)
    lines += [
        "## Compute-optimal tokens per parameter",
        "",
        f"Under the fitted law, D_opt / N_opt is {ratio_text} FLOPs (it is constant only if alpha = beta).",
    ]
    approach2 = summary["approach2"]
    if "points" in approach2:
        lines.append(
            "The IsoFLOP minima (approach 2) give "
            + ", ".join(f"{p['d_opt'] / p['n_opt']:.1f} at {p['flops']:.3g}" for p in approach2["points"])
            + "."
        )
    else:
        lines.append(f"Approach 2 was skipped: {approach2['skipped']}")
    for name, reference in PUBLISHED_LAWS.items():
        lines.append(
            f"For comparison, {name} gives {float(reference.tokens_per_parameter(sweep_budgets[-1])):.1f} at "
            f"{sweep_budgets[-1]:.3g} and {float(reference.tokens_per_parameter(one_gpu_flops)):.1f} at "
            f"{one_gpu_flops:.3g} FLOPs."
        )
    lines.append("")

    laws = {"this fit": law, **PUBLISHED_LAWS}
    table = allocation_rows(laws, gpt2, one_gpu_flops)
    gpu, days, utilization = one_gpu
    lines += [
        "## GPT-2's allocations against compute-optimal ones, at equal FLOPs",
        "",
        f"GPT-2's sizes count {', '.join(f'{name} {format_count(n)}' for name, n in gpt2.items())} parameters "
        f"(flops.count_params, vocabulary 50257, context 1024), trained on ~10B tokens. The last case spends "
        f"{one_gpu_flops:.3g} FLOPs, one {gpu} for {days:g} days at {utilization:.0%} of its peak (python -m gpt2jax.scaling budget).",
        "",
        "| case | law | C | GPT-2's loss | N_opt | D_opt | optimal loss | GPT-2 minus optimal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['case']} | {row['law']} | {row['flops']:.3g} | {row['gpt2_loss']:.3f} | {format_count(row['n_opt'])} "
            f"| {format_count(row['d_opt'])} | {row['optimal_loss']:.3f} | {row['gain']:+.3f} |"
        )

    lines += ["", "## How wide the fit's uncertainty is out there", ""]
    extrapolation = math.log10(one_gpu_flops / points.flops.max())
    lines.append(
        f"The sweep's largest point used {points.flops.max():.3g} FLOPs; {one_gpu_flops:.3g} is "
        f"{extrapolation:.1f} orders of magnitude beyond it, and GPT-2 small's {6 * gpt2['gpt2'] * 1e10:.3g} "
        f"is {math.log10(6 * gpt2['gpt2'] * 1e10 / points.flops.max()):.1f}. Refitting the law on "
        f"{len(boot_laws)} bootstrap resamples of the points gives these {CONFIDENCE:.0%} intervals:"
    )
    lines += [
        "",
        "| at C | N_opt | D_opt | D_opt / N_opt | optimal loss | GPT-2's loss minus optimal |",
        "|---|---|---|---|---|---|",
    ]
    for case in dict.fromkeys(row["case"] for row in table):
        row = next(r for r in table if r["case"] == case)
        allocations = [boot.compute_optimal(row["flops"]) for boot in boot_laws]
        n_opt = [float(n) for n, _ in allocations]
        d_opt = [float(d) for _, d in allocations]
        optimal = [float(boot.loss(n, d)) for boot, (n, d) in zip(boot_laws, allocations)]
        gains = [float(boot.loss(row["n_params"], row["tokens"])) - best for boot, best in zip(boot_laws, optimal)]
        lines.append(
            f"| {case} ({row['flops']:.3g}) | {_interval(n_opt, format_count)} | {_interval(d_opt, format_count)} | "
            f"{_interval([d / n for n, d in zip(n_opt, d_opt)])} | {_interval(optimal)} | {_interval(gains)} |"
        )
    n_spread = [float(boot.compute_optimal(one_gpu_flops)[0]) for boot in boot_laws]
    spread = fit.percentile_interval(n_spread, CONFIDENCE)
    lines += [
        "",
        f"At {one_gpu_flops:.3g} FLOPs the interval of N_opt spans a factor of {spread[1] / spread[0]:.3g}."
        if spread
        else "",
        "",
    ]
    lines.append(
        f"This is not a prediction for GPT-2. The fit describes {len(rows)} models of {format_count(points.n_params.min())} to "
        f"{format_count(points.n_params.max())} parameters on `{meta['source']}`, a source whose statistics have nothing to "
        f"do with web text, and the exponents it finds are properties of that source; carried "
        f"{extrapolation:.0f} orders of magnitude out, the bootstrap intervals above are a lower bound on the error, "
        "since they count only the noise of these points and not the choice of source, the learning-rate rule or "
        "the narrow range of shapes. What the sweep does check is the machinery: the runner, the WSD branches, the "
        "three fitting approaches" + (" and, through E, the fitter itself." if entropy else ".")
    )
    if compare:
        lines += ["", "## WSD branches against separate runs", ""]
        lines += _comparison(rows, records.read_rows(results_path(Path(compare))))
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
