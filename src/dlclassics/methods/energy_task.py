"""An energy we know exactly, and the (x, energy) sets for regression drawn from it.

The source's files are not available, so the project builds an energy it can compute and sample
exactly, `PcaMixtureEnergy`: a Gaussian mixture over the top-k principal coordinates of an image set
plus an isotropic Gaussian over the other 784 - k directions (probabilistic PCA's residual).
E(x) = -log p(x) is normalised, its exact samples are cheap, and with k = D it is a plain Gaussian
mixture, which the sampler tests use as a known target.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from dlclassics.methods.pca import PCA


class PcaMixtureEnergy(nn.Module):
    """E(x) = -log p(x), p = Gaussian mixture on z = B^T (x - m) times N(0, s2 I) on the residual.

    B [D, k] has orthonormal columns (the top-k principal directions), the mixture has weights
    [K], means [K, k] and covariances [K, k, k]; the residual r = (x - m) - B z lives in the other
    D - k directions with variance s2 each. With k = D (B = I) this is a plain Gaussian mixture.
    """

    def __init__(self, center: torch.Tensor, basis: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
                 covariances: torch.Tensor, residual_var: float) -> None:
        super().__init__()
        covariances = covariances.double()
        chol = torch.linalg.cholesky(covariances)  # Sigma = L L^T: sampling z = mu + L eps
        self.register_buffer("center", center.double())
        self.register_buffer("basis", basis.double())
        self.register_buffer("log_weights", weights.double().log())
        self.register_buffer("means", means.double())
        self.register_buffer("chol", chol)
        # whitening: L^-1 (z - mu) = z L^-T - L^-1 mu, one batched matmul instead of triangular solves
        inv_chol = torch.linalg.solve_triangular(chol, torch.eye(chol.shape[-1], dtype=torch.float64), upper=False)
        self.register_buffer("inv_chol", inv_chol, persistent=False)
        self.register_buffer("whitened_means", (inv_chol @ means.double().unsqueeze(-1)).squeeze(-1),
                             persistent=False)
        self.register_buffer("residual_var", torch.tensor(float(residual_var), dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    @classmethod
    def gaussian_mixture(cls, weights: torch.Tensor, means: torch.Tensor,
                         covariances: torch.Tensor) -> PcaMixtureEnergy:
        """A plain D-dimensional Gaussian mixture (no principal subspace, no residual)."""
        dim = means.shape[1]
        return cls(torch.zeros(dim), torch.eye(dim), weights, means, covariances, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energies [B, 1] of states x [B, D], in x's dtype."""
        centred = x.to(self.center.dtype) - self.center  # [B, D]
        z = centred @ self.basis  # [B, k]
        k = z.shape[1]
        # log N(z; mu_j, L_j L_j^T) = -|L_j^{-1} (z - mu_j)|^2 / 2 - sum log diag L_j - k/2 log 2 pi
        solved = torch.einsum("bi,kji->bkj", z, self.inv_chol) - self.whitened_means  # [B, K, k]
        log_det = self.chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [K]
        log_comp = -0.5 * solved.square().sum(-1) - log_det - 0.5 * k * math.log(2 * math.pi)
        log_p = torch.logsumexp(self.log_weights + log_comp, dim=1)  # [B]
        rest = self.dim - k
        if rest > 0:
            residual = centred - z @ self.basis.T  # [B, D], orthogonal to the basis
            log_p = log_p - 0.5 * residual.square().sum(1) / self.residual_var \
                - 0.5 * rest * torch.log(2 * math.pi * self.residual_var)
        return (-log_p).unsqueeze(1).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n exact samples [n, D] (float64): a component, its Gaussian in z, then residual noise."""
        component = torch.multinomial(self.log_weights.exp().cpu(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.chol.shape[-1], generator=generator, dtype=torch.float64)
        z = self.means.cpu()[component] + (self.chol.cpu()[component] @ eps.unsqueeze(-1)).squeeze(-1)
        x = self.center.cpu() + z @ self.basis.cpu().T
        if self.dim > self.basis.shape[1]:
            noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
            noise = noise - (noise @ self.basis.cpu()) @ self.basis.cpu().T  # project onto the residual space
            x = x + self.residual_var.sqrt().cpu() * noise
        return x.to(self.center.device)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact mean [D] and covariance [D, D] (law of total covariance over components)."""
        weights = self.log_weights.exp()
        mean_z = weights @ self.means  # [k]
        spread = self.means - mean_z
        cov_z = torch.einsum("j,jab->ab", weights, self.chol @ self.chol.transpose(-1, -2)) \
            + torch.einsum("j,ja,jb->ab", weights, spread, spread)
        projector = torch.eye(self.dim, dtype=torch.float64, device=self.basis.device) - self.basis @ self.basis.T
        return self.center + self.basis @ mean_z, self.basis @ cov_z @ self.basis.T + self.residual_var * projector


