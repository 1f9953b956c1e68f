"""A sweep's figures, as PNGs (``python -m gpt2jax.scaling plot`` writes them).

loss_vs_compute.png  two panels, one kind of loss each: every run's smoothed training curve
                     against FLOPs with the frontier of those curves, and every run's validation
                     losses with their frontier and each run's final one
isoflop.png          loss against model size at each FLOP budget, the parabolas through
                     them and their minima (approach 2)
allocation.png       N_opt(C) and D_opt(C): the IsoFLOP minima and their power laws, the
                     fitted law's allocation (approach 3) and Chinchilla's, extended to
                     GPT-2's scale, with GPT-2's four sizes as trained (~10B tokens each); the
                     sweep's own fits are solid over the FLOPs they saw and dotted beyond. An
                     approach the points do not support (approach 3 whose constants ``fit``
                     calls unidentified, approach 2 without two minima) is not drawn: its
                     legend entry says why it was withheld
eval_tasks.png       only for a sweep whose points scored ``train.eval_tasks``: each task's
                     acc_norm against compute with its 95% interval, chance, and OpenAI's
                     GPT-2 124M as a reference line

Every figure counts N the one way its sweep chose (``results.sweep_param_count``: all
parameters, or the non-embedding ones), names that count on its axes, and puts each point at
C = 6ND with that N, so a point of budget 4e10 sits at 4e10 on every figure. Each figure is built
by a ``*_figure`` function that returns the matplotlib Figure, so a test can read its titles,
labels and legends back before ``plot_sweep`` saves it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from gpt2jax.files.workdir import METRICS_FILE, POINTS_DIR, read_metrics, results_path  # noqa: E402
from gpt2jax.flops import format_count  # noqa: E402
from gpt2jax.scaling import fit  # noqa: E402
from gpt2jax.scaling.backtest import CONFIDENCE, has_optimum  # noqa: E402
from gpt2jax.scaling.budget import GPT2_ORIGINAL_TOKENS, gpt2_param_counts  # noqa: E402
from gpt2jax.scaling.laws import EPOCH_REFIT  # noqa: E402
from gpt2jax.scaling.results import (  # noqa: E402
    PARAM_COLUMNS,
    PARAM_NAMES,
    load_results,
    param_axis,
    read_rows,
    scored_tasks,
    sweep_param_count,
    task_score,
)
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
LOSS_UNITS = "nats/token"
# A log axis spanning at most this many decades gets ticks at 1, 2 and 5 of each decade, and no
# labelled minor ticks: matplotlib labels every minor tick of a short log axis, and on the
# IsoFLOP figure 2x10^3, 3x10^3 and 4x10^3 ran into each other.
SHORT_LOG_DECADES = 2.0


def flops_axis(params: str) -> str:
    """The compute axis of every figure: C = 6ND, with the study's N named."""
    return f"training FLOPs C = 6ND, N: {PARAM_NAMES[params]}"


def study_flops(row: dict, params: str) -> float:
    """A results row's C = 6ND, N counted as the study counts it."""
    return 6.0 * float(row[PARAM_COLUMNS[params]]) * float(row["n_tokens"])


def _log_ticks(axis, counts: bool) -> None:
    """Tick labels on a log axis that cannot collide; ``counts`` writes them as 2k, 5M, 1B."""
    low, high = axis.get_view_interval()
    short = np.log10(high / low) <= SHORT_LOG_DECADES
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if short else (1.0,)))
    axis.set_minor_formatter(NullFormatter())
    if counts:
        axis.set_major_formatter(FuncFormatter(lambda value, _: format_count(value)))


def _finish(figure, panels, legend_size: int = 8, counts: tuple[str, ...] = ()):
    """Grid, legend and log ticks on each panel; ``counts``: the axes ('x', 'y') that hold counts, not FLOPs."""
    for panel in panels:
        panel.grid(True, which="both", alpha=0.3)
        panel.legend(fontsize=legend_size)
        for name, axis in (("x", panel.xaxis), ("y", panel.yaxis)):
            if axis.get_scale() == "log":
                _log_ticks(axis, name in counts)
    figure.tight_layout()
    return figure


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


