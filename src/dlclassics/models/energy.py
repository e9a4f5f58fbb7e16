"""The energy model of S0: `EnergyRegressor`, a 14-million-parameter regressor x [B, 784] -> energy [B, 1].
How it is trained and evaluated is in `training/energy.py`, its file formats in `data/energy_files.py`,
the energy we know exactly and the regression sets drawn from it in `methods/energy_task.py`."""

from __future__ import annotations

import torch
from torch import nn

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
