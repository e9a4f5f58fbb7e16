"""The energy model of S0: `EnergyRegressor`, a ReLU MLP x [B, 784] -> energy [B, 1], with S0's
14-million-parameter widths by default. How it is trained and evaluated is in `training/energy.py`,
its file formats in `data/energy_files.py`, the energy we know exactly and the regression sets drawn
from it in `methods/energy_task.py`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

SOURCE_HIDDEN = (4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2)  # S0's hidden widths


class EnergyRegressor(nn.Module):
    """Linear layers in_features -> *hidden -> 1 with ReLU between them; S0's regressor exactly with
    the default widths (784 -> 4096 -> 2048 -> ... -> 2 -> 1).

    The layers sit in `self.net` at even indices, so the state dict's keys are `net.0.weight` ...
    (`net.24.bias` for S0's widths), as in the source's weights file; `hidden_widths` reads the
    widths back from such a state dict, so a file of any widths rebuilds its own network.
    """

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = SOURCE_HIDDEN) -> None:
        super().__init__()
        widths = (in_features, *hidden, 1)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers[:-1])  # no ReLU after the output: energies may be negative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, 784] -> [B, 1]


def hidden_widths(state: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """The hidden widths of the EnergyRegressor a state dict came from: the output sizes of its
    weights `net.0.weight`, `net.2.weight`, ... (all but the last). Keys or shapes that do not form
    such a network are left for `load_state_dict` to reject."""
    outputs = []
    while isinstance(weight := state.get(f"net.{2 * len(outputs)}.weight"), torch.Tensor) and weight.ndim == 2:
        outputs.append(weight.shape[0])
    return tuple(outputs[:-1])


def fold_target_scaling(model: EnergyRegressor, mean: float, std: float) -> None:
    """Make a regressor trained on (E - mean) / std output E itself, by rescaling its last Linear:
    w.h + b -> std (w.h + b) + mean. The saved weights then are a plain source-format state dict."""
    last = model.net[-1]
    with torch.no_grad():
        last.weight.mul_(std)
        last.bias.mul_(std).add_(mean)
