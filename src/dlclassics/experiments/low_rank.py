"""low-rank: the best rank-k approximation is the truncated SVD (Eckart-Young), checked numerically.

Source: `../shared/seeds/002_2461c30dc0c8b3cd.txt`, A.7: for A = U S V^T, A_k = U_k S_k V_k^T is the
best rank-k approximation, and ||A - A_k||_F^2 = sum_{j > k} s_j^2. The source proves it; here it is
measured, in float64, on a Gaussian random matrix, a random matrix with a decaying spectrum, the
MovieLens-100k rating matrix (zero-filled, 943 x 1,682) and a real photograph shipped inside
scikit-learn (`china.jpg`, grey):

- the identity, as the largest |error - discarded| / ||A||_F^2 over every matrix and k;
- no other rank-k matrix tried does better: random rank-k matrices (at their best scale), the best
  matrix with a random k-dimensional column space (Q Q^T A), the SVD's own factors perturbed, and the
  rank-k ALS solution of `movielens` (the source's (c), lambda = 10, fitted on the observed ratings);
- randomized SVD (`torch.svd_lowrank`, Halko et al. 2011) against the full SVD, in error and time.

Rule: a k larger than min(rows, columns) is skipped for that matrix (the matrix is then its own best
approximation) and the report says so. A k above the matrix's numerical rank is kept: its error is 0.

    dlclassics run low-rank --data-dir ../shared/datasets
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from dlclassics.config import BaseConfig, dataset_option, option
from dlclassics.data.ratings import Ratings, load_ratings, ratings_datasets
from dlclassics.errors import RunError, UsageError
from dlclassics.methods.mf import ALS, dense, single_threaded
from dlclassics.runs import Reference, Run, markdown_table

TITLE = "Best rank-k approximation by truncated SVD: Eckart-Young checked numerically (S2 A.7)"
MATRICES = ("gaussian", "decaying", "movielens", "photo")  # see BUILDERS
COLUMNS = ("matrix", "k", "svd_error", "discarded", "deviation", "best_random", "best_random_subspace",
           "best_perturbed", "best_als", "best_competitor_excess", "competitors_better")


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = dataset_option("movielens-100k", ratings_datasets, "ratings dataset of the 'movielens' matrix")
    matrices: tuple[str, ...] = option(MATRICES, f"matrices to check ({', '.join(MATRICES)})")
    ranks: tuple[int, ...] = option((1, 2, 5, 10, 20, 50, 100, 200), "ranks k", low=1)
    shape: tuple[int, ...] = option((300, 200), "rows,columns of the random matrices", low=1)
    competitors: int = option(20, "random rank-k competitors of each kind per matrix and k", low=1)
    perturbation: float = option(0.01, "norm of the change to each column of the SVD's factors (they have norm 1)",
                                 low=0.0, low_open=True)
    als_ranks: tuple[int, ...] = option((2, 5, 10), "ranks of the ALS competitor on the MovieLens matrix", low=1)
    als_sweeps: int = option(50, "sweeps of the ALS competitor at most", low=1)
    photo: str = option("china.jpg", "photograph shipped with scikit-learn", choices=("china.jpg", "flower.jpg"))
    photo_ranks: tuple[int, ...] = option((5, 20, 50, 100), "ranks shown in the photograph figure", low=1)
    oversampling: int = option(10, "randomized SVD: extra columns of the random sketch", low=0)
    power_iterations: int = option(2, "randomized SVD: subspace iterations", low=0)


RECIPES: dict[str, dict[str, Any]] = {"seed": {}, "tuned": {}}  # a check, not a training: one recipe
QUICK = {"ranks": (1, 2, 5), "shape": (40, 30), "competitors": 3, "als_ranks": (2,), "als_sweeps": 3,
         "photo_ranks": (5, 20)}

REFERENCES = [
    Reference("eckart_young_max_deviation", 0.0, "largest |error - discarded s^2| / ||A||^2 (goal < 1e-6)",
              rule="at_most", target=1e-6),
    Reference("competitors_better", 0, "rank-k competitors with a smaller error than the SVD's", rule="near",
              tolerance=0),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    generator = run.generator
    unknown = [name for name in cfg.matrices if name not in MATRICES]
    if unknown or not cfg.matrices:
        raise UsageError(f"option 'matrices': choose among {', '.join(MATRICES)}; got {', '.join(cfg.matrices)}")
    if len(cfg.shape) != 2:
        raise UsageError(f"option 'shape' expects rows,columns; got {','.join(map(str, cfg.shape))}")
    rows, deviations, randomized = [], [], []
    with single_threaded():
        for name in cfg.matrices:
            matrix = BUILDERS[name](cfg, run, generator)
            ranks = [k for k in cfg.ranks if k <= min(matrix.shape)]
            if len(ranks) < len(cfg.ranks):
                run.note(f"{name} ({matrix.shape[0]} x {matrix.shape[1]}): ranks above {min(matrix.shape)} skipped "
                         "(the matrix is its own best approximation there)")
            left, singular, right_t = torch.linalg.svd(matrix, full_matrices=False)
            als = als_solutions(matrix, [k for k in cfg.als_ranks if k in ranks], cfg.als_sweeps) \
                if name == "movielens" else {}
            for k in ranks:
                row = check_rank(name, matrix, left, singular, right_t, k, cfg, generator, als.get(k))
                rows.append(row)
                deviations.append(row["deviation"])
            randomized += randomized_against_full(name, matrix, ranks, cfg)
            if name == "photo":
                save_photo_figure(run, matrix, left, singular, right_t, cfg.photo_ranks, cfg.photo)
    run.add_section("Eckart-Young per matrix and k (errors are ||A - B||_F^2 / ||A||_F^2)",
                    markdown_table([{key: "-" if row.get(key) is None else row[key] for key in COLUMNS}
                                    for row in rows]))
    run.add_section("Randomized SVD against the full SVD", markdown_table(randomized))
    save_error_figure(run, rows)
    save_randomized_figure(run, randomized)
    worst = max(rows, key=lambda row: row["deviation"])
    run.note(f"largest deviation from the identity: {worst['deviation']:.1e} ({worst['matrix']}, k = {worst['k']})")
    return {"eckart_young_max_deviation": max(deviations),
            "competitors_better": sum(row["competitors_better"] for row in rows),
            "best_competitor_excess": min((row["best_competitor_excess"] for row in rows
                                           if row["best_competitor_excess"] is not None), default=None),
            "randomized_worst_error_ratio": max(row["error_ratio"] for row in randomized),
            "checks": len(rows)}


# ---------------------------------------------------------------- the matrices

def gaussian_matrix(cfg: Config, run: Run, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*cfg.shape, generator=generator, dtype=torch.float64)


def decaying_matrix(cfg: Config, run: Run, generator: torch.Generator) -> torch.Tensor:
    """Singular values 1, 0.9, 0.81, ... between random orthonormal bases: a matrix that is nearly low rank."""
    rows, columns = cfg.shape
    size = min(rows, columns)
    left, _ = torch.linalg.qr(torch.randn(rows, size, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(columns, size, generator=generator, dtype=torch.float64))
    return (left * 0.9 ** torch.arange(size, dtype=torch.float64)) @ right.T


def movielens_matrix(cfg: Config, run: Run, generator: torch.Generator) -> torch.Tensor:
    """The [users, items] rating matrix, 0 where no rating was given (the source's matrix)."""
    data = load_ratings(cfg.dataset, run.data_dir, unverified=run.unverified)
    run.note(f"movielens: the {data.ratings.n_users} x {data.ratings.n_items} matrix of {data.name} "
             f"({len(data.ratings):,} ratings, 0 elsewhere) from {data.source}")
    if not data.comparable:
        run.mark_not_comparable(data.note)
    return dense(data.ratings).double()


def photo_matrix(cfg: Config, run: Run, generator: torch.Generator) -> torch.Tensor:
    """A photograph shipped inside scikit-learn's wheel, grey (ITU-R 601 luma), in [0, 1]. Read with Pillow
    from the package folder: importing sklearn.datasets would take seconds."""
    from PIL import Image

    package = importlib.util.find_spec("sklearn")
    path = Path(package.origin).parent / "datasets" / "images" / cfg.photo if package and package.origin else None
    try:
        with Image.open(path) as image:  # type: ignore[arg-type]
            rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    except (OSError, TypeError) as exc:
        raise RunError(f"cannot read the photograph {cfg.photo} shipped with scikit-learn ({exc}); install "
                       "scikit-learn, or drop 'photo' with --set matrices=gaussian,decaying,movielens") from None
    run.note(f"photo: {path} ({rgb.shape[0]} x {rgb.shape[1]}, grey)")
    return torch.from_numpy(rgb) @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64) / 255.0


