"""low-rank: Eckart-Young holds to float64 rounding, nothing tried beats the truncated SVD, ranks above
the matrix's size follow the documented rule, and the experiment runs end to end."""

import json

import pytest
import torch
from conftest import run_quick
from ratings_data import ratings_data_dir  # noqa: F401 (fixture)

from dlclassics.experiments.low_rank import (
    Config,
    als_solutions,
    check_rank,
    randomized_against_full,
)
from dlclassics.methods.mf import single_threaded


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


def _svd(matrix):
    return torch.linalg.svd(matrix, full_matrices=False)


@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (25, 25)])
def test_eckart_young_identity_to_1e_6_and_no_competitor_wins(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    matrix = torch.randn(*shape, generator=generator, dtype=torch.float64)
    config = Config(competitors=10)
    for k in (1, 3, 10, min(shape)):
        row = check_rank("random", matrix, *_svd(matrix), k, config, generator, None)
        assert row["deviation"] < 1e-6 * 1e-6  # relative to ||A||^2: float64 rounding, far below the 1e-6 goal
        assert row["competitors_better"] == 0
        if k < min(shape):
            assert row["best_competitor_excess"] > 0.0
    assert row["svd_error"] < 1e-20  # k = min(shape): the matrix itself


def test_a_rank_deficient_matrix_has_zero_error_above_its_rank():
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(20, 3, generator=generator, dtype=torch.float64) @ torch.randn(3, 15, generator=generator,
                                                                                      dtype=torch.float64)
    row = check_rank("rank3", matrix, *_svd(matrix), 5, Config(competitors=3), generator, None)
    assert row["svd_error"] < 1e-25 and row["best_competitor_excess"] is None  # no ratio to a zero error


def test_als_on_the_observed_entries_does_not_beat_the_svd():
    """The source's ALS fits the observed ratings, not the zero-filled matrix: its rank-k matrix is a
    competitor like any other, and Eckart-Young says it cannot win on the full matrix."""
    generator = torch.Generator().manual_seed(1)
    mask = torch.rand(40, 30, generator=generator) < 0.3
    matrix = (torch.randint(1, 6, (40, 30), generator=generator) * mask).double()
    solutions = als_solutions(matrix, [2, 4], sweeps=20)
    for k, solution in solutions.items():
        assert torch.linalg.matrix_rank(solution) == k
        row = check_rank("ratings", matrix, *_svd(matrix), k, Config(competitors=2), generator, solution)
        assert row["best_als"] > row["svd_error"] and row["competitors_better"] == 0


def test_randomized_svd_is_near_optimal_on_a_decaying_spectrum():
    generator = torch.Generator().manual_seed(2)
    left, _ = torch.linalg.qr(torch.randn(200, 60, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(100, 60, generator=generator, dtype=torch.float64))
    matrix = (left * 0.8 ** torch.arange(60, dtype=torch.float64)) @ right.T
    torch.manual_seed(0)  # svd_lowrank draws its sketch from torch's global generator
    rows = randomized_against_full("decaying", matrix, [2, 5, 10], Config())
    assert all(1.0 - 1e-9 <= row["error_ratio"] < 1.01 for row in rows)


def test_low_rank_quick(ratings_data_dir, tmp_path):
    folder = run_quick("low-rank", ratings_data_dir, tmp_path / "runs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["eckart_young_max_deviation"] < 1e-6 and metrics["competitors_better"] == 0
    assert metrics["checks"] == 4 * 3  # four matrices x the quick ranks 1, 2, 5
    report = (folder / "report.md").read_text()
    assert "movielens: the 30 x 40 matrix" in report and "| movielens | 2 |" in report
    for figure in ("error_vs_rank", "randomized_svd", "photo_ranks"):
        assert (folder / "figures" / f"{figure}.png").is_file()


def test_ranks_above_the_matrix_size_are_skipped_and_said(ratings_data_dir, tmp_path):
    folder = run_quick("low-rank", ratings_data_dir, tmp_path / "runs", "--set", "matrices=gaussian,movielens",
                       "--set", "ranks=1,30,35,100", "--set", "shape=40,30")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["checks"] == 2 + 2  # both matrices keep k = 1 and 30
    report = (folder / "report.md").read_text()
    assert "gaussian (40 x 30): ranks above 30 skipped" in report
    assert "movielens (30 x 40): ranks above 30 skipped" in report