def fit_pca_mixture(x: torch.Tensor, pca_components: int, mixture_components: int, seed: int) -> PcaMixtureEnergy:
    """Fit the exact energy to data x [N, D]: PCA, then a full-covariance Gaussian mixture
    (scikit-learn, seeded) on the principal coordinates; the residual variance is the mean variance
    along the discarded directions (the maximum-likelihood value of probabilistic PCA), at least 1e-6."""
    from sklearn.mixture import GaussianMixture

    pca = PCA(pca_components).fit(x.double())
    residual_var = pca.noise_variance_ * (len(x) - 1) / len(x)  # of the maximum-likelihood (1/N) covariance
    mixture = GaussianMixture(mixture_components, covariance_type="full", reg_covar=1e-4, random_state=seed)
    mixture.fit(pca.transform(x.double()).numpy())
    return PcaMixtureEnergy(pca.mean_, pca.components_.T, torch.from_numpy(mixture.weights_),
                            torch.from_numpy(mixture.means_), torch.from_numpy(mixture.covariances_),
                            max(residual_var, 1e-6))


PARTS = ("exact samples", "real images", "noise-to-sample paths")


def make_energy_dataset(exact: PcaMixtureEnergy, images: torch.Tensor, n: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [n, D], exact energy [n, 1] and part index [n]: a third each of exact samples (where the
    sampler should end), real images, and points on straight lines from N(0, I) noise to exact
    samples (where a sampler started from noise, as S0's is, passes during burn-in)."""
    thirds = [n // 3, n // 3, n - 2 * (n // 3)]
    samples = exact.sample(thirds[0], generator)
    real = images[torch.randint(len(images), (thirds[1],), generator=generator)].double()
    ends = exact.sample(thirds[2], generator)
    t = torch.rand(thirds[2], 1, generator=generator, dtype=torch.float64)
    paths = t * ends + (1 - t) * torch.randn(ends.shape, generator=generator, dtype=torch.float64)
    x = torch.cat([samples, real.to(samples.device), paths])
    with torch.no_grad():
        energy = exact(x)
    part = torch.cat([torch.full((size,), index) for index, size in enumerate(thirds)])
    return x.float(), energy.float(), part


def standardise(images: torch.Tensor, mean: float | None = None, std: float | None = None
                ) -> tuple[torch.Tensor, float, float]:
    """uint8 images [N, 28, 28] -> float [N, 784] with one global mean and std (S0's samplers start
    from N(0, I) noise, so states live on that scale)."""
    x = images.reshape(len(images), -1).float() / 255.0
    mean = x.mean().item() if mean is None else mean
    std = x.std().item() if std is None else std
    return (x - mean) / std, mean, std


@dataclasses.dataclass
class EnergyTask:
    """An exact energy fitted to images and (x, energy) sets drawn from it, in standardised pixels."""

    exact: PcaMixtureEnergy
    x_train: torch.Tensor  # [N, 784]
    e_train: torch.Tensor  # [N, 1]
    part_train: torch.Tensor  # [N] index into PARTS
    x_test: torch.Tensor
    e_test: torch.Tensor
    part_test: torch.Tensor
    pixel_mean: float
    pixel_std: float


def build_energy_task(train_images: torch.Tensor, test_images: torch.Tensor, *, pca_components: int,
                      mixture_components: int, n_train: int, n_test: int, seed: int, generator: torch.Generator,
                      fit_images: int = 0) -> EnergyTask:
    """Fit the exact energy on the first `fit_images` training images (0 = all); the train set's
    real images come from the training split and the test set's from the test split. The test set is
    drawn first, so runs with more or fewer training examples are tested on the same examples."""
    train_x, mean, std = standardise(train_images[:fit_images] if fit_images > 0 else train_images)
    test_x, _, _ = standardise(test_images, mean, std)
    exact = fit_pca_mixture(train_x, pca_components, mixture_components, seed)
    x_test, e_test, part_test = make_energy_dataset(exact, test_x, n_test, generator)  # first: n_train cannot change it
    x_train, e_train, part_train = make_energy_dataset(exact, train_x, n_train, generator)
    return EnergyTask(exact, x_train, e_train, part_train, x_test, e_test, part_test, mean, std)
