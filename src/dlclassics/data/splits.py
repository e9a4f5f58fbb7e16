"""Deterministic held-out splits of an in-memory split, and fixed example picks for figures."""

from __future__ import annotations

import torch


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
