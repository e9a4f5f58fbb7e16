"""loss-landscape: batched grid evaluation equals the model's own loss, the PCA plane matches
sklearn's PCA, filter normalisation does what Li et al. say, and the experiment runs both ways."""

import json

import numpy as np
import pytest
import torch
from conftest import run_quick

from dlclassics.engine import flat_parameters
from dlclassics.methods import landscape
from dlclassics.models.mlp import mlp


@pytest.fixture
def small_problem():
    torch.manual_seed(0)
    model = mlp(20, [8, 6], 4)
    return model, torch.randn(50, 20), torch.randint(0, 4, (50,))


def own_loss(model, weights, x, y):
    torch.nn.utils.vector_to_parameters(weights, model.parameters())
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x), y).item()


def test_loss_at_the_grid_point_of_the_final_weights_equals_the_models_own_loss(small_problem):
    model, x, y = small_problem
    final = flat_parameters(model)
    directions = torch.stack([landscape.filter_normalized_direction(model, final, torch.Generator().manual_seed(s))
                              for s in (1, 2)])
    axis = torch.linspace(-1, 1, 7)
    grid = landscape.losses_at(model, landscape.plane_chunks(final, directions, landscape.mesh(axis, axis), 5), x, y)
    centre = grid["loss"].reshape(7, 7)[3, 3].item()
    assert centre == pytest.approx(own_loss(model, final, x, y), abs=1e-6)


def test_batched_losses_equal_the_per_point_loop(small_problem):
    model, x, y = small_problem
    points = flat_parameters(model) + 0.3 * torch.randn(9, sum(p.numel() for p in model.parameters()))
    batched = landscape.losses_at(model, points, x, y, chunk=4)["loss"]
    looped = torch.tensor([own_loss(model, point, x, y) for point in points])
    assert torch.allclose(batched, looped, atol=1e-5)


def test_pca_plane_matches_sklearn_and_reconstructs_a_three_point_trajectory():
    from sklearn.decomposition import PCA

    trajectory = torch.randn(3, 40)
    plane = landscape.pca_plane(trajectory)
    reference = PCA(n_components=2).fit(trajectory.numpy())
    assert np.allclose(plane["coordinates"].numpy(), reference.transform(trajectory.numpy()), atol=1e-4)
    assert np.allclose(plane["explained"].numpy(), reference.explained_variance_ratio_, atol=1e-5)
    # three points always lie in their own 2D PCA plane
    rebuilt = plane["mean"] + plane["coordinates"] @ plane["directions"]
    assert torch.allclose(rebuilt, trajectory, atol=1e-4)


def test_grid_axes_span_the_trajectory_with_margins():
    xs, ys = landscape.grid_axes(torch.tensor([[0.0, 10.0], [1.0, 20.0]]), points=5, margin=0.2)
    assert xs[0].item() == pytest.approx(-0.2) and xs[-1].item() == pytest.approx(1.2) and len(xs) == 5
    assert ys[0].item() == pytest.approx(8.0) and ys[-1].item() == pytest.approx(22.0)


def test_filter_normalized_direction_matches_filter_norms_and_zeroes_biases(small_problem):
    model, _, _ = small_problem
    weights = flat_parameters(model)
    direction = landscape.filter_normalized_direction(model, weights, torch.Generator().manual_seed(0))
    for d, w, p in zip(direction.split([p.numel() for p in model.parameters()]),
                       weights.split([p.numel() for p in model.parameters()]), model.parameters()):
        if p.ndim == 1:
            assert (d == 0).all()
        else:
            rows = p.shape[0]
            assert torch.allclose(d.reshape(rows, -1).norm(dim=1), w.reshape(rows, -1).norm(dim=1), rtol=1e-5)


def test_loss_landscape_quick_trains_then_reuses_its_trajectory(image_data_dir, tmp_path):
    first = run_quick("loss-landscape", image_data_dir, tmp_path / "trained")
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["centre_loss_gap"] < 1e-4 and metrics["trajectory_points"] == 3
    for figure in ("pca_surface", "pca_contour", "filter_normalized", "interpolation"):
        assert (first / "figures" / f"{figure}.png").is_file()
    for grid in ("pca_surface", "filter_normalized"):
        assert (first / "figures" / f"{grid}.npz").is_file() and (first / "figures" / f"{grid}.csv").is_file()
    again = run_quick("loss-landscape", image_data_dir, tmp_path / "reused", "--from-run", str(first))
    reused = json.loads((again / "metrics.json").read_text())
    assert reused["final_loss_model"] == pytest.approx(metrics["final_loss_model"], abs=1e-6)
    assert "train_time_s" not in reused  # nothing trained: no training time


def test_plane_shortcut_for_the_first_layer_equals_the_generic_evaluation(small_problem):
    model, x, y = small_problem
    origin = flat_parameters(model)
    directions = 0.5 * torch.randn(2, len(origin))
    coefficients = torch.randn(11, 2)
    shortcut = landscape.losses_on_plane(model, origin, directions, coefficients, x, y, chunk=4)
    generic = landscape.losses_at(model, landscape.plane_chunks(origin, directions, coefficients, 4), x, y)
    assert torch.allclose(shortcut["loss"], generic["loss"], atol=1e-5)
    assert torch.equal(shortcut["accuracy"], generic["accuracy"])


def test_loss_landscape_reads_a_fashion_mlp_run(image_data_dir, tmp_path):
    producer = run_quick("fashion-mlp", image_data_dir, tmp_path / "mlp")
    folder = run_quick("loss-landscape", image_data_dir, tmp_path / "landscape", "--from-run", str(producer))
    metrics = json.loads((folder / "metrics.json").read_text())
    saved = torch.load(producer / "trajectory.pt", weights_only=True)
    assert metrics["parameters"] == saved["parameters"].shape[1]
    assert metrics["trajectory_points"] == len(saved["parameters"]) and metrics["centre_loss_gap"] < 1e-4


def test_missing_trajectory_is_one_clear_error(image_data_dir, tmp_path, capsys):
    from dlclassics.cli import main

    code = main(["run", "loss-landscape", "--quick", "--quiet", "--data-dir", str(image_data_dir),
                 "--out", str(tmp_path / "runs"), "--from-run", str(tmp_path)])
    assert code == 2 and "has no trajectory.pt" in capsys.readouterr().err  # a bad --from-run: exit 2 everywhere
