"""Synthetic linear-regression data of S3's first notebook, shared by `least-squares` and
`optimizers-noisy`.

The source draws A ~ U(-1, 1) of shape [1000, 10], theta_true = 1, y = A theta_true + N(0, 0.1^2)
and 50 test rows the same way. `condition > 1` (ours, not the source's) mixes the features with a
fixed matrix L = diag(s) Q whose condition number is exactly `condition` (s log-spaced from 1 down
to 1/condition, Q a random rotation), so rows x = z L stay i.i.d. and train and test share the
same ill-conditioning; cond(A) is then about `condition` times cond(Z) (~1.2).
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class LinearData:
    """Train/test design matrices [N, D], targets [N, 1] and the true parameters [D, 1] (float64)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    theta_true: torch.Tensor


def make_linear_data(generator: torch.Generator, n_train: int = 1000, n_test: int = 50, dim: int = 10,
                     noise: float = 0.1, condition: float = 1.0) -> LinearData:
    """S3's data (float64, like numpy); `condition` > 1 makes the features ill-conditioned."""
    def uniform(rows: int) -> torch.Tensor:
        return torch.rand(rows, dim, generator=generator, dtype=torch.float64) * 2 - 1

    train_z, test_z = uniform(n_train), uniform(n_test)
    train_noise = torch.randn(n_train, 1, generator=generator, dtype=torch.float64) * noise
    test_noise = torch.randn(n_test, 1, generator=generator, dtype=torch.float64) * noise
    if condition > 1:
        rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        scales = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), dim, dtype=torch.float64)
        mixing = torch.diag(scales) @ rotation  # [D, D], singular values = scales
        train_z, test_z = train_z @ mixing, test_z @ mixing
    theta_true = torch.ones(dim, 1, dtype=torch.float64)
    return LinearData(train_z, train_z @ theta_true + train_noise, test_z, test_z @ theta_true + test_noise,
                      theta_true)