def loss_vs_compute_figure(workdir: Path, rows: list[dict], params: str):
    """Smoothed training curves (left) and validation losses (right) from each point's metrics.jsonl; trunks dashed.

    A record's compute is 6 N tokens_seen with the study's N, not the 6N + attention that
    train.run logs as flops_seen: the final points then sit at the budgets of the other figures.
    """
    figure, (train_panel, val_panel) = plt.subplots(1, 2, figsize=(13, 5.5), sharex=True)
    count = {row["run"]: float(row[PARAM_COLUMNS[params]]) for row in rows}
    colors = _size_colors(list(count.values()))
    train_x, train_y, val_x, val_y = [], [], [], []
    drawn_trunks = set()
    for row in rows:
        n, color = count[row["run"]], colors[count[row["run"]]]
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
            x = [6.0 * n * record["tokens_seen"] for record in curve]
            y = smoothed([record["train_loss"] for record in curve])
            train_panel.plot(x, y, style, color=color, linewidth=0.9, alpha=0.8)
            train_x += x
            train_y += list(y)
            evaluated = [record for record in records if "val_loss" in record]
            x = [6.0 * n * record["tokens_seen"] for record in evaluated]
            y = [record["val_loss"] for record in evaluated]
            val_panel.plot(x, y, style, color=color, linewidth=0.9)
            val_x += x
            val_y += y
        val_panel.plot(
            study_flops(row, params),
            float(row["val_loss"]),
            "o",
            color=color,
            markersize=5,
            markeredgecolor="black",
            markeredgewidth=0.5,
        )
    _frontier(train_panel, train_x, train_y, "lowest smoothed training loss at each C")
    _frontier(val_panel, val_x, val_y, "lowest validation loss at each C")
    for n, color in colors.items():
        train_panel.plot([], [], color=color, label=f"N = {format_count(n)}")
    train_panel.plot([], [], "k--", linewidth=0.9, label="constant-rate trunk")
    val_panel.plot([], [], "o", color="gray", markeredgecolor="black", label="each run's final validation loss")
    train_panel.set(
        xscale="log",
        xlabel=flops_axis(params),
        ylabel=f"training loss, {LOSS_UNITS} (EMA over {SMOOTHING_WINDOWS} log windows)",
        title="Training loss against compute, each run's curve",
    )
    val_panel.set(
        xscale="log",
        xlabel=flops_axis(params),
        ylabel=f"validation loss, {LOSS_UNITS}",
        title="Validation loss against compute, each run's evaluations",
    )
    _finish(figure, [train_panel, val_panel])
    train_panel.get_legend().set_title(f"N: {PARAM_NAMES[params]}", prop={"size": 8})
    return figure


def isoflop_figure(points, params: str):
    """Final validation loss against N at each budget, the parabola in log N through each, and its minimum."""
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
    axes.plot([], [], "*", color="gray", markersize=12, markeredgecolor="black", label="parabola's minimum, N_opt")
    axes.set(
        xscale="log",
        xlabel=param_axis(params),
        ylabel=f"final validation loss, {LOSS_UNITS}",
        title="IsoFLOP profiles (approach 2): loss against N at each budget",
    )
    return _finish(figure, [axes], counts=("x",))


def withheld_approaches(law, unknown: dict, isoflop_error: str | None) -> dict[str, str]:
    """The approaches the allocation figure does not draw, each with why: approach 3 when ``fit`` calls
    its constants unidentified (``unknown``) or its loss does not fall with both N and D, approach 2
    when its IsoFLOP minima could not be fitted (``isoflop_error``)."""
    withheld = {}
    if unknown:
        withheld["approach 3"] = "the points do not identify " + ", ".join(unknown)
    elif not has_optimum(law):
        withheld["approach 3"] = "its loss does not fall with both N and D"
    if isoflop_error:
        withheld["approach 2"] = isoflop_error
    return withheld


def allocation_figure(points, law, unknown: dict, params: str):
    """N_opt and D_opt against C, from the sweep's scale to beyond GPT-2 xl's; ``unknown``: the
    unidentified constants of ``law`` (``fit.unidentified``), whose allocation is then withheld."""
    gpt2 = gpt2_param_counts(PARAM_COLUMNS[params])
    budgets = np.geomspace(points.flops.min() / 3, 6.0 * max(gpt2.values()) * GPT2_ORIGINAL_TOKENS * 30, 200)
    try:
        isoflop, isoflop_error = fit.isoflop_fit(points.final_points()), None
    except fit.InsufficientData as error:
        isoflop, isoflop_error = None, str(error)
    withheld = withheld_approaches(law, unknown, isoflop_error)
    chinchilla = "Chinchilla, Epoch AI refit (2024)" + ("" if params == "total" else ", its N all parameters")
    seen = (budgets >= points.flops.min()) & (budgets <= points.flops.max())
    figure, panels = plt.subplots(1, 2, figsize=(12, 5))
    quantities = (
        (param_axis(params, "N_opt"), "Compute-optimal model size N_opt against compute"),
        ("D_opt, training tokens", "Compute-optimal training tokens D_opt against compute"),
    )
    for index, (panel, (ylabel, title)) in enumerate(zip(panels, quantities)):
        exponent_name = "a" if index == 0 else "b"
        panel.plot(budgets, EPOCH_REFIT.compute_optimal(budgets)[index], "k--", label=chinchilla)
        if "approach 3" not in withheld:
            allocation = law.compute_optimal(budgets)[index]
            label = f"this sweep, approach 3 ({exponent_name} = {law.exponents()[index]:.2f}; dotted: extrapolated)"
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
                label=f"approach 2 power law ({exponent_name} = {exponent:.2f}; dotted: extrapolated)",
            )
            panel.plot(budgets, np.where(seen, np.nan, power_law), ":", color="tab:orange")
        for name, n_params in gpt2.items():
            flops_used = 6.0 * n_params * GPT2_ORIGINAL_TOKENS
            value = n_params if index == 0 else GPT2_ORIGINAL_TOKENS
            panel.plot(flops_used, value, "s", color="tab:red", markersize=6)
            if index == 0:  # on the tokens panel the four sit at one height, too close for their names
                panel.annotate(name, (flops_used, value), textcoords="offset points", fontsize=8, xytext=(5, -10))
        gpt2_label = "GPT-2 as trained (~10B tokens)" + ("" if index == 0 else ", named on the left")
        panel.plot([], [], "s", color="tab:red", label=gpt2_label)
        panel.axvspan(points.flops.min(), points.flops.max(), color="gray", alpha=0.15, label="the FLOPs the fits saw")
        for approach, why in withheld.items():  # a legend entry with nothing drawn: what is missing, and why
            panel.plot([], [], " ", label=f"{approach} withheld: {why}")
        panel.set(xscale="log", yscale="log", xlabel=flops_axis(params), ylabel=ylabel, title=title)
    return _finish(figure, panels, legend_size=7, counts=("y",))


