"""autoencoder-vs-pca: the PCA estimator against scikit-learn and its own identities, the linear
autoencoder reaching (never beating) PCA's error by Adam and by alternating least squares, and the
experiment end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import run_quick

from dlclassics.experiments.autoencoder_vs_pca import (
    MODELS,
    Config,
    fit_least_squares,
    subspace_angles_deg,
    train_adam,
)
from dlclassics.methods.linear_autoencoder import alternating_least_squares, moments
from dlclassics.methods.mf import single_threaded
from dlclassics.methods.pca import PCA
from dlclassics.models.autoencoder import DenseAutoencoder
from dlclassics.training.autoencoder import reconstruction_error


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
    """Full-batch Adam, the source's optimiser: slowly, but to PCA's error and never below it."""
    torch.manual_seed(0)
    x = _data(n=200, d=16)
    floor = PCA(4).fit(x).reconstruction_error(x)
    model = DenseAutoencoder((16, 4), *MODELS["linear"])
    full_batch = {"batch_size": 0, "schedule": "constant"}
    steps = train_adam(model, x, Config(lr=0.02, epochs=4000, **full_batch), target=1.01 * floor, seed=0)
    assert reconstruction_error(model, x) <= 1.01 * floor * 1.001 and steps < 4000  # reached within 1% of PCA
    # Let it go on: it approaches PCA's error but (Eckart-Young) never goes below it.
    train_adam(model, x, Config(lr=0.005, epochs=1500, **full_batch), target=None, seed=0)
    assert reconstruction_error(model, x) >= floor * (1 - 1e-4)
    angles = subspace_angles_deg(model.decoder[0].weight, PCA(4).fit(x).components_.T)
    assert max(angles) < 5.0  # the decoder's columns span PCA's subspace


def test_moments_are_the_mean_and_the_biased_covariance():
    x = _data(n=500)
    stats = moments(x, batch_size=64)  # several batches, the last one short
    assert torch.allclose(stats.mean, x.double().mean(0))
    assert torch.allclose(stats.covariance, torch.cov(x.double().T, correction=0))


def test_alternating_least_squares_reaches_pca_in_a_few_sweeps():
    """The exact solves land on PCA's error and subspace, the loss they track is the model's real error, and
    each sweep lowers it (every half-step is an exact minimisation)."""
    x = _data(n=400, d=20).double()
    pca = PCA(5).fit(x)
    floor = pca.reconstruction_error(x)
    torch.manual_seed(0)
    start = torch.nn.Linear(20, 5).weight.detach().double()
    fit = alternating_least_squares(moments(x), start, sweeps=200, target=(1 + 1e-9) * floor)
    assert len(fit.losses) < 100
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(fit.losses, fit.losses[1:]))
    reconstructed = (x @ fit.encoder.T + fit.encoder_bias) @ fit.decoder.T + fit.decoder_bias
    error = (reconstructed - x).square().mean().item()
    assert error == pytest.approx(fit.losses[-1], rel=1e-9)  # the covariance-only loss is the real one
    assert floor * (1 - 1e-9) <= error <= floor * (1 + 1e-9)
    assert max(subspace_angles_deg(fit.decoder, pca.components_.T)) < 0.1


def test_least_squares_fit_is_written_into_the_model():
    x = _data(n=300, d=16)
    floor = PCA(4).fit(x).reconstruction_error(x)
    torch.manual_seed(0)
    model = DenseAutoencoder((16, 4), *MODELS["linear"])
    sweeps = fit_least_squares(model, moments(x), sweeps=500, target=1.001 * floor)
    assert sweeps < 500
    assert floor * (1 - 1e-4) <= reconstruction_error(model, x) <= 1.001 * floor * (1 + 1e-4)  # float32 weights


def test_the_source_recipe_stops_at_its_iterations(image_data_dir, tmp_path):
    folder = run_quick("autoencoder-vs-pca", image_data_dir, tmp_path / "runs", "--recipe", "seed")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["linear_iterations_h8"] == metrics["relu_iterations_h16"] == 30  # full batch, all 30 "epochs"
    # Eckart-Young: on its training images, no linear autoencoder beats PCA.
    assert all(metrics[f"linear_train_mse_h{h}"] >= metrics[f"pca_train_mse_h{h}"] * (1 - 1e-4) for h in (8, 16))


def test_autoencoder_vs_pca_quick(image_data_dir, tmp_path):
    folder = run_quick("autoencoder-vs-pca", image_data_dir, tmp_path / "runs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["linear_gap_max"] <= 0.001 * (1 + 1e-4)  # the tuned rule: solved until within 0.1% of PCA...
    assert metrics["linear_iterations_h8"] < 100  # ...and no longer
    assert metrics["relu_iterations_h16"] == 30 * 3  # 300 images in minibatches of 128, 30 epochs
    for name in ("linear", "relu", "pca"):
        assert (folder / "figures" / f"grid_{name}.png").is_file()
    report = (folder / "report.md").read_text()
    assert "max_angle_deg" in report and "linear AE: largest test MSE above PCA's" in report


@pytest.mark.slow
def test_linear_autoencoder_is_within_1_percent_of_pca_on_all_of_fashion_mnist(tmp_path):
    """The raised goal (issue 21): all 60,000 training images, linear AE within 1% of PCA's test error at
    h = 32, 64 and 128 (about 45 s on 2 cores)."""
    from dlclassics.cli import main
    from dlclassics.data.images import image_spec
    from dlclassics.data.registry import find_folder

    if find_folder(image_spec("fashion-mnist"), None) is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    assert main(["run", "autoencoder-vs-pca", "--dataset", "fashion-mnist", "--quiet", "--no-site",
                 "--out", str(tmp_path)]) == 0
    (folder,) = (tmp_path / "autoencoder-vs-pca").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["linear_test_gap_max"] <= 0.01
    assert all(metrics[f"linear_train_mse_h{h}"] >= metrics[f"pca_train_mse_h{h}"] * (1 - 1e-4) for h in (32, 64, 128))