BUILDERS = {"gaussian": gaussian_matrix, "decaying": decaying_matrix, "movielens": movielens_matrix,
            "photo": photo_matrix}


def als_solutions(matrix: torch.Tensor, ranks: list[int], sweeps: int) -> dict[int, torch.Tensor]:
    """The source's ALS (lambda 10, from the SVD) fitted to the observed (non-zero) entries of the rating
    matrix, as rank-k matrices U V^T."""
    observed = matrix.nonzero()
    ratings = Ratings(observed[:, 0], observed[:, 1], matrix[observed[:, 0], observed[:, 1]], *matrix.shape)
    solutions = {}
    for k in ranks:
        als = ALS(k, reg=10.0, max_sweeps=sweeps, tol=1e-6).fit(ratings)
        solutions[k] = als.user_factors_ @ als.item_factors_.T
    return solutions


# ---------------------------------------------------------------- the checks

def check_rank(name: str, matrix: torch.Tensor, left: torch.Tensor, singular: torch.Tensor, right_t: torch.Tensor,
               k: int, cfg: Config, generator: torch.Generator, als: torch.Tensor | None) -> dict[str, Any]:
    """The identity at rank k, and the SVD's error against every competitor's."""
    total = matrix.square().sum()
    best = (left[:, :k] * singular[:k]) @ right_t[:k]
    error = (matrix - best).square().sum()
    discarded = singular[k:].square().sum()
    competitors = competitor_errors(matrix, left, singular, right_t, k, cfg, generator)
    if als is not None:
        competitors["als"] = [(matrix - als).square().sum()]
    lowest = {kind: min(errors).item() / total.item() for kind, errors in competitors.items()}
    all_errors = torch.stack([e for errors in competitors.values() for e in errors])
    # A competitor "does better" only beyond float64 rounding of the error itself.
    better = int((all_errors < error - 1e-9 * total).sum())
    return {"matrix": name, "k": k, "svd_error": error.item() / total.item(),
            "discarded": discarded.item() / total.item(),
            "deviation": ((error - discarded).abs() / total).item(),
            **{f"best_{kind}": value for kind, value in lowest.items()},
            # How much worse the best competitor is (> 0 by Eckart-Young); None when the SVD's error is only
            # rounding (k at or above the rank): no ratio to speak of.
            "best_competitor_excess": (all_errors.min() / error - 1).item() if error > 1e-9 * total else None,
            "competitors_better": better}


