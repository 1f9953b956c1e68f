"""A sweep's figures, as PNGs (``python -m gpt2jax.scaling plot`` writes them).

loss_vs_compute.png  two panels, one kind of loss each: every run's smoothed training curve
                     against FLOPs with the frontier of those curves, and every run's validation
                     losses with their frontier and each run's final one
isoflop.png          loss against model size at each FLOP budget, the parabolas through
                     them and their minima (approach 2)
allocation.png       N_opt(C) and D_opt(C): the IsoFLOP minima and their power laws, the
                     fitted law's allocation (approach 3) and Chinchilla's, extended to
                     GPT-2's scale, with GPT-2's four sizes as trained (~10B tokens each); the
                     sweep's own fits are solid over the FLOPs they saw and dotted beyond
eval_tasks.png       only for a sweep whose points scored ``train.eval_tasks``: each task's
                     acc_norm against compute with its 95% interval, chance, and OpenAI's
                     GPT-2 124M as a reference line
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gpt2jax.files.workdir import POINTS_DIR, read_metrics, results_path  # noqa: E402
from gpt2jax.scaling import fit  # noqa: E402
from gpt2jax.scaling.backtest import has_optimum  # noqa: E402
from gpt2jax.scaling.budget import GPT2_ORIGINAL_TOKENS, gpt2_param_counts  # noqa: E402
from gpt2jax.scaling.laws import EPOCH_REFIT  # noqa: E402
from gpt2jax.scaling.results import load_results, read_rows, scored_tasks, sweep_param_count, task_score  # noqa: E402
from gpt2jax.training.eval_tasks import GPT2_124M  # noqa: E402

FIGURES = ("loss_vs_compute.png", "isoflop.png", "allocation.png")
EVAL_TASKS_FIGURE = "eval_tasks.png"
# HellaSwag's four endings: picking one at random scores 0.25.
CHANCE = {"hellaswag": 0.25}
DPI = 130
# A logged training loss is the mean over one log window of noisy batch losses; the curves and
# their frontier use an exponential moving average over this many windows, so that the frontier
# is not the minimum of that noise.
SMOOTHING_WINDOWS = 5


def _save(figure, panels, path: Path, legend_size: int = 8) -> None:
    for panel in panels:
        panel.grid(True, which="both", alpha=0.3)
        panel.legend(fontsize=legend_size)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _size_colors(n_params) -> dict:
    values = np.log(np.unique(n_params))
    span = values.max() - values.min() or 1.0
    return {n: plt.cm.viridis(0.9 * (np.log(n) - values.min()) / span) for n in np.unique(n_params)}


def smoothed(values) -> np.ndarray:
    """An exponential moving average with a span of ``SMOOTHING_WINDOWS``, bias-corrected at the start."""
    decay = 1.0 - 2.0 / (SMOOTHING_WINDOWS + 1)
    average, weight, out = 0.0, 0.0, []
    for value in values:
        average = decay * average + (1 - decay) * value
        weight = decay * weight + (1 - decay)
        out.append(average / weight)
    return np.array(out)


def _frontier(panel, flops_seen, losses, label: str) -> None:
    order = np.argsort(flops_seen)
    lowest = np.minimum.accumulate(np.asarray(losses)[order])
    panel.plot(np.asarray(flops_seen)[order], lowest, color="crimson", linewidth=2, label=label)


def plot_loss_vs_compute(workdir: Path, rows: list[dict], path: Path) -> None:
    """Smoothed training curves (left) and validation losses (right) from each point's metrics.jsonl; trunks dashed."""
    figure, (train_panel, val_panel) = plt.subplots(1, 2, figsize=(13, 5.5), sharex=True)
    colors = _size_colors([float(row["n_params"]) for row in rows])
    train_x, train_y, val_x, val_y = [], [], [], []
    drawn_trunks = set()
    for row in rows:
        color = colors[float(row["n_params"])]
        runs = [(row["run"], "-")]
        if row["trunk"] and row["trunk"] not in drawn_trunks:
            drawn_trunks.add(row["trunk"])
            runs.append((row["trunk"], "--"))
        for run, style in runs:
            records = read_metrics(workdir / POINTS_DIR / run)
            if run == row["run"] and row["trunk"]:
                # A branch starts where the trunk was: join it to the trunk's record there.
                trunk = read_metrics(workdir / POINTS_DIR / row["trunk"])
                records = [record for record in trunk if record["step"] == int(row["branch_step"])] + records
            curve = [record for record in records if "train_loss" in record]
            x = [record["flops_seen"] for record in curve]
            y = smoothed([record["train_loss"] for record in curve])
            train_panel.plot(x, y, style, color=color, linewidth=0.9, alpha=0.8)
            train_x += x
            train_y += list(y)
            evaluated = [record for record in records if "val_loss" in record]
            x = [record["flops_seen"] for record in evaluated]
            y = [record["val_loss"] for record in evaluated]
            val_panel.plot(x, y, style, color=color, linewidth=0.9)
            val_x += x
            val_y += y
        val_panel.plot(
            float(row["flops_6n_attention"]),
            float(row["val_loss"]),
            "o",
            color=color,
            markersize=5,
            markeredgecolor="black",
            markeredgewidth=0.5,
        )
    _frontier(train_panel, train_x, train_y, "frontier of the smoothed curves")
    _frontier(val_panel, val_x, val_y, "frontier of the validation losses")
    for n, color in colors.items():
        train_panel.plot([], [], color=color, label=f"N = {n:,.0f}")
    train_panel.plot([], [], "k--", linewidth=0.9, label="constant-rate trunk")
    val_panel.plot([], [], "o", color="gray", markeredgecolor="black", label="final validation loss")
    xlabel = "training FLOPs (6N + attention, as train.run logs them)"
    train_panel.set(
        xscale="log",
        xlabel=xlabel,
        ylabel=f"training loss, nats/token (EMA over {SMOOTHING_WINDOWS} log windows)",
        title="Training loss against compute",
    )
    val_panel.set(xscale="log", xlabel=xlabel, ylabel="validation loss, nats/token", title="Validation loss")
    _save(figure, [train_panel, val_panel], path)


