"""The energy model of S0 (`EnergyRegressor`), its two file formats, and an energy we know exactly.

S0 gives a 14-million-parameter regressor x [B, 784] -> energy [B, 1] and two files: a data file
(`torch.save({"x": [N, 784], "energy": [N, 1]})`) and a weights file (the regressor's state dict).
We read both with `weights_only=True` only: a file holding any pickled Python object is refused,
because unpickling it could run arbitrary code.

The source's files are not available, so the project also builds an energy it can compute and
sample exactly, `PcaMixtureEnergy`: a Gaussian mixture over the top-k principal coordinates of an
image set plus an isotropic Gaussian over the other 784 - k directions (probabilistic PCA's
residual). E(x) = -log p(x) is normalised, its exact samples are cheap, and with k = D it is a
plain Gaussian mixture, which the sampler tests use as a known target.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlclassics.errors import RunError, UsageError
from dlclassics.runs import atomic_torch_save, load_tensor_file

WIDTHS = (784, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)


class EnergyRegressor(nn.Module):
    """S0's regressor exactly: Linear layers 784 -> 4096 -> ... -> 2 -> 1 with ReLU between them.

    The layers sit in `self.net` at even indices, so the state dict's keys are `net.0.weight` ...
    `net.24.bias`, as in the source's weights file.
    """

    def __init__(self, in_features: int = 784) -> None:
        super().__init__()
        widths = (in_features, *WIDTHS[1:])
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers[:-1])  # no ReLU after the output: energies may be negative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, 784] -> [B, 1]


# ---------------------------------------------------------------- the source's two file formats

def _safe_load(path: Path | str, what: str, expected: str) -> Any:
    """torch.load with weights_only=True (`runs.load_tensor_file`); a path that does not exist is a usage error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist")
    return load_tensor_file(path, expected)


DATA_FORMAT = "torch.save({'x': float tensor [N, 784], 'energy': float tensor [N, 1]})"
WEIGHTS_FORMAT = "torch.save(model.state_dict()) of an EnergyRegressor"


def load_energy_data(path: Path | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's data file: x [N, 784] and energy [N, 1], as float32."""
    data = _safe_load(path, "energy data", DATA_FORMAT)
    if not isinstance(data, Mapping) or not {"x", "energy"} <= set(data):
        keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise RunError(f"{path} must hold a dict with keys 'x' and 'energy'; found {keys}")
    x, energy = data["x"], data["energy"]
    if not (isinstance(x, torch.Tensor) and isinstance(energy, torch.Tensor)):
        raise RunError(f"{path}: 'x' and 'energy' must be tensors")
    if x.layout != torch.strided or energy.layout != torch.strided:
        raise RunError(f"{path}: 'x' and 'energy' must be dense tensors; save x.to_dense() and energy.to_dense()")
    if x.ndim != 2 or x.shape[1] != WIDTHS[0] or energy.shape[:1] != x.shape[:1] or energy.numel() != len(x):
        raise RunError(f"{path}: expected x [N, {WIDTHS[0]}] and energy [N, 1]; found x {list(x.shape)} "
                       f"and energy {list(energy.shape)}")
    if len(x) == 0:
        raise RunError(f"{path} holds no examples (x is [0, {WIDTHS[0]}])")
    x, energy = x.float(), energy.reshape(-1, 1).float()
    if not (x.isfinite().all() and energy.isfinite().all()):
        raise RunError(f"{path}: 'x' and 'energy' must hold finite numbers; found NaN or infinity")
    return x, energy


def save_energy_data(path: Path, x: torch.Tensor, energy: torch.Tensor) -> None:
    """Write (x, energy) in the source's data-file format."""
    atomic_torch_save(path, {"x": x.detach().float().cpu(), "energy": energy.detach().float().reshape(-1, 1).cpu()})


def load_energy_weights(path: Path | str) -> EnergyRegressor:
    """An EnergyRegressor with the weights of the source's state-dict file (keys and shapes checked)."""
    state = _safe_load(path, "weights", WEIGHTS_FORMAT)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{path} must hold a state dict (names -> tensors); expected {WEIGHTS_FORMAT}")
    model = EnergyRegressor()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{path} does not fit the EnergyRegressor: {' '.join(str(exc).split())[:300]}") from None
    return model


# ---------------------------------------------------------------- an energy known exactly

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
    """Fit the exact energy to data x [N, D]: PCA by eigh of the covariance, then a full-covariance
    Gaussian mixture (scikit-learn, seeded) on the principal coordinates; the residual variance is
    the mean of the discarded eigenvalues (the maximum-likelihood value of probabilistic PCA)."""
    from sklearn.mixture import GaussianMixture

    x = x.double()
    center = x.mean(0)
    centred = x - center
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(x))  # ascending
    basis = eigenvectors[:, -pca_components:].flip(1)  # [D, k], largest variance first
    residual_var = eigenvalues[:-pca_components].clamp_min(1e-6).mean().item()
    mixture = GaussianMixture(mixture_components, covariance_type="full", reg_covar=1e-4, random_state=seed)
    mixture.fit((centred @ basis).numpy())
    return PcaMixtureEnergy(center, basis, torch.from_numpy(mixture.weights_), torch.from_numpy(mixture.means_),
                            torch.from_numpy(mixture.covariances_), residual_var)


