"""The command line: one clear line and exit 2 for usage errors; the run folder's contents."""

import json

import pytest
from conftest import run_quick

from dlclassics import registry
from dlclassics.cli import main
from dlclassics.config import BaseConfig, resolve


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("argv, needle", [
    (["run", "nope"], "unknown experiment 'nope'"),
    (["run", "fashion-mlp", "--set", "lr=-1"], "'lr' is a search dimension"),
    (["run", "mnist-mlp", "--set", "lr=-1"], "option 'lr' must be > 0"),
    (["run", "mnist-mlp", "--set", "epochs=two"], "option 'epochs' expects int"),
    (["run", "mnist-mlp", "--set", "epochs"], "--set expects key=value"),
    (["run", "mnist-mlp", "--set", "dataset=cifar"], "must be one of"),
    (["run", "mnist-mlp", "--frobnicate"], "unrecognized arguments"),
    (["run", "mnist-mlp", "--carve-test", "1.5"], "--carve-test"),
    (["run", "mnist-mlp", "--config", "/nonexistent.toml"], "does not exist"),
    (["bogus"], "invalid choice"),
])
def test_usage_errors_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path)] if argv[0] == "run" else [])) == 2
    assert needle in _error_line(capsys)
    assert not any(tmp_path.iterdir())


def test_fashion_mlp_rejects_bad_learning_rate_values(capsys):
    assert main(["run", "fashion-mlp", "--set", "momentum=-1"]) == 2
    assert "momentum" in _error_line(capsys)


def test_dry_run_prints_resolved_config(capsys, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("epochs = 7\nhidden = [32, 16]\n")
    assert main(["run", "mnist-mlp", "--recipe", "seed", "--config", str(toml), "--set", "lr=0.01", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert config["epochs"] == 7 and config["hidden"] == [32, 16] and config["lr"] == 0.01
    assert config["batch_size"] == 64  # from the seed recipe


def test_every_experiment_declares_the_contract():
    for experiment_id in registry.EXPERIMENTS:
        module = registry.load(experiment_id)
        assert module.TITLE and module.__doc__ and callable(module.run)
        assert issubclass(module.Config, BaseConfig)
        for recipe in module.RECIPES.values():
            resolve(module.Config, recipe)
        resolve(module.Config, module.QUICK)


def test_list_shows_every_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(experiment_id in out for experiment_id in registry.EXPERIMENTS)


def test_run_folder_records_config_version_commit_and_report(image_data_dir, tmp_path, capsys):
    folder = run_quick("mnist-mlp", image_data_dir, tmp_path / "runs")
    record = json.loads((folder / "config.json").read_text())
    assert record["config"]["quick"] is True and record["package_version"] and record["git_commit"]
    assert record["machine"]["cpu_count"]
    report = (folder / "report.md").read_text()
    assert "| test accuracy (full MNIST) | 0.9717 |" in report and "not comparable" in report
    capsys.readouterr()
    assert main(["runs", "--out", str(tmp_path / "runs")]) == 0
    assert "mnist-mlp" in capsys.readouterr().out


def test_same_seed_same_numbers(image_data_dir, tmp_path):
    first = run_quick("mnist-mlp", image_data_dir, tmp_path / "a")
    second = run_quick("mnist-mlp", image_data_dir, tmp_path / "b")
    a, b = (json.loads((f / "metrics.json").read_text()) for f in (first, second))
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]


def test_from_run_folder_is_checked_in_one_place(tmp_path):
    from dlclassics.errors import UsageError
    from dlclassics.runs.contract import read_finished_run

    with pytest.raises(UsageError, match="no readable config.json"):
        read_finished_run(tmp_path, "vae")
    (tmp_path / "config.json").write_text(json.dumps({"experiment": "vae", "config": {}}))
    (tmp_path / "history.csv").write_text("epoch,train_loss\n1,0.5\n")
    finished = read_finished_run(tmp_path, "vae")
    assert finished.history() == [{"epoch": 1.0, "train_loss": 0.5}]
    with pytest.raises(UsageError, match="metrics.json"):
        finished.metrics()
    with pytest.raises(UsageError, match="pass a fashion-mlp run"):
        read_finished_run(tmp_path, "fashion-mlp")
