"""autoencoder-vs-pca: S2's linear and ReLU autoencoders beside PCA, on MNIST (or Fashion-MNIST).

Source: `../shared/seeds/002_2461c30dc0c8b3cd.txt`, autoencoders (a)-(d). Code widths h in {32, 64,
128}; F1 = Linear(d, h)-Linear(h, d) and F2 = Linear-ReLU-Linear-ReLU; full-batch Adam, lr 1e-3,
500 iterations, MSE on the MNIST training images / 255. Reported: final training MSE 0.022/0.012/
0.006 (linear) and 0.021/0.011/0.007 (ReLU), test MSE at h = 128 of 0.0061 (linear) and 0.0066
(ReLU); a grid of one training image per digit (rows) by h and the truth (columns) per model; PCA
reconstructions "fuzzier" than the autoencoders'.

What the numbers say (the catalogue's check): a linear autoencoder cannot beat PCA, whose error is the
smallest of any rank-h affine map (Eckart-Young), so the source's linear autoencoder, above PCA's
0.0166/0.0088/0.0039, had not converged. The seed recipe reproduces the source's 500 full-batch Adam
steps for both models. The tuned one fits the linear autoencoder by what it is, a least-squares problem:
alternating exact solves for the decoder and the encoder (`methods/linear_autoencoder.py`), until its
training error is within `target_gap` of PCA's; on all 60,000 Fashion-MNIST images that takes seconds,
where 3,000 full-batch Adam steps on 8,000 of them stopped 13.6% above PCA after 11 minutes. The ReLU
autoencoder has no closed form and stays gradient-trained, with minibatch Adam and a one-cycle learning
rate for `epochs` passes (a full-batch step on 60,000 images costs as much as a whole minibatch epoch).
The report gives the principal angles between the linear decoder's columns and the PCA basis (0 when the
autoencoder has found PCA's subspace; where the h-th and (h+1)-th eigenvalues nearly tie, 0.99 of each other
on Fashion-MNIST at h = 32, 64 and 128, the two directions are almost equally good, so the largest angle
can stay large with the error within 0.1%: the mean angle says more) and both autoencoders' test errors
beside PCA's. PCA is the
library's estimator (`methods/pca.py`), fitted on the same training images.

    dlclassics run autoencoder-vs-pca --dataset fashion-mnist        # all 60,000 images, under 5 minutes
    dlclassics run autoencoder-vs-pca --data-dir ../shared/datasets --carve-test 0.2
    dlclassics run autoencoder-vs-pca --recipe seed --data-dir ../shared/datasets --carve-test 0.2
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import scipy.linalg
import torch
from torch import nn

from dlclassics import plots
from dlclassics.config import (
    BaseConfig,
    dataset_option,
    epochs_option,
    limit_option,
    lr_option,
    option,
    width_option,
)
from dlclassics.data.images import image_datasets
from dlclassics.data.splits import first_of_each_class
from dlclassics.data.transforms import flat_float, subsample
from dlclassics.engine import make_optimizer
from dlclassics.errors import RunError, UsageError
from dlclassics.methods.linear_autoencoder import Moments, alternating_least_squares, moments
from dlclassics.methods.pca import PCA
from dlclassics.models.autoencoder import DenseAutoencoder
from dlclassics.runs import Reference, Run, markdown_table
from dlclassics.training.autoencoder import reconstruction_error

TITLE = "Linear and ReLU autoencoders beside PCA (S2, autoencoders a-d)"
# The source's two models: hidden and output activations of DenseAutoencoder((d, h), ...).
MODELS = {"linear": ("identity", "identity"), "relu": ("relu", "relu")}
SOLVERS = ("least-squares", "adam")


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = dataset_option("mnist", image_datasets)
    hidden: tuple[int, ...] = width_option((32, 64, 128), "code widths h, comma separated")
    linear_solver: str = option("least-squares", "how the linear autoencoder is fitted: alternating exact "
                                "least-squares solves, or Adam as the ReLU one (the source)", choices=SOLVERS)
    sweeps: int = option(100, "alternating least-squares sweeps at most (linear_solver least-squares)", low=1)
    lr: float = lr_option(3e-3, "Adam learning rate")
    epochs: int = epochs_option(10, "Adam passes over the training images (with batch_size 0: full-batch steps)")
    batch_size: int = option(128, "Adam minibatch size (0: the full batch, one step per epoch, as the source)",
                             low=0)
    schedule: str = option("one-cycle", "Adam learning rate over the steps: constant, or one cycle (a warm-up to "
                           "lr, then a cosine decay to almost 0)", choices=("constant", "one-cycle"))
    target_gap: float = option(0.001, "stop once the training MSE is within this fraction of PCA's (0: run all "
                                      "sweeps or epochs, as the source)", low=0.0)
    limit: int = limit_option()


RECIPES: dict[str, dict[str, Any]] = {
    "seed": {"linear_solver": "adam", "lr": 1e-3, "epochs": 500, "batch_size": 0, "schedule": "constant",
             "target_gap": 0.0},
    # linear_solver least-squares: the exact solves reach PCA's error in seconds, Adam not in minutes.
    # sweeps 100: a cap only; on Fashion-MNIST the linear autoencoder is within 0.1% of PCA in under 30 sweeps.
    # target_gap 0.001: sweeps are cheap, and 0.1% on the training images leaves room for the 1% test goal.
    # batch_size 128, epochs 10: on 60,000 images a full-batch step costs as much as a minibatch epoch of 469.
    # lr 3e-3, schedule one-cycle: a warm-up, a larger step, then a small one late (chosen on the training loss).
    "tuned": {},
}
QUICK = {"limit": 300, "hidden": (8, 16), "epochs": 30}

REFERENCES = [
    *(Reference(f"linear_train_mse_h{h}", value, f"linear AE h = {h}: final training MSE", rule="lower",
                dataset="mnist") for h, value in ((32, 0.022), (64, 0.012), (128, 0.006))),
    *(Reference(f"relu_train_mse_h{h}", value, f"ReLU AE h = {h}: final training MSE", rule="lower", dataset="mnist")
      for h, value in ((32, 0.021), (64, 0.011), (128, 0.007))),
    Reference("linear_test_mse_h128", 0.0061, "linear AE h = 128: test MSE", rule="lower", dataset="mnist"),
    Reference("relu_test_mse_h128", 0.0066, "ReLU AE h = 128: test MSE", rule="lower", dataset="mnist"),
    Reference("linear_gap_max", "not reported", "linear AE: largest training MSE above PCA's (tuned: <= 0.1%)",
              rule="info"),
    # Not the source's: the raised goal (issue 21), on any data; and its time on all 60,000 Fashion-MNIST images.
    Reference("linear_test_gap_max", "not reported", "linear AE: largest test MSE above PCA's at any h (goal: "
              "<= 1%)", rule="at_most", target=0.01),
    Reference("wall_time_s", "not reported", "whole run on all 60,000 Fashion-MNIST images, s (goal: <= 300)",
              rule="at_most", target=300.0, dataset="fashion-mnist"),
    # Not the source's: the catalogue's check, PCA on MNIST images (the floor no linear AE goes below).
    *(Reference(f"pca_train_mse_h{h}", value, f"PCA h = {h}: training MSE (catalogue's check, not the source)",
                rule="info") for h, value in ((32, 0.0166), (64, 0.0088), (128, 0.0039))),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = run.load_images(cfg.dataset)
    train_x, train_y = subsample(flat_float(data.train_x), data.train_y, cfg.limit)
    train_x, test_x = run.to_device(train_x, flat_float(data.test_x))
    if max(cfg.hidden) > min(train_x.shape):
        raise UsageError(f"code widths go up to min(images, pixels) = {min(train_x.shape)} here; got {max(cfg.hidden)}")
    shown = first_of_each_class(train_y, len(data.classes))  # the source's "one training image per digit"
    stats = moments(train_x) if cfg.linear_solver == "least-squares" else None  # one pass serves every h

    rows, reconstructions = [], {name: [] for name in (*MODELS, "pca")}
    for h in cfg.hidden:
        row, shown_back = compare_at(h, cfg, run, train_x, test_x, train_x[shown], stats)
        rows.append(row)
        for name, images in shown_back.items():
            reconstructions[name].append(images.cpu())
    run.add_section("Training and test MSE per pixel, autoencoders beside PCA", markdown_table(rows))
    run.save_history(rows, "results.csv")
    save_grids(run, train_x[shown].cpu(), reconstructions, cfg.hidden, data.image_size)
    return summary_metrics(rows)


def compare_at(h: int, cfg: Config, run: Run, train_x: torch.Tensor, test_x: torch.Tensor, shown: torch.Tensor,
               stats: Moments | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """PCA and both autoencoders at code width h: the table's row, and each one's reconstructions of `shown`."""
    pca = PCA(h).fit(train_x)
    pca_train, pca_test = pca.reconstruction_error(train_x), pca.reconstruction_error(test_x)
    row: dict[str, Any] = {"h": h, "pca_train_mse": pca_train, "pca_test_mse": pca_test}
    reconstructions = {"pca": pca.inverse_transform(pca.transform(shown))}
    target = (1 + cfg.target_gap) * pca_train if cfg.target_gap > 0 else None
    for name, (activation, output) in MODELS.items():
        torch.manual_seed(cfg.seed + h)  # the same initial weights for a given h, whatever ran before
        model = DenseAutoencoder((train_x.shape[1], h), activation, output).to(run.device)
        started = time.perf_counter()
        if name == "linear" and stats is not None:
            steps = fit_least_squares(model, stats, cfg.sweeps, target)
        else:
            steps = train_adam(model, train_x, cfg, target, cfg.seed + h)
        train_mse, test_mse = reconstruction_error(model, train_x), reconstruction_error(model, test_x)
        row.update({f"{name}_train_mse": train_mse, f"{name}_test_mse": test_mse, f"{name}_iterations": steps,
                    f"{name}_time_s": round(time.perf_counter() - started, 2)})
        with torch.no_grad():
            reconstructions[name] = model(shown)
        if name == "linear":
            angles = subspace_angles_deg(model.decoder[0].weight, pca.components_.T)
            row.update(linear_gap=train_mse / pca_train - 1, linear_test_gap=test_mse / pca_test - 1,
                       max_angle_deg=max(angles), mean_angle_deg=sum(angles) / len(angles))
    return row, reconstructions


def fit_least_squares(model: DenseAutoencoder, stats: Moments, sweeps: int, target: float | None) -> int:
    """Fit the linear autoencoder `model` by alternating exact least-squares solves from its initial encoder;
    returns the number of sweeps."""
    encoder, decoder = model.encoder[0], model.decoder[0]
    fit = alternating_least_squares(stats, encoder.weight.detach(), sweeps, target)
    with torch.no_grad():
        encoder.weight.copy_(fit.encoder)
        encoder.bias.copy_(fit.encoder_bias)
        decoder.weight.copy_(fit.decoder)
        decoder.bias.copy_(fit.decoder_bias)
    return len(fit.losses)


def train_adam(model: nn.Module, x: torch.Tensor, cfg: Config, target: float | None, seed: int) -> int:
    """Adam on the reconstruction MSE, `cfg.epochs` passes over x in shuffled minibatches (`batch_size` 0: the
    full batch, the source's loop), stopping after a pass whose mean loss reaches `target`; returns the number
    of steps. The loop is the experiment (its stopping rule), so it is written out here."""
    optimizer = make_optimizer("adam", model, cfg.lr)
    batch_size = cfg.batch_size or len(x)
    total_steps = cfg.epochs * math.ceil(len(x) / batch_size)
    schedule = (torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total_steps)
                if cfg.schedule == "one-cycle" else None)
    generator = torch.Generator().manual_seed(seed)
    steps = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device) if cfg.batch_size else None
        loss_sum = 0.0
        for batch in (x.split(batch_size) if order is None else (x[i] for i in order.split(batch_size))):
            loss = nn.functional.mse_loss(model(batch), batch)
            loss_sum += loss.item() * len(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            steps += 1
        mean_loss = loss_sum / len(x)
        if not math.isfinite(mean_loss):
            raise RunError(f"the training loss became {mean_loss} after {steps} steps; lower --set lr=...")
        if target is not None and mean_loss <= target:
            break
    return steps


def subspace_angles_deg(weight: torch.Tensor, basis: torch.Tensor) -> list[float]:
    """Principal angles, in degrees, between the span of the columns of `weight` [d, h] and of `basis` [d, h]."""
    angles = scipy.linalg.subspace_angles(weight.detach().double().cpu().numpy(), basis.double().cpu().numpy())
    return [math.degrees(angle) for angle in angles]


def summary_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for row in rows:
        h = row["h"]
        for key in ("linear_train_mse", "linear_test_mse", "relu_train_mse", "relu_test_mse", "pca_train_mse",
                    "pca_test_mse", "linear_iterations", "relu_iterations", "linear_test_gap", "max_angle_deg"):
            metrics[f"{key}_h{h}"] = row[key]
    metrics["linear_gap_max"] = max(row["linear_gap"] for row in rows)
    metrics["linear_test_gap_max"] = max(row["linear_test_gap"] for row in rows)
    return metrics


def save_grids(run: Run, truth: torch.Tensor, reconstructions: dict[str, list[torch.Tensor]],
               hidden: tuple[int, ...], size: int) -> None:
    """The source's grid per model: one training image per digit (rows) x (each h, truth) (columns)."""
    for name, per_h in reconstructions.items():
        columns = [*per_h, truth]  # each [digits, d]
        grid = torch.stack(columns, 1).reshape(-1, size, size).clamp(0, 1)  # row-major: digit, then column
        titles = [f"h = {h}" for h in hidden] + ["truth"] + [""] * (len(grid) - len(columns))
        run.save_figure(plots.image_grid(grid, f"{name}: one training image per digit, reconstructed at each h",
                                         titles, columns=len(columns)),
                        f"grid_{name}", f"{name}: reconstructions of one training image per class at h = "
                        f"{', '.join(map(str, hidden))}, and the truth", data={"images": grid})
