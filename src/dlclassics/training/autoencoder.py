"""Training and measuring autoencoders on their reconstruction error, for `dense-autoencoder` (trained with
`fit`) and `autoencoder-vs-pca` (its own loops: exact least squares for the linear autoencoder, from
`methods.linear_autoencoder`, and Adam), which both report the test error per pixel."""

from __future__ import annotations

import torch
from torch import nn

from dlclassics.engine import batched_outputs


def reconstruction_step(model: nn.Module, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """`fit` step: mean squared error between the input and its reconstruction."""
    (inputs,) = batch[:1]
    return {"loss": nn.functional.mse_loss(model(inputs), inputs)}


def reconstruction_error(model: nn.Module, inputs: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean squared error per pixel over `inputs` [N, D], in eval mode, batched."""
    return nn.functional.mse_loss(batched_outputs(model, inputs, batch_size), inputs).item()