def competitor_errors(matrix: torch.Tensor, left: torch.Tensor, singular: torch.Tensor, right_t: torch.Tensor,
                      k: int, cfg: Config, generator: torch.Generator) -> dict[str, list[torch.Tensor]]:
    """Squared errors of rank-k matrices other than the SVD's, `cfg.competitors` of each kind."""
    rows, columns = matrix.shape
    errors: dict[str, list[torch.Tensor]] = {"random": [], "random_subspace": [], "perturbed": []}
    for _ in range(cfg.competitors):
        # Random factors X = B C at their best scale <A, X> / <X, X>.
        product = (torch.randn(rows, k, generator=generator, dtype=matrix.dtype)
                   @ torch.randn(k, columns, generator=generator, dtype=matrix.dtype))
        scale = (matrix * product).sum() / product.square().sum()
        errors["random"].append((matrix - scale * product).square().sum())
        # The best matrix whose columns lie in a random k-dimensional subspace: Q Q^T A.
        basis, _ = torch.linalg.qr(torch.randn(rows, k, generator=generator, dtype=matrix.dtype))
        errors["random_subspace"].append((matrix - basis @ (basis.T @ matrix)).square().sum())
        # The optimum's factors nudged, each unit column by about `perturbation`: still rank k.
        nudge = cfg.perturbation
        nudged_left = left[:, :k] + nudge * torch.randn(rows, k, generator=generator, dtype=matrix.dtype) / rows ** 0.5
        nudged_right = right_t[:k] + nudge * torch.randn(k, columns, generator=generator, dtype=matrix.dtype) / columns ** 0.5
        errors["perturbed"].append((matrix - (nudged_left * singular[:k]) @ nudged_right).square().sum())
    return errors