def plot_isoflop(points, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 5.5))
    profiles = fit.isoflop_profiles(points)
    budgets = sorted({profile.budget for profile in profiles})
    for profile in profiles:
        color = plt.cm.plasma(0.85 * budgets.index(profile.budget) / max(1, len(budgets) - 1))
        n_params = points.n_params[profile.group]
        axes.plot(n_params, points.loss[profile.group], "o", color=color, label=f"C = {profile.budget:.3g} FLOPs")
        grid = np.geomspace(n_params.min() / 1.3, n_params.max() * 1.3, 100)
        axes.plot(grid, np.polyval(profile.coefficients, np.log(grid)), color=color, linewidth=1)
        if profile.n_opt is not None:
            axes.plot(
                profile.n_opt,
                np.polyval(profile.coefficients, np.log(profile.n_opt)),
                "*",
                color=color,
                markersize=14,
                markeredgecolor="black",
            )
    axes.plot([], [], "*", color="gray", markersize=12, markeredgecolor="black", label="parabola's minimum")
    axes.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="final validation loss (nats/token)",
        title="IsoFLOP profiles (approach 2)",
    )
    _save(figure, [axes], path)


def plot_allocation(points, law, path: Path) -> None:
    """N_opt and D_opt against C, from the sweep's scale to beyond GPT-2 xl's."""
    gpt2 = gpt2_param_counts()
    budgets = np.geomspace(points.flops.min() / 3, 6.0 * max(gpt2.values()) * GPT2_ORIGINAL_TOKENS * 30, 200)
    try:
        isoflop = fit.isoflop_fit(points.final_points())
    except fit.InsufficientData:
        isoflop = None
    figure, panels = plt.subplots(1, 2, figsize=(12, 5))
    for panel, (label, index) in zip(panels, (("parameters N_opt", 0), ("tokens D_opt", 1))):
        panel.plot(
            budgets, EPOCH_REFIT.compute_optimal(budgets)[index], "k--", label="Chinchilla, Epoch AI refit (2024)"
        )
        seen = (budgets >= points.flops.min()) & (budgets <= points.flops.max())
        if has_optimum(law):  # a law whose loss does not fall with N and D has no allocation to draw
            allocation = law.compute_optimal(budgets)[index]
            label = f"this sweep, approach 3 (a={law.exponents()[0]:.2f}; dotted: extrapolated)"
            panel.plot(budgets[seen], allocation[seen], color="tab:blue", label=label)
            panel.plot(budgets, np.where(seen, np.nan, allocation), ":", color="tab:blue")
        if isoflop is not None:
            optimum = isoflop.n_opt if index == 0 else isoflop.d_opt
            exponent = isoflop.a if index == 0 else isoflop.b
            intercept = np.mean(np.log(optimum) - exponent * np.log(isoflop.flops))
            panel.plot(
                isoflop.flops,
                optimum,
                "*",
                color="tab:orange",
                markersize=12,
                markeredgecolor="black",
                label="IsoFLOP minima (approach 2)",
            )
            power_law = np.exp(intercept) * budgets**exponent
            panel.plot(
                budgets[seen],
                power_law[seen],
                color="tab:orange",
                label=f"approach 2 power law (exponent {exponent:.2f}; dotted: extrapolated)",
            )
            panel.plot(budgets, np.where(seen, np.nan, power_law), ":", color="tab:orange")
        for name, n_params in gpt2.items():
            flops_used = 6.0 * n_params * GPT2_ORIGINAL_TOKENS
            value = n_params if index == 0 else GPT2_ORIGINAL_TOKENS
            panel.plot(flops_used, value, "s", color="tab:red", markersize=6)
            # On the tokens panel the four sit at one height: their names go upright above them.
            placement = dict(xytext=(5, -10)) if index == 0 else dict(xytext=(-3, 6), rotation=90)
            panel.annotate(name, (flops_used, value), textcoords="offset points", fontsize=8, **placement)
        panel.plot([], [], "s", color="tab:red", label="GPT-2 as trained (~10B tokens)")
        panel.axvspan(points.flops.min(), points.flops.max(), color="gray", alpha=0.15, label="the FLOPs the fits saw")
        panel.set(
            xscale="log",
            yscale="log",
            xlabel="training FLOPs C = 6ND",
            ylabel=label,
            title=f"Compute-optimal {label.split()[0]}",
        )
    _save(figure, panels, path, legend_size=7)


