"""The Python API: `dlclassics.run` is the command's run in this process (same checks, folder, numbers and
one-line messages, raised instead of printed), returns the finished run with its verdicts, figures and
report, shows them in Jupyter, and resumes from its own hint; the listings are tables; `import dlclassics`
stays light."""

import dataclasses
import json
import shlex
import subprocess
import sys

import pytest
import run_toy
from conftest import run_quick

import dlclassics
from dlclassics import api, engine
from dlclassics.cli import main
from dlclassics.errors import RunError, UsageError
from dlclassics.runs.folder import INCOMPLETE

# config.json's entries that differ between two runs of the same command: when, where and how long.
RUN_SPECIFIC = ("run_id", "started", "parts", "git_commit", "machine", "command")


def test_import_dlclassics_does_not_import_torch_and_the_api_comes_on_first_use():
    code = ("import sys, dlclassics; assert 'torch' not in sys.modules; "
            "from dlclassics import api; assert dlclassics.run is api.run and dlclassics.Result is api.Result")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dlclassics.nope


def test_the_accelerations_asked_for_are_the_runs_and_recorded(toy, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(run_toy, "FAIL", lambda: seen.append(engine.run_accelerations()))
    result = dlclassics.run("toy", out=tmp_path, quiet=True, site=False, capture="off", precision="fp32")
    chosen = {"capture": "off", "precision": "fp32", "channels_last": "auto"}
    assert seen == [chosen]
    assert json.loads((result.folder / "config.json").read_text())["accelerations"] == chosen
    assert engine.run_accelerations() == {"capture": "auto", "precision": "auto", "channels_last": "auto"}
    assert result.command[result.command.index("--capture"):][:2] == ["--capture", "off"]


def test_run_returns_the_finished_run_as_the_command_leaves_it(toy, tmp_path):
    result = dlclassics.run("toy", out=tmp_path / "api", quiet=True, site=False, lr=0.5)
    assert result.folder.is_dir() and not result.folder.name.endswith(INCOMPLETE)
    assert result.folder.parent == tmp_path / "api" / "toy" and result.experiment == "toy"
    assert result.metrics["value"] == 1.5
    assert result.references == [{"what": "the value after 3 epochs", "metric": "value", "source": 1.5,
                                  "ours": 1.5, "verdict": "met"}]
    assert result.report.startswith("# toy: ") and result.site is None
    assert result.command == ["run", "toy", "--device", "auto", "--out", str(tmp_path / "api"), "--quiet",
                              "--no-site", "--set", "lr=0.5"]

    assert main(["run", "toy", "--out", str(tmp_path / "cli"), "--quiet", "--no-site", "--set", "lr=0.5"]) == 0
    (cli_folder,) = (tmp_path / "cli" / "toy").iterdir()
    by_cli = json.loads((cli_folder / "config.json").read_text())
    by_api = json.loads((result.folder / "config.json").read_text())
    assert {k: v for k, v in by_api.items() if k not in RUN_SPECIFIC} == \
        {k: v for k, v in by_cli.items() if k not in RUN_SPECIFIC}
    assert json.loads((cli_folder / "metrics.json").read_text())["value"] == result.metrics["value"]


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ({"experiment": "nope"}, UsageError, "unknown experiment 'nope'; 'dlclassics list' shows the"),
    ({"experiment": "toy", "lr": -1}, UsageError, "option 'lr' must be > 0.0; got -1.0"),
    ({"experiment": "toy", "colour": "red"}, UsageError, "unknown option 'colour'; valid options:"),
    ({"experiment": "toy", "workers": 0}, UsageError, "argument --workers: expects an integer from 1 to 64"),
    ({"experiment": "toy", "device": "gpu"}, UsageError, "argument --device: invalid choice: 'gpu'"),
    ({"experiment": "toy", "from_run": "/nonexistent"}, UsageError, "/nonexistent"),
])
def test_errors_are_the_commands_lines_raised_before_anything_is_written(toy, tmp_path, arguments, error, message):
    with pytest.raises(error) as raised:
        dlclassics.run(**arguments, out=tmp_path, quiet=True)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not any(tmp_path.iterdir())


def test_a_refused_path_is_the_commands_run_error(toy, tmp_path):
    def full_disk():
        raise OSError(28, "No space left on device", "metrics.json")

    toy.FAIL = full_disk
    with pytest.raises(RunError, match=r"^No space left on device \(metrics.json\); check that path") as raised:
        dlclassics.run("toy", out=tmp_path, quiet=True, site=False)
    assert isinstance(raised.value.__cause__, OSError)


