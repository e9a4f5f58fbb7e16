"""The Langevin samplers on energies whose distribution is known exactly (Gaussian mixtures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlclassics.methods.energy_task import PcaMixtureEnergy
from dlclassics.methods.mcmc import effective_sample_size, energy_and_grad, langevin


def mixture_2d() -> PcaMixtureEnergy:
    return PcaMixtureEnergy.gaussian_mixture(
        torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.0], [1.0, 0.5]]),
        torch.tensor([[[0.5, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.6]]]))


def mixture_10d() -> PcaMixtureEnergy:
    gen = torch.Generator().manual_seed(3)
    factors = torch.randn(3, 10, 10, generator=gen, dtype=torch.float64) * 0.25
    covariances = factors @ factors.transpose(1, 2) + 0.3 * torch.eye(10, dtype=torch.float64)
    means = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    return PcaMixtureEnergy.gaussian_mixture(torch.tensor([0.2, 0.3, 0.5]), means, covariances)


def final_states(energy: PcaMixtureEnergy, tau: float, metropolis: bool, chains: int = 1500,
                 steps: int = 500, seed: int = 0) -> torch.Tensor:
    """The last states of many independent chains started from overdispersed noise N(0, 3^2 I):
    after burn-in they are (nearly) independent draws, so Monte-Carlo errors are plain sd/sqrt(C)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = 3.0 * torch.randn(chains, energy.dim, generator=gen, dtype=torch.float64)
    result = langevin(energy, x0, tau=tau, burn_in=steps - 1, n_samples=1, metropolis=metropolis, generator=gen)
    return result.samples[-1]


def assert_moments_match(energy: PcaMixtureEnergy, states: torch.Tensor, sigmas: float = 4.5) -> None:
    """Mean and covariance within `sigmas` Monte-Carlo standard errors, entry by entry; the errors
    of the covariance entries come from exact samples' fourth moments."""
    mean, cov = energy.moments()
    n = len(states)
    mean_se = cov.diagonal().sqrt() / n ** 0.5
    assert ((states.mean(0) - mean).abs() <= sigmas * mean_se).all(), (states.mean(0), mean)
    exact = energy.sample(50_000, torch.Generator().manual_seed(9)) - mean
    cov_se = (exact[:, :, None] * exact[:, None, :]).std(0) / n ** 0.5
    measured = torch.cov(states.T)
    assert ((measured - cov).abs() <= sigmas * cov_se + 1e-9).all(), (measured, cov)


def test_energy_is_normalised_negative_log_density():
    energy = mixture_2d()
    grid = torch.linspace(-6, 6, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    density = torch.exp(-energy(torch.stack([xx.flatten(), yy.flatten()], 1)))
    assert density.sum().item() * (grid[1] - grid[0]).item() ** 2 == pytest.approx(1.0, abs=1e-3)


def test_exact_samples_have_the_exact_moments():
    energy = mixture_10d()
    states = energy.sample(20_000, torch.Generator().manual_seed(1))
    assert_moments_match(energy, states)


@pytest.mark.parametrize("make", [mixture_2d, mixture_10d], ids=["2d", "10d"])
def test_mala_matches_mean_and_covariance(make):
    energy = make()
    states = final_states(energy, tau=0.15, metropolis=True)
    assert_moments_match(energy, states)


def test_ula_bias_grows_with_tau_and_mala_removes_it():
    energy = mixture_2d()
    _, cov = energy.moments()
    errors = [torch.linalg.matrix_norm(torch.cov(final_states(energy, tau, metropolis=False).T) - cov)
              for tau in (0.05, 0.3, 0.8)]
    assert errors[0] < errors[1] < errors[2]
    assert errors[2] > 0.2  # a real bias, far above the Monte-Carlo error (~0.03)
    assert_moments_match(energy, final_states(energy, 0.8, metropolis=True))


def test_ula_variance_on_a_gaussian_matches_its_closed_form():
    # x' = x - (tau/2) x/s2 + sqrt(tau) xi has stationary variance s2 / (1 - tau / (4 s2)), not s2.
    s2, tau = 1.0, 0.8
    energy = PcaMixtureEnergy.gaussian_mixture(torch.ones(1), torch.zeros(1, 1), torch.full((1, 1, 1), s2))
    states = final_states(energy, tau, metropolis=False, chains=20_000, steps=200)
    expected = s2 / (1 - tau / (4 * s2))
    assert states.var().item() == pytest.approx(expected, rel=0.05)


class CountingEnergy(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("metropolis", [True, False])
def test_one_energy_evaluation_per_step(metropolis):
    energy = CountingEnergy(mixture_2d())
    gen = torch.Generator().manual_seed(0)
    result = langevin(energy, torch.zeros(8, 2, dtype=torch.float64), tau=0.1, burn_in=30, n_samples=20,
                      metropolis=metropolis, generator=gen)
    assert energy.calls == result.evaluations == 30 + 20 + 1
    assert result.samples.shape == (20, 8, 2) and result.energies.shape == (20, 8)
    assert 0.0 < result.acceptance_rate <= 1.0


def test_kept_energies_belong_to_kept_states():
    energy = mixture_2d()
    result = langevin(energy, torch.zeros(5, 2, dtype=torch.float64), tau=0.5, burn_in=5, n_samples=10,
                      metropolis=True, generator=torch.Generator().manual_seed(0))
    recomputed, _ = energy_and_grad(energy, result.samples.reshape(-1, 2))
    torch.testing.assert_close(recomputed.reshape(10, 5), result.energies)


def test_effective_sample_size_of_ar1_chains():
    # AR(1) with coefficient phi has integrated autocorrelation time (1 + phi) / (1 - phi).
    rng = np.random.default_rng(0)
    phi, steps, chains = 0.8, 4000, 8
    trace = np.zeros((steps, chains))
    trace[0] = rng.normal(size=chains) / np.sqrt(1 - phi ** 2)
    for t in range(1, steps):
        trace[t] = phi * trace[t - 1] + rng.normal(size=chains)
    expected = steps * chains * (1 - phi) / (1 + phi)
    assert effective_sample_size(trace) == pytest.approx(expected, rel=0.15)
    assert effective_sample_size(rng.normal(size=(steps, chains))) == pytest.approx(steps * chains, rel=0.15)
