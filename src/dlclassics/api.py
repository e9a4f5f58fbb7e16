"""dlclassics from Python: run an experiment in this process, list the experiments, read finished runs.

    import dlclassics

    result = dlclassics.run("fashion-mlp", quick=True)  # what `dlclassics run fashion-mlp --quick` does
    result.metrics["test_accuracy"], result.folder
    result                                             # in Jupyter: the verdicts and the figures

`run` is the command line's run, not a copy of it: its arguments become the words of the equivalent
`dlclassics run` command, which the CLI's own parser turns into the request that the session checks
(`runs.request.prepare`) and runs (`runs.request.run_prepared`). So the validation, the run folder, the numbers
and the messages are the command's: its one-line errors are raised as `UsageError` or `RunError`
(`dlclassics.errors`), never a `SystemExit`. The words are the run's recorded command (config.json), so
the hint given when a run is interrupted is a shell command that resumes it, and `resume=FOLDER` does
the same from Python.

The attributes `dlclassics.experiments` and `dlclassics.runs` are the packages of those names, so the
listings are `list_experiments()` and `list_runs()`: tables (pandas DataFrames when pandas is installed,
lists of dicts otherwise), like `dlclassics list` and `dlclassics runs`.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import html
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dlclassics import cli, registry
from dlclassics.config import describe
from dlclassics.errors import RunError, UsageError
from dlclassics.runs import results
from dlclassics.runs.folder import CONFIG, HISTORY, METRICS, REFERENCES, REPORT, REPORT_PARTS
from dlclassics.runs.report import format_number
from dlclassics.runs.request import prepare, run_prepared
from dlclassics.site import refresh as refresh_site


def run(experiment: str, *, epochs: int | None = None, device: str = "auto", data_dir: str | Path | None = None,
        quick: bool = False, recipe: str = "tuned", out: str | Path = "runs", log: str | None = None,
        mlflow: str | None = None, from_run: str | Path | None = None, resume: bool | str | Path = False,
        config: str | Path | None = None, weights: str | None = None, unverified: bool = False,
        carve_test: float = 0.0, workers: int = 1, storage: str | None = None, study: str | None = None,
        threads: int | None = None, capture: str = "auto", precision: str = "auto", channels_last: str = "auto",
        quiet: bool = False, site: bool = True, **options: Any) -> Result | None:
    """Run `experiment` here as `dlclassics run` would, and return the finished run.

    The keyword arguments are the command's flags (`from_run=` is `--from-run`, `resume=True` is a bare
    `--resume`, `site=False` is `--no-site`); any other keyword is an option of the experiment's config
    (`lr=0.05` is `--set lr=0.05`; `dlclassics list ID` or `list_experiments()` shows them). `log=
    "tensorboard"` and `mlflow=URI` also log the run to those trackers. In Jupyter, training progress
    is a tqdm.auto bar per training.

    Raises the command's errors: `UsageError` for a bad argument, option or path (before anything is
    written), `RunError` when the run cannot finish (data missing, a diverging loss, Ctrl-C: the message
    says how to resume). Under torchrun, the other processes of the group return None.
    """
    flags = {"epochs": epochs, "device": device, "data_dir": data_dir, "quick": quick, "recipe": recipe, "out": out,
             "log": log, "mlflow": mlflow, "from_run": from_run, "resume": resume, "config": config,
             "weights": weights, "unverified": unverified, "carve_test": carve_test, "workers": workers,
             "storage": storage, "study": study, "threads": threads, "capture": capture, "precision": precision,
             "channels_last": channels_last, "quiet": quiet, "no_site": not site}
    with cli.terminate_as_interrupt(), one_line_os_errors(), figures_offscreen():
        request = cli.run_request(cli.parse(command_words(experiment, flags, options)))
        report = run_prepared(prepare(dataclasses.replace(request, notebook=in_notebook())))
        if report is None:
            return None
        return Result.load(report.parent, site=refresh_site(request.out) if site else None)


def command_words(experiment: str, flags: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    """The `dlclassics run` words that ask for what the arguments do: each flag whose value is not the
    command's default (True: the bare flag; None and False: left out), then each option as --set."""
    defaults = vars(cli.parse(["run", experiment]))
    words = ["run", experiment]
    for name, value in flags.items():
        if value is None or value is False or str(value) == str(defaults[name]):
            continue
        flag = "--" + name.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    for name, value in options.items():
        words += ["--set", f"{name}={option_text(value)}"]
    return words


def option_text(value: Any) -> str:
    """An option's value as `--set` reads it: true/false, comma-separated values, or the value's text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


@contextlib.contextmanager
def figures_offscreen() -> Iterator[None]:
    """Within: matplotlib draws off-screen, as the experiments' figures (files) need; afterwards the
    caller's backend is back, so that a notebook's own plots still show inline."""
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    if backend.lower() == "agg":
        yield
        return
    plt.switch_backend(backend)  # loaded first: Jupyter's inline backend sets up its display only when loaded in use
    plt.switch_backend("Agg")
    try:
        yield
    finally:
        plt.switch_backend(backend)


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel, where progress is drawn as widgets (stderr is no terminal)."""
    return "ipykernel" in sys.modules


