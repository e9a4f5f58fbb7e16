"""Variational auto-encoders on flattened 28x28 images: the pieces `vae`, `latent-optimization` and
`vae-loglik` share.

Model: p(z) = N(0, I), p(x|z) = prod_d Bernoulli(x_d; sigmoid(eta_d(z))) with eta = decoder(z) (logits),
q(z|x) = N(mu, diag sigma^2). Training maximises the ELBO (Kingma & Welling 2014)
    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)),
and `importance_log_weights` gives the IWAE estimate of log p(x) (Burda et al. 2015)
    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k|x),   z_k ~ q(z|x),
which is the ELBO at K = 1 and tends to log p(x) as K grows. Every density keeps its normalising
constant (the -1/2 log 2 pi of each Gaussian dimension; log C of the continuous Bernoulli), so the
numbers are log-probabilities in nats, not losses up to a constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from dlclassics.models.mlp import mlp

LOG_2PI = math.log(2 * math.pi)
LIKELIHOODS = ("bernoulli", "continuous-bernoulli")


class Encoder(nn.Module):
    """x [B, D] -> (mu, log_sigma) [B, latent]: one hidden ReLU layer, one linear head for both."""

    def __init__(self, latent: int, hidden: int, pixels: int = 784) -> None:
        super().__init__()
        self.net = mlp(pixels, [hidden], 2 * latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.net(x).chunk(2, dim=-1)
        return mu, log_sigma


def decoder(latent: int, hidden: int, pixels: int = 784) -> nn.Sequential:
    """z [..., latent] -> Bernoulli logits [..., D]; the same shape in the amortised and the
    latent-optimisation model, so the two differ only in how q(z|x) is obtained."""
    return mlp(latent, [hidden], pixels)


class VAE(nn.Module):
    """Amortised VAE: an encoder gives q(z|x) for any image, a decoder gives p(x|z)."""

    def __init__(self, latent: int, hidden: int, pixels: int = 784) -> None:
        super().__init__()
        self.encoder = Encoder(latent, hidden, pixels)
        self.decoder = decoder(latent, hidden, pixels)


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), lambda = sigmoid(eta).

    C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) = eta / tanh(eta / 2), which is 2 (1 + eta^2 / 12 + ...)
    near eta = 0, where the closed form is 0/0: the Taylor branch is used there.
    """
    small = logits.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(logits), logits)
    return torch.where(small, math.log(2.0) + logits.square() / 12, torch.log(safe / torch.tanh(safe / 2)))


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor, continuous: bool = False) -> torch.Tensor:
    """sum_d log p(x_d | eta_d) over the last dimension, x in [0, 1] (broadcast against logits).

    x log sigmoid(eta) + (1 - x) log sigmoid(-eta) = log sigmoid(eta) - (1 - x) eta: one transcendental
    per pixel. Plain Bernoulli is a pmf for binary x; for grey levels it is the source's (unnormalised)
    choice. `continuous` adds log C, making it a density on [0, 1]^D.
    """
    log_lik = F.logsigmoid(logits) - (1 - x) * logits
    if continuous:
        log_lik = log_lik + continuous_bernoulli_log_norm(logits)
    return log_lik.sum(-1)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag sigma^2), summed over the last dimension, constant included."""
    return -0.5 * (((z - mu) * torch.exp(-log_sigma)).square() + 2 * log_sigma + LOG_2PI).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


def kl_to_standard_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum (mu^2 + sigma^2 - 1 - 2 log sigma), in closed form."""
    return 0.5 * (mu.square() + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(-1)


def elbo(decode: nn.Module, x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor,
         continuous: bool = False) -> dict[str, torch.Tensor]:
    """Per-example ELBO [B] with one reparameterised sample z = mu + sigma * eps and the analytic KL."""
    z = mu + torch.exp(log_sigma) * torch.randn_like(mu)
    reconstruction = bernoulli_log_likelihood(decode(z), x, continuous)
    kl = kl_to_standard_normal(mu, log_sigma)
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}


@torch.no_grad()
def importance_log_weights(log_joint: Callable[[torch.Tensor], torch.Tensor], mu: torch.Tensor,
                           log_sigma: torch.Tensor, samples: int, generator: torch.Generator,
                           chunk: int = 250) -> torch.Tensor:
    """log w_k = log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x) = N(mu, sigma^2): [K, B].

    `log_joint(z [k, B, latent]) -> [k, B]`. Samples are drawn `chunk` at a time so a batch of B
    images costs k * B decoder rows of memory, never K * B.
    """
    weights = []
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        eps = torch.randn((count, *mu.shape), generator=generator, device=generator.device).to(mu.device)
        z = mu + torch.exp(log_sigma) * eps  # [k, B, latent]
        weights.append(log_joint(z) - gaussian_log_density(z, mu, log_sigma))
    return torch.cat(weights)


def log_mean_exp_with_stderr(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The IWAE estimate log (1/K) sum_k w_k per column of [K, B], and its delta-method standard error.

    sd(log p_hat) ~= sd(w) / (sqrt(K) mean(w)); in terms of r_k = w_k / mean(w) (computed in log space,
    so nothing overflows) that is sd(r) / sqrt(K). Undefined (NaN) at K = 1. It holds for light-tailed
    weights only: when q(z|x) is narrower than the posterior, the sample sd(w) of K draws usually
    misses the rare large weights that make up the true one, and the error comes out too small
    (`vae-loglik` measures its errors from independent replicates instead).
    """
    count = log_weights.shape[0]
    estimate = torch.logsumexp(log_weights, 0) - math.log(count)
    if count == 1:
        return estimate, torch.full_like(estimate, math.nan)
    ratios = torch.exp(log_weights - estimate)
    return estimate, ratios.std(0) / math.sqrt(count)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size (sum_k w_k)^2 / sum_k w_k^2 per column of [K, B], from log weights.

    K when the weights are equal, 1 when one weight carries everything: K / ESS estimates
    E_q[w^2] / E_q[w]^2, the factor by which importance sampling needs more draws than exact sampling.
    Computed as exp(2 logsumexp(log w) - logsumexp(2 log w)), so no weight is ever exponentiated.
    Under heavy tails it errs high: the rare huge weights that would lower it are the ones not drawn.
    """
    return torch.exp(2 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2 * log_weights, 0))


def bits_per_dim(log_p: float, dims: int) -> float:
    """-log p(x) in nats -> bits per dimension."""
    return -log_p / (dims * math.log(2))
