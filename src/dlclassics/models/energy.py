"""The energy model of S0: `EnergyRegressor`, a 14-million-parameter regressor x [B, 784] -> energy [B, 1],
and how it is trained and evaluated. Its file formats are in `data/energy_files.py`, the energy we know
exactly and the regression sets drawn from it in `data/energy_task.py`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from dlclassics.engine import batched_outputs

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


def fold_target_scaling(model: EnergyRegressor, mean: float, std: float) -> None:
    """Make a regressor trained on (E - mean) / std output E itself, by rescaling its last Linear:
    w.h + b -> std (w.h + b) + mean. The saved weights then are a plain source-format state dict."""
    last = model.net[-1]
    with torch.no_grad():
        last.weight.mul_(std)
        last.bias.mul_(std).add_(mean)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Energies [N, 1] of x [N, D] on the CPU, in eval mode, batched (x may stay on the CPU)."""
    return batched_outputs(model, x, batch_size).cpu()


def mse(model: nn.Module, x: torch.Tensor, energy: torch.Tensor) -> float:
    """The mean squared error of the model's energies: the "Loss" S0's get_results.py prints."""
    return nn.functional.mse_loss(predict(model, x), energy.cpu()).item()


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
