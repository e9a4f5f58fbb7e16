"""S4: mnist-classifier, vae, latent-optimization and vae-loglik: model pieces, estimators, smoke runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import run_quick
from dlclassics.models import vae as V


def test_mnist_classifier_quick(image_data_dir, tmp_path):
    folder = run_quick("mnist-classifier", image_data_dir, tmp_path / "runs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.3
    for figure in ("loss", "accuracy", "confusion"):
        assert (folder / "figures" / f"{figure}.png").is_file()


def test_vae_quick_saves_snapshots(image_data_dir, tmp_path):
    folder = run_quick("vae", image_data_dir, tmp_path / "runs")
    assert {p.name for p in folder.glob("model_epoch_*.pt")} == {"model_epoch_1.pt", "model_epoch_2.pt"}
    for figure in ("loss", "recon_train", "recon_val", "samples"):
        assert (folder / "figures" / f"{figure}.png").is_file()


def test_latent_optimization_quick_trains_both_and_from_run(image_data_dir, tmp_path):
    folder = run_quick("latent-optimization", image_data_dir, tmp_path / "runs")
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("vae_between_within_ratio", "lo_between_within_ratio", "vae_sample_diversity", "lo_sample_diversity"):
        assert math.isfinite(metrics[key])
    assert "## Diagnosis" in (folder / "report.md").read_text()
    vae_run = run_quick("vae", image_data_dir, tmp_path / "vae-runs")
    again = run_quick("latent-optimization", image_data_dir, tmp_path / "runs2", "--from-run", str(vae_run))
    assert (again / "figures" / "samples.png").is_file()