def randomized_against_full(name: str, matrix: torch.Tensor, ranks: list[int], cfg: Config) -> list[dict[str, Any]]:
    """Error ratio and time of `torch.svd_lowrank` (sketch of k + oversampling columns) against the full SVD."""
    started = time.perf_counter()
    _, singular, _ = torch.linalg.svd(matrix, full_matrices=False)
    full_s = time.perf_counter() - started
    rows = []
    for k in ranks:
        sketch = min(k + cfg.oversampling, *matrix.shape)
        started = time.perf_counter()
        left, values, right = torch.svd_lowrank(matrix, q=sketch, niter=cfg.power_iterations)
        seconds = time.perf_counter() - started
        approximation = (left[:, :k] * values[:k]) @ right[:, :k].T
        optimal = singular[k:].square().sum().item()
        error = (matrix - approximation).square().sum().item()
        rows.append({"matrix": name, "k": k, "error_ratio": error / optimal if optimal > 0 else 1.0,
                     "randomized_s": round(seconds, 4), "full_svd_s": round(full_s, 4)})
    return rows


# ---------------------------------------------------------------- figures

def save_error_figure(run: Run, rows: list[dict[str, Any]]) -> None:
    """Left: the SVD's relative error against k per matrix. Right: how much larger the best competitor's
    error is (positive everywhere: Eckart-Young)."""
    figure, (error_axes, excess_axes) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    for index, name in enumerate(dict.fromkeys(row["matrix"] for row in rows)):
        mine = [row for row in rows if row["matrix"] == name]
        error_axes.plot([row["k"] for row in mine], [max(row["svd_error"], 1e-17) for row in mine], "-o",
                        color=f"C{index}", markersize=3, label=name)
        measured = [row for row in mine if row["best_competitor_excess"] is not None]
        excess_axes.plot([row["k"] for row in measured], [row["best_competitor_excess"] for row in measured], "-o",
                         color=f"C{index}", markersize=3, label=name)
    error_axes.set(xscale="log", yscale="log", xlabel="rank k", ylabel="||A - A_k||^2 / ||A||^2",
                   title="Truncated SVD: relative squared error")
    excess_axes.set(xscale="log", yscale="log", xlabel="rank k", ylabel="best competitor's error / SVD's - 1",
                    title="How much worse the best other rank-k matrix is")
    for axes in (error_axes, excess_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    run.save_figure(figure, "error_vs_rank", "Relative squared error against k, and the best competitor's excess",
                    rows=rows)


def save_photo_figure(run: Run, photo: torch.Tensor, left: torch.Tensor, singular: torch.Tensor,
                      right_t: torch.Tensor, ranks: tuple[int, ...], name: str) -> None:
    shown = [k for k in ranks if k <= len(singular)]
    images = [((left[:, :k] * singular[:k]) @ right_t[:k]).clamp(0, 1) for k in shown] + [photo]
    total = photo.square().sum()
    titles = [f"k = {k}: error {singular[k:].square().sum() / total:.1e}" for k in shown] + ["original"]
    figure, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 2.6), squeeze=False)
    for axis, image, title in zip(axes[0], images, titles):
        axis.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    figure.suptitle(f"{name} (grey) at rank k; error = ||A - A_k||^2 / ||A||^2")
    figure.tight_layout()
    run.save_figure(figure, "photo_ranks", f"The photograph {name} reconstructed at several ranks",
                    data={"ranks": torch.tensor(shown), "singular_values": singular})


def save_randomized_figure(run: Run, rows: list[dict[str, Any]]) -> None:
    figure, (error_axes, time_axes) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    for index, name in enumerate(dict.fromkeys(row["matrix"] for row in rows)):
        mine = [row for row in rows if row["matrix"] == name]
        ks = [row["k"] for row in mine]
        error_axes.plot(ks, [row["error_ratio"] for row in mine], "-o", markersize=3, color=f"C{index}", label=name)
        time_axes.plot(ks, [row["randomized_s"] for row in mine], "-o", markersize=3, color=f"C{index}",
                       label=f"{name}: randomized")
        time_axes.axhline(mine[0]["full_svd_s"], color=f"C{index}", linestyle="--", linewidth=1,
                          label=f"{name}: full SVD")
    error_axes.set(xscale="log", xlabel="rank k", ylabel="error / optimal error",
                   title="Randomized SVD: error relative to the optimum")
    time_axes.set(xscale="log", yscale="log", xlabel="rank k", ylabel="seconds", title="Time")
    for axes in (error_axes, time_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    run.save_figure(figure, "randomized_svd", "Randomized SVD (torch.svd_lowrank) against the full SVD", rows=rows)