@contextlib.contextmanager
def one_line_os_errors() -> Iterator[None]:
    """Within: a path the operating system refused (unreadable, read-only, a full disk) is the command's
    RunError line; the OSError stays attached as its cause."""
    try:
        yield
    except OSError as exc:
        raise RunError(cli.os_error_message(exc)) from exc


# ---------------------------------------------------------------- a finished run

@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure of a run: the PNG (its data, CSV or npz, lies beside it) and the report's caption."""

    path: Path
    caption: str


@dataclasses.dataclass(frozen=True)
class Result:
    """A finished run, read from its folder: what `run` returns (`Result.load(folder)` reads any finished run)."""

    folder: Path
    experiment: str
    metrics: dict[str, Any]  # metrics.json
    references: list[dict[str, Any]]  # the source's numbers beside ours: what, metric, source, ours, verdict
    figures: list[Figure]
    command: list[str]  # the `dlclassics` words that started the run
    site: str | None = None  # the refreshed results site's index page (or why it was not refreshed)

    @classmethod
    def load(cls, folder: str | Path, site: str | None = None) -> Result:
        """The finished run in `folder`; a UsageError when it is not one."""
        folder = Path(folder)
        record, parts = read_json(folder, CONFIG), read_json(folder, REPORT_PARTS)
        return cls(folder, record["experiment"], read_json(folder, METRICS), read_json(folder, REFERENCES),
                   [Figure(folder / item["path"], item["caption"]) for item in parts["figures"]],
                   record["command"], site)

    @property
    def report(self) -> str:
        """report.md: the numbers beside the source's, notes, figures, wall time and machine."""
        return (self.folder / REPORT).read_text(encoding="utf-8")

    @property
    def history(self) -> Any:
        """history.csv (one row per epoch) as a table; empty when the experiment keeps no history."""
        path = self.folder / HISTORY
        if not path.is_file():
            return table([])
        with path.open(newline="", encoding="utf-8") as rows:
            return table([{key: number(value) for key, value in row.items()} for row in csv.DictReader(rows)])

    def verdict_rows(self) -> list[tuple[str, str, str, str]]:
        """(what, source, ours, verdict) per reference, formatted as the report shows them."""
        return [(str(row["what"]), format_number(row["source"]), format_number(row["ours"]), str(row["verdict"]))
                for row in self.references]

    def _repr_markdown_(self) -> str:
        lines = [f"**{self.experiment}**: `{self.folder}`", "", "| what | source | ours | verdict |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(cells)} |" for cells in self.verdict_rows()]
        lines += [f"\n![{figure.caption}]({figure.path.resolve().as_uri()})" for figure in self.figures]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The verdicts table and the figures, the pictures embedded so that they show wherever the
        notebook is opened."""
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"
                       for cells in self.verdict_rows())
        figures = "".join(
            f'<figure style="display:inline-block;margin:4px;max-width:460px">'
            f'<img src="data:image/png;base64,{base64.b64encode(figure.path.read_bytes()).decode()}" '
            f'style="max-width:100%" alt="{html.escape(figure.caption)}">'
            f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>" for figure in self.figures)
        return (f"<div><p><b>{html.escape(self.experiment)}</b>: <code>{html.escape(str(self.folder))}</code></p>"
                "<table><thead><tr><th>what</th><th>source</th><th>ours</th><th>verdict</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>{figures}</div>")


def read_json(folder: Path, name: str) -> Any:
    """A finished run's JSON file; a UsageError naming the folder when it is missing or damaged."""
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{folder} is not a finished run ({name}: {type(exc).__name__})") from None


def number(text: str) -> int | float | str:
    """A CSV cell as a number where it is one (an epoch stays a whole number)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ---------------------------------------------------------------- listings

def list_experiments() -> Any:
    """Every experiment: its id, title and options (name -> type, default, valid values, help), as
    `dlclassics list ID` shows them. Reads every experiment's module (and so imports torch)."""
    rows = []
    for experiment_id in registry.EXPERIMENTS:
        module = registry.load(experiment_id)
        options = {name: {"type": kind, "default": default, "valid": valid, "help": help_text}
                   for name, kind, default, valid, help_text in describe(module.Config)}
        rows.append({"id": experiment_id, "title": module.TITLE, "options": options})
    return table(rows)


def list_runs(folder: str | Path = cli.DEFAULT_RUNS, experiment: str | None = None) -> Any:
    """The finished runs under `folder` (of `experiment` only, if given), newest first, with their key
    metrics, as `dlclassics runs` lists them; a damaged run folder is skipped with a line on stderr."""
    found = results.list_runs(Path(folder), experiment)
    for reason in found.skipped:
        print(f"dlclassics: skipped {reason}", file=sys.stderr)
    return table([{"experiment": row["experiment"], "run": Path(row["path"]).name, "path": row["path"],
                   **cli.key_metrics(row["metrics"])} for row in found.rows])


def table(rows: list[dict[str, Any]]) -> Any:
    """`rows` as a pandas DataFrame when pandas is installed (a notebook shows a table), else as they are."""
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)