def test_an_interrupted_run_says_how_to_resume_and_both_ways_finish_it(toy, tmp_path):
    toy.INTERRUPT_AT = 3
    with pytest.raises(RunError, match="interrupted; continue with: dlclassics run toy") as raised:
        dlclassics.run("toy", out=tmp_path, quiet=True, site=False)
    toy.INTERRUPT_AT = None
    (folder,) = (tmp_path / "toy").iterdir()
    hint = shlex.split(str(raised.value).split("continue with: ")[1])
    assert hint[-2:] == ["--resume", str(folder)] and "--no-site" in hint
    assert main(hint[1:]) == 0  # the hint is a shell command that resumes the run
    (finished,) = (tmp_path / "toy").iterdir()
    assert json.loads((finished / "metrics.json").read_text())["first_epoch_here"] == 3

    toy.INTERRUPT_AT = 2
    with pytest.raises(RunError):
        dlclassics.run("toy", out=tmp_path / "again", quiet=True, site=False)
    toy.INTERRUPT_AT = None
    (folder,) = (tmp_path / "again" / "toy").iterdir()
    resumed = dlclassics.run("toy", out=tmp_path / "again", quiet=True, site=False, resume=folder)
    assert resumed.metrics["value"] == 1.5 and resumed.metrics["first_epoch_here"] == 2


@pytest.fixture
def mnist_result(image_data_dir, tmp_path):
    return dlclassics.run("mnist-mlp", quick=True, device="cpu", data_dir=image_data_dir, out=tmp_path / "runs",
                          quiet=True)


def test_a_result_shows_its_verdicts_and_figures_in_jupyter(mnist_result):
    figures = sorted((mnist_result.folder / "figures").glob("*.png"))
    assert sorted(figure.path for figure in mnist_result.figures) == figures
    assert mnist_result.site.endswith("index.html")
    markdown = mnist_result._repr_markdown_()
    assert "| what | source | ours | verdict |" in markdown and "| test accuracy (full MNIST) | 0.9717 |" in markdown
    assert markdown.count("![") == len(figures)
    page = mnist_result._repr_html_()
    assert "<th>verdict</th>" in page and "not comparable (different data)" in page
    assert page.count('src="data:image/png;base64,') == len(figures)
    history = mnist_result.history
    assert list(history["epoch"]) == [1, 2] and "test_accuracy" in history.columns
    assert api.Result.load(mnist_result.folder) == dataclasses.replace(mnist_result, site=None)


def test_result_load_refuses_a_folder_that_is_no_finished_run(tmp_path):
    with pytest.raises(UsageError, match=f"{tmp_path} is not a finished run"):
        api.Result.load(tmp_path)


def test_in_a_notebook_progress_is_a_bar_per_training(image_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api, "in_notebook", lambda: True)
    dlclassics.run("mnist-mlp", quick=True, device="cpu", data_dir=image_data_dir, out=tmp_path, site=False)
    err = capsys.readouterr().err
    assert "2/2 [" in err and "epoch" in err  # tqdm's bar over the two epochs
    assert "mnist-mlp epoch 1/2:" not in err  # not the engine's lines


def test_list_experiments_has_every_experiment_with_its_options(monkeypatch):
    from dlclassics import registry

    table = dlclassics.list_experiments()
    assert list(table["id"]) == list(registry.EXPERIMENTS)
    options = table.set_index("id").loc["fashion-mlp", "options"]
    assert options["trials"] == {"type": "int", "default": 10, "valid": ">= 1",
                                 "help": "configurations tried by the search (the source needs at least 10)"}
    monkeypatch.setitem(sys.modules, "pandas", None)  # without pandas: plain records
    assert dlclassics.list_experiments()[0]["id"] == "mnist-mlp"


def test_list_runs_has_the_finished_runs_with_their_key_metrics(image_data_dir, tmp_path, monkeypatch):
    folder = run_quick("mnist-mlp", image_data_dir, tmp_path)
    (row,) = dlclassics.list_runs(tmp_path).to_dict("records")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert row == {"experiment": "mnist-mlp", "run": folder.name, "path": str(folder),
                   "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"],
                   "wall_time_s": metrics["wall_time_s"]}
    monkeypatch.setitem(sys.modules, "pandas", None)
    assert dlclassics.list_runs(tmp_path, "mnist-mlp") == [row]
