"""Figure builders shared by experiments. Each returns a matplotlib Figure; `Run.save_figure`
writes it as PNG with its data beside it. Figures are titled and labelled, legible at 100%."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402


def integer_ticks(axes: plt.Axes) -> None:
    """Whole-number x ticks, for axes that count (epochs, iterations, trials): never "2.5" epochs.

    At most 7 ticks and plain numbers (no "+9.37e4" offset), so six-digit iteration counts stay legible
    side by side."""
    axes.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    axes.xaxis.set_major_formatter(formatter)


def curves(rows: Sequence[Mapping[str, Any]], x: str, series: Mapping[str, str], title: str, ylabel: str,
           xlabel: str | None = None, logy: bool = False) -> plt.Figure:
    """Line plot of columns of `rows` (history-style dicts): `series` maps column -> legend label.
    Columns whose label contains "val" or "test" are dashed, so train/held-out pairs read at a glance.
    An integer x column (epoch, iteration, step) gets whole-number ticks."""
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    xs = [row[x] for row in rows]
    for column, label in series.items():
        style = "--" if any(word in label.lower() for word in ("val", "test")) else "-"
        axes.plot(xs, [row.get(column, np.nan) for row in rows], style, marker="o" if len(xs) <= 30 else None,
                  markersize=3, label=label)
    axes.set(title=title, xlabel=xlabel or x, ylabel=ylabel)
    if np.asarray(xs).dtype.kind in "iu":
        integer_ticks(axes)
    if logy:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def confusion_matrix(predicted: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts [true, predicted], computed with one bincount."""
    return torch.bincount(targets * n_classes + predicted, minlength=n_classes ** 2).reshape(n_classes, n_classes)


def confusion_figure(matrix: torch.Tensor, classes: Sequence[str], title: str) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(6.5, 5.5))
    image = axes.imshow(matrix.numpy(), cmap="Blues")
    axes.set(title=title, xlabel="predicted", ylabel="true", xticks=range(len(classes)), yticks=range(len(classes)))
    axes.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    axes.set_yticklabels(classes, fontsize=8)
    threshold = matrix.max().item() / 2
    for (i, j), count in np.ndenumerate(matrix.numpy()):
        axes.text(j, i, str(count), ha="center", va="center", fontsize=6,
                  color="white" if count > threshold else "black")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return figure


