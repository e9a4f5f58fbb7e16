"""Multi-layer perceptrons for flattened 28x28 images."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.01), "elu": nn.ELU, "prelu": nn.PReLU,
               "tanh": nn.Tanh}


def mlp(in_features: int, hidden: list[int], out_features: int, activation: str = "relu",
        batchnorm: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """Linear [-> BatchNorm] -> activation [-> Dropout] per hidden layer, then a linear output (logits).

    This is the source's `build_mlp` (S1 Problem 2.1) and, with the options, its `build_enhanced_mlp`
    (Problem 2.4); every layer gets its own activation module (PReLU has parameters).
    """
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden:
        layers.append(nn.Linear(width, units))
        if batchnorm:
            layers.append(nn.BatchNorm1d(units))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
