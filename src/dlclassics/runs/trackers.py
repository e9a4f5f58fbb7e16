"""Trackers: TensorBoard and MLflow, where a run's numbers also go besides its folder.

People keep their runs in the tracker they already use, so `--log tensorboard` and `--mlflow URI` copy
a run's numbers there as it goes: the resolved config, each epoch's history row (`Run.fit`), each
search's finished trials (`training.search`), and at the end the final metrics, the figures and the
report. The run folder stays the record; a tracker only mirrors it, so it never decides a number and a
resume may add one.

The session owns the trackers of a run (`Trackers`): it checks the ones a command asks for before
anything starts (`check`: a missing package or an MLflow store that does not answer is one UsageError),
opens them once the run's folder exists (`open_trackers`) and closes them with how the run ended.
Packages are imported only when a tracker is asked for: both are optional extras.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from dlclassics.config import environment
from dlclassics.errors import UsageError
from dlclassics.sweep import masked_url

TENSORBOARD_DIR = "tensorboard"  # the event files' folder inside the run folder
# How long the check before a run waits for an MLflow server, with no retries: a typo answers at once.
MLFLOW_CHECK_TIMEOUT_S = 10


@dataclasses.dataclass(frozen=True)
class Trial:
    """One finished trial of a search, as trackers log it."""

    number: int  # the trial's slot: its seed offset and its row in search.csv
    params: dict[str, Any]
    metrics: dict[str, float]  # the objective's value under the search's metric name, and its attributes


@dataclasses.dataclass(frozen=True)
class Start:
    """What a tracker is told when a run starts or resumes."""

    experiment: str
    run_id: str
    folder: Path  # the run folder, still named *.incomplete
    params: dict[str, Any]  # the resolved config and the recipe
    resume: bool


class Tracker(Protocol):
    """What the session tells a tracker; steps of epochs count the run's epochs across its trainings."""

    name: str

    def epoch(self, step: int, row: Mapping[str, float]) -> None: ...

    def trials(self, search: str, trials: Sequence[Trial]) -> None: ...

    def finish(self, metrics: Mapping[str, float], figures: Sequence[Path], files: Sequence[Path]) -> None: ...

    def close(self, ended: str) -> None: ...


class Trackers:
    """The trackers of one run, told everything together (none by default).

    A tracker that fails once the run is going (a server that went away) is dropped with one line on
    stderr: a long run never stops for its tracker, and its folder has everything the tracker missed.
    """

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def epoch(self, step: int, row: Mapping[str, float]) -> None:
        self._tell(lambda tracker: tracker.epoch(step, row))

    def trials(self, search: str, trials: Sequence[Trial]) -> None:
        self._tell(lambda tracker: tracker.trials(search, trials))

    def finish(self, metrics: Mapping[str, float], figures: Sequence[Path], files: Sequence[Path]) -> None:
        self._tell(lambda tracker: tracker.finish(metrics, figures, files))

    def close(self, ended: str) -> None:
        """`ended`: "finished", "interrupted" or "failed"."""
        self._tell(lambda tracker: tracker.close(ended))
        self.trackers = []

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        """Close the trackers however the block ends, telling them how."""
        try:
            yield
        except KeyboardInterrupt:
            self.close("interrupted")
            raise
        except BaseException:
            self.close("failed")
            raise
        self.close("finished")

    def _tell(self, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # the tracker's own failure, whatever its package raises
                self.trackers.remove(tracker)
                print(f"dlclassics: {tracker.name} stopped logging ({reason(exc)}); the run goes on and its folder "
                      "has everything", file=sys.stderr, flush=True)


def reason(exc: Exception) -> str:
    """An exception's message on one line, cut short (a driver's message can run to pages)."""
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ---------------------------------------------------------------- checking and opening

def check(log: str | None, mlflow_uri: str | None) -> None:
    """A UsageError, before anything starts, for a tracker that could not log: its package missing, or an
    MLflow store that does not answer. (`log` is one of the CLI's `--log` choices.)"""
    if log == "tensorboard":
        summary_writer()
    if mlflow_uri is not None:
        with quick_http_answers(), store_errors(mlflow_uri):
            mlflow_client(mlflow_uri).search_experiments(max_results=1)


def open_trackers(log: str | None, mlflow_uri: str | None, start: Start) -> Trackers:
    """The trackers a run asked for, started (or, for a resumed run, taken up again)."""
    opened: list[Tracker] = []
    if log == "tensorboard":
        opened.append(TensorBoard(start))
    if mlflow_uri is not None:
        opened.append(MLflow(mlflow_uri, start))
    return Trackers(opened)


def summary_writer() -> type:
    """torch's TensorBoard writer class; a UsageError naming the extra when `tensorboard` is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--log tensorboard needs the tensorboard package: pip install 'dlclassics[tensorboard]'") \
            from None
    return SummaryWriter


def mlflow_client(uri: str) -> Any:
    """An MlflowClient for `uri`; a UsageError naming the extra when `mlflow` is missing."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UsageError("--mlflow needs the mlflow package: pip install 'dlclassics[mlflow]'") from None
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # its lines on creating a database
    return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Within: whatever the MLflow store's driver raises is one UsageError naming the store (its password
    masked), so a tracker that cannot start stops the run before any training."""
    try:
        yield
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"--mlflow {masked_url(uri)}: the tracking store does not answer ({reason(exc)}); start it "
                         "or check the URI") from None


def quick_http_answers() -> contextlib.AbstractContextManager[None]:
    """Within: MLflow's HTTP requests are tried once, for MLFLOW_CHECK_TIMEOUT_S at most (its own default
    retries for minutes), so an unreachable server is an error at once."""
    return environment({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(MLFLOW_CHECK_TIMEOUT_S)})


def loggable(value: Any) -> bool | int | float | str:
    """A config value as trackers store hyperparameters: numbers, booleans and text as they are, the rest
    (tuples of widths, None) as text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


