"""Figure builders: whole-number ticks on counting axes, axes named after what they show, and a
readable view of thousands of points. Figures are inspected as matplotlib objects, before saving."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import run_quick

from dlclassics import plots
from dlclassics.runs import Run


def tick_labels(axes: plt.Axes) -> list[plt.Text]:
    """The x tick labels matplotlib actually draws (inside the axis limits), after a draw."""
    axes.figure.canvas.draw()
    low, high = sorted(axes.get_xlim())
    return [label for label, position in zip(axes.get_xticklabels(), axes.get_xticks()) if low <= position <= high]


def assert_whole_numbers_side_by_side(axes: plt.Axes) -> None:
    labels = tick_labels(axes)
    assert len(labels) >= 2
    for label in labels:  # "2", "93,740" or "−1" parse; "2.5" and "1e5" do not
        int(label.get_text().replace("\u2212", "-").replace(",", ""))
    assert axes.xaxis.get_offset_text().get_text() == ""  # no "+9.374e4" shifting every label
    boxes = sorted((label.get_window_extent() for label in labels), key=lambda box: box.x0)
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:]))  # no label overlaps the next


@pytest.mark.parametrize("x, first, count", [("epoch", 1, 3), ("epoch", 1, 30), ("iteration", 93731, 20),
                                             ("iteration", 1, 250000)])
def test_curves_have_whole_number_ticks_for_epochs_and_iterations(x, first, count):
    step = max(1, count // 50)  # a long run is plotted every few iterations
    rows = [{x: i, "loss": 1 / i} for i in range(first, first + count, step)]
    figure = plots.curves(rows, x, {"loss": "training loss"}, "loss", "cross-entropy")
    assert_whole_numbers_side_by_side(figure.axes[0])
    plt.close(figure)


def test_curves_keep_fractional_ticks_for_a_continuous_axis():
    rows = [{"alpha": a, "loss": a * a} for a in np.linspace(0, 1, 11).tolist()]
    figure = plots.curves(rows, "alpha", {"loss": "loss"}, "loss along a line", "loss")
    assert any("." in label.get_text() for label in tick_labels(figure.axes[0]))
    plt.close(figure)


def test_search_figure_names_its_metric_and_counts_trials_in_whole_numbers():
    trials = [{"trial": i, "value": 0.8 + 0.01 * i} for i in range(4)]
    figure = plots.scatter_trials(trials, "value", "Search", "validation accuracy")
    axes = figure.axes[0]
    assert axes.get_ylabel() == "validation accuracy"
    assert_whole_numbers_side_by_side(axes)
    plt.close(figure)


def test_fashion_mlp_figures_label_iterations_and_the_search_metric(image_data_dir, tmp_path, monkeypatch):
    """The real run's last_iterations.png and search.png, caught on their way to disk."""
    shown: dict[str, plt.Figure] = {}
    save = Run.save_figure

    def keep(self, figure, name, *args, **kwargs):
        shown[name] = figure
        if name in ("last_iterations", "search"):
            assert_whole_numbers_side_by_side(figure.axes[0])
        return save(self, figure, name, *args, **kwargs)

    monkeypatch.setattr(Run, "save_figure", keep)
    run_quick("fashion-mlp", image_data_dir, tmp_path / "runs", "--set", "trials=2")
    assert shown["search"].axes[0].get_ylabel() == "validation accuracy"
    assert shown["last_iterations"].axes[0].get_xlabel() == "iteration"


def test_class_scatter_draws_a_random_subset_beside_the_density_of_all_points():
    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 500)  # sorted by class: drawn in this order, class 9 would cover the rest
    points = generator.normal(size=(5000, 2)) + labels[:, None]
    figure = plots.class_scatter(points, labels, [f"class {i}" for i in range(10)], "codes", "PC 1", "PC 2",
                                 shown=1500)
    scatter_axes, density_axes = figure.axes[:2]
    (dots,) = scatter_axes.collections
    drawn = dots.get_offsets()
    assert len(drawn) == 1500
    assert len(np.unique(dots.get_facecolors()[-100:], axis=0)) > 5  # the last drawn mix the classes
    (cells,) = density_axes.collections
    assert density_axes.get_xlabel() == "PC 1"
    assert cells.get_array().sum() == 5000  # every point counted
    assert len(scatter_axes.get_legend().get_texts()) == 10
    plt.close(figure)


def test_class_scatter_of_few_points_draws_them_all_in_one_panel():
    points, labels = np.random.default_rng(0).normal(size=(300, 2)), np.arange(300) % 3
    figure = plots.class_scatter(points, labels, ["a", "b", "c"], "codes", "x", "y")
    assert len(figure.axes) == 1 and len(figure.axes[0].collections[0].get_offsets()) == 300
    plt.close(figure)


def test_histograms_share_log_bins_and_show_fractions():
    figure = plots.histograms({"train": np.geomspace(1, 1000, 500), "test": np.geomspace(1, 100, 50)},
                              "ESS", "ESS", bins=6, logx=True, ylabel="fraction of images")
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and axes.get_ylabel() == "fraction of images"
    # geometric values on six geometric bins from 1 to 1000: train has 1/6 in each, test (1 to 100) 1/4 in four
    train, test = (patch.get_path().vertices[:, 1] for patch in axes.patches)
    assert train.max() == pytest.approx(1 / 6, abs=0.01) and test.max() == pytest.approx(1 / 4, abs=0.02)
    plt.close(figure)