def load_exact_energy(path: Path) -> PcaMixtureEnergy:
    """A PcaMixtureEnergy saved with `torch.save(energy.state_dict())` (loaded safely)."""
    expected = "torch.save(PcaMixtureEnergy.state_dict())"
    state = _safe_load(path, "exact energy", expected)
    keys = {"center", "basis", "log_weights", "means", "chol", "residual_var"}
    if not isinstance(state, Mapping) or not keys <= set(state):
        found = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise RunError(f"{path} must hold the keys {', '.join(sorted(keys))}; found {found}. Expected {expected}")
    try:
        cov = state["chol"] @ state["chol"].transpose(-1, -2)
        return PcaMixtureEnergy(state["center"], state["basis"], state["log_weights"].exp(), state["means"], cov,
                                state["residual_var"].item())
    except (RuntimeError, TypeError, AttributeError, IndexError) as exc:
        raise RunError(f"{path} does not describe a PcaMixtureEnergy ({' '.join(str(exc).split())[:200]}); "
                       f"expected {expected}") from None


# ---------------------------------------------------------------- an (x, energy) set for regression

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


def fold_target_scaling(model: EnergyRegressor, mean: float, std: float) -> None:
    """Make a regressor trained on (E - mean) / std output E itself, by rescaling its last Linear:
    w.h + b -> std (w.h + b) + mean. The saved weights then are a plain source-format state dict."""
    last = model.net[-1]
    with torch.no_grad():
        last.weight.mul_(std)
        last.bias.mul_(std).add_(mean)


def standardise(images: torch.Tensor, mean: float | None = None, std: float | None = None
                ) -> tuple[torch.Tensor, float, float]:
    """uint8 images [N, 28, 28] -> float [N, 784] with one global mean and std (S0's samplers start
    from N(0, I) noise, so states live on that scale)."""
    x = images.reshape(len(images), -1).float() / 255.0
    mean = x.mean().item() if mean is None else mean
    std = x.std().item() if std is None else std
    return (x - mean) / std, mean, std


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Energies [N, 1] of x [N, D] in eval mode, batched (x may stay on the CPU)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def mse(model: nn.Module, x: torch.Tensor, energy: torch.Tensor) -> float:
    """The mean squared error of the model's energies: the "Loss" S0's get_results.py prints."""
    return nn.functional.mse_loss(predict(model, x), energy.cpu()).item()


# ---------------------------------------------------------------- the synthetic task both experiments use

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
    real images come from the training split and the test set's from the test split."""
    train_x, mean, std = standardise(train_images[:fit_images] if fit_images > 0 else train_images)
    test_x, _, _ = standardise(test_images, mean, std)
    exact = fit_pca_mixture(train_x, pca_components, mixture_components, seed)
    x_train, e_train, part_train = make_energy_dataset(exact, train_x, n_train, generator)
    x_test, e_test, part_test = make_energy_dataset(exact, test_x, n_test, generator)
    return EnergyTask(exact, x_train, e_train, part_train, x_test, e_test, part_test, mean, std)


def train_energy_regressor(x: torch.Tensor, energy: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                           generator: torch.Generator, device: torch.device,
                           evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                           checkpoint: Path | None = None, resume: bool = False, quiet: bool = True,
                           desc: str = "energy") -> tuple[EnergyRegressor, list[dict[str, float]]]:
    """Adam on the MSE of standardised energies (E - mean) / std, then fold the scaling into the
    last layer so the model outputs energies (and saves as a source-format state dict).

    Standardising matters: the narrow tail of the network (8 -> 4 -> 2 -> 1) starts near zero and
    would otherwise spend its first epochs just growing to the energies' scale of hundreds.
    """
    from dlclassics.engine import cosine_schedule, fit

    model = EnergyRegressor().to(device)
    mean, std = energy.mean().item(), energy.std().item()
    targets = ((energy - mean) / std).to(device)

    def step(model: nn.Module, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs, target = batch
        return {"loss": nn.functional.mse_loss(model(inputs), target)}

    def evaluate_scaled(model: nn.Module, epoch: int) -> dict[str, float]:
        if evaluate is None:
            return {}
        # metrics in energy units: temporarily fold the scaling in, then take it out again
        fold_target_scaling(model, mean, std)
        metrics = evaluate(model)
        fold_target_scaling(model, -mean / std, 1.0 / std)
        return metrics

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = cosine_schedule(optimizer, epochs)
    result = fit(model, (x.to(device), targets), optimizer=optimizer, scheduler=scheduler, epochs=epochs,
                 batch_size=batch_size, generator=generator, step=step, evaluate=evaluate_scaled,
                 checkpoint=checkpoint, resume=resume, quiet=quiet, desc=desc)
    fold_target_scaling(model, mean, std)
    history = [{**row, "train_loss_energy_units": row["train_loss"] * std ** 2} for row in result.history]
    return model, history
