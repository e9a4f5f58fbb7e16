"""The shared training loop: it learns, guards against NaN, resumes exactly, decays weights only."""

import json

import pytest
import torch
from torch import nn

from conftest import run_quick
from dlclassics.cli import main
from dlclassics.engine import fit, flat_parameters, make_optimizer, seed_everything, weight_decay_groups
from dlclassics.errors import RunError


def _problem(seed=0, n=256):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=generator)
    y = (x[:, :3].sum(1) > 0).long()
    return x, y


def _model():
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))


def _train(epochs, checkpoint=None, resume=False):
    generator = seed_everything(3)
    model = _model()
    optimizer = make_optimizer("sgd", model, 0.1, 1e-3, momentum=0.9)
    result = fit(model, _problem(), optimizer=optimizer, epochs=epochs, batch_size=32, generator=generator,
                 checkpoint=checkpoint, resume=resume, quiet=True, snapshot_parameters=True)
    return model, result


def test_training_changes_weights_and_learns():
    seed_everything(0)
    model = _model()
    before = flat_parameters(model)
    _, result = _train(5)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["train_accuracy"] > 0.85
    assert not torch.equal(before, result.snapshots[-1])


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    model_full, full = _train(4)
    _train(2, checkpoint=tmp_path / "ckpt.pt")  # "interrupted" after epoch 2
    model_resumed, resumed = _train(4, checkpoint=tmp_path / "ckpt.pt", resume=True)
    assert [row["train_loss"] for row in resumed.history] == [row["train_loss"] for row in full.history]
    assert torch.equal(flat_parameters(model_full), flat_parameters(model_resumed))
    assert len(resumed.snapshots) == 4


def test_nan_loss_stops_with_a_clear_error():
    x, y = _problem()
    x[5, 0] = float("nan")
    model = _model()
    optimizer = make_optimizer("sgd", model, 0.1)
    with pytest.raises(RunError, match="diverged"):
        fit(model, (x, y), optimizer=optimizer, epochs=1, batch_size=300, generator=torch.Generator(), quiet=True)


def test_weight_decay_applies_to_weights_not_biases():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    decayed, plain = weight_decay_groups(model, 0.01)
    assert {p.ndim for p in decayed["params"]} == {2} and decayed["weight_decay"] == 0.01
    assert len(plain["params"]) == 4 and plain["weight_decay"] == 0.0
    # With zero gradients, only weights shrink.
    optimizer = make_optimizer("sgd", model, lr=1.0, weight_decay=0.5)
    biases = [p.detach().clone() for p in plain["params"]]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    weight = model[0].weight.detach().clone()
    optimizer.step()
    assert torch.allclose(model[0].weight, weight * 0.5)
    assert all(torch.equal(a, b) for a, b in zip(biases, plain["params"]))


def test_cli_resume_after_interruption_matches_uninterrupted(image_data_dir, tmp_path, monkeypatch):
    full = run_quick("mnist-mlp", image_data_dir, tmp_path / "full", "--epochs", "3")
    expected = json.loads((full / "metrics.json").read_text())

    import dlclassics.engine as engine

    real = engine.evaluate_classifier
    calls = {"n": 0}

    def interrupt_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_classifier", interrupt_in_epoch_three)  # per-epoch held-out metrics
    argv = ["run", "mnist-mlp", "--quick", "--quiet", "--epochs", "3", "--device", "cpu",
            "--data-dir", str(image_data_dir), "--out", str(tmp_path / "cut")]
    assert main(argv) == 1
    (incomplete,) = (tmp_path / "cut" / "mnist-mlp").iterdir()
    assert incomplete.name.endswith(".incomplete") and not (incomplete / "report.md").exists()
    monkeypatch.setattr(engine, "evaluate_classifier", real)
    assert main(argv + ["--resume"]) == 0
    (done,) = (tmp_path / "cut" / "mnist-mlp").iterdir()
    resumed = json.loads((done / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "train_loss"):
        assert resumed[key] == expected[key]
