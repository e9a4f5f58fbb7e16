"""autoencoder-vs-pca: the PCA estimator against scikit-learn and its own identities, the linear
autoencoder reaching (never beating) PCA's error, and the experiment end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import run_quick

from dlclassics.experiments.autoencoder_vs_pca import (
    MODELS,
    subspace_angles_deg,
    train_full_batch,
)
from dlclassics.methods.mf import single_threaded
from dlclassics.methods.pca import PCA
from dlclassics.models.autoencoder import DenseAutoencoder


@pytest.fixture(autouse=True)
def _one_thread():
    """Full-batch steps on small tensors: on a busy 2-core machine a second thread only waits."""
    with single_threaded():
        yield


def _data(n: int = 300, d: int = 20, seed: int = 0) -> torch.Tensor:
    """Correlated data: a few strong directions plus isotropic noise, shifted off the origin."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator) * torch.logspace(0, -1.5, d)[:, None]
    return torch.randn(n, d, generator=generator) @ mixing + 3.0


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA as SklearnPCA

    x = _data().double()
    ours = PCA(5).fit(x)
    theirs = SklearnPCA(5, svd_solver="full").fit(x.numpy())
    assert np.allclose(ours.explained_variance_.numpy(), theirs.explained_variance_)
    assert np.allclose(ours.explained_variance_ratio_.numpy(), theirs.explained_variance_ratio_)
    assert np.allclose(np.abs(ours.components_.numpy()), np.abs(theirs.components_))  # signs are conventions
    assert np.allclose(ours.inverse_transform(ours.transform(x)).numpy(),
                       theirs.inverse_transform(theirs.transform(x.numpy())))


def test_pca_error_is_the_discarded_variance_and_signs_are_fixed():
    x = _data().double()
    full = PCA(20).fit(x)
    for k in (1, 4, 19):
        pca = PCA(k).fit(x)
        discarded = full.singular_values_[k:].square().sum() / x.numel()
        assert pca.reconstruction_error(x) == pytest.approx(discarded.item(), rel=1e-9)
        largest = pca.components_.abs().argmax(1)
        assert (pca.components_[torch.arange(k), largest] > 0).all()
    assert torch.allclose(PCA(4).fit(-x).components_, PCA(4).fit(x).components_)  # same sign, whatever the data's


def test_pca_noise_variance_is_the_mean_discarded_eigenvalue_of_all_directions():
    """Probabilistic PCA's residual averages the d - k discarded eigenvalues, the zero ones included when
    there are fewer samples than features (scikit-learn's averages over min(n, d) - k only)."""
    for n in (300, 12):  # more samples than the 20 features, then fewer
        x = _data(n=n).double()
        eigenvalues = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)  # largest first, n - 1 in the denominator
        for k in (1, 4, 10):
            assert PCA(k).fit(x).noise_variance_ == pytest.approx(eigenvalues[k:].clamp_min(0).mean().item(),
                                                                  rel=1e-9, abs=1e-12)
    assert PCA(12).fit(_data(n=12)).noise_variance_ == pytest.approx(0.0, abs=1e-12)  # nothing but zeros left


def test_pca_refuses_more_components_than_the_data_has():
    with pytest.raises(ValueError, match="between 1 and min"):
        PCA(21).fit(_data())


def test_linear_autoencoder_reaches_pca_error_but_not_below():
    torch.manual_seed(0)
    x = _data(n=200, d=16)
    floor = PCA(4).fit(x).reconstruction_error(x)
    model = DenseAutoencoder((16, 4), *MODELS["linear"])
    losses = train_full_batch(model, x, lr=0.02, iterations=4000, target=1.01 * floor)
    assert losses[-1] <= 1.01 * floor and len(losses) < 4000  # reached within 1% of PCA
    # Let it go on: it approaches PCA's error but (Eckart-Young) never goes below it.
    more = train_full_batch(model, x, lr=0.005, iterations=1500, target=None)
    assert min(more) >= floor * (1 - 1e-4)
    angles = subspace_angles_deg(model.decoder[0].weight, PCA(4).fit(x).components_.T)
    assert max(angles) < 5.0  # the decoder's columns span PCA's subspace


def test_the_source_recipe_stops_at_its_iterations(image_data_dir, tmp_path):
    folder = run_quick("autoencoder-vs-pca", image_data_dir, tmp_path / "runs", "--recipe", "seed")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["linear_iterations_h8"] == metrics["relu_iterations_h16"] == 30  # target_gap 0: all iterations
    # Eckart-Young: on its training images, no linear autoencoder beats PCA.
    assert all(metrics[f"linear_train_mse_h{h}"] >= metrics[f"pca_train_mse_h{h}"] * (1 - 1e-4) for h in (8, 16))


def test_autoencoder_vs_pca_quick(image_data_dir, tmp_path):
    folder = run_quick("autoencoder-vs-pca", image_data_dir, tmp_path / "runs", "--set", "iterations=300",
                       "--set", "target_gap=1.5")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["linear_gap_max"] <= 1.5  # the tuned rule: trained until within target_gap of PCA...
    assert metrics["linear_iterations_h8"] < 300  # ...and no longer
    assert all(metrics[f"relu_iterations_h{h}"] <= metrics[f"linear_iterations_h{h}"] for h in (8, 16))  # same budget
    for name in ("linear", "relu", "pca"):
        assert (folder / "figures" / f"grid_{name}.png").is_file()
    assert "max_angle_deg" in (folder / "report.md").read_text()
