"""Deterministic held-out splits of an in-memory split, and fixed example picks for figures."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from dlclassics.data.transforms import subsample

if TYPE_CHECKING:
    from dlclassics.data.images import ImageData


def holdout(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, val_x, val_y): one permutation from `seed`, the last `fraction` held out.

    The permutation depends only on `seed` and `len(x)`, so every experiment (and a later run that
    reloads this one's model) sees the same validation images.
    """
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(fraction * len(x)))
    train, val = order[: len(x) - n_val], order[len(x) - n_val:]
    return x[train], y[train], x[val], y[val]


def first_of_each_class(labels: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """Index of the first example of each class present, in class order (the source's "one per digit")."""
    positions = torch.arange(len(labels), device=labels.device)
    # [C, N] mask -> the smallest position per class; absent classes are dropped.
    mask = labels.unsqueeze(0) == torch.arange(n_classes, device=labels.device).unsqueeze(1)
    first = torch.where(mask, positions, len(labels)).min(1).values
    return first[first < len(labels)]


@dataclasses.dataclass
class Split:
    """uint8 images [N, C, H, W] and labels of the three sets, on the run's device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def split_data(data: ImageData, val_fraction: float, seed: int, limit: int, device: torch.device) -> Split:
    """Validation held out of the training split (one permutation from `seed`, as the source's `random_split`)."""
    train_x, train_y, val_x, val_y = holdout(data.train_x, data.train_y, val_fraction, seed)
    train_x, train_y = subsample(train_x, train_y, limit)
    tensors = (train_x, train_y, val_x, val_y, data.test_x, data.test_y)
    return Split(*(t.to(device) for t in tensors))
