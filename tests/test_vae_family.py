"""S4: vae and vae-loglik: model pieces, estimators, snapshots (other --quick runs: test_smoke_all)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_quick

from dlclassics.models import vae as V


def test_vae_quick_saves_snapshots(image_data_dir, tmp_path):
    folder = run_quick("vae", image_data_dir, tmp_path / "runs", "--dataset", "fashion-mnist")
    assert {p.name for p in folder.glob("model_epoch_*.pt")} == {"model_epoch_1.pt", "model_epoch_2.pt"}
    for figure in ("loss", "recon_train", "recon_val", "samples"):
        assert (folder / "figures" / f"{figure}.png").is_file()


def test_vae_loglik_quick_trains_a_vae_and_checks_from_run(image_data_dir, tmp_path):
    folder = run_quick("vae-loglik", image_data_dir, tmp_path / "runs", "--set", "test_images=0")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test_elbo"] <= metrics["test_logp"] + 1.0  # K = 50 cannot be far below the K = 1 bound
    assert metrics["test_images"] == 200 and metrics["k_max"] == 50  # the largest K on every test image
    for figure in ("per_class", "convergence"):
        assert (folder / "figures" / f"{figure}.png").is_file()
    rows = (folder / "figures" / "convergence.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3  # both splits at K = 1, 10, 50, each with its replicate-based error
    assert all(float(row.split(",")[3]) > 0 for row in rows[1:])
    vae_run = run_quick("vae", image_data_dir, tmp_path / "vae-runs")
    again = run_quick("vae-loglik", image_data_dir, tmp_path / "runs2", "--from-run", str(vae_run))
    assert "VAE loaded from" in (again / "report.md").read_text()


# ---------------------------------------------------------------- model pieces

def test_bernoulli_log_likelihood_matches_bce_and_continuous_normaliser_integrates_to_one():
    torch.manual_seed(0)
    logits, x = torch.randn(4, 7) * 3, torch.rand(4, 7)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert torch.allclose(V.bernoulli_log_likelihood(logits, x), -bce, atol=1e-5)
    # continuous Bernoulli: C(lambda) * lambda^x (1 - lambda)^(1 - x) integrates to 1 over x in [0, 1]
    eta = torch.tensor([-8.0, -2.0, -1e-4, 0.0, 5e-4, 0.7, 6.0]).unsqueeze(1)  # [7, 1] incl. the Taylor branch
    grid = (torch.arange(20000) + 0.5).unsqueeze(0) / 20000  # midpoint rule on [0, 1]
    density = torch.exp(torch.nn.functional.logsigmoid(eta) - (1 - grid) * eta + V.continuous_bernoulli_log_norm(eta))
    assert torch.allclose(density.mean(1), torch.ones(7), atol=1e-4)


def test_vae_log_joint_shortcut_equals_the_direct_formula():
    from dlclassics.experiments.vae_loglik import vae_log_joint

    torch.manual_seed(0)
    model, x, z = V.VAE(3, 8, pixels=11), torch.rand(5, 11), torch.randn(4, 5, 3)
    for continuous in (False, True):
        direct = V.bernoulli_log_likelihood(model.decoder(z), x, continuous) + V.standard_normal_log_density(z)
        assert torch.allclose(vae_log_joint(model, x, continuous)(z), direct, atol=1e-4)


def test_kl_matches_a_monte_carlo_estimate():
    generator = torch.Generator().manual_seed(1)
    mu, log_sigma = torch.tensor([[0.5, -1.0]]), torch.tensor([[-0.3, 0.4]])
    z = mu + log_sigma.exp() * torch.randn(200000, 2, generator=generator)
    monte_carlo = (V.gaussian_log_density(z, mu, log_sigma) - V.standard_normal_log_density(z)).mean()
    assert abs(monte_carlo.item() - V.kl_to_standard_normal(mu, log_sigma).item()) < 0.01


# ---------------------------------------------------------------- the estimator on probabilistic PCA

def _ppca(seed: int = 0, data_dim: int = 6, latent: int = 2, noise: float = 0.6):
    """x = W z + b + noise * eps with orthogonal columns of W, so the exact posterior is diagonal."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(data_dim, latent, generator=generator, dtype=torch.float64))
    weight = basis * torch.tensor([2.0, 1.2], dtype=torch.float64)
    bias = torch.randn(data_dim, generator=generator, dtype=torch.float64)
    x = (torch.randn(64, latent, generator=generator, dtype=torch.float64) @ weight.T + bias
         + noise * torch.randn(64, data_dim, generator=generator, dtype=torch.float64))
    covariance = weight @ weight.T + noise ** 2 * torch.eye(data_dim, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(bias, covariance).log_prob(x)  # [N]
    precision = weight.T @ weight / noise ** 2 + torch.eye(latent, dtype=torch.float64)  # diagonal here
    post_var = 1 / torch.diagonal(precision)
    post_mu = (x - bias) @ weight / noise ** 2 * post_var  # [N, L]

    def log_joint(z: torch.Tensor) -> torch.Tensor:  # [k, N, L] -> [k, N]
        mean = z @ weight.T + bias
        log_lik = V.gaussian_log_density(x, mean, torch.full_like(mean, math.log(noise)))
        return log_lik + V.standard_normal_log_density(z)

    return exact, post_mu, 0.5 * post_var.log().expand_as(post_mu), log_joint


def test_importance_sampling_is_exact_with_the_true_posterior():
    exact, mu, log_sigma, log_joint = _ppca()
    log_w = V.importance_log_weights(log_joint, mu, log_sigma, 7, torch.Generator().manual_seed(0), chunk=3)
    assert log_w.shape == (7, len(exact))
    assert torch.allclose(log_w, exact.expand_as(log_w), atol=1e-9)  # every weight equals p(x)


def test_importance_sampling_converges_to_the_exact_ppca_likelihood():
    exact, mu, log_sigma, log_joint = _ppca()
    # a deliberately wrong proposal: shifted and 1.65 times too wide (wide, so the weights have a finite variance)
    log_w = V.importance_log_weights(log_joint, mu + 0.2, log_sigma + 0.5, 20000, torch.Generator().manual_seed(0),
                                     chunk=5000)
    errors, stderrs = [], []
    for k in (1, 10, 100, 1000, 20000):
        estimate, stderr = V.log_mean_exp_with_stderr(log_w[:k])
        errors.append(abs((exact - estimate).mean().item()))
        stderrs.append(stderr.mean().item())
    assert errors[0] > 0.5  # K = 1 (the ELBO) is a lower bound, clearly below log p(x)
    assert errors[0] > errors[1] > errors[2] and errors[3] < 0.01 and errors[4] < 0.005
    assert all(a > b for a, b in zip(stderrs[1:], stderrs[2:]))  # s.e. ~ 1/sqrt(K)
    assert stderrs[4] == pytest.approx(stderrs[3] * math.sqrt(1000 / 20000), rel=0.2)


def test_the_iwae_estimate_lies_between_the_elbo_and_log_p():
    """Both sides: the K-sample estimate is above the ELBO (the mean log weight) for every image, by Jensen,
    and not above log p(x) beyond its Monte Carlo error; constant weights give back that constant (so the
    estimate's - log K is where it belongs)."""
    exact, mu, log_sigma, log_joint = _ppca()
    log_w = V.importance_log_weights(log_joint, mu + 0.2, log_sigma + 0.5, 2000, torch.Generator().manual_seed(1),
                                     chunk=500)
    estimate, stderr = V.log_mean_exp_with_stderr(log_w)
    elbo = log_w.mean(0)
    assert (elbo <= estimate).all() and (estimate - elbo).mean() > 0.1
    assert (estimate <= exact + 4 * stderr + 1e-9).all()
    assert (exact - estimate).abs().mean() < 0.05
    flat, flat_error = V.log_mean_exp_with_stderr(torch.full((500, 3), -7.25, dtype=torch.float64))
    assert torch.allclose(flat, torch.full((3,), -7.25, dtype=torch.float64)) and (flat_error.abs() < 1e-12).all()


# ---------------------------------------------------------------- Monte Carlo error and effective sample size

def test_effective_sample_size_closed_forms():
    # columns: 8 equal weights (ESS 8); one weight carrying everything (1); two weights 3 and six weights 1
    # ((2*3 + 6)^2 / (2*9 + 6) = 6)
    log_w = torch.stack([torch.full((8,), 2.5), torch.tensor([0.0] + [-1e4] * 7),
                         torch.tensor([math.log(3)] * 2 + [0.0] * 6)], 1)
    assert torch.allclose(V.effective_sample_size(log_w), torch.tensor([8.0, 1.0, 6.0]))
    # target N(0, I_2) (so p(x) = 1), proposal N(0, 1.5^2 I_2): ESS / K -> E_q[w]^2 / E_q[w^2]
    # = (sqrt(2 s^2 - 1) / s^2)^2 per image, from E_q[w^2] = s^2 / sqrt(2 s^2 - 1) per dimension
    scale, samples = 1.5, 200000
    mu, log_sigma = torch.zeros(3, 2), torch.full((3, 2), math.log(scale))
    log_w = V.importance_log_weights(V.standard_normal_log_density, mu, log_sigma, samples,
                                     torch.Generator().manual_seed(0), chunk=50000)
    expected = (math.sqrt(2 * scale ** 2 - 1) / scale ** 2) ** 2  # 0.691
    assert torch.allclose(V.effective_sample_size(log_w) / samples, torch.full((3,), expected), atol=0.01)


def _mismatched_vae(latent: int = 8, pixels: int = 30, scale: float = 0.2) -> V.VAE:
    """A VAE whose encoder ignores the image and proposes N(0, 0.2^2 I), far narrower than the posterior
    under this random decoder: E_q[w^2] is huge (infinite for a posterior as wide as the N(0, I) prior)."""
    torch.manual_seed(0)
    model = V.VAE(latent, 16, pixels)
    head = model.encoder.net[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.cat([torch.zeros(latent), torch.full((latent,), math.log(scale))]))
    return model


def test_reported_monte_carlo_error_matches_the_scatter_over_seeds_under_heavy_tails():
    from dlclassics.experiments.vae_loglik import (
        Config,
        estimate,
        replicate_stderr,
        rms,
        summary,
    )

    model, k = _mismatched_vae(), 100
    x = (torch.rand(40, 30, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    cfg = Config(samples=(k,), error_images=40, replicates=5, batch_images=40, chunk=100)
    reported = estimate(model, x, (k,), cfg, False, torch.Generator().manual_seed(0))
    again = estimate(model, x, (k,), cfg, False, torch.Generator().manual_seed(0))
    errors = replicate_stderr(model, x, (k,), cfg, False, reported, torch.Generator().manual_seed(1))
    assert torch.equal(reported[k].log_p, again[k].log_p)  # same seed, same estimate
    row = summary("test", k, reported[k], errors[k])

    seeds = torch.stack([estimate(model, x, (k,), cfg, False, torch.Generator().manual_seed(10 + seed))[k].log_p
                         for seed in range(40)])  # [seeds, images]
    per_image, of_the_mean = rms(seeds.std(0)), seeds.mean(1).std().item()
    assert 0.75 < row["MC s.e. per image (rms)"] / per_image < 1.33
    assert 0.67 < row["MC s.e."] / of_the_mean < 1.5
    # the delta-method error of the same draw is about half the observed scatter: the case is heavy-tailed
    assert rms(reported[k].delta_stderr) / per_image < 0.65
    assert reported[k].ess.mean() < 0.15 * k


# ---------------------------------------------------------------- reproduction runs (slow)

def _cli_run(out, *args: str):
    from dlclassics.cli import main

    assert main(["run", *args, "--quiet", "--out", str(out)]) == 0
    (folder,) = [p for p in (out / args[0]).iterdir() if p.is_dir()]
    return folder, json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
def test_fashion_classifier_reaches_the_target(tmp_path):
    from dlclassics.data.images import image_spec
    from dlclassics.data.registry import find_folder

    if find_folder(image_spec("fashion-mnist"), None) is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    _, metrics = _cli_run(tmp_path, "mnist-classifier", "--dataset", "fashion-mnist")
    assert metrics["test_accuracy"] >= 0.91


@pytest.mark.slow
def test_mnist_vae_loglik_digit_one_is_most_likely(tmp_path):
    from conftest import SHARED_DATASETS

    if not (SHARED_DATASETS / "mnist-t10k").is_dir():
        pytest.skip(f"{SHARED_DATASETS}/mnist-t10k is absent")
    data = ["--data-dir", str(SHARED_DATASETS), "--carve-test", "0.2"]
    vae_run, _ = _cli_run(tmp_path / "vae", "vae", *data)
    _, metrics = _cli_run(tmp_path / "loglik", "vae-loglik", *data, "--from-run", str(vae_run))
    assert metrics["most_likely_class"] == 1
    assert metrics["test_elbo"] < metrics["test_logp"]
    assert metrics["k_max"] == 5000 and metrics["test_images"] == 2000  # issue 21: K = 5000 on every test image
