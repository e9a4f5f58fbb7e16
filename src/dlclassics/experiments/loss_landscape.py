"""loss-landscape: the loss surface around an SGD trajectory of the Fashion-MNIST MLP.

Source: `../shared/seeds/001_9651b007d7353d63.txt`, Problem 3. The source projects the flattened
parameters recorded after each retraining epoch of its best MLP on their first two principal
components, evaluates the unregularised cross-entropy on 2,500 training examples on a 25x25 grid
spanning the projected trajectory plus 20% margins, and draws the surface in 3D with the trajectory
scattered on it. It reports no numbers (a figure). Beyond the source: a contour view with the path,
two random filter-normalised directions around the final weights (Li et al. 2018), and the 1D
interpolation from the initial to the final weights (Goodfellow et al. 2015).

The grid is evaluated in batches of points with `torch.func` (see `dlclassics.methods.landscape`); the
loops over grid points are the idea of this experiment, so they live here, not in `engine.fit`.

    dlclassics run fashion-mlp && dlclassics run loss-landscape --from-run runs/fashion-mlp/<run>
    dlclassics run loss-landscape            # trains a short trajectory itself
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from dlclassics.config import (
    BaseConfig,
    batch_size_option,
    dataset_option,
    epochs_option,
    lr_option,
    option,
    width_option,
)
from dlclassics.data.images import image_datasets
from dlclassics.data.transforms import flat_float, subsample
from dlclassics.engine import evaluate_classifier, flat_parameters, make_optimizer
from dlclassics.errors import RunError
from dlclassics.files import load_tensor_file
from dlclassics.methods import landscape
from dlclassics.models.mlp import ACTIVATIONS, mlp
from dlclassics.runs import FinishedRun, Reference, Run, Upstream
from dlclassics.runs.products import TRAJECTORY
from dlclassics.training.mlp_search import save_trajectory

TITLE = "Loss landscape around the SGD trajectory of the Fashion-MNIST MLP (S1 Problem 3)"

# Trained here, the trajectory is written under fashion-mlp's name and format, so either run can be a --from-run.
FROM_RUN = Upstream(("fashion-mlp", "loss-landscape"), files=(TRAJECTORY,))


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = dataset_option("fashion-mnist", image_datasets,
                                  "image dataset (a --from-run run's own dataset wins)")
    hidden: tuple[int, ...] = width_option((40, 40, 40), "hidden widths of the MLP trained without --from-run")
    lr: float = lr_option(0.01, "SGD learning rate (without --from-run)")
    batch_size: int = batch_size_option(16, "SGD minibatch size (without --from-run)")
    weight_decay: float = option(1e-3, "L2 strength on weight matrices (without --from-run)", low=0.0)
    epochs: int = epochs_option(10, "training epochs = trajectory points - 1 (without --from-run)")
    limit: int = option(0, "train on the first N training images only (0 = all)", low=0)
    subset: int = option(2500, "training examples the loss is measured on", low=10)
    grid: int = option(25, "grid points per axis", low=3)
    margin: float = option(0.2, "PCA grid margin, as a fraction of the trajectory's range", low=0.0)
    span: float = option(1.0, "filter-normalised grid: coefficients in [-span, span]", low=0.0, low_open=True)
    chunk: int = option(0, "grid points evaluated per batched call (0 = as many as 16 MB of activations hold)",
                        low=0)


# seed = the source's 50 retraining epochs of its best configuration (3 x 40 units, batch 16, lr 0.01, L2 0.001)
RECIPES: dict[str, dict[str, Any]] = {"seed": {"epochs": 50}, "tuned": {}}
QUICK = {"limit": 600, "epochs": 2, "subset": 200, "grid": 5, "hidden": (16,)}

REFERENCES = [
    Reference("grid_eval_s", "per-point loop", "25x25 PCA grid on 2,500 examples, seconds (goal: < 20)",
              rule="at_most", target=20.0),
    Reference("centre_loss_gap", 0.0, "|grid loss at the final weights - the model's own loss|", rule="at_most",
              target=1e-4),
]


def load_trajectory(source: FinishedRun) -> dict[str, Any]:
    """The trajectory of a finished fashion-mlp (or loss-landscape) run: parameters [T, P], hidden widths,
    activation, and the dataset it was trained on."""
    saved = source.load(TRAJECTORY, read_trajectory)
    return {**saved, "dataset": source.options.get("dataset")}


def read_trajectory(path: Path) -> dict[str, Any]:
    """The trajectory file, checked to describe an MLP 784-hidden-10 and one parameter vector per point."""
    saved = load_tensor_file(path, "a trajectory {'parameters': [T, P], 'hidden': [...], 'activation': ...}")
    if not isinstance(saved, Mapping) or not {"parameters", "hidden", "activation"} <= set(saved):
        raise RunError(f"{path} lacks parameters/hidden/activation; it was not written by fashion-mlp")
    hidden, activation, parameters = saved["hidden"], saved["activation"], saved["parameters"]
    if not (isinstance(hidden, list) and hidden and all(isinstance(w, int) and w > 0 for w in hidden)
            and activation in ACTIVATIONS):
        raise RunError(f"{path}: hidden {hidden!r} and activation {activation!r} do not describe an MLP")
    with torch.device("meta"):  # shapes only: no memory, and the global random state is left alone
        expected = sum(p.numel() for p in mlp(784, hidden, 10, activation).parameters())
    if not (isinstance(parameters, torch.Tensor) and parameters.ndim == 2 and parameters.shape[1] == expected):
        found = list(parameters.shape) if isinstance(parameters, torch.Tensor) else type(parameters).__name__
        raise RunError(f"{path}: parameters are {found}, but an MLP 784-{'-'.join(map(str, hidden))}-10 needs "
                       f"[points, {expected}]; the file is inconsistent")
    return dict(saved)


def run(cfg: Config, run: Run) -> dict[str, Any]:
    source = load_trajectory(run.from_run) if run.from_run else None
    dataset = (source or {}).get("dataset") or cfg.dataset
    data = run.load_images(dataset)
    # S1: pixels / 255 - 0.5, flattened; the landscape is measured on the training split.
    train_x, train_y = run.to_device(*subsample(flat_float(data.train_x, 0.5), data.train_y, cfg.limit))

    if source is not None:
        model = mlp(784, list(source["hidden"]), 10, source["activation"]).to(run.device)
        trajectory = source["parameters"].float()
        run.note(f"trajectory: {len(trajectory)} points from {run.from_run.folder}")
    else:
        model = mlp(784, list(cfg.hidden), 10).to(run.device)
        initial = flat_parameters(model)
        with run.timer("train_time_s"):
            optimizer = make_optimizer("sgd", model, cfg.lr, cfg.weight_decay)
            result = run.fit(model, (train_x, train_y), optimizer=optimizer, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, snapshot_parameters=True)
        trajectory = torch.stack([initial, *result.snapshots])  # [epochs + 1, P]
        save_trajectory(run.dir / TRAJECTORY, trajectory, list(cfg.hidden), "relu")
        run.note(f"trajectory: trained here, {cfg.epochs} SGD epochs (no --from-run given)")
    trajectory = trajectory.to(run.device)

    # A fixed random subset of the training split, as S1 does (2,500 examples) to keep the grid cheap;
    # its own generator, so a --from-run evaluation sees the same subset as a run that trained.
    chosen = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.subset]
    chosen = chosen.to(run.device)
    x, y = train_x[chosen], train_y[chosen]
    final, start = trajectory[-1], trajectory[0]
    chunk = cfg.chunk or landscape.auto_chunk(model, len(x))

    def losses(origin: torch.Tensor, directions: torch.Tensor, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        found = landscape.losses_on_plane(model, origin, directions, coefficients.to(run.device), x, y, chunk)
        return {k: v.cpu() for k, v in found.items()}

    # the trajectory's points at their own loss (also warms up vmap, so the grid timing below is fair)
    own = {k: v.cpu() for k, v in landscape.losses_at(model, trajectory, x, y, chunk).items()}

    # Method 1 (the source's): the PCA plane of the trajectory.
    plane = landscape.pca_plane(trajectory)
    xs, ys = landscape.grid_axes(plane["coordinates"].cpu(), cfg.grid, cfg.margin)
    started = time.perf_counter()
    pca_grid = losses(plane["mean"], plane["directions"], landscape.mesh(xs, ys))
    grid_time = time.perf_counter() - started
    on_plane = losses(plane["mean"], plane["directions"], plane["coordinates"])
    save_pca_figures(run, xs, ys, pca_grid, plane, own, on_plane)
    run.note(f"grids: evaluated {chunk} points per batched call (torch.func.vmap), the first layer once per plane; "
             "trajectory_plane_gap = largest |own loss - surface loss at its projection| along the trajectory "
             "(how much the 2D plane misses)")

    # Method 2 (beyond): filter-normalised random directions around the final weights, and 1D interpolation.
    directions = torch.stack([landscape.filter_normalized_direction(model, final.cpu(), run.generator)
                              for _ in range(2)]).to(run.device)
    axis = torch.linspace(-cfg.span, cfg.span, cfg.grid | 1)  # odd count: the centre is exactly the final weights
    fn_grid = losses(final, directions, landscape.mesh(axis, axis))
    alphas = torch.linspace(-0.25, 1.25, 31)  # steps of 0.05: 0 and 1 are the initial and final weights
    line = losses(start, (final - start)[None], alphas[:, None])
    save_method2_figures(run, axis, fn_grid, alphas, line)

    torch.nn.utils.vector_to_parameters(final, model.parameters())
    own_final = evaluate_classifier(model, x, y)["loss"]
    centre = fn_grid["loss"].reshape(len(axis), len(axis))[len(axis) // 2, len(axis) // 2].item()
    test = evaluate_classifier(model, *run.to_device(flat_float(data.test_x, 0.5), data.test_y))
    return {"parameters": int(trajectory.shape[1]), "trajectory_points": len(trajectory),
            "grid_points": len(xs) * len(ys), "subset": len(x), "grid_eval_s": round(grid_time, 3),
            "final_loss_model": own_final, "final_loss_grid_centre": centre, "centre_loss_gap": abs(centre - own_final),
            "pca_explained_1": plane["explained"][0].item(), "pca_explained_2": plane["explained"][1].item(),
            "trajectory_plane_gap": (own["loss"] - on_plane["loss"]).abs().max().item(),
            "pca_grid_min_loss": pca_grid["loss"].min().item(), "test_accuracy": test["accuracy"]}


def save_pca_figures(run: Run, xs: torch.Tensor, ys: torch.Tensor, grid: dict[str, torch.Tensor],
                     plane: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                     on_plane: dict[str, torch.Tensor]) -> None:
    """3D surface with the trajectory at its own loss (S1's figure), and a contour view with the path."""
    loss = grid["loss"].reshape(len(ys), len(xs)).numpy()  # [y, x], meshgrid 'xy' order
    gx, gy = np.meshgrid(xs.numpy(), ys.numpy())
    path = plane["coordinates"].cpu().numpy()
    labels = [f"PC {i + 1} ({plane['explained'][i]:.0%} of the trajectory's variance)" for i in range(2)]
    data = {"x": xs, "y": ys, "loss": loss, "accuracy": grid["accuracy"].reshape(len(ys), len(xs)),
            "trajectory_xy": path, "trajectory_loss": own["loss"], "trajectory_loss_on_plane": on_plane["loss"]}
    rows = [{"x": float(a), "y": float(b), "loss": float(c), "accuracy": float(d)} for a, b, c, d in
            zip(gx.ravel(), gy.ravel(), loss.ravel(), grid["accuracy"].numpy())]

    figure = plt.figure(figsize=(8, 6.5))
    axes = figure.add_subplot(projection="3d")
    axes.plot_surface(gx, gy, loss, cmap="viridis", alpha=0.6, linewidth=0)
    axes.plot(path[:, 0], path[:, 1], own["loss"].numpy(), color="red", linewidth=1)
    axes.scatter(path[:, 0], path[:, 1], own["loss"].numpy(), color="red", s=12, label="SGD trajectory (own loss)")
    axes.set(xlabel="PC 1", ylabel="PC 2", zlabel="cross-entropy (2,500 train examples)",
             title="Loss surface on the PCA plane of the SGD trajectory")
    axes.legend(loc="upper right", fontsize=8)
    run.save_figure(figure, "pca_surface", "Loss surface over the trajectory's PCA plane, trajectory in red",
                    data=data, rows=rows)

    figure, axes = plt.subplots(figsize=(7.5, 6))
    levels = np.geomspace(max(loss.min(), 1e-3), loss.max(), 25)
    contour = axes.contourf(gx, gy, loss, levels=levels, cmap="viridis", norm="log")
    figure.colorbar(contour, ax=axes, label="cross-entropy (log scale)", format="%.2f")
    axes.plot(path[:, 0], path[:, 1], "-o", color="red", markersize=3, label="SGD trajectory (per epoch)")
    axes.plot(*path[0], "s", color="white", markeredgecolor="black", label="initial weights")
    axes.plot(*path[-1], "*", color="yellow", markeredgecolor="black", markersize=14, label="final weights")
    axes.set(xlabel=labels[0], ylabel=labels[1], title="Loss contours on the PCA plane with the SGD path")
    axes.legend(fontsize=8)
    run.save_figure(figure, "pca_contour", "Contour view of the PCA-plane landscape with the SGD path",
                    data=data, rows=rows)


def save_method2_figures(run: Run, axis: torch.Tensor, grid: dict[str, torch.Tensor], alphas: torch.Tensor,
                         line: dict[str, torch.Tensor]) -> None:
    """Filter-normalised plane around the final weights (contour + surface), and the 1D interpolation."""
    loss = grid["loss"].reshape(len(axis), len(axis)).numpy()
    gx, gy = np.meshgrid(axis.numpy(), axis.numpy())
    figure = plt.figure(figsize=(13, 5.5))
    axes = figure.add_subplot(1, 2, 1)
    contour = axes.contour(gx, gy, loss, levels=np.geomspace(loss.min(), loss.max(), 20), cmap="viridis")
    axes.clabel(contour, fontsize=6, fmt="%.2f")
    axes.plot(0, 0, "*", color="red", markersize=12, label="final weights")
    axes.set(xlabel="filter-normalised direction 1", ylabel="filter-normalised direction 2", aspect="equal",
             title="Contours around the final weights")
    axes.legend(fontsize=8, loc="upper right")
    surface = figure.add_subplot(1, 2, 2, projection="3d")
    surface.plot_surface(gx, gy, loss, cmap="viridis", alpha=0.8, linewidth=0)
    surface.set(xlabel="direction 1", ylabel="direction 2", zlabel="cross-entropy", title="Surface")
    figure.suptitle("Filter-normalised random plane (Li et al. 2018; bias directions zeroed)")
    rows = [{"alpha": float(a), "beta": float(b), "loss": float(c)} for a, b, c in zip(gx.ravel(), gy.ravel(),
                                                                                      loss.ravel())]
    run.save_figure(figure, "filter_normalized", "Loss on a filter-normalised random plane around the final weights",
                    data={"axis": axis, "loss": loss, "accuracy": grid["accuracy"].reshape(len(axis), len(axis))},
                    rows=rows)

    figure, axes = plt.subplots(figsize=(6.4, 4))
    axes.plot(alphas.numpy(), line["loss"].numpy(), "-o", markersize=3, label="cross-entropy")
    axes.set(xlabel="alpha (0 = initial weights, 1 = final weights)", ylabel="cross-entropy",
             title="1D interpolation: (1 - alpha) initial + alpha final")
    twin = axes.twinx()
    twin.plot(alphas.numpy(), line["accuracy"].numpy(), "--", color="tab:orange", label="accuracy")
    twin.set_ylabel("accuracy")
    axes.grid(alpha=0.3)
    figure.legend(loc="upper center", fontsize=8, bbox_to_anchor=(0.5, 0.88))
    run.save_figure(figure, "interpolation", "Loss and accuracy along the straight line from initial to final weights",
                    rows=[{"alpha": float(a), "loss": float(b), "accuracy": float(c)}
                          for a, b, c in zip(alphas, line["loss"], line["accuracy"])])
