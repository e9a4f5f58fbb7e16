"""Small convolutional classifiers for 28x28 grayscale images."""

from __future__ import annotations

from torch import nn


def small_cnn(channels: tuple[int, int] = (16, 32), hidden: int = 128, classes: int = 10,
              dropout: float = 0.0) -> nn.Sequential:
    """[B, 1, 28, 28] -> logits [B, classes]: two 3x3 conv + ReLU + 2x2 max-pool blocks (28 -> 14 -> 7),
    then a ReLU hidden layer. Kept narrow because it trains on two shared CPU cores: 16/32 channels
    cost ~1.4 M multiply-adds per image, 32/64 about three times that for a few tenths of a percent.
    """
    first, second = channels
    return nn.Sequential(
        nn.Conv2d(1, first, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(first, second, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(second * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, classes))
