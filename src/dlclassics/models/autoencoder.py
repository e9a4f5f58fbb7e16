"""Dense (fully connected) autoencoders: an encoder down a list of widths and its mirror image back up."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity}


class DenseAutoencoder(nn.Module):
    """Encoder `sizes[0] -> ... -> sizes[-1]` with `activation` after every layer (the bottleneck
    included, as in S1 Problem 4), decoder the mirror image with `activation` between layers and
    `output` on the last one (sigmoid keeps reconstructions in [0, 1], like the pixels).

    `DenseAutoencoder((784, 128, 64))` is S1's 218,192-parameter model; `(d, h)` with activation
    "identity" is a linear autoencoder (S2), and with "relu" twice its ReLU variant.
    """

    def __init__(self, sizes: tuple[int, ...], activation: str = "relu", output: str = "sigmoid") -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an autoencoder needs at least an input and a code width; got {sizes}")
        encoder: list[nn.Module] = []
        for width_in, width_out in zip(sizes, sizes[1:]):
            encoder += [nn.Linear(width_in, width_out), ACTIVATIONS[activation]()]
        back = sizes[::-1]
        decoder: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(back, back[1:])):
            last = index == len(back) - 2
            decoder += [nn.Linear(width_in, width_out), ACTIVATIONS[output if last else activation]()]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, sizes[0]] -> codes [B, sizes[-1]]."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