# ---------------------------------------------------------------- TensorBoard

class TensorBoard:
    """Event files in the run folder's `tensorboard/` (`tensorboard --logdir runs` shows every run):
    `epoch/<column>` scalars per epoch, `<search>/<metric>` scalars per trial (step = trial number),
    the config as hyperparameters with the final metrics (the HParams tab), and the figures as images."""

    name = "TensorBoard"

    def __init__(self, start: Start) -> None:
        self.params = {name: loggable(value) for name, value in start.params.items()}
        self.writer = summary_writer()(log_dir=str(start.folder / TENSORBOARD_DIR))

    def epoch(self, step: int, row: Mapping[str, float]) -> None:
        for column, value in row.items():
            if column != "epoch":
                self.writer.add_scalar(f"epoch/{column}", value, step)

    def trials(self, search: str, trials: Sequence[Trial]) -> None:
        for trial in trials:
            for metric, value in trial.metrics.items():
                self.writer.add_scalar(f"{search}/{metric}", value, trial.number)

    def finish(self, metrics: Mapping[str, float], figures: Sequence[Path], files: Sequence[Path]) -> None:
        import matplotlib.image

        self.writer.add_hparams(self.params, dict(metrics), run_name=".")  # "." keeps one folder per run
        for figure in figures:
            pixels = matplotlib.image.imread(figure)[..., :3]  # RGB floats in [0, 1], alpha dropped
            self.writer.add_image(f"figures/{figure.stem}", pixels, dataformats="HWC")

    def close(self, ended: str) -> None:
        self.writer.close()


# ---------------------------------------------------------------- MLflow

# MLflow accepts these characters in a metric's name; others (a metric's list index) become "_".
MLFLOW_UNSAFE = re.compile(r"[^\w\-. /:]")
MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


class MLflow:
    """One MLflow run per dlclassics run, in the MLflow experiment of the same name, tagged with the run
    id (a resumed run continues its MLflow run): the config as params, `epoch/<column>` metrics with
    steps, one nested run per search trial, and at the end the final metrics and the report, metrics,
    config, history, model and figures as artifacts."""

    name = "MLflow"

    def __init__(self, uri: str, start: Start) -> None:
        with store_errors(uri):
            self.client = mlflow_client(uri)
            found = self.client.get_experiment_by_name(start.experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(start.experiment)
            self.run_id = self._run_of(start)
            self._log_params(self.run_id, start.params)

    def _run_of(self, start: Start) -> str:
        """The MLflow run of this dlclassics run: the one a resumed run had, or a new one."""
        if start.resume:
            earlier = self.client.search_runs([self.experiment_id], f"tags.`dlclassics.run_id` = '{start.run_id}'",
                                              max_results=1)
            if earlier:
                self.client.update_run(earlier[0].info.run_id, status="RUNNING")
                return earlier[0].info.run_id
        tags = {"dlclassics.run_id": start.run_id, "dlclassics.experiment": start.experiment}
        return self.client.create_run(self.experiment_id, tags=tags, run_name=start.run_id).info.run_id

    def epoch(self, step: int, row: Mapping[str, float]) -> None:
        self._log_metrics(self.run_id, {f"epoch/{column}": value for column, value in row.items() if column != "epoch"},
                          step)

    def trials(self, search: str, trials: Sequence[Trial]) -> None:
        """A nested run per trial not logged yet (a resumed search reports its earlier trials again)."""
        children = self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.run_id}'",
                                           max_results=50_000)
        logged = {(child.data.tags.get("dlclassics.search"), child.data.tags.get("dlclassics.trial"))
                  for child in children}
        for trial in trials:
            if (search, str(trial.number)) in logged:
                continue
            tags = {"mlflow.parentRunId": self.run_id, "dlclassics.search": search, "dlclassics.trial": str(trial.number)}
            child = self.client.create_run(self.experiment_id, tags=tags, run_name=f"{search} trial {trial.number}")
            self._log_params(child.info.run_id, trial.params)
            self._log_metrics(child.info.run_id, trial.metrics, 0)
            self.client.set_terminated(child.info.run_id)

    def finish(self, metrics: Mapping[str, float], figures: Sequence[Path], files: Sequence[Path]) -> None:
        self._log_metrics(self.run_id, metrics, 0)
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        for figure in figures:
            self.client.log_artifact(self.run_id, str(figure), artifact_path="figures")

    def close(self, ended: str) -> None:
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS[ended])

    def _log_params(self, run_id: str, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(name, str(value)) for name, value in values.items()])

    def _log_metrics(self, run_id: str, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(MLFLOW_UNSAFE.sub("_", name), float(value), now, step)
                                               for name, value in values.items()])
