"""Runs that build on runs (`--from-run`), and the finished runs under a folder.

One contract: a producer declares the names of the files it writes (in `runs.products`), a consumer
declares what it needs as an `Upstream`, and `read_finished_run` checks a folder against it before
anything is written.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dlclassics.errors import RunError, UsageError
from dlclassics.runs.folder import CONFIG, HISTORY, INCOMPLETE, METRICS

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Upstream:
    """What an experiment takes as `--from-run` (its module's `FROM_RUN`): a finished run of one of
    `experiments` that holds the files `files` (names its producer declares) and the keys `metrics`
    in its metrics.json. The CLI checks a folder against it before the new run's folder exists."""

    experiments: tuple[str, ...]
    files: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()


@dataclasses.dataclass
class FinishedRun:
    """A finished run folder another experiment builds on (`--from-run`)."""

    folder: Path
    record: dict[str, Any]  # its config.json: experiment, config, carve_test, ...

    @property
    def experiment(self) -> str:
        return self.record["experiment"]

    @property
    def options(self) -> dict[str, Any]:
        """The options the finished run ran with (its config.json's "config"); a UsageError when that is no
        table (an edited file), so that a consumer never reads a list or a number as its producer's options."""
        options = self.record.get("config", {})
        if not isinstance(options, dict):
            raise UsageError(f"--from-run {self.folder}: its {CONFIG} does not describe a '{self.experiment}' run "
                             f"('config' is {type(options).__name__}, not a table of options)")
        return options

    @property
    def carve_test(self) -> float:
        """The fraction of its one split the producer carved as its test set (0: it had both splits)."""
        value = self.record.get("carve_test") or 0.0
        if not is_finite_number(value) or not 0.0 <= value < 1.0:
            raise UsageError(f"--from-run {self.folder}: its {CONFIG} gives carve_test = {str(value)[:40]!r}, not a "
                             "fraction in [0, 1); pass a finished run whose files were not edited")
        return float(value)

    def provenance(self) -> dict[str, Any]:
        """Where the inputs came from, for config.json: the folder, and the producer's run id and commit."""
        return {"path": str(self.folder.resolve()), "experiment": self.experiment,
                "run_id": self.record.get("run_id", self.folder.name), "git_commit": self.record.get("git_commit")}

    def metrics(self, needs: Sequence[str] = ()) -> dict[str, Any]:
        """Its metrics.json, which must hold the keys `needs`."""
        path = self.folder / METRICS
        try:
            metrics = json.loads(path.read_text())
        except OSError:
            raise UsageError(f"--from-run {self.folder} has no readable {METRICS}; pass the folder of a finished "
                             f"'{self.experiment}' run") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"--from-run {self.folder}: {METRICS} is not valid JSON ({exc}); it was not written "
                             "by dlclassics") from None
        missing = [key for key in needs if not isinstance(metrics, dict) or key not in metrics]
        if missing:
            raise UsageError(f"--from-run {self.folder}: {METRICS} has no {', '.join(missing)}; pass a finished "
                             f"'{self.experiment}' run that recorded {'them' if len(missing) > 1 else 'it'}")
        return metrics

    def history(self, name: str = HISTORY) -> list[dict[str, float]]:
        """Its per-epoch history as floats ([] when the run wrote none)."""
        path = self.folder / name
        if not path.is_file():
            return []
        with open(path, newline="") as handle:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def load(self, name: str, reader: Callable[[Path], T]) -> T:
        """`reader(path)` of its file `name`: a missing file, or one the reader refuses (a RunError), is a
        UsageError naming this --from-run, like every other problem with it."""
        if not self.has(name):
            raise UsageError(f"--from-run {self.folder} has no {name}; pass the folder of a finished "
                             f"'{self.experiment}' run that wrote it")
        try:
            return reader(self.folder / name)
        except RunError as exc:
            raise UsageError(f"--from-run {self.folder}: {exc}") from None


def read_finished_run(folder: Path, experiments: str | Sequence[str], needs: Sequence[str] = (),
                      metrics: Sequence[str] = ()) -> FinishedRun:
    """The `--from-run` folder, checked to be a finished run of one of `experiments` holding the files
    `needs` and the metrics `metrics`; one UsageError (exit 2) naming the problem otherwise."""
    folder = Path(folder)
    allowed = (experiments,) if isinstance(experiments, str) else tuple(experiments)
    wanted = " or ".join(f"'dlclassics run {name}'" for name in allowed)
    if not folder.is_dir():
        raise UsageError(f"--from-run {folder} is not a folder; pass the folder of a finished {wanted} run")
    if folder.name.endswith(INCOMPLETE):
        raise UsageError(f"--from-run {folder} is an unfinished run; finish it first with --resume {folder}")
    missing = [name for name in needs if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"--from-run {folder} has no {', '.join(missing)}; pass the folder of a finished {wanted} run")
    try:
        record = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"--from-run {folder}: no readable {CONFIG} there; pass the folder of a finished "
                         f"{wanted} run") from None
    if not isinstance(record, dict) or record.get("experiment") not in allowed:
        found = record.get("experiment") if isinstance(record, dict) else None
        raise UsageError(f"--from-run {folder} is a '{found}' run; pass a {' or '.join(allowed)} run")
    finished = FinishedRun(folder, record)
    if metrics:
        values = finished.metrics(needs=metrics)
        for key in metrics:
            if not is_finite_number(values[key]):
                raise UsageError(f"--from-run {folder}: {METRICS} gives {key} = {str(values[key])[:40]!r}, not a finite "
                                 f"number; pass a finished {wanted} run whose files were not edited")
    return finished


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite as a float: what a metric another run reads must be."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False
