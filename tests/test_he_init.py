"""he-init: the two identities hold within Monte-Carlo error, fail when an assumption is broken,
and He keeps the pre-activation variance flat across 50 layers where a fixed small std does not."""

import json

import torch
from conftest import run_quick

from dlclassics.experiments import he_init


def test_identities_hold_within_standard_errors_and_the_counter_checks_fail():
    generator = torch.Generator().manual_seed(0)
    identity1 = he_init.check_identity1(256, 8000, generator)
    identity2 = he_init.check_identity2(256, 8000, generator)
    assert all(abs(row["z"]) < 4 for row in identity1[:2] + identity2[:2])
    assert abs(identity1[2]["z"]) > 10  # Var[x] in place of E[x^2] is measurably wrong
    assert abs(identity2[2]["z"]) > 10  # a bias breaks Var[z] = 2 E[ReLU(z)^2]


def test_he_variance_stays_within_20_percent_across_50_layers_and_fixed_std_does_not():
    generator = torch.Generator().manual_seed(0)
    he = he_init.ensemble_variance("relu", "he", 512, 50, 1024, 0.01, generator)
    fixed = he_init.ensemble_variance("relu", "fixed", 512, 50, 1024, 0.01, generator)
    assert ((he / he[0] - 1).abs() <= 0.2).all()
    assert not ((fixed / fixed[0] - 1).abs() <= 0.2).all()
    assert he_init.blowup_depth(he / he[0]) is None and he_init.blowup_depth(fixed / fixed[0]) == 3


def test_exact_layer_sampling_agrees_with_a_real_network_at_shallow_depth():
    generator = torch.Generator().manual_seed(1)
    sampled = he_init.ensemble_variance("tanh", "xavier", 256, 4, 2048, 0.01, generator)
    real = he_init.network_variance("tanh", "xavier", 256, 4, 2048, 0.01, generator)
    assert torch.allclose(sampled, real, rtol=0.1)


def test_he_init_quick(tmp_path):
    folder = run_quick("he-init", tmp_path / "no-data", tmp_path / "runs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["blowup_layer_he_relu"] is None and metrics["blowup_layer_fixed_relu"] is not None
    assert (folder / "figures" / "variance_depth.png").is_file()
    assert (folder / "figures" / "variance_depth.npz").is_file()
