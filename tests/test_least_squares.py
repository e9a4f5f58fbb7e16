"""least-squares: the closed form and the stable solve agree on well-conditioned data, and the
stable one is what the run reports when the data are ill-conditioned."""

import json

import numpy as np
import pytest
import torch
from conftest import run_quick

from dlclassics.data.linear_regression import make_linear_data
from dlclassics.experiments.least_squares import (
    REFERENCES,
    solve_normal,
    solve_stable,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solvers_agree_on_well_conditioned_data(seed):
    data = make_linear_data(torch.Generator().manual_seed(seed))
    normal, stable = solve_normal(data.train_x, data.train_y), solve_stable(data.train_x, data.train_y)
    assert (normal - stable).abs().max().item() < 1e-8
    assert (stable - data.theta_true).abs().max().item() < 0.05  # 1000 rows, noise 0.1: se ~ 0.0055


def test_condition_option_sets_the_condition_number():
    data = make_linear_data(torch.Generator().manual_seed(0), condition=1e6)
    assert 1e6 <= torch.linalg.cond(data.train_x).item() < 3e6  # cond(L) times cond(Z) ~ 1.2


def test_ill_conditioned_data_report_the_stable_solve(tmp_path):
    folder = run_quick("least-squares", tmp_path / "no-data", tmp_path / "runs", "--set", "condition=1e12")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["reported_solver"] == "lstsq"
    assert metrics["condition_number"] > 1e12
    data = make_linear_data(torch.Generator().manual_seed(0), condition=1e12)
    theta, *_ = np.linalg.lstsq(data.train_x.double().numpy(), data.train_y.double().numpy(), rcond=None)
    independent = float(np.mean((data.test_x.double().numpy() @ theta - data.test_y.double().numpy()) ** 2))
    assert metrics["test_mse"] == pytest.approx(independent, rel=1e-6)  # numpy's own solve, not the run's
    # The stable solve still fits to the noise level (0.1^2); the normal equations do not.
    assert metrics["train_mse"] < 0.0105 < metrics["normal_train_mse"]
    assert metrics["test_mse"] < metrics["normal_test_mse"]
    report = (folder / "report.md").read_text()
    assert "not comparable" in report
    for figure in ("theta", "condition_sweep"):
        assert (folder / "figures" / f"{figure}.png").is_file()
        assert (folder / "figures" / f"{figure}.csv").is_file()


def test_quick_run_on_the_source_data_meets_the_reference(tmp_path):
    folder = run_quick("least-squares", tmp_path / "no-data", tmp_path / "runs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["solutions_relative_difference"] < 1e-12
    # --quick marks the run "not comparable"; the data are the full source size, so judge directly.
    assert all(ref.verdict(metrics[ref.metric], None, True) == "met" for ref in REFERENCES)
