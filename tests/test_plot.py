"""The figures read back from their Figure objects: every title, axis and legend says what it shows and in
which units, N is the study's one count on every figure, tick labels do not collide, and an approach
the points do not support is not drawn."""

import dataclasses
import itertools

import matplotlib.pyplot as plt
import pytest

from gpt2jax.scaling import fit, plot
from gpt2jax.scaling.results import PARAM_NAMES, load_results, read_rows, upsert_row
from tests.helpers import KNOWN_EMBEDDING, TRUE_LAW, write_known_sweep

# What a label's quantity is counted in: every axis label names one of these.
UNITS = ("FLOPs", "parameters", "tokens", "nats/token", "fraction")


def legend_texts(figure) -> list[str]:
    return [text.get_text() for panel in figure.axes if panel.get_legend() for text in panel.get_legend().get_texts()]


def drawn_labels(figure) -> list[str]:
    """The legend labels of the lines that have data: what the figure draws, not what its legend only names."""
    return [line.get_label() for panel in figure.axes for line in panel.get_lines() if len(line.get_xdata())]


def _colliding_tick_labels(figure) -> list[str]:
    figure.canvas.draw()
    collisions = []
    for panel, axis in ((panel, axis) for panel in figure.axes for axis in (panel.xaxis, panel.yaxis)):
        labels = [label for label in axis.get_ticklabels(which="both") if label.get_visible() and label.get_text()]
        boxes = sorted(
            ((label.get_window_extent(), label.get_text()) for label in labels),
            key=lambda item: item[0].x0 if axis is panel.xaxis else item[0].y0,
        )
        for (first, first_text), (second, second_text) in zip(boxes, boxes[1:]):
            if first.overlaps(second):
                collisions.append(f"{panel.get_title()!r}: tick labels {first_text!r} and {second_text!r} overlap")
    return collisions


