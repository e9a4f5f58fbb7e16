"""fashion-mlp and fashion-mlp-enhanced: the shared search machinery, quick runs, and the comparison."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import run_quick
from torch import nn

from dlclassics.cli import main
from dlclassics.data import images
from dlclassics.data.idx import write_idx
from dlclassics.experiments import fashion_mlp_enhanced
from dlclassics.models.mlp import mlp
from dlclassics.training import mlp_search

TIMES = ("wall_time_this_part_s", "wall_time_s", "search_time_s", "retrain_time_s")


def _metrics(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in TIMES}


def _rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_train_val_split_is_a_fixed_partition():
    train, val = mlp_search.train_val_split(100, 0.2, 541)
    assert len(train) == 80 and len(val) == 20
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    again, _ = mlp_search.train_val_split(100, 0.2, 541)
    assert torch.equal(train, again)


def test_build_model_plain_and_enhanced():
    plain = {"layers": 2, "units": 16}
    torch.manual_seed(0)
    a = mlp_search.build_model(plain)
    torch.manual_seed(0)
    b = mlp(784, [16, 16], 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # absent keys = Problem 2.1's MLP
    enhanced = mlp_search.build_model({**plain, "batchnorm": True, "dropout": 0.3, "activation": "prelu"})
    kinds = [type(layer) for layer in enhanced]
    assert kinds.count(nn.BatchNorm1d) == 2 and kinds.count(nn.Dropout) == 2 and kinds.count(nn.PReLU) == 2
    assert enhanced(torch.zeros(4, 784)).shape == (4, 10)


def test_enhanced_spaces_hold_the_source_options():
    seed = fashion_mlp_enhanced.SEARCH_SPACES["seed"]
    assert set(seed["batchnorm"]) == {True, False} and seed["dropout"] == (0.0, 0.2, 0.3, 0.5)
    assert seed["activation"] == ("relu", "leaky", "elu", "prelu")
    assert fashion_mlp_enhanced.RECIPES["seed"]["trials"] == 15 and fashion_mlp_enhanced.RECIPES["seed"]["epochs"] == 50


def test_fashion_mlp_quick_selects_on_validation_only(image_data_dir, tmp_path):
    trials = 3
    folder = run_quick("fashion-mlp", image_data_dir, tmp_path / "runs", "--set", f"trials={trials}")
    for name in ("search.csv", "study.journal", "trajectory.pt", "model.pt", "history.csv"):
        assert (folder / name).is_file(), name
    for figure in ("last_iterations", "retrain_loss", "retrain_accuracy", "search"):
        assert (folder / "figures" / f"{figure}.png").is_file(), figure
    metrics = _metrics(folder)
    trajectory = torch.load(folder / "trajectory.pt", weights_only=True)
    assert trajectory["parameters"].shape == (3, metrics["parameters"])  # QUICK retrains 2 epochs: 2 + 1 points
    assert trajectory["activation"] == "relu" and len(trajectory["hidden"]) == metrics["best_config"]["layers"]

    # The search table: `trials` distinct configurations of the space.
    rows = _rows(folder / "search.csv")
    space = mlp_search.FASHION_MLP_SPACES["tuned"]
    assert len(rows) == trials == metrics["trials"]
    assert len({tuple(row[name] for name in space) for row in rows}) == trials
    assert metrics["best_val_accuracy"] == max(float(row["value"]) for row in rows)

    # Scrambling the test labels changes the test accuracy but not one number of the search.
    scrambled = tmp_path / "scrambled"
    shutil.copytree(image_data_dir, scrambled)
    labels = np.random.default_rng(0).integers(0, 10, 200).astype(np.uint8)
    write_idx(scrambled / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz", labels)
    other = run_quick("fashion-mlp", scrambled, tmp_path / "runs-scrambled", "--set", f"trials={trials}")
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in _rows(other / "search.csv")] == \
           [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert _metrics(other)["best_config"] == metrics["best_config"]
    assert _metrics(other)["test_accuracy"] != metrics["test_accuracy"]


def test_fashion_mlp_enhanced_quick_beside_fashion_mlp(image_data_dir, tmp_path):
    baseline = run_quick("fashion-mlp", image_data_dir, tmp_path / "baseline")
    trained = run_quick("fashion-mlp-enhanced", image_data_dir, tmp_path / "trained")
    reused = run_quick("fashion-mlp-enhanced", image_data_dir, tmp_path / "reused", "--from-run", str(baseline))
    expected = _metrics(baseline)["test_accuracy"]

    mine = _metrics(trained)
    # Trained here, the baseline is fashion-mlp with the same seed, data and split: the same numbers.
    assert mine["baseline_test_accuracy"] == expected
    assert mine["improvement"] == pytest.approx(mine["test_accuracy"] - expected, abs=1e-6)
    assert (trained / "baseline-search.csv").is_file() and (trained / "figures" / "comparison.png").is_file()
    rows = _rows(trained / "search.csv")
    assert len({tuple(row[name] for name in fashion_mlp_enhanced.SEARCH_SPACES["tuned"]) for row in rows}) == len(rows)
    report = (trained / "report.md").read_text()
    assert "Against fashion-mlp" in report and "baseline_test_accuracy" in report

    # Read from a finished run instead: the same baseline, and the same seed gives the same enhanced numbers.
    theirs = _metrics(reused)
    assert theirs["baseline_test_accuracy"] == expected
    assert {k: v for k, v in theirs.items() if k != "baseline_source"} == \
           {k: v for k, v in mine.items() if k != "baseline_source"}


def test_enhanced_refuses_a_run_of_another_experiment(image_data_dir, tmp_path, capsys):
    fake = tmp_path / "not-fashion"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"experiment": "vae", "config": {"dataset": "fashion-mnist"}}))
    (fake / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5}))
    code = main(["run", "fashion-mlp-enhanced", "--quick", "--quiet", "--device", "cpu", "--data-dir",
                 str(image_data_dir), "--out", str(tmp_path / "runs"), "--from-run", str(fake)])
    assert code == 2 and "pass a fashion-mlp run" in capsys.readouterr().err


def test_ctrl_c_in_a_search_resumes_the_interrupted_trial(image_data_dir, tmp_path, monkeypatch, capsys):
    whole = run_quick("fashion-mlp", image_data_dir, tmp_path / "whole", "--set", "trials=3")
    capsys.readouterr()

    train, calls = mlp_search.train, []

    def interrupted_in_trial_1(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(*args, **kwargs)

    monkeypatch.setattr(mlp_search, "train", interrupted_in_trial_1)
    argv = ["run", "fashion-mlp", "--quick", "--device", "cpu", "--data-dir", str(image_data_dir),
            "--out", str(tmp_path / "cut"), "--set", "trials=3"]
    assert main([*argv, "--quiet"]) == 1
    err = capsys.readouterr().err
    monkeypatch.setattr(mlp_search, "train", train)

    (folder,) = (tmp_path / "cut" / "fashion-mlp").iterdir()
    assert err.count("\n") == 1
    assert err.endswith(f"interrupted; continue with: dlclassics {' '.join(argv)} --quiet --resume {folder}\n")
    assert main([*argv, "--resume", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "resuming at trial 1 (1 of 3 trials finished; interrupted, run again after the waiting ones: 1)" in err
    assert re.search(r"^trial 1: layers=\d, units=\d+, lr=[\d.]+, .* -> validation accuracy 0\.\d{4} \(\d+\.\d s\)$",
                     err, re.MULTILINE)
    (resumed,) = [p for p in (tmp_path / "cut" / "fashion-mlp").iterdir()]
    without_seconds = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert without_seconds(_rows(resumed / "search.csv")) == without_seconds(_rows(whole / "search.csv"))
    assert [row["trial"] for row in _rows(resumed / "search.csv")] == ["0", "1", "2"]  # no gap
    assert _metrics(resumed) == _metrics(whole)


def test_one_worker_searches_on_the_data_already_loaded(image_data_dir, tmp_path, monkeypatch):
    loads = []
    real = images.load_images
    monkeypatch.setattr(images, "load_images", lambda *args: loads.append(args) or real(*args))
    monkeypatch.setattr(mlp_search, "load_images", lambda *args: loads.append(args) or real(*args))
    folder = run_quick("fashion-mlp-enhanced", image_data_dir, tmp_path / "runs")
    assert len(loads) == 1  # the enhanced search, the baseline's search and both retrainings: one load
    record = json.loads((folder / "config.json").read_text())
    assert record["study"] == f"fashion-mlp-enhanced-{folder.name}" and record["storage"] is None
