"""loss-landscape: our batched grid evaluation vs S1's per-point loop, in one process.

The source (S1 Problem 3, `plotPath`) fills its 25x25 grid point by point: sklearn's
`inverse_transform` of (x, y) to a flat parameter vector, `load_params_into_model` copying it into the
model parameter by parameter, then `compute_loss` over a DataLoader of a 2,500-example `Subset`
(batch 256). Ours evaluates chunks of points at once with `torch.func.functional_call` + `torch.vmap`
and, since the grid is a plane, computes the first Linear layer's output once for the plane's origin
and each direction (`landscape.losses_on_plane`); the generic vmap without that step is shown too.
A row keeps the source's per-point copy but feeds the 2,500 examples as one in-memory tensor,
to show how much is the DataLoader and how much the batching over points.

The model is S1's best MLP (784-40-40-40-10); the trajectory is a synthetic 51-point random walk
(timing does not depend on the values). Images are Fashion-MNIST's when found, random otherwise.
The per-point loops are timed on `--source-points` grid points and scaled to 625 (each point costs
the same). Timings on a shared machine are noisy.

    python benchmarks/bench_landscape.py [--source-points 125] [--chunk 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from dlclassics.data.transforms import flat_float
from dlclassics.engine import flat_parameters
from dlclassics.errors import RunError
from dlclassics.methods import landscape
from dlclassics.models.mlp import mlp


def load_params_into_model(model, all_params):
    """The source's function, verbatim."""
    current_pos = 0
    for param in model.parameters():
        if param.requires_grad:
            num_params = param.numel()
            param.data.copy_(all_params[current_pos: current_pos + num_params].view(param.size()))
            current_pos += num_params


def compute_loss(model, loader, criterion):
    """The source's function, verbatim (the loss of each batch weighted by its size)."""
    running_loss = 0.0
    for X, y in loader:
        with torch.no_grad():
            logits = model(X)
            loss = criterion(logits, y)
            running_loss += loss.item() * X.size(0)
    return running_loss / len(loader.dataset)


def source_grid(model, pca, subset_loader, coefficients: np.ndarray) -> np.ndarray:
    """The source's `lossFunction` applied to each grid point in turn."""
    criterion = nn.CrossEntropyLoss()
    out = []
    for x1, x2 in coefficients:
        point_params = pca.inverse_transform(np.array([[x1, x2]]))[0]
        load_params_into_model(model, torch.from_numpy(point_params).float())
        out.append(compute_loss(model, subset_loader, criterion))
    return np.array(out)


def in_memory_grid(model, pca, x: torch.Tensor, y: torch.Tensor, coefficients: np.ndarray) -> np.ndarray:
    """The per-point copy of the source, but the 2,500 examples as one tensor (no DataLoader)."""
    out = []
    with torch.no_grad():
        for x1, x2 in coefficients:
            load_params_into_model(model, torch.from_numpy(pca.inverse_transform(np.array([[x1, x2]]))[0]).float())
            out.append(nn.functional.cross_entropy(model(x), y).item())
    return np.array(out)


def images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from dlclassics.data.images import load_images

        data = load_images("fashion-mnist")
        return flat_float(data.train_x, 0.5), data.train_y, "Fashion-MNIST train split"
    except RunError:
        return torch.rand(n, 784, generator=generator) - 0.5, torch.randint(0, 10, (n,), generator=generator), "random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-points", type=int, default=125, help="grid points the per-point loops are timed on")
    parser.add_argument("--chunk", type=int, default=0, help="points per batched call (ours; 0 = auto)")
    parser.add_argument("--grid", type=int, default=25)
    parser.add_argument("--subset", type=int, default=2500)
    args = parser.parse_args()
    from sklearn.decomposition import PCA

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = mlp(784, [40, 40, 40], 10)
    start = flat_parameters(model)
    steps = 0.01 * torch.randn(50, len(start), generator=generator)
    trajectory = torch.cat([start[None], start + steps.cumsum(0)])  # [51, P]
    train_x, train_y, source = images(60_000, generator)
    chosen = torch.randperm(len(train_x), generator=generator)[:args.subset]
    x, y = train_x[chosen], train_y[chosen]
    subset_loader = DataLoader(Subset(TensorDataset(train_x, train_y), chosen.tolist()), batch_size=256)

    pca = PCA(n_components=2)
    coordinates = pca.fit_transform(trajectory.numpy())
    xs, ys = landscape.grid_axes(torch.from_numpy(coordinates).float(), args.grid, 0.2)
    coefficients = landscape.mesh(xs, ys)  # [grid^2, 2]
    n_points = len(coefficients)
    mean, directions = torch.from_numpy(pca.mean_).float(), torch.from_numpy(pca.components_).float()
    args.chunk = args.chunk or landscape.auto_chunk(model, len(x))

    landscape.losses_at(model, landscape.plane_chunks(mean, directions, coefficients[:args.chunk], args.chunk), x, y)
    started = time.perf_counter()
    generic = landscape.losses_at(model, landscape.plane_chunks(mean, directions, coefficients, args.chunk), x, y,
                                  args.chunk)["loss"].numpy()
    generic_s = time.perf_counter() - started
    started = time.perf_counter()
    ours = landscape.losses_on_plane(model, mean, directions, coefficients, x, y, args.chunk)["loss"].numpy()
    ours_s = time.perf_counter() - started

    sample = coefficients[torch.linspace(0, n_points - 1, min(args.source_points, n_points)).long()].numpy()
    rows = []
    for name, evaluate in (("source: per-point copy + DataLoader", lambda c: source_grid(model, pca, subset_loader, c)),
                           ("per-point copy, in-memory batch", lambda c: in_memory_grid(model, pca, x, y, c))):
        started = time.perf_counter()
        values = evaluate(sample)
        seconds = (time.perf_counter() - started) * n_points / len(sample)
        picked = ours[torch.linspace(0, n_points - 1, len(sample)).long().numpy()]
        rows.append((name, seconds, float(np.abs(values - picked).max())))
    rows.append((f"torch.func + vmap over points, chunk {args.chunk}", generic_s, float(np.abs(generic - ours).max())))
    rows.append(("ours: + first layer once per plane", ours_s, 0.0))

    print(f"{n_points}-point grid, {len(x):,} examples ({source}), MLP 784-40-40-40-10 "
          f"({len(start):,} parameters), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"per-point loops timed on {len(sample)} points and scaled to {n_points}\n")
    print(f"{'method':<42} {'seconds':>9} {'ms/point':>9} {'vs ours':>8} {'max |loss diff|':>16}")
    for name, seconds, diff in rows:
        print(f"{name:<42} {seconds:9.2f} {1000 * seconds / n_points:9.2f} {seconds / ours_s:7.1f}x {diff:16.2e}")


if __name__ == "__main__":
    main()