def figure_problems(figures: dict) -> list[str]:
    """What a reader could not read right in ``figures`` (name -> Figure): an untitled panel or a title used
    twice, an axis without a label or a unit, a legend entry used as a title or label, colliding ticks."""
    problems = []
    titles = [(name, panel.get_title()) for name, figure in figures.items() for panel in figure.axes]
    for (name, title), (other, again) in itertools.combinations(titles, 2):
        if title == again:
            problems.append(f"{name} and {other} share the title {title!r}")
    for name, figure in figures.items():
        legends = set(legend_texts(figure))
        for panel in figure.axes:
            labels = {"title": panel.get_title(), "x label": panel.get_xlabel(), "y label": panel.get_ylabel()}
            for kind, text in labels.items():
                if not text:
                    problems.append(f"{name}: a panel has no {kind}")
                elif text in legends:
                    problems.append(f"{name}: the {kind} {text!r} is a legend entry")
                elif kind != "title" and not any(unit in text for unit in UNITS):
                    problems.append(f"{name}: the {kind} {text!r} names no unit ({', '.join(UNITS)})")
        problems += [f"{name}: {collision}" for collision in _colliding_tick_labels(figure)]
    return problems


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A sweep that counts non-embedding parameters and scored HellaSwag: every figure it has."""
    workdir = write_known_sweep(tmp_path_factory.mktemp("study"), params="non_embedding")
    for index, row in enumerate(read_rows(workdir / "results.csv")):
        scores = {"hellaswag_acc": 0.26, "hellaswag_acc_norm": 0.25 + index / 100, "hellaswag_n": 500}
        upsert_row(workdir / "results.csv", row | scores)
    return workdir


@pytest.fixture(scope="module")
def figures(study):
    built = plot.sweep_figures(study, starts=fit.COARSE_STARTS, n_bootstrap=8)
    yield built
    for figure in built.values():
        plt.close(figure)


def test_every_figure_says_what_it_shows_and_in_which_units(figures):
    assert list(figures) == [*plot.FIGURES, plot.EVAL_TASKS_FIGURE]
    assert figure_problems(figures) == []


def test_the_check_fails_on_a_legend_as_label_a_missing_unit_a_repeated_title_and_colliding_ticks():
    figure, (left, right) = plt.subplots(1, 2)
    left.plot([1, 2], [1, 2], label="this sweep, approach 3")
    right.plot([1, 2], [1, 2], label="approach 2")
    left.legend()
    right.legend()
    left.set(title="Compute-optimal this", xlabel="training FLOPs C = 6ND", ylabel="this sweep, approach 3")
    right.set(title="Compute-optimal this", xlabel="training compute", ylabel="N_opt, parameters")
    right.set_yticks([1.0, 1.001], ["1000000000000", "2000000000000"])
    problems = figure_problems({"bad.png": figure})
    plt.close(figure)
    assert problems[0] == "bad.png and bad.png share the title 'Compute-optimal this'"
    assert "bad.png: the y label 'this sweep, approach 3' is a legend entry" in problems
    assert (
        "bad.png: the x label 'training compute' names no unit (FLOPs, parameters, tokens, nats/token, fraction)"
        in (problems)
    )
    assert any("tick labels '1000000000000' and '2000000000000' overlap" in problem for problem in problems)


def test_every_figure_counts_n_the_one_way_its_study_chose(study, figures):
    name = PARAM_NAMES["non_embedding"]
    for figure in figures.values():
        for panel in figure.axes:
            # Every axis that involves N (the counts, and C = 6ND) names the study's count.
            for label in (panel.get_xlabel(), panel.get_ylabel()):
                if label.startswith(("N", "training FLOPs")):
                    assert name in label, label
    rows = read_rows(study / "results.csv")
    sizes = sorted({float(row["n_params_non_embedding"]) for row in rows})
    legend = legend_texts(figures["loss_vs_compute.png"])
    assert [text for text in legend if text.startswith("N = ")] == ["N = 20k", "N = 50k", "N = 120k", "N = 300k"]
    assert sizes[0] + KNOWN_EMBEDDING == float(rows[0]["n_params"])  # the other count, which no figure shows
    # Each run's final point sits at its budget, 6ND with the study's N, on the loss figure as on the IsoFLOP one.
    validation = figures["loss_vs_compute.png"].axes[1]
    finals = [x for line in validation.get_lines() if line.get_marker() == "o" for x in line.get_xdata()]
    assert sorted(finals) == pytest.approx(sorted(float(row["budget"]) for row in rows))
    isoflop_sizes = {
        float(x)
        for line in figures["isoflop.png"].axes[0].get_lines()
        if line.get_marker() == "o"
        for x in line.get_xdata()
    }
    assert isoflop_sizes == set(sizes)


def test_an_approach_the_points_do_not_identify_is_withheld_and_the_legend_says_so(study):
    points = load_results(study / "results.csv", params="non_embedding")
    law = fit.parametric_fit(points.final_points(), fit.COARSE_STARTS).law
    drawn = plot.allocation_figure(points, law, {}, "non_embedding")
    withheld = plot.allocation_figure(points, law, {"E": "why", "alpha": "why"}, "non_embedding")
    assert any(label.startswith("this sweep, approach 3") for label in drawn_labels(drawn))
    assert not any("approach 3" in label for label in drawn_labels(withheld))
    assert "approach 3 withheld: the points do not identify E, alpha" in legend_texts(withheld)
    assert not any("withheld" in text for text in legend_texts(drawn))
    # A law whose loss does not fall with N has no allocation to draw.
    flat = dataclasses.replace(TRUE_LAW, alpha=-0.1)
    falling = plot.allocation_figure(points, flat, {}, "non_embedding")
    assert "approach 3 withheld: its loss does not fall with both N and D" in legend_texts(falling)
    for figure in (drawn, withheld, falling):
        plt.close(figure)


def test_the_sweeps_figures_withhold_what_fit_calls_unidentified(study, monkeypatch):
    monkeypatch.setattr(fit, "unidentified", lambda law, laws, confidence: {"A": "its interval spans a decade"})
    figures = plot.sweep_figures(study, starts=fit.COARSE_STARTS, n_bootstrap=2)
    allocation = figures["allocation.png"]
    assert not any("approach 3" in label for label in drawn_labels(allocation))
    assert "approach 3 withheld: the points do not identify A" in legend_texts(allocation)
    for figure in figures.values():
        plt.close(figure)
