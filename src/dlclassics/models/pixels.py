"""The input layer of models that read uint8 images: pixel/255, then per-channel standardisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Pixels(nn.Module):
    """uint8 [B, C, H, W] -> float32 (pixel/255 - mean) / std per channel.

    As the model's first layer, training, evaluation and a later attack all see the same inputs, and the
    data stays uint8 in memory: a quarter of float32 (CIFAR-10's training split is 150 MB instead of 600 MB)
    and converted one batch at a time.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.mean) / self.std


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images [N, C, H, W] on the 0-1 scale, summed in float64
    chunks (no float copy of the whole set)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].to(torch.float64) / 255.0
        total += block.sum((0, 2, 3)).cpu()
        squares += block.square().sum((0, 2, 3)).cpu()
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
