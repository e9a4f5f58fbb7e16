"""Run folders, atomic writes, reference verdicts and the report.

A run lives in `runs/<id>/<timestamp>-<short id>/`. While it runs the folder carries the suffix
`.incomplete`; only a run that finished is renamed to its final name, so a crash never leaves a
folder that looks complete (and an interrupted one can be resumed with `--resume`).
Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dlclassics import __version__
from dlclassics.errors import UsageError

INCOMPLETE = ".incomplete"


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of dicts as CSV; the header is the union of keys in first-seen order."""
    header: list[str] = []
    for row in rows:
        header += [key for key in row if key not in header]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ---------------------------------------------------------------- provenance

def git_commit() -> str:
    """The commit of the checkout the package runs from ("+dirty" when modified), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__}


def machine_summary() -> str:
    info = machine()
    return f"{info['processor']}, {info['cpu_count']} CPU cores, torch {info['torch']}"


# ---------------------------------------------------------------- references and verdicts

@dataclasses.dataclass(frozen=True)
class Reference:
    """A number the source reported, and how our measured metric is judged against it.

    `rule`: "at_least" (ours >= target), "at_most" (ours <= target), "near" (|ours - target| <= tolerance),
    "higher" (ours >= source - tolerance), "lower" (ours <= source + tolerance), or "info" (shown, not judged).
    """

    metric: str
    source_value: float | str
    description: str
    rule: str = "higher"
    tolerance: float = 0.0
    target: float | None = None
    dataset: str | None = None  # the dataset the source measured on; another one -> not comparable

    def verdict(self, measured: Any, dataset: str | None, comparable: bool) -> str:
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            return "not measured"
        if not comparable or (self.dataset is not None and dataset is not None and dataset != self.dataset):
            return "not comparable (different data)"
        goal = self.target if self.target is not None else self.source_value
        if self.rule == "info" or isinstance(goal, str):
            return "see report"
        met = {"at_least": measured >= goal, "at_most": measured <= goal,
               "near": abs(measured - goal) <= self.tolerance,
               "higher": measured >= goal - self.tolerance, "lower": measured <= goal + self.tolerance}[self.rule]
        return "met" if met else "not met"


def format_number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.1f}"
    return str(value)


# ---------------------------------------------------------------- the run folder

def new_run_dir(root: Path, experiment: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / experiment / f"{stamp}-{secrets.token_hex(3)}{INCOMPLETE}"
    path.mkdir(parents=True)
    return path


def latest_incomplete(root: Path, experiment: str) -> Path | None:
    candidates = sorted((Path(root) / experiment).glob(f"*{INCOMPLETE}"))
    return candidates[-1] if candidates else None


@dataclasses.dataclass
class Run:
    """What an experiment's `run` function receives besides its config: where to write, and how."""

    experiment: str
    dir: Path
    config: Any
    device: torch.device
    data_dir: Path | None = None
    carve_test: float = 0.0
    unverified: bool = False  # data files accepted without matching the official checksums
    quiet: bool = False
    resume: bool = False
    workers: int = 1  # local processes for searches
    storage: str | None = None  # Optuna database URL for searches shared across machines
    from_run: Path | None = None  # an earlier run folder this one builds on
    notes: list[str] = dataclasses.field(default_factory=list)
    figures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    sections: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    comparable: bool = True
    started: float = dataclasses.field(default_factory=time.time)

    @property
    def figures_dir(self) -> Path:
        path = self.dir / "figures"
        path.mkdir(exist_ok=True)
        return path

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def note(self, text: str) -> None:
        """A line for the report's notes section (data caveats, diagnoses, what was used)."""
        self.notes.append(text)

    def add_section(self, title: str, markdown: str) -> None:
        """An extra report section (a search table, a diagnosis), placed before the figures."""
        self.sections.append((title, markdown))

    def mark_not_comparable(self, reason: str) -> None:
        self.comparable = False
        self.note(reason)

    def save_figure(self, figure: Any, name: str, caption: str, data: Mapping[str, Any] | None = None,
                    rows: Sequence[Mapping[str, Any]] | None = None) -> Path:
        """Save a matplotlib figure as PNG with its data beside it (`rows` -> CSV, `data` -> npz)."""
        import matplotlib.pyplot as plt
        import numpy as np

        path = self.figures_dir / f"{name}.png"
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        atomic_write_bytes(path, buffer.getvalue())
        if rows is not None:
            atomic_write_csv(self.figures_dir / f"{name}.csv", rows)
        if data is not None:
            arrays = io.BytesIO()
            np.savez_compressed(arrays, **{k: np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v)
                                           for k, v in data.items()})
            atomic_write_bytes(self.figures_dir / f"{name}.npz", arrays.getvalue())
        self.figures.append((f"figures/{name}.png", caption))
        return path

    def save_history(self, rows: Sequence[Mapping[str, Any]], name: str = "history.csv") -> None:
        atomic_write_csv(self.dir / name, rows)

    def save_model(self, model: torch.nn.Module, name: str = "model.pt") -> Path:
        path = self.dir / name
        atomic_torch_save(path, model.state_dict())
        return path


