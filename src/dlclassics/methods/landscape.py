"""Loss landscapes: planes through parameter space and the loss evaluated on many points at once.

A point is a flat parameter vector in the order of `model.parameters()` (what `engine.flat_parameters`
and the `fashion-mlp` trajectory store). Instead of copying each point into the model and running
it (S1's `load_params_into_model` loop), a chunk of points is evaluated in one call:
`torch.func.functional_call` runs the model with parameters given as tensors, and `torch.vmap` maps
it over the chunk's leading axis, so a chunk of C points becomes batched matrix products. On a
plane or a line (every grid here) the first Linear layer is linear in the point and is computed once
(`losses_on_plane`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, vmap

from dlclassics.methods.pca import PCA


def unflatten(model: nn.Module, points: torch.Tensor) -> dict[str, torch.Tensor]:
    """Points [C, P] -> {parameter name: [C, *shape]} (views, no copies)."""
    named = list(model.named_parameters())
    pieces = points.split([p.numel() for _, p in named], dim=1)
    return {name: piece.reshape(len(points), *p.shape) for (name, p), piece in zip(named, pieces)}


def _per_point(module: nn.Module, targets: torch.Tensor) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """(parameters of one point, inputs) -> (mean cross-entropy, accuracy) of `module`, for vmap."""
    buffers = dict(module.named_buffers())  # BatchNorm running statistics are shared by every point

    def one_point(params: dict[str, torch.Tensor], inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(module, (params, buffers), (inputs,))  # [n, classes]
        return nn.functional.cross_entropy(logits, targets), (logits.argmax(1) == targets).float().mean()

    return one_point


def losses_at(model: nn.Module, points: torch.Tensor | Iterator[torch.Tensor], inputs: torch.Tensor,
              targets: torch.Tensor, chunk: int = 32) -> dict[str, torch.Tensor]:
    """Mean cross-entropy and accuracy of the model at each point, in eval mode.

    `points` is a tensor [N, P] (split into chunks of `chunk`) or an iterator of chunks [C, P], so a
    large grid never has to exist as one [N, P] tensor. Returns {"loss": [N], "accuracy": [N]}.
    """
    model.eval()
    evaluate = vmap(_per_point(model, targets), in_dims=(0, None))  # inputs shared by all points
    chunks = points.split(chunk) if isinstance(points, torch.Tensor) else points
    with torch.no_grad():
        results = [evaluate(unflatten(model, block), inputs) for block in chunks]
    return {"loss": torch.cat([r[0] for r in results]), "accuracy": torch.cat([r[1] for r in results])}


def losses_on_plane(model: nn.Module, origin: torch.Tensor, directions: torch.Tensor, coefficients: torch.Tensor,
                    inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 32) -> dict[str, torch.Tensor]:
    """`losses_at` the points origin + coefficients @ directions (origin [P], directions [k, P],
    coefficients [N, k]), with the first layer done once instead of once per point.

    A first Linear layer's output x W^T + b is linear in (W, b), so on a plane it is
    z1(c) = z1(origin) + sum_k c_k z1(direction_k) with z1(d) = x W_d^T + b_d: k + 1 products with the
    inputs in total, and each point only pays for the layers after the first. For S1's 784-40-40-40-10
    the first layer holds 89% of the weights. Other models fall back to `losses_at`."""
    first = model[0] if isinstance(model, nn.Sequential) and isinstance(model[0], nn.Linear) else None
    if first is None:
        return losses_at(model, plane_chunks(origin, directions, coefficients, chunk), inputs, targets, chunk)
    model.eval()
    rest = model[1:]  # keeps the original names ("1.weight", ...), so `unflatten` and functional_call match
    n_weight, n_first = first.weight.numel(), sum(p.numel() for p in first.parameters())

    def first_layer(flat: torch.Tensor) -> torch.Tensor:  # [P] -> [n, width]
        bias = flat[n_weight:n_first] if first.bias is not None else None
        return nn.functional.linear(inputs, flat[:n_weight].view_as(first.weight), bias)

    evaluate = vmap(_per_point(rest, targets), in_dims=(0, 0))
    losses, accuracies = [], []
    with torch.no_grad():
        base = first_layer(origin)  # [n, width]
        along = torch.stack([first_layer(direction) for direction in directions])  # [k, n, width]
        for block, points in zip(coefficients.split(chunk), plane_chunks(origin, directions, coefficients, chunk)):
            hidden = base + torch.einsum("ck,knw->cnw", block, along)  # [C, n, width]
            loss, accuracy = evaluate(unflatten(rest, points[:, n_first:]), hidden)
            losses.append(loss)
            accuracies.append(accuracy)
    return {"loss": torch.cat(losses), "accuracy": torch.cat(accuracies)}


def auto_chunk(model: nn.Module, examples: int, budget_bytes: float = 16e6) -> int:
    """Points per batched call such that one layer's activations [C, examples, widest] fit the budget:
    wide networks get small chunks (their per-point products are already large), narrow ones big ones."""
    widest = max(p.shape[0] for p in model.parameters())
    return max(1, int(budget_bytes // (4 * examples * widest)))


def plane_chunks(origin: torch.Tensor, directions: torch.Tensor, coefficients: torch.Tensor,
                 chunk: int = 32) -> Iterator[torch.Tensor]:
    """Points origin + coefficients @ directions, chunk by chunk: origin [P], directions [k, P],
    coefficients [N, k] -> chunks [C, P]."""
    for block in coefficients.split(chunk):
        yield origin + block @ directions


def pca_plane(trajectory: torch.Tensor) -> dict[str, torch.Tensor]:
    """PCA with 2 components of a trajectory [T, P] (S1 uses sklearn's PCA; ours has its sign convention).

    Returns the mean [P], the unit directions [2, P], the trajectory's coordinates [T, 2] in the
    plane (sklearn's `transform`) and the fraction of variance each component explains [2]."""
    if len(trajectory) < 2:
        raise ValueError("a PCA plane needs a trajectory of at least 2 distinct points")
    pca = PCA(2).fit(trajectory.double())  # T is small; double keeps the tiny late steps accurate
    mean, directions = trajectory.mean(0), pca.components_.float()
    return {"mean": mean, "directions": directions, "coordinates": (trajectory - mean) @ directions.T,
            "explained": pca.explained_variance_ratio_.float()}


def grid_axes(coordinates: torch.Tensor, points: int = 25, margin: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """S1's grid: per axis, `points` values spanning the coordinates [T, 2] plus `margin` of their range."""
    low, high = coordinates.min(0).values, coordinates.max(0).values
    pad = margin * (high - low)
    return torch.linspace(low[0] - pad[0], high[0] + pad[0], points), torch.linspace(low[1] - pad[1],
                                                                                    high[1] + pad[1], points)


def mesh(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Coefficients [len(ys) * len(xs), 2] in row-major order of a [len(ys), len(xs)] grid (meshgrid 'xy')."""
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def filter_normalized_direction(model: nn.Module, weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random direction [P] scaled filter by filter to the norms of `weights` [P] (Li et al. 2018).

    Each filter (one output unit's row of a Linear weight, one output channel of a conv kernel) of a
    Gaussian direction is rescaled to the norm of the same filter in the weights, so the plot's axes
    are in units of the network's own scale and different networks can be compared. Directions for
    biases and BatchNorm parameters (tensors of one dimension) are zero, as in the paper."""
    pieces = []
    for piece, (_, parameter) in zip(weights.split([p.numel() for p in model.parameters()]),
                                     model.named_parameters()):
        if parameter.ndim <= 1:
            pieces.append(torch.zeros_like(piece))
            continue
        filters = piece.reshape(parameter.shape[0], -1)  # [out, fan_in]
        direction = torch.randn(filters.shape, generator=generator)
        direction *= filters.norm(dim=1, keepdim=True) / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        pieces.append(direction.reshape(-1))
    return torch.cat(pieces)