def image_grid(images: torch.Tensor, title: str, titles: Sequence[str] | None = None, columns: int = 10,
               row_labels: Sequence[str] | None = None) -> plt.Figure:
    """Grayscale images [N, H, W] (any range, shown with 0..1 for floats in [0, 1] or uint8)."""
    images = images.detach().cpu()
    rows = max(1, int(np.ceil(len(images) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(1.1 * columns, 1.2 * rows + 0.4), squeeze=False)
    vmax = 255 if images.dtype == torch.uint8 else 1.0
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index < len(images):
            axis.imshow(images[index].float().numpy(), cmap="gray", vmin=0, vmax=vmax)
            if titles:
                axis.set_title(titles[index], fontsize=7)
        else:
            axis.axis("off")
    if row_labels:
        for row, label in enumerate(row_labels):
            axes[row, 0].set_ylabel(label, fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def view_classify(images: torch.Tensor, probabilities: torch.Tensor, labels: torch.Tensor,
                  classes: Sequence[str], title: str) -> plt.Figure:
    """S3's "view_classify": each image beside a bar chart of its predicted class probabilities."""
    count = len(images)
    figure, axes = plt.subplots(count, 2, figsize=(6.5, 1.9 * count), squeeze=False)
    for row in range(count):
        axes[row, 0].imshow(images[row].cpu().numpy(), cmap="gray")
        axes[row, 0].set_title(f"true: {classes[labels[row]]}", fontsize=8)
        axes[row, 0].axis("off")
        axes[row, 1].barh(range(len(classes)), probabilities[row].cpu().numpy())
        axes[row, 1].set_yticks(range(len(classes)))
        axes[row, 1].set_yticklabels(classes, fontsize=7)
        axes[row, 1].set_xlim(0, 1.05)
        axes[row, 1].set_xlabel("class probability", fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def scatter_trials(trials: Sequence[Mapping[str, Any]], value: str, title: str, metric: str) -> plt.Figure:
    """A search's objective (column `value`, maximised; the y axis is named `metric`, e.g. "validation
    accuracy") per trial, the running best as a step line."""
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    numbers = [row["trial"] for row in trials]
    values = [row[value] for row in trials]
    axes.scatter(numbers, values, label="trial")
    axes.step(numbers, np.maximum.accumulate(values), where="post", color="C1", label="best so far")
    axes.set(title=title, xlabel="trial", ylabel=metric)
    integer_ticks(axes)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def tile(images: torch.Tensor, columns: int) -> torch.Tensor:
    """[N, H, W] -> one [rows*H, columns*W] mosaic (missing cells black), so 64 samples are one image."""
    count, height, width = images.shape
    rows = max(1, int(np.ceil(count / columns)))
    padded = torch.zeros(rows * columns, height, width, dtype=images.dtype)
    padded[:count] = images.detach().cpu()
    return padded.reshape(rows, columns, height, width).permute(0, 2, 1, 3).reshape(rows * height, columns * width)


def mosaic_panels(panels: Mapping[str, Mapping[str, torch.Tensor]], title: str, columns: int = 8) -> plt.Figure:
    """A grid of mosaics: `panels[row_label][column_title]` is a batch [N, H, W] in [0, 1], e.g. prior
    samples per model (rows) and epoch (columns)."""
    row_labels = list(panels)
    column_titles = list(next(iter(panels.values())))
    figure, axes = plt.subplots(len(row_labels), len(column_titles), squeeze=False,
                                figsize=(2.3 * len(column_titles), 2.4 * len(row_labels) + 0.4))
    for i, row in enumerate(row_labels):
        for j, column in enumerate(column_titles):
            axis = axes[i, j]
            axis.imshow(tile(panels[row][column], columns).float().numpy(), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(column if len(row_labels) == 1 else f"{row}: {column}", fontsize=9)
        axes[i, 0].set_ylabel(row, fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def grouped_bars(rows: Sequence[Mapping[str, Any]], category: str, series: Sequence[str], title: str,
                 ylabel: str) -> plt.Figure:
    """One group of bars per row (labelled by `rows[i][category]`), one bar per column in `series`."""
    figure, axes = plt.subplots(figsize=(7.0, 4.0))
    positions = np.arange(len(rows))
    width = 0.8 / len(series)
    for index, column in enumerate(series):
        axes.bar(positions + (index - (len(series) - 1) / 2) * width, [row[column] for row in rows], width,
                 label=column)
    axes.set_xticks(positions)
    axes.set_xticklabels([str(row[category]) for row in rows], rotation=30 if len(rows) > 10 else 0, fontsize=8)
    axes.set(title=title, xlabel=category, ylabel=ylabel)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(series), fontsize=8)
    return figure


def histograms(samples: Mapping[str, torch.Tensor | np.ndarray], title: str, xlabel: str, bins: int = 40,
               logx: bool = False, ylabel: str = "fraction") -> plt.Figure:
    """Overlaid step histograms of named samples on shared bins, each as fractions of its own size so
    samples of different sizes compare (geometric bins when `logx`, for values spanning orders of
    magnitude such as effective sample sizes)."""
    values = {name: np.asarray(sample, dtype=float) for name, sample in samples.items()}
    low = min(v.min() for v in values.values())
    high = max(v.max() for v in values.values())
    edges = np.geomspace(low, high, bins + 1) if logx else np.linspace(low, high, bins + 1)
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for name, sample in values.items():
        axes.hist(sample, edges, weights=np.full(len(sample), 1 / len(sample)), histtype="step", linewidth=1.5,
                  label=f"{name} ({len(sample):,})")
    if logx:
        axes.set_xscale("log")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def class_scatter(points: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, names: Sequence[str],
                  title: str, xlabel: str, ylabel: str, shown: int = 1500, seed: int = 0) -> plt.Figure:
    """2-D points [N, 2] coloured by class (`names[labels[i]]`), such as a latent space.

    Thousands of points hide each other, and drawn class by class the last class covers the rest. So
    at most `shown` points, picked at random, are drawn in random order; when that leaves some out,
    a second panel gives the density of all of them (hexagonal bins, log colour scale)."""
    points, labels = np.asarray(points), np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(points))[:shown]
    dense = len(points) > shown
    figure, panels = plt.subplots(1, 2 if dense else 1, figsize=(12.0 if dense else 7.0, 5.6), squeeze=False,
                                  sharex=True, sharey=True)  # the limits of all points, in both panels
    left = panels[0, 0]
    colours = plt.get_cmap("tab10")
    left.scatter(points[order, 0], points[order, 1], s=6, alpha=0.7, c=colours(labels[order] % 10), linewidths=0)
    left.legend(handles=[Line2D([], [], marker="o", linestyle="", color=colours(index % 10), label=name)
                         for index, name in enumerate(names)], fontsize=7, loc="best")
    left.set(title=f"random {len(order):,} of the points" if dense else "all points", xlabel=xlabel, ylabel=ylabel)
    if dense:
        right = panels[0, 1]
        cells = right.hexbin(points[:, 0], points[:, 1], gridsize=35, bins="log", mincnt=1, cmap="viridis")
        figure.colorbar(cells, ax=right, label="points per cell")
        right.set(title=f"density of all {len(points):,}", xlabel=xlabel)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
