"""The contract between runs (--from-run), and what every run folder holds: strict metrics, readable
files, provenance of its inputs, the load on the machine, and a report that says what it found."""

import json
import math
import stat
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import run_quick

from dlclassics import engine, files, registry
from dlclassics.cli import main
from dlclassics.errors import RunError, UsageError
from dlclassics.runs import METRICS, Upstream, products
from dlclassics.runs.contract import read_finished_run
from dlclassics.runs.folder import LOCK, resumable

ROOT = Path(__file__).resolve().parents[1]


def _toy(out, *extra):
    return main(["run", "toy", "--out", str(out), *extra])


def _finished(out, experiment="toy"):
    (folder,) = [p for p in (out / experiment).iterdir() if p.is_dir()]
    return folder


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _fake_run(folder, experiment, **files):
    """A folder that looks like a finished run of `experiment`, with the given extra files (name -> text)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"experiment": experiment, "config": {}}))
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


# ---------------------------------------------------------------- --from-run

def test_read_finished_run_checks_the_producer_its_files_and_its_metrics(tmp_path):
    folder = _fake_run(tmp_path / "run", "energy-regressor")
    with pytest.raises(UsageError, match="has no model.pt, metrics.json; pass the folder of a finished "
                                         "'dlclassics run energy-regressor' run"):
        read_finished_run(folder, "energy-regressor", needs=("model.pt", "metrics.json"))
    (folder / "metrics.json").write_text("{not json")
    with pytest.raises(UsageError, match="metrics.json is not valid JSON"):
        read_finished_run(folder, "energy-regressor", metrics=("pixel_mean",))
    (folder / "metrics.json").write_text(json.dumps({"pixel_std": 0.3}))
    with pytest.raises(UsageError, match="metrics.json has no pixel_mean"):
        read_finished_run(folder, "energy-regressor", metrics=("pixel_mean", "pixel_std"))
    with pytest.raises(UsageError, match="is a 'energy-regressor' run; pass a fashion-mlp or loss-landscape run"):
        read_finished_run(folder, ("fashion-mlp", "loss-landscape"))
    unfinished = _fake_run(tmp_path / "x.incomplete", "energy-regressor")
    with pytest.raises(UsageError, match="is an unfinished run"):
        read_finished_run(unfinished, "energy-regressor")
    with pytest.raises(UsageError, match="is not a folder"):
        read_finished_run(tmp_path / "nowhere", "energy-regressor")


def test_finished_run_turns_an_unreadable_file_into_one_usage_error(tmp_path):
    folder = _fake_run(tmp_path / "run", "fashion-mlp")
    (folder / "trajectory.pt").write_bytes(b"")
    finished = read_finished_run(folder, "fashion-mlp")
    with pytest.raises(UsageError, match=r"--from-run .*trajectory.pt is empty"):
        finished.load("trajectory.pt", lambda path: files.load_tensor_file(path, "tensors"))
    with pytest.raises(UsageError, match="has no model.pt"):
        finished.load("model.pt", lambda path: files.load_tensor_file(path, "tensors"))


CONSUMERS = [name for name in registry.EXPERIMENTS if hasattr(registry.load(name), "FROM_RUN")]


def test_every_consumer_declares_registered_producers():
    assert set(CONSUMERS) == {"fashion-mlp-enhanced", "loss-landscape", "mcmc-sampling", "vae-loglik",
                              "latent-optimization", "fgsm", "cifar-transfer"}
    for name in CONSUMERS:
        upstream = registry.load(name).FROM_RUN
        assert isinstance(upstream, Upstream) and set(upstream.experiments) <= set(registry.EXPERIMENTS)
    # producers' declared file names, imported by their consumers
    assert registry.load("mcmc-sampling").FROM_RUN.files == (products.ENERGY_WEIGHTS, METRICS)
    assert registry.load("loss-landscape").FROM_RUN.files == (products.TRAJECTORY,)


@pytest.mark.parametrize("experiment", CONSUMERS)
def test_a_wrong_from_run_is_exit_2_everywhere_and_leaves_no_folder(experiment, tmp_path, capsys):
    upstream = registry.load(experiment).FROM_RUN
    wrong = _fake_run(tmp_path / "other", "he-init", **{name: "" for name in upstream.files})
    out = tmp_path / "runs"
    assert main(["run", experiment, "--quick", "--out", str(out), "--from-run", str(wrong)]) == 2
    assert f"is a 'he-init' run; pass a {' or '.join(upstream.experiments)} run" in _error_line(capsys)
    assert not out.exists()


def test_an_experiment_that_builds_on_nothing_refuses_from_run(tmp_path, capsys):
    assert main(["run", "he-init", "--quick", "--out", str(tmp_path / "runs"), "--from-run", str(tmp_path)]) == 2
    assert "'he-init' does not build on another run; drop --from-run" in _error_line(capsys)


def test_config_json_records_the_producer_and_the_workers(toy, tmp_path):
    assert _toy(tmp_path / "first") == 0
    producer = _finished(tmp_path / "first")
    assert _toy(tmp_path / "second", "--from-run", str(producer), "--workers", "3") == 0
    record = json.loads((_finished(tmp_path / "second") / "config.json").read_text())
    theirs = json.loads((producer / "config.json").read_text())
    assert record["from_run"] == {"path": str(producer.resolve()), "experiment": "toy", "run_id": producer.name,
                                  "git_commit": theirs["git_commit"]}
    assert record["workers"] == 3 and theirs["from_run"] is None and theirs["run_id"] == producer.name


def test_energy_regressor_writes_what_mcmc_sampling_reads(image_data_dir, tmp_path):
    producer = run_quick("energy-regressor", image_data_dir, tmp_path / "energy")
    for name in (products.ENERGY_WEIGHTS, products.EXACT_ENERGY, products.ENERGY_TEST_DATA):
        assert (producer / name).is_file()
    metrics = json.loads((producer / "metrics.json").read_text())
    assert all(math.isfinite(metrics[key]) for key in products.PIXEL_STATS)
    consumer = run_quick("mcmc-sampling", image_data_dir, tmp_path / "mcmc", "--from-run", str(producer))
    assert json.loads((consumer / "config.json").read_text())["from_run"]["run_id"] == producer.name
    assert "mala_mean_exact_energy" in json.loads((consumer / "metrics.json").read_text())


# ---------------------------------------------------------------- what a run folder holds

def test_run_files_are_readable_by_others_and_the_checkpoint_goes(toy, tmp_path):
    assert _toy(tmp_path) == 0
    folder = _finished(tmp_path)
    assert not (folder / "checkpoint.pt").exists() and not (folder / LOCK).exists()
    entries = [folder, *folder.rglob("*")]
    assert {stat.S_IMODE(p.stat().st_mode) for p in entries if p.is_file()} == {0o644}
    assert {stat.S_IMODE(p.stat().st_mode) for p in entries if p.is_dir()} == {0o755}


def test_a_non_finite_metric_is_a_diverged_run_and_metrics_json_stays_strict(toy, tmp_path, capsys):
    toy.EXTRA_METRICS = {"loss": float("nan")}
    assert _toy(tmp_path) == 1
    assert "metric loss came out NaN or infinite: the run diverged" in _error_line(capsys)
    assert not (tmp_path / "toy").exists()  # no run folder, nor an empty folder for the experiment
    with pytest.raises(ValueError):
        files.atomic_write_json(tmp_path / "m.json", {"loss": float("inf")})
    toy.EXTRA_METRICS = {"not_measured": None}  # an experiment's way to say "not measured"
    assert _toy(tmp_path) == 0
    assert json.loads((_finished(tmp_path) / "metrics.json").read_text())["not_measured"] is None


def test_a_classifier_whose_loss_exploded_has_diverged():
    engine.check_classifier_loss(2.0, 10)  # near chance (log 10 = 2.3): a poor run, not a diverged one
    with pytest.raises(RunError, match="far above the 2.30 of guessing uniformly: the run diverged"):
        engine.check_classifier_loss(7.7e28, 10)


def test_report_states_the_best_configuration(toy, tmp_path):
    toy.EXTRA_METRICS = {"best_val_accuracy": 0.8772, "best_config": {"layers": 3, "units": 40, "lr": 0.01}}
    assert _toy(tmp_path) == 0
    report = (_finished(tmp_path) / "report.md").read_text()
    assert "The best configuration found was layers = 3, units = 40, lr = 0.01, with val accuracy 0.8772." in report


@pytest.mark.parametrize("load, flagged", [([0.1, 0.1, 0.1], False), ([40.0, 30.0, 20.0], True)])
def test_load_average_is_recorded_and_a_loaded_machine_flagged(toy, tmp_path, monkeypatch, load, flagged):
    from dlclassics.runs import lifecycle

    monkeypatch.setattr(lifecycle, "load_average", lambda: load)
    assert _toy(tmp_path) == 0
    folder = _finished(tmp_path)
    (part,) = json.loads((folder / "config.json").read_text())["parts"]
    assert part["load_average_start"] == part["load_average_end"] == load
    assert ("Wall time measured on a loaded machine" in (folder / "report.md").read_text()) is flagged


def test_resumable_counts_every_kind_of_checkpoint(tmp_path):
    assert not resumable(tmp_path)
    (tmp_path / "vae_checkpoint.pt").write_bytes(torch.zeros(1).numpy().tobytes())
    assert resumable(tmp_path)


def test_pytest_shows_skip_reasons():
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert "-rs" in addopts.split()
