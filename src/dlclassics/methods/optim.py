"""SGD, Adam and Adagrad written from scratch, a few lines of update equations each.

They update a plain tensor in place from a gradient the caller computed (no autograd, no
nn.Parameter), so one optimiser can drive a whole batch of independent problems at once: theta of
any shape [..., D] with the same-shaped gradient. `tests/test_optim.py` checks that, fed the same
gradients, they follow `torch.optim.SGD`, `Adam` and `Adagrad` to 1e-6. Used by the optimiser study
(`experiments/optimizers_noisy.py`), whose point is to see these updates, not call a library.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Optimizer(Protocol):
    def step(self, theta: torch.Tensor, grad: torch.Tensor) -> None:
        """Move `theta` in place by one update computed from `grad` (same shape)."""


class SGD:
    """theta <- theta - lr g."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def step(self, theta: torch.Tensor, grad: torch.Tensor) -> None:
        theta.sub_(grad, alpha=self.lr)


class Adam:
    """Kingma & Ba (2015), Algorithm 1, as in S3's notebook:
    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
    theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.t = 0
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def step(self, theta: torch.Tensor, grad: torch.Tensor) -> None:
        if self.m is None or self.v is None:
            self.m, self.v = torch.zeros_like(grad), torch.zeros_like(grad)
        self.t += 1
        self.m.lerp_(grad, 1 - self.beta1)  # m + (1 - b1)(g - m) = b1 m + (1 - b1) g
        self.v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        denominator = (self.v / (1 - self.beta2 ** self.t)).sqrt_().add_(self.eps)
        theta.addcdiv_(self.m, denominator, value=-self.lr / (1 - self.beta1 ** self.t))


class Adagrad:
    """Duchi et al. (2011): s <- s + g^2,  theta <- theta - lr g / (sqrt(s) + eps).
    The source left it unimplemented; eps = 1e-10 is torch's default."""

    def __init__(self, lr: float, eps: float = 1e-10) -> None:
        self.lr, self.eps = lr, eps
        self.squared_sum: torch.Tensor | None = None

    def step(self, theta: torch.Tensor, grad: torch.Tensor) -> None:
        if self.squared_sum is None:
            self.squared_sum = torch.zeros_like(grad)
        self.squared_sum.addcmul_(grad, grad)
        theta.addcdiv_(grad, self.squared_sum.sqrt().add_(self.eps), value=-self.lr)


OPTIMIZERS: dict[str, type] = {"sgd": SGD, "adam": Adam, "adagrad": Adagrad}


def make(name: str, lr: float) -> Optimizer:
    """A fresh optimiser (empty state) by name, with its default hyperparameters besides `lr`."""
    return OPTIMIZERS[name](lr)
