"""optimizers-noisy: the batched gradient is the derivative of the loss, the batched study behaves
like independent runs (the --quick run is in test_smoke_all)."""

import pytest
import torch

from dlclassics.config import resolve
from dlclassics.data.linear_regression import make_linear_data
from dlclassics.errors import UsageError
from dlclassics.experiments.optimizers_noisy import Config, gradient, loss, study


@pytest.mark.parametrize("gamma", [0.4, 0.7, 1.0, 2.0, 3.0, 5.0])
def test_gradient_is_the_derivative_of_the_loss(gamma):
    generator = torch.Generator().manual_seed(0)
    theta = torch.rand(2, 3, 10, generator=generator, dtype=torch.float64).requires_grad_()
    x = torch.rand(2, 3, 4, 10, generator=generator, dtype=torch.float64) * 2 - 1
    y = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    gamma_t = torch.tensor(gamma, dtype=torch.float64)
    (expected,) = torch.autograd.grad(loss(theta, x, y, gamma_t).sum(), theta)
    torch.testing.assert_close(gradient(theta.detach(), x, y, gamma_t), expected)


def test_study_shapes_and_learning():
    cfg = resolve(Config, {"gammas": (1.0, 2.0), "steps": 200, "replicates": 3, "test_every": 20})
    data = make_linear_data(torch.Generator().manual_seed(0))
    test_loss, theta = study(data, cfg, torch.Generator().manual_seed(0))
    assert test_loss.shape == (2, 3, 3, 10) and theta.shape == (2, 3, 3, 10)
    # Every run starts from the same theta_init (as in the source), so the first test losses match per gamma.
    assert torch.allclose(test_loss[..., 0], test_loss[:, :1, :1, 0].expand(2, 3, 3))
    assert torch.all(test_loss[:, :2, :, -1] < test_loss[:, :2, :, 0])  # sgd and adam make progress
    assert not torch.equal(theta[:, :, 0], theta[:, :, 1])  # replicates draw different examples


def test_same_seed_same_study():
    cfg = resolve(Config, {"gammas": (0.7,), "steps": 30, "replicates": 2, "test_every": 10})
    data = make_linear_data(torch.Generator().manual_seed(0))
    first, second = (study(data, cfg, torch.Generator().manual_seed(3)) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_gradient_noise_changes_the_result():
    base = {"gammas": (2.0,), "steps": 50, "replicates": 2, "test_every": 10}
    data = make_linear_data(torch.Generator().manual_seed(0))
    quiet = study(data, resolve(Config, base), torch.Generator().manual_seed(0))[1]
    noisy = study(data, resolve(Config, {**base, "grad_noise": 1.0}), torch.Generator().manual_seed(0))[1]
    assert not torch.allclose(quiet, noisy)


def test_unknown_method_is_a_usage_error():
    with pytest.raises(UsageError, match="methods"):
        resolve(Config, {"methods": "sgd,rmsprop"})


@pytest.mark.slow
def test_full_run_reproduces_the_source_final_thetas(tmp_path):
    from dlclassics.cli import main

    assert main(["run", "optimizers-noisy", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 0
    (folder,) = (tmp_path / "optimizers-noisy").iterdir()
    report = (folder / "report.md").read_text()
    assert report.count("| met |") == 12 and "not met" not in report