def plot_eval_tasks(rows: list[dict], tasks: list[str], path: Path) -> None:
    """Each task's acc_norm against the point's compute (6ND), with its 95% Wilson interval."""
    figure, panels = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    colors = _size_colors([float(row["n_params"]) for row in rows])
    for task, panel in zip(tasks, panels[0]):
        for row in sorted(rows, key=lambda row: float(row["flops"])):
            accuracy, _, (low, high) = task_score(row, task)
            panel.errorbar(
                float(row["flops"]),
                accuracy,
                yerr=[[accuracy - low], [high - accuracy]],
                fmt="o",
                color=colors[float(row["n_params"])],
                capsize=2,
            )
        reference = GPT2_124M.get(f"{task}_acc_norm")
        if reference is not None:
            panel.axhline(reference, color="crimson", linestyle="--", label=f"OpenAI GPT-2 124M ({reference})")
        if task in CHANCE:
            panel.axhline(CHANCE[task], color="gray", linestyle=":", label=f"chance ({CHANCE[task]})")
        panel.set(
            xscale="log",
            xlabel="training FLOPs (6ND)",
            ylabel=f"{task} acc_norm",
            title=f"{task}, each point's final score",
        )
    _save(figure, panels[0], path)


def plot_sweep(workdir: str | Path, out: str | Path | None = None, starts=fit.HOFFMANN_STARTS) -> list[Path]:
    """Writes the three figures, and the eval tasks' where the points scored them; returns their paths."""
    workdir = Path(workdir)
    path = results_path(workdir)
    out = Path(out) if out else workdir
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for row in read_rows(path) if float(row.get("lr_multiplier") or 1.0) == 1.0]
    points = load_results(path, params=sweep_param_count(workdir))
    paths = [out / name for name in FIGURES]
    plot_loss_vs_compute(workdir, rows, paths[0])
    plot_isoflop(points, paths[1])
    plot_allocation(points, fit.parametric_fit(points.final_points(), starts).law, paths[2])
    tasks = scored_tasks(rows)
    if tasks:
        paths.append(out / EVAL_TASKS_FIGURE)
        plot_eval_tasks(rows, tasks, paths[-1])
    return paths
