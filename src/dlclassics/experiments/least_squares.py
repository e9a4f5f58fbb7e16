"""least-squares: the exact least-squares fit of S3's first notebook, and why not to invert A^T A.

Source: `../shared/seeds/003_6b180435be9e82cc.txt`, first notebook ("Data Generation", "Solving for
the exact mean squared loss"). A ~ U(-1, 1) of shape [1000, 10], theta_true = 1, y = A theta_true +
N(0, 0.1^2), 50 test rows. The source solves the normal equations with an explicit inverse,
theta = inv(A^T A) A^T y, and prints theta within 0.0078 of 1 (catalogue: "within 0.01").

We solve it both ways: the source's closed form, and `torch.linalg.lstsq` (SVD, never forms A^T A,
whose condition number is cond(A)^2). The stable solve is the one reported; the closed form sits
beside it. Beyond the source, `condition` makes the features ill-conditioned (see
`data/linear_regression.py`) and a sweep over condition numbers shows where the closed form breaks.

    dlclassics run least-squares
    dlclassics run least-squares --set condition=1e9
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import matplotlib.pyplot as plt
import torch

from dlclassics.config import BaseConfig, option
from dlclassics.data.linear_regression import LinearData, make_linear_data
from dlclassics.runs import Reference, Run, markdown_table

TITLE = "Least squares: normal equations vs a stable solve (S3)"

# The theta the source printed (its data came from an unseeded numpy RNG, so ours differ by noise).
SOURCE_THETA = (0.99218671, 0.99592763, 0.9993016, 0.99963533, 1.00368735,
                1.00186409, 1.00490434, 0.99861362, 0.99307294, 0.99822247)


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    n_train: int = option(1000, "training rows of A", low=2)
    n_test: int = option(50, "test rows", low=1)
    dim: int = option(10, "number of parameters (columns of A)", low=1)
    noise: float = option(0.1, "standard deviation of the label noise", low=0.0)
    condition: float = option(1.0, "condition number of the feature mixing (1 = the source's data)", low=1.0)
    sweep_decades: int = option(13, "stability sweep over condition numbers 1, 10, ..., 10^N", low=0)


RECIPES: dict[str, dict[str, Any]] = {"seed": {}, "tuned": {}}
QUICK = {"sweep_decades": 4}

REFERENCES = [
    Reference("normal_theta_max_abs_error", 0.0078, "largest |theta_j - 1|, closed form (catalogue: <= 0.01)",
              rule="at_most", target=0.01),
    Reference("theta_max_abs_error", 0.0078, "largest |theta_j - 1|, stable solve (reported)",
              rule="at_most", target=0.01),
]


def solve_normal(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The source's closed form inv(A^T A) A^T y; loses ~2 log10 cond(A) digits (NaN once A^T A is
    numerically singular, where numpy's `la.inv` would raise)."""
    try:
        return torch.linalg.inv(x.T @ x) @ (x.T @ y)
    except torch.linalg.LinAlgError:
        return torch.full((x.shape[1], 1), float("nan"), dtype=x.dtype)