def config_record(run: Run) -> dict[str, Any]:
    return {"experiment": run.experiment, "config": dataclasses.asdict(run.config), "package_version": __version__,
            "git_commit": git_commit(), "machine": machine(), "device": str(run.device),
            "data_dir": str(run.data_dir) if run.data_dir else None, "carve_test": run.carve_test,
            "data_checks": "unverified, not comparable" if run.unverified else "official checksums required",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(run.started))}


def reference_rows(references: Iterable[Reference], metrics: Mapping[str, Any], dataset: str | None,
                   comparable: bool) -> list[dict[str, Any]]:
    return [{"what": ref.description, "metric": ref.metric, "source": ref.source_value,
             "ours": metrics.get(ref.metric), "verdict": ref.verdict(metrics.get(ref.metric), dataset, comparable)}
            for ref in references]


def write_report(run: Run, title: str, metrics: Mapping[str, Any], references: Iterable[Reference]) -> None:
    """report.md: what ran, the numbers beside the source's, figures, notes, wall time and machine."""
    dataset = getattr(run.config, "dataset", None)
    rows = reference_rows(references, metrics, dataset, run.comparable)
    atomic_write_json(run.dir / "references.json", rows)  # the verdicts, for `dlclassics runs --markdown`
    atomic_write_json(run.dir / "report.json", {  # what only the report holds, for the site (`dlclassics report`)
        "notes": run.notes, "sections": [{"title": t, "markdown": m} for t, m in run.sections],
        "figures": [{"path": path, "caption": caption} for path, caption in run.figures]})
    lines = [f"# {run.experiment}: {title}", "",
             f"Wall time {metrics.get('wall_time_s', 0):.1f} s on {machine_summary()} (device {run.device}); "
             f"dlclassics {__version__}, commit {git_commit()}.", ""]
    if rows:
        lines += ["## Against the source", "", "| what | source | ours | verdict |", "|---|---|---|---|"]
        lines += [f"| {r['what']} | {format_number(r['source'])} | {format_number(r['ours'])} | {r['verdict']} |"
                  for r in rows]
        lines.append("")
    lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {format_number(v)} |" for k, v in metrics.items() if not isinstance(v, (list, dict))]
    lines.append("")
    if run.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in run.notes] + [""]
    for section_title, markdown in run.sections:
        lines += [f"## {section_title}", "", markdown, ""]
    if run.figures:
        lines += ["## Figures", ""]
        for path, caption in run.figures:
            lines += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    lines += ["## Config", "", "| option | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in dataclasses.asdict(run.config).items()]
    atomic_write_text(run.dir / "report.md", "\n".join(lines) + "\n")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts as a Markdown table (header from the first row)."""
    if not rows:
        return "(none)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_number(row.get(k)) for k in header) + " |" for row in rows]
    return "\n".join(lines)


def finish(run: Run) -> Path:
    """Rename the incomplete folder to its final name; the run now looks (and is) complete."""
    final = run.dir.with_name(run.dir.name.removesuffix(INCOMPLETE))
    os.replace(run.dir, final)
    run.dir = final
    return final


@dataclasses.dataclass
class FinishedRun:
    """A finished run folder another experiment builds on (`--from-run`)."""

    folder: Path
    record: dict[str, Any]  # its config.json: experiment, config, carve_test, ...

    def metrics(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise UsageError(f"--from-run {self.folder} has no readable metrics.json; pass the folder of a "
                             f"finished '{self.record.get('experiment')}' run") from None

    def history(self, name: str = "history.csv") -> list[dict[str, float]]:
        """Its per-epoch history as floats ([] when the run wrote none)."""
        path = self.folder / name
        if not path.is_file():
            return []
        with open(path, newline="") as handle:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def read_finished_run(folder: Path, experiment: str) -> FinishedRun:
    """The `--from-run` folder, checked to be a run of `experiment`; one clear UsageError otherwise."""
    folder = Path(folder)
    try:
        record = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"--from-run {folder}: no readable config.json there; pass the folder of a finished "
                         f"'dlclassics run {experiment}' run") from None
    if record.get("experiment") != experiment:
        raise UsageError(f"--from-run {folder} is a '{record.get('experiment')}' run; pass a {experiment} run")
    return FinishedRun(folder, record)


def list_runs(root: Path, experiment: str | None = None) -> list[dict[str, Any]]:
    """Finished runs, newest first, with their key metrics."""
    root = Path(root)
    if experiment and not (root / experiment).is_dir():
        raise UsageError(f"no runs of '{experiment}' under {root}")
    folders = [p for p in root.glob(f"{experiment or '*'}/*") if p.is_dir() and not p.name.endswith(INCOMPLETE)]
    result = []
    for folder in sorted(folders, key=lambda p: p.name, reverse=True):
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        result.append({"experiment": folder.parent.name, "path": str(folder), "metrics": metrics})
    return result
