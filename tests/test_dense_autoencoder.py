"""dense-autoencoder: the source's exact model size, the mirror-image builder, and a smoke run."""

import json

import torch
from conftest import run_quick

from dlclassics.models.autoencoder import DenseAutoencoder
from dlclassics.training.autoencoder import reconstruction_error


def test_source_architecture_has_218192_parameters_and_outputs_in_unit_range():
    model = DenseAutoencoder((784, 128, 64))
    assert sum(p.numel() for p in model.parameters()) == 218_192
    codes = model.encode(torch.randn(5, 784))
    assert codes.shape == (5, 64) and (codes >= 0).all()  # ReLU on the bottleneck, as in the source
    out = model(torch.randn(5, 784))
    assert out.shape == (5, 784) and ((out > 0) & (out < 1)).all()


def test_linear_autoencoder_variant_and_reconstruction_error():
    model = DenseAutoencoder((10, 3), activation="identity", output="identity")
    layers = [type(m).__name__ for m in (*model.encoder, *model.decoder)]
    assert layers == ["Linear", "Identity", "Linear", "Identity"]
    x = torch.randn(7, 10)
    expected = torch.nn.functional.mse_loss(model(x), x).item()
    assert abs(reconstruction_error(model, x, batch_size=3) - expected) < 1e-6


def test_dense_autoencoder_quick(image_data_dir, tmp_path):
    folder = run_quick("dense-autoencoder", image_data_dir, tmp_path / "runs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["parameters"] == 218_192 and metrics["batches_per_epoch"] == 4  # 500 images / 128
    history = (folder / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs
    for figure in ("loss", "reconstructions", "reconstructions_per_class", "codes_2d"):
        assert (folder / "figures" / f"{figure}.png").is_file()