def solve_stable(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least squares by SVD (LAPACK gelsd): backward stable, loses ~log10 cond(A) digits."""
    return torch.linalg.lstsq(x, y, driver="gelsd").solution


def mse(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x @ theta - y) ** 2).mean().item()


def fit_both(data: LinearData) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Both solutions' errors (the stable one's are the unprefixed, reported numbers) and thetas."""
    result: dict[str, Any] = {"condition_number": torch.linalg.cond(data.train_x).item(),
                              "normal_matrix_condition_number": torch.linalg.cond(data.train_x.T @ data.train_x).item()}
    thetas = {"": solve_stable(data.train_x, data.train_y), "normal_": solve_normal(data.train_x, data.train_y)}
    for prefix, theta in thetas.items():
        result[f"{prefix}theta_max_abs_error"] = (theta - data.theta_true).abs().max().item()
        result[f"{prefix}train_mse"] = mse(theta, data.train_x, data.train_y)
        result[f"{prefix}test_mse"] = mse(theta, data.test_x, data.test_y)
    result["solutions_relative_difference"] = ((thetas["normal_"] - thetas[""]).norm() / thetas[""].norm()).item()
    result["reported_solver"] = "lstsq"
    return result, {"lstsq": thetas[""].flatten().tolist(), "normal": thetas["normal_"].flatten().tolist()}


def run(cfg: Config, run: Run) -> dict[str, Any]:
    sizes = {"n_train": cfg.n_train, "n_test": cfg.n_test, "dim": cfg.dim, "noise": cfg.noise}
    # A fresh generator per dataset: the sweep reuses the same Z and noise at every condition number.
    data = make_linear_data(torch.Generator().manual_seed(cfg.seed), condition=cfg.condition, **sizes)
    result, thetas = fit_both(data)

    rows = [{"j": j, "source": SOURCE_THETA[j] if cfg.dim == len(SOURCE_THETA) else None,
             "closed form": thetas["normal"][j], "lstsq": thetas["lstsq"][j]} for j in range(cfg.dim)]
    run.add_section("Estimated theta (true value 1)", markdown_table(rows))
    run.save_figure(theta_figure(rows), "theta", "Estimated theta per coordinate: source, closed form, lstsq",
                    rows=rows)
    if cfg.condition > 1:
        run.mark_not_comparable(f"features made ill-conditioned (condition={cfg.condition:g}); the source's "
                                "data are well conditioned")
        run.note("With ill-conditioned features theta itself is barely identified (the noise is amplified by "
                 "1/s_min along the weakest direction), so even the exact solution is far from 1: compare the "
                 "solvers by train and test MSE.")
    else:
        run.note(f"Expected |theta_j - 1| ~ noise / sqrt(n Var[x]) = {cfg.noise / (cfg.n_train / 3) ** 0.5:.4f} per "
                 "coordinate on these data, so the largest of 10 is often near 0.01: the bound is luck-prone.")

    sweep = []
    for condition in (10.0 ** k for k in range(cfg.sweep_decades + 1)):
        point, _ = fit_both(make_linear_data(torch.Generator().manual_seed(cfg.seed), condition=condition, **sizes))
        sweep.append({"condition": condition, **point})
    run.add_section("Stability sweep (same Z and noise, mixed to each condition number)", markdown_table(
        [{"cond(A)": f"{row['condition_number']:.2e}", "closed-form test MSE": row["normal_test_mse"],
          "lstsq test MSE": row["test_mse"], "relative difference": row["solutions_relative_difference"]}
         for row in sweep]))
    run.save_figure(sweep_figure(sweep), "condition_sweep",
                    "Test MSE and disagreement of the two solvers vs cond(A)", rows=sweep)
    return measured(result, run)


def measured(result: dict[str, Any], run: Run) -> dict[str, Any]:
    """The metrics, with None for the numbers a numerically singular matrix left NaN or infinite (the closed
    form's failure is a finding here, not a diverged run)."""
    failed = [name for name, value in result.items() if isinstance(value, float) and not math.isfinite(value)]
    if failed:
        run.note(f"not finite on these data (a numerically singular matrix), so not measured: {', '.join(failed)}")
    return {name: None if name in failed else value for name, value in result.items()}


def theta_figure(rows: list[dict[str, Any]]) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    for column, marker in (("source", "s"), ("closed form", "o"), ("lstsq", "x")):
        values = [row[column] for row in rows]
        if None not in values:
            axes.plot([row["j"] for row in rows], values, marker, label=column, markersize=7, fillstyle="none")
    axes.axhline(1.0, color="gray", lw=1, label="theta_true")
    axes.set(title="Least-squares estimate of theta", xlabel="coordinate j", ylabel="theta_j")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def sweep_figure(sweep: list[dict[str, Any]]) -> plt.Figure:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    conds = [row["condition_number"] for row in sweep]
    left.loglog(conds, [row["normal_test_mse"] for row in sweep], "o-", label="closed form inv(A^T A) A^T y")
    left.loglog(conds, [row["test_mse"] for row in sweep], "x--", label="lstsq (SVD)")
    left.set(title="Test MSE", xlabel="cond(A)", ylabel="test MSE")
    right.loglog(conds, [max(row["solutions_relative_difference"], 1e-17) for row in sweep], "o-")
    right.loglog(conds, [c ** 2 * 2.2e-16 for c in conds], ":", color="gray", label="cond(A)^2 x machine eps")
    right.set(title="Disagreement ||theta_ne - theta_ls|| / ||theta_ls||", xlabel="cond(A)", ylabel="relative difference",
              ylim=(1e-17, 1e2))
    for axes in (left, right):
        axes.grid(alpha=0.3, which="both")
        axes.legend()
    figure.tight_layout()
    return figure
