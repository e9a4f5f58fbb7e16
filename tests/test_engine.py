"""The shared training loop: it learns, guards against NaN, resumes exactly, decays weights only, and reads
the step outputs once per window of steps with the numbers a per-step read gives."""

import io
import json
import sys

import pytest
import torch
from conftest import interrupted_at_evaluation, run_quick
from torch import nn

from dlclassics.cli import main
from dlclassics.engine import (
    classification_step,
    fit,
    flat_parameters,
    held_out,
    make_optimizer,
    seed_everything,
    weight_decay_groups,
)
from dlclassics.errors import RunError


def _problem(seed=0, n=256):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=generator)
    y = (x[:, :3].sum(1) > 0).long()
    return x, y


def _model():
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))


def _train(epochs, checkpoint=None, resume=False, quiet=True, **options):
    generator = seed_everything(3)
    model = _model()
    optimizer = make_optimizer("sgd", model, 0.1, 1e-3, momentum=0.9)
    result = fit(model, _problem(), optimizer=optimizer, epochs=epochs, batch_size=32, generator=generator,
                 checkpoint=checkpoint, resume=resume, quiet=quiet, snapshot_parameters=True, **options)
    return model, result


def test_training_changes_weights_and_learns():
    seed_everything(3)
    before = flat_parameters(_model())  # the very network `_train` starts from: same seed, same construction
    untrained, _ = _train(0)
    assert torch.equal(before, flat_parameters(untrained))
    model, result = _train(5)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["train_accuracy"] > 0.85
    assert not torch.equal(before, flat_parameters(model))


def test_an_evaluation_step_leaves_the_weights_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}  # weights and BatchNorm statistics
    evaluate = held_out(*_problem(seed=1), "val", batch_size=100)
    first = evaluate(model, 1)
    assert evaluate(model, 1) == first  # eval mode: no dropout, the running statistics, so the same metrics
    assert model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_on_epoch_end_sees_each_finished_epoch_once_and_resume_skips_the_done_ones(tmp_path):
    seen = []

    def record(model, epoch, row):
        seen.append((epoch, dict(row), flat_parameters(model)))

    def evaluate(model, epoch):
        return {"val_marker": float(epoch)}

    _, result = _train(3, checkpoint=tmp_path / "ckpt.pt", on_epoch_end=record, evaluate=evaluate)
    assert [epoch for epoch, _, _ in seen] == [1, 2, 3]
    assert [row for _, row, _ in seen] == result.history and seen[-1][1]["val_marker"] == 3.0
    assert all(torch.equal(parameters, snapshot) for (_, _, parameters), snapshot in zip(seen, result.snapshots))
    seen.clear()
    _train(5, checkpoint=tmp_path / "ckpt.pt", resume=True, on_epoch_end=record, evaluate=evaluate)
    assert [epoch for epoch, _, _ in seen] == [4, 5]


def test_progress_off_a_terminal_is_one_line_per_epoch_with_held_out_metrics(tmp_path, capsys):
    _train(2, checkpoint=tmp_path / "ckpt.pt", quiet=False, evaluate=held_out(*_problem(seed=1), "val"), desc="demo")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["demo epoch 1/2", "demo epoch 2/2"]
    assert all("train_loss" in line and "train_accuracy" in line and "val_accuracy" in line for line in lines)
    _train(3, checkpoint=tmp_path / "ckpt.pt", resume=True, quiet=False, desc="demo")
    resumed = capsys.readouterr().err.splitlines()
    assert resumed[0] == "demo: resuming at epoch 3 of 3" and resumed[1].startswith("demo epoch 3/3: train_loss")
    _train(2, quiet=True)
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_keeps_the_bar_and_the_epoch_lines(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _train(2, quiet=False, desc="demo")
    shown = terminal.getvalue()
    assert "demo epoch 1/2: train_loss" in shown and "demo epoch 2/2: train_loss" in shown
    assert "100%" in shown.rsplit("\r", 1)[-1]  # the finished bar stays on screen


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


def test_a_non_finite_loss_stops_the_run_within_read_every_steps_and_names_its_step():
    calls = []

    def step(model, batch):
        outputs = classification_step(model, batch)
        calls.append(len(batch[0]))
        if len(calls) == 3:
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs

    with pytest.raises(RunError, match=r"became nan at epoch 1, step 3 \(read at step 5\); the run diverged"):
        _train(2, step=step, read_every=5)
    assert len(calls) == 5  # steps 4 and 5 ran before the window was read, none after


@pytest.mark.parametrize("read_every", [1, 3, 50])
def test_the_history_is_the_per_step_reading_to_the_last_bit(read_every):
    """Windows are summed on the host in step order, as a loop calling .item() each step sums them."""
    seen = []

    def step(model, batch):
        outputs = classification_step(model, batch)
        seen.append((len(batch[0]), {key: value.item() for key, value in outputs.items()}))
        return outputs

    _, result = _train(2, step=step, record_iterations=True, read_every=read_every)
    assert result.iterations == [values["loss"] for _, values in seen]
    steps_per_epoch = len(seen) // 2
    for epoch, row in enumerate(result.history):
        sums = {"loss": 0.0, "accuracy": 0.0}
        for rows, values in seen[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]:
            for key in sums:
                sums[key] += values[key] * rows
        assert row["train_loss"] == sums["loss"] / 256 and row["train_accuracy"] == sums["accuracy"] / 256


def test_step_outputs_are_read_once_per_window_not_once_per_step(monkeypatch):
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(len(self)) or tolist(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("a value was read in a step"))
    _train(1, read_every=3)  # 8 steps of 32 rows
    assert reads == [3, 3, 3, 3, 2, 2]  # loss and accuracy of steps 1-3, 4-6, then the epoch's last 2


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


def test_cli_resume_after_interruption_matches_uninterrupted(image_data_dir, tmp_path):
    full = run_quick("mnist-mlp", image_data_dir, tmp_path / "full", "--epochs", "3")
    expected = json.loads((full / "metrics.json").read_text())
    argv = ["run", "mnist-mlp", "--quick", "--quiet", "--epochs", "3", "--device", "cpu",
            "--data-dir", str(image_data_dir), "--out", str(tmp_path / "cut")]
    with interrupted_at_evaluation(3):
        assert main(argv) == 1
    (incomplete,) = (tmp_path / "cut" / "mnist-mlp").iterdir()
    assert incomplete.name.endswith(".incomplete") and not (incomplete / "report.md").exists()
    assert main(argv + ["--resume"]) == 0
    (done,) = (tmp_path / "cut" / "mnist-mlp").iterdir()
    resumed = json.loads((done / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "train_loss"):
        assert resumed[key] == expected[key]
