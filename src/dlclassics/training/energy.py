"""S0's energy regressor trained and evaluated, and its files read into models.

Shared by `energy-regressor` (which trains and saves the regressor, and the exact energy its data came
from) and `mcmc-sampling` (which samples from a finished regressor, or trains a smaller one itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from dlclassics.data.energy_files import load_state_dict
from dlclassics.engine import batched_outputs, cosine_schedule, fit
from dlclassics.errors import RunError
from dlclassics.methods.energy_task import PcaMixtureEnergy
from dlclassics.models.energy import EnergyRegressor, fold_target_scaling, hidden_widths

# energy-regressor's tuned recipe, which mcmc-sampling also trains with when no --from-run is given: a
# shallow 784 -> 512 -> 128 -> 1 net (S0's 13-layer net tapering to width 2 trains poorly, see the
# experiment's docstring), minibatches of 128 and Adam at 1e-3 with a cosine decay to 0.
REGRESSOR_HIDDEN = (512, 128)
REGRESSOR_BATCH_SIZE = 128
REGRESSOR_LR = 1e-3
WEIGHTS_FORMAT = "torch.save(model.state_dict()) of an EnergyRegressor"
EXACT_FORMAT = "torch.save(PcaMixtureEnergy.state_dict())"


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Energies [N, 1] of x [N, D] on the CPU, in eval mode, batched (x may stay on the CPU)."""
    return batched_outputs(model, x, batch_size).cpu()


def mse(model: nn.Module, x: torch.Tensor, energy: torch.Tensor) -> float:
    """The mean squared error of the model's energies: the "Loss" S0's get_results.py prints."""
    return nn.functional.mse_loss(predict(model, x), energy.cpu()).item()


def train_energy_regressor(x: torch.Tensor, energy: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                           generator: torch.Generator, device: torch.device,
                           hidden: tuple[int, ...] = REGRESSOR_HIDDEN,
                           evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                           checkpoint: Path | None = None, resume: bool = False, quiet: bool = True,
                           desc: str = "energy") -> tuple[EnergyRegressor, list[dict[str, float]]]:
    """Adam on the MSE of standardised energies (E - mean) / std, then fold the scaling into the
    last layer so the model outputs energies (and saves as a source-format state dict).

    Standardising matters: the output layer starts near zero (S0's narrow tail 8 -> 4 -> 2 -> 1 even
    more so) and would otherwise spend its first epochs just growing to the energies' scale of hundreds.
    """
    model = EnergyRegressor(x.shape[1], hidden).to(device)
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


def load_energy_weights(path: Path | str) -> EnergyRegressor:
    """An EnergyRegressor with the weights of a state-dict file (keys and shapes checked): S0's file, or
    one of ours, whose hidden widths are read from its weights' shapes."""
    state = load_state_dict(path, "weights", WEIGHTS_FORMAT)
    model = EnergyRegressor(hidden=hidden_widths(state))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{path} does not fit the EnergyRegressor: {' '.join(str(exc).split())[:300]}") from None
    return model


def load_exact_energy(path: Path) -> PcaMixtureEnergy:
    """A PcaMixtureEnergy saved with `torch.save(energy.state_dict())` (loaded safely)."""
    state: Mapping[str, torch.Tensor] = load_state_dict(path, "exact energy", EXACT_FORMAT)
    keys = {"center", "basis", "log_weights", "means", "chol", "residual_var"}
    if not keys <= set(state):
        raise RunError(f"{path} must hold the keys {', '.join(sorted(keys))}; found {sorted(state)}. "
                       f"Expected {EXACT_FORMAT}")
    try:
        cov = state["chol"] @ state["chol"].transpose(-1, -2)
        return PcaMixtureEnergy(state["center"], state["basis"], state["log_weights"].exp(), state["means"], cov,
                                state["residual_var"].item())
    except (RuntimeError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise RunError(f"{path} does not describe a PcaMixtureEnergy ({' '.join(str(exc).split())[:200]}); "
                       f"expected {EXACT_FORMAT}") from None