def eval_tasks_figure(rows: list[dict], tasks: list[str], params: str):
    """Each task's acc_norm against the point's compute (6ND), with its 95% Wilson interval."""
    figure, panels = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    colors = _size_colors([float(row[PARAM_COLUMNS[params]]) for row in rows])
    for task, panel in zip(tasks, panels[0]):
        for row in sorted(rows, key=lambda row: study_flops(row, params)):
            accuracy, _, (low, high) = task_score(row, task)
            panel.errorbar(
                study_flops(row, params),
                accuracy,
                yerr=[[accuracy - low], [high - accuracy]],
                fmt="o",
                color=colors[float(row[PARAM_COLUMNS[params]])],
                capsize=2,
            )
        reference = GPT2_124M.get(f"{task}_acc_norm")
        if reference is not None:
            panel.axhline(reference, color="crimson", linestyle="--", label=f"OpenAI GPT-2 124M ({reference})")
        if task in CHANCE:
            panel.axhline(CHANCE[task], color="gray", linestyle=":", label=f"chance ({CHANCE[task]})")
        panel.set(
            xscale="log",
            xlabel=flops_axis(params),
            ylabel=f"{task} acc_norm, fraction of examples right",
            title=f"{task}: each point's final score, 95% interval",
        )
    return _finish(figure, panels[0])


def sweep_figures(
    workdir: str | Path, starts=fit.HOFFMANN_STARTS, n_bootstrap: int = 100, seed: int = 0, params: str | None = None
) -> dict[str, object]:
    """The sweep's figures by file name, built and not yet saved: the three, and the eval tasks' where
    the points scored them. Approach 3 is identified as ``fit`` identifies it (its bootstrap of
    ``n_bootstrap`` resamples with ``seed``), so the figure withholds what ``fit`` withholds.

    ``params``: what N counts, for a folder without the sweep's sweep.json (a study committed as its
    results.csv); by default the sweep's own choice. A folder without the points' training curves
    (points/RUN/metrics.jsonl) gets no loss_vs_compute.png, with a warning: drawn from the final
    points alone it would replace the curves with a few dots.
    """
    workdir = Path(workdir)
    path = results_path(workdir)
    params = params or sweep_param_count(workdir)
    rows = [row for row in read_rows(path) if float(row.get("lr_multiplier") or 1.0) == 1.0]
    points = load_results(path, params=params)
    parametric, boot_laws = fit.parametric_bootstrap(points, n_bootstrap, seed, starts)
    unknown = fit.unidentified(parametric.law, boot_laws, CONFIDENCE)
    figures = {}
    if any((workdir / POINTS_DIR / row["run"] / METRICS_FILE).is_file() for row in rows):
        figures[FIGURES[0]] = loss_vs_compute_figure(workdir, rows, params)
    else:
        warnings.warn(f"{workdir / POINTS_DIR} holds no point's {METRICS_FILE}, so {FIGURES[0]} is not drawn.")
    figures[FIGURES[1]] = isoflop_figure(points, params)
    figures[FIGURES[2]] = allocation_figure(points, parametric.law, unknown, params)
    tasks = scored_tasks(rows)
    if tasks:
        figures[EVAL_TASKS_FIGURE] = eval_tasks_figure(rows, tasks, params)
    return figures


def plot_sweep(
    workdir: str | Path,
    out: str | Path | None = None,
    starts=fit.HOFFMANN_STARTS,
    n_bootstrap: int = 100,
    seed: int = 0,
    params: str | None = None,
) -> list[Path]:
    """Writes ``sweep_figures`` as PNGs into ``out`` (the workdir unless given); returns their paths."""
    out = Path(out) if out else Path(workdir)
    figures = sweep_figures(workdir, starts, n_bootstrap, seed, params)  # a missing workdir is refused first
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in figures.items():
        paths.append(out / name)
        figure.savefig(paths[-1], dpi=DPI)
        plt.close(figure)
    return paths
