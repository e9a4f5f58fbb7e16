"""Trackers: `--log tensorboard` writes each epoch's history row, each search trial, the config with the final
metrics and the figures as event files in the run folder; `--mlflow URI` logs one MLflow run per run (its
params, metrics per epoch, final metrics, artifacts) with a nested run per trial, to a real SQLite-backed
store; a tracker that cannot log is one line before anything starts, and one that fails mid-run is dropped."""

import csv
import json
import sys

import pytest
from conftest import generated_image_data, run_quick

from dlclassics.cli import main
from dlclassics.distributed import free_port
from dlclassics.runs.trackers import Trackers

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


def _rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One fashion-mlp --quick run logged to TensorBoard and to an MLflow SQLite store (artifacts under the
    same temporary folder): its folder and the store's URI."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow keeps a SQLite store's artifacts under ./mlruns
        data = generated_image_data(root, patch)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        folder = run_quick("fashion-mlp", data, root / "runs", "--log", "tensorboard", "--mlflow", uri)
    return folder, uri


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_tensorboard_scalars_per_epoch_are_the_history(tracked):
    folder, _ = tracked
    events, history = _events(folder), _rows(folder / "history.csv")
    for column in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        logged = events.Scalars(f"epoch/{column}")
        assert [event.step for event in logged] == [int(row["epoch"]) for row in history]
        assert [event.value for event in logged] == pytest.approx([float(row[column]) for row in history], rel=1e-6)


def test_tensorboard_has_the_trials_the_config_with_final_metrics_and_the_figures(tracked):
    from tensorboard.plugins.hparams import plugin_data_pb2

    folder, _ = tracked
    events = _events(folder)
    trials = _rows(folder / "search.csv")
    logged = events.Scalars("search/validation_accuracy")
    assert [event.step for event in logged] == [int(row["trial"]) for row in trials]
    assert [event.value for event in logged] == pytest.approx([float(row["value"]) for row in trials], rel=1e-6)

    metrics = json.loads((folder / "metrics.json").read_text())
    assert events.Scalars("test_accuracy")[0].value == pytest.approx(metrics["test_accuracy"], rel=1e-6)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["trials"].number_value == 2 and hparams["recipe"].string_value == "tuned"

    figures = {f"figures/{path.stem}" for path in (folder / "figures").glob("*.png")}
    assert figures and figures <= set(events.Tags()["images"])


def _mlflow_runs(uri, experiment="fashion-mlp"):
    """The store's runs of `experiment`: the client, the top-level runs and the nested ones."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    return client, parents, children


def test_mlflow_run_has_the_config_the_epochs_the_metrics_and_the_files(tracked):
    folder, uri = tracked
    client, (run,), _ = _mlflow_runs(uri)
    assert run.info.status == "FINISHED" and run.data.tags["dlclassics.run_id"] == folder.name
    config = json.loads((folder / "config.json").read_text())["config"]
    assert run.data.params["trials"] == "2" and run.data.params["limit"] == str(config["limit"])

    history = _rows(folder / "history.csv")
    logged = client.get_metric_history(run.info.run_id, "epoch/test_accuracy")
    assert sorted((m.step, m.value) for m in logged) == [
        (int(row["epoch"]), pytest.approx(float(row["test_accuracy"]))) for row in history]

    metrics = json.loads((folder / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["best_config.lr"] == pytest.approx(metrics["best_config"]["lr"])
    files = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "config.json", "history.csv", "model.pt", "figures"} <= files
    figures = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {f"figures/{path.name}" for path in (folder / "figures").glob("*.png")}


def test_mlflow_nests_one_run_per_search_trial(tracked):
    folder, uri = tracked
    _, (run,), children = _mlflow_runs(uri)
    assert {child.data.tags["mlflow.parentRunId"] for child in children} == {run.info.run_id}
    by_trial = {int(child.data.tags["dlclassics.trial"]): child for child in children}
    trials = _rows(folder / "search.csv")
    assert sorted(by_trial) == [int(row["trial"]) for row in trials]
    for row in trials:
        child = by_trial[int(row["trial"])]
        assert child.data.metrics["validation_accuracy"] == pytest.approx(float(row["value"]))
        assert child.data.params["lr"] == row["lr"] and child.info.status == "FINISHED"


# ---------------------------------------------------------------- the toy experiment: the run's life

def _toy(out, *extra):
    return main(["run", "toy", "--quiet", "--out", str(out), *extra])


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_an_unreachable_mlflow_server_is_one_line_before_anything_is_written(toy, tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert _toy(tmp_path / "runs", "--mlflow", uri) == 2
    line = _one_line(capsys)
    assert line.startswith(f"dlclassics: error: --mlflow {uri}: the tracking store does not answer")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("flags", "missing", "hint"), [
    (("--mlflow", "sqlite:///x.db"), "mlflow", "pip install 'dlclassics[mlflow]'"),
    (("--log", "tensorboard"), "torch.utils.tensorboard", "pip install 'dlclassics[tensorboard]'"),
])
def test_a_missing_tracker_package_is_one_line_naming_the_extra(toy, tmp_path, capsys, monkeypatch, flags, missing,
                                                                 hint):
    monkeypatch.setitem(sys.modules, missing, None)  # `import` of it now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "mlflow.tracking", raising=False)
    assert _toy(tmp_path / "runs", *flags) == 2
    assert hint in _one_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_a_resumed_run_continues_its_mlflow_run_and_an_interruption_is_killed(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    toy.INTERRUPT_AT = 3
    assert _toy(tmp_path / "runs", "--mlflow", uri) == 1
    _, (run,), _ = _mlflow_runs(uri, "toy")
    assert run.info.status == "KILLED"
    toy.INTERRUPT_AT = None
    assert _toy(tmp_path / "runs", "--mlflow", uri, "--resume") == 0
    _, (resumed,), _ = _mlflow_runs(uri, "toy")
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.metrics["value"] == 1.5


def test_a_resume_may_add_a_tracker(toy, tmp_path, capsys):
    toy.INTERRUPT_AT = 2
    assert _toy(tmp_path / "runs") == 1
    toy.INTERRUPT_AT = None
    assert _toy(tmp_path / "runs", "--resume", "--log", "tensorboard") == 0
    (folder,) = (tmp_path / "runs" / "toy").iterdir()
    assert _events(folder).Scalars("value")[0].value == 1.5


class _Failing:
    name = "Broken"

    def epoch(self, step, row):
        raise ConnectionError("the server went away")


class _Recording:
    name = "Recording"

    def __init__(self):
        self.steps = []

    def epoch(self, step, row):
        self.steps.append(step)


def test_a_tracker_that_fails_mid_run_is_dropped_with_one_line(capsys):
    recording = _Recording()
    trackers = Trackers([_Failing(), recording])
    trackers.epoch(1, {"loss": 1.0})
    trackers.epoch(2, {"loss": 0.5})
    assert recording.steps == [1, 2] and trackers.trackers == [recording]
    assert "Broken stopped logging (the server went away); the run goes on" in _one_line(capsys)
