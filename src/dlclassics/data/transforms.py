"""Turning uint8 image tensors into model inputs, once, for the whole split."""

from __future__ import annotations

import torch


def flat_float(images: torch.Tensor, center: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """[N, 28, 28] uint8 -> [N, 784] float32 computed as (pixel/255 - center) / scale.

    center 0.5, scale 1 is S1's `/255 - 0.5`; center 0.5, scale 0.5 is S3's Normalize((0.5,), (0.5,)) to [-1, 1].
    """
    return ((images.reshape(len(images), -1).float() / 255.0) - center) / scale


def subsample(x: torch.Tensor, y: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` examples (all when limit is 0): the `--quick` size."""
    return (x, y) if limit <= 0 else (x[:limit], y[:limit])


def images_4d(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 [N, S, S] or [N, C, S, S] -> float [N, C, S, S] in [0, 1]."""
    return flat_float(images).reshape(-1, channels, size, size)
