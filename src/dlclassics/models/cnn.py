"""Small convolutional classifiers for small images (28x28 grey by default, 32x32 colour for CIFAR)."""

from __future__ import annotations

from torch import nn


def small_cnn(channels: tuple[int, int] = (16, 32), hidden: int = 128, classes: int = 10,
              dropout: float = 0.0, in_channels: int = 1, image_size: int = 28) -> nn.Sequential:
    """[B, in_channels, S, S] -> logits [B, classes]: two 3x3 conv + ReLU + 2x2 max-pool blocks (S -> S/2 -> S/4,
    28 -> 14 -> 7), then a ReLU hidden layer. Kept narrow because it trains on two shared CPU cores: 16/32
    channels cost ~1.4 M multiply-adds per 28x28 image, 32/64 about three times that for a few tenths of a percent.
    """
    first, second = channels
    side = image_size // 4  # each max-pool halves the side, rounding down
    return nn.Sequential(
        nn.Conv2d(in_channels, first, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(first, second, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(second * side * side, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, classes))
