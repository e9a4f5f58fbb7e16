"""Training K copies of a classifier at once (`models.stacked`), each with its own learning rate, L2,
shuffling and divergence check: a search's trials that share an architecture, trained as one network.

Each copy follows what `engine.fit` with `engine.make_optimizer("sgd", ...)` and a per-epoch cosine
schedule would do for it alone: the same batches from its own generator, Nesterov SGD with L2 on its
weight matrices only, the same learning rate per epoch; so a copy ends where its own training would,
up to float rounding (a batched product adds in another order). Its dropout masks are drawn for all
copies at once and differ from its own training's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlclassics.engine import READ_EVERY
from dlclassics.models.stacked import weight_matrices


class CopySGD:
    """SGD with plain or Nesterov momentum on stacked parameters [K, ...], copy k with learning rate
    `lr[k]` and L2 `l2[k]` on its weight matrices, the update of `torch.optim.SGD` for each copy:
    g = grad + l2 w;  m = momentum m + g (m = g at the first step);  g = g + momentum m (Nesterov) or m;
    w = w - lr factor g, where `factor` is the schedule's share of the learning rate this epoch."""

    def __init__(self, model: nn.Module, lr: list[float], l2: list[float], momentum: float, nesterov: bool) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        device = self.params[0].device
        self.lr = torch.tensor(lr, device=device)
        self.l2 = torch.tensor(l2, device=device)
        self.decayed = {id(p) for p in weight_matrices(model)}
        self.momentum, self.nesterov = momentum, nesterov and momentum > 0
        self.velocity: dict[int, torch.Tensor] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, factor: float = 1.0) -> None:
        for p in self.params:
            per_copy = (-1,) + (1,) * (p.ndim - 1)  # [K] broadcast over a copy's slice
            grad = p.grad
            if id(p) in self.decayed:
                grad = grad + self.l2.view(per_copy) * p
            if self.momentum > 0:
                velocity = self.velocity.get(id(p))
                if velocity is None:
                    velocity = self.velocity[id(p)] = grad.clone()
                else:
                    velocity.mul_(self.momentum).add_(grad)
                grad = grad + self.momentum * velocity if self.nesterov else velocity
            p.sub_((self.lr * factor).view(per_copy) * grad)


def cosine_factor(epoch: int, epochs: int) -> float:
    """The share of the initial learning rate in `epoch` (1-based) of a half-cosine decay over `epochs`
    stepped once per epoch (`engine.cosine_schedule`'s CosineAnnealingLR)."""
    return (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2


def fit_copies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, optimizer: CopySGD, epochs: int,
               batch_size: int, generators: list[torch.Generator], label_smoothing: float = 0.0,
               cosine: bool = True, read_every: int = READ_EVERY) -> list[str | None]:
    """Train the K copies of stacked classifier `model` on (x [N, ...], y [N]) for `epochs`; copy k
    shuffles with `generators[k]` (as `engine.epoch_batches` does) and steps on its own mean loss.

    Returns, per copy, None or why it diverged: a loss that became non-finite, found when the losses
    are read (every `read_every` steps; one transfer, not one per step). A diverged copy's numbers are
    its own (the loss is a sum of per-copy terms), so the others train on.
    """
    copies, n = len(generators), len(x)
    diverged: list[str | None] = [None] * copies
    for epoch in range(1, epochs + 1):
        model.train()
        factor = cosine_factor(epoch, epochs) if cosine else 1.0
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(x.device)  # [K, N]
        window: list[torch.Tensor] = []
        for step, start in enumerate(range(0, n, batch_size), 1):
            rows = orders[:, start:start + batch_size]  # [K, B]: each copy's own batch
            logits = model(x[rows])  # [K, B, classes]
            per_example = nn.functional.cross_entropy(logits.flatten(0, 1), y[rows].flatten(),
                                                      label_smoothing=label_smoothing, reduction="none")
            losses = per_example.view(copies, -1).mean(1)
            optimizer.zero_grad()
            losses.sum().backward()
            optimizer.step(factor)
            window.append(losses.detach())
            if len(window) >= read_every or start + batch_size >= n:
                _note_divergence(torch.stack(window), epoch, step - len(window) + 1, diverged)
                window.clear()
    return diverged


def _note_divergence(losses: torch.Tensor, epoch: int, first_step: int, diverged: list[str | None]) -> None:
    """Record, for each copy not yet diverged, the first non-finite loss of the window [steps, K]."""
    bad = ~torch.isfinite(losses)
    if not bad.any():
        return
    for copy_index, steps in enumerate(bad.t().tolist()):
        if diverged[copy_index] is None and any(steps):
            at = steps.index(True)
            diverged[copy_index] = (f"the training loss became {losses[at, copy_index].item()} at epoch {epoch}, "
                                    f"step {first_step + at}; the run diverged. Lower the learning rate")

