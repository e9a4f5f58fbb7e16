"""Run folders, atomic writes, reference verdicts and the report.

A run lives in `runs/<id>/<timestamp>-<short id>/`. While it runs the folder carries the suffix
`.incomplete`; only a run that finished is renamed to its final name, so a crash never leaves a
folder that looks complete (and an interrupted one can be resumed with `--resume`). A running run
holds an OS lock on a file in its folder, so a second process cannot resume it while it runs.
Every file is written to a temporary name and renamed into place, readable by others (0644).

Runs build on each other (`--from-run`) through one contract: a producer declares the names of the
files it writes as module constants, a consumer declares what it needs as an `Upstream`, and
`read_finished_run` checks a folder against it before anything is written.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import math
import os
import pickle
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from dlclassics import __version__
from dlclassics.errors import RunError, UsageError

INCOMPLETE = ".incomplete"
# The files every run writes (the run layer is their producer); experiments declare their own beside them.
CONFIG = "config.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
MODEL = "model.pt"
REPORT = "report.md"
REPORT_PARTS = "report.json"  # the report's notes, sections and figure captions, for the site (`dlclassics report`)
CHECKPOINTS = "*checkpoint.pt"  # checkpoint.pt, vae_checkpoint.pt, baseline-checkpoint.pt: only needed to resume
SEARCH_JOURNAL = "study.journal"
LOCK = ".lock"  # held (flock) by the process running the run; the OS releases it when that process dies
FILE_MODE, DIR_MODE = 0o644, 0o755


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600: run files are for others to read too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    """Strict JSON (a NaN or infinity is refused, not written as the non-standard `NaN`)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable, allow_nan=False) + "\n")


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


# ---------------------------------------------------------------- reading tensors safely

T = TypeVar("T")


def load_tensor_file(path: Path, expected: str) -> Any:
    """A torch.save file of plain tensors, read with weights_only=True: nothing in it is unpickled.

    Anything else -- a missing, empty or damaged file, a pickled Python object -- is a RunError naming the
    file and `expected` (what it should hold). Refusing a pickle matters: unpickling can run any code.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist or is not a file; expected {expected}")
    if path.stat().st_size == 0:
        raise RunError(f"{path} is empty; expected {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise RunError(f"{path} holds a pickled Python object ({found.group(1)}), not plain tensors: refused, "
                           f"because unpickling can run arbitrary code; expected {expected}") from None
        raise RunError(f"{path} is not a torch.save file of tensors; expected {expected}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path} is not a readable torch.save file ({reason}); expected {expected}") from None


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


def masked_url(url: str | None) -> str | None:
    """A database URL fit to print or record: its password (user:PASSWORD@, ?password=) shown as ***."""
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(a URL that could not be parsed: not shown)"
    if parts.password is not None:
        user_info, _, host = parts.netloc.rpartition("@")
        url = url.replace(parts.netloc, f"{user_info.partition(':')[0]}:***@{host}", 1)
    if "password=" in parts.query.lower():
        query = "&".join("password=***" if pair.lower().startswith("password=") else pair
                         for pair in parts.query.split("&"))
        url = url.replace(parts.query, query, 1)
    return url


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__}


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages: how many threads wanted a core (None where the OS has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (OSError, AttributeError):
        return None


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
    """A new `<root>/<experiment>/<timestamp>-<id>.incomplete/` folder; an unusable `--out` is a UsageError."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / experiment / f"{stamp}-{secrets.token_hex(3)}{INCOMPLETE}"
    try:
        path.mkdir(parents=True)
        path.chmod(DIR_MODE)
    except OSError as exc:
        raise UsageError(f"--out {root}: cannot create a run folder there ({exc.strerror}); "
                         "pass --out a writable folder") from None
    return path


def latest_incomplete(root: Path, experiment: str) -> Path | None:
    candidates = sorted((Path(root) / experiment).glob(f"*{INCOMPLETE}"))
    return candidates[-1] if candidates else None


def lock_run_dir(folder: Path) -> int:
    """Take the run folder's lock for this process and return its file descriptor.

    An flock on a file in the folder: the OS releases it when the process ends, however it ends
    (kill -9 included), so a lock that cannot be taken means a live process is running this run.
    """
    path = Path(folder) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fd).st_ino:  # it finished (and dropped this file) meanwhile
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        raise UsageError(f"{folder} is in use: another dlclassics process is running it; wait for that run to "
                         "finish, or start a new run without --resume") from None
    return fd


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
    study: str | None = None  # the search's Optuna study (searching experiments only): its own, or one joined
    from_run: FinishedRun | None = None  # an earlier run this one builds on (`--from-run`), checked
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)  # intra-op threads per process
    world_size: int = 1  # processes training together (DistributedDataParallel)
    notes: list[str] = dataclasses.field(default_factory=list)
    figures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    sections: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    comparable: bool = True
    started: float = dataclasses.field(default_factory=time.time)  # when this part of the run started
    parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one per start or resume, this one last
    lock: int | None = None  # the descriptor holding the folder's lock while the run is going
    clock: float = 0.0  # time.perf_counter() when the experiment's own work started

    @property
    def run_id(self) -> str:
        return self.dir.name.removesuffix(INCOMPLETE)

    @property
    def figures_dir(self) -> Path:
        path = self.dir / "figures"
        path.mkdir(mode=DIR_MODE, exist_ok=True)
        return path

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def note(self, text: str) -> None:
        """A line for the report's notes section (data caveats, diagnoses, what was used)."""
        self.notes.append(text)

    def announce(self, text: str) -> None:
        """A note that the user also sees now, as one line on stderr: what the run is about to do, and why."""
        print(f"dlclassics: {text}", file=sys.stderr)
        self.note(text)

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

    def save_history(self, rows: Sequence[Mapping[str, Any]], name: str = HISTORY) -> None:
        atomic_write_csv(self.dir / name, rows)

    def save_model(self, model: torch.nn.Module, name: str = MODEL) -> Path:
        path = self.dir / name
        atomic_torch_save(path, model.state_dict())
        return path


def settings(run: Run) -> dict[str, Any]:
    """What decides a run's numbers, as config.json stores it: a run is only resumed with the same."""
    chosen = {"config": dataclasses.asdict(run.config), "data_dir": str(run.data_dir) if run.data_dir else None,
              "carve_test": run.carve_test,
              "data_checks": "unverified, not comparable" if run.unverified else "official checksums required",
              "workers": run.workers, "study": run.study, "storage": masked_url(run.storage),
              "from_run": run.from_run.provenance() if run.from_run else None}
    return json.loads(json.dumps(chosen, default=_jsonable))  # tuples as lists, as read back from the file


def config_record(run: Run) -> dict[str, Any]:
    """config.json: the settings, the code and machine they ran on, and when (the first start is kept)."""
    return {"experiment": run.experiment, "run_id": run.run_id, **settings(run), "package_version": __version__,
            "git_commit": git_commit(), "machine": machine(), "device": str(run.device),
            "threads": run.threads, "world_size": run.world_size,  # how it ran, not what decides its numbers
            "started": run.parts[0]["started"], "parts": run.parts}


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


# ---------------------------------------------------------------- a run's life: start, resume, interruption, end

def start(run: Run) -> None:
    """Lock the run's folder and write its config.json; then the experiment's clock starts.

    When resuming, the folder is first checked to be an interrupted run of this experiment with the
    same settings (`check_resume`): a refused resume changes nothing in it.
    """
    previous = check_resume(run) if run.resume else None
    run.lock = lock_run_dir(run.dir)
    try:
        earlier = _closed_parts(run.dir, previous.get("parts", [{"started": previous["started"]}])) if previous else []
        run.parts = [*earlier, {"started": _timestamp(run.started), "wall_time_s": None,
                                "load_average_start": load_average(), "load_average_end": None}]
        atomic_write_json(run.dir / CONFIG, config_record(run))
    except BaseException:
        if run.resume:
            release(run)  # the interrupted run stays as it was, resumable
        else:
            discard(run)
        raise
    run.clock = time.perf_counter()


def check_resume(run: Run) -> dict[str, Any]:
    """The config.json of the interrupted run in `run.dir`, if this command may continue it; else a UsageError.

    Only an `*.incomplete` folder of the same experiment, started with the same settings (config,
    seed, dataset, data, what it builds on), whose checkpoints are plain tensor files.
    """
    folder = run.dir
    if not folder.name.endswith(INCOMPLETE):
        raise UsageError(f"--resume {folder} is a finished run (no {INCOMPLETE} suffix) and is never resumed; "
                         "start a new run without --resume")
    try:
        record = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"--resume {folder} is not a run folder (no readable {CONFIG})") from None
    if record.get("experiment") != run.experiment:
        raise UsageError(f"--resume {folder} is a '{record.get('experiment')}' run; continue it with "
                         f"'dlclassics run {record.get('experiment')} --resume {folder}'")
    changed = differences(record, settings(run))
    if changed:
        raise UsageError(f"--resume {folder}: {'; '.join(changed)} (the interrupted run's settings are in its "
                         f"{CONFIG}); repeat its options, or start a new run without --resume")
    for path in sorted(folder.glob(CHECKPOINTS)):
        try:
            load_tensor_file(path, "a checkpoint written by dlclassics")
        except RunError as exc:
            raise UsageError(f"--resume {folder}: {exc}; delete that folder and start a new run") from None
    return record


def differences(record: Mapping[str, Any], chosen: Mapping[str, Any]) -> list[str]:
    """'seed was 0, now 7' for each setting that differs (settings an older config.json lacks are skipped)."""
    old = {**record.get("config", {}), **{k: v for k, v in record.items() if k in chosen and k != "config"}}
    new = {**chosen["config"], **{k: v for k, v in chosen.items() if k != "config"}}
    return [f"{name} was {_shown(old[name])}, now {_shown(new[name])}" for name in old
            if name in new and old[name] != new[name]]


def _shown(value: Any) -> str:
    return repr(value["path"]) if isinstance(value, Mapping) and "path" in value else repr(value)


def _closed_parts(folder: Path, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier parts with their wall times; a killed part (no time recorded) counts up to its last saved file."""
    closed = []
    for part in parts:
        if part.get("wall_time_s") is None:
            began = time.mktime(time.strptime(part["started"], "%Y-%m-%dT%H:%M:%S"))
            last_saved = max(path.stat().st_mtime for path in folder.rglob("*") if path.is_file() and path.name != LOCK)
            part = {**part, "wall_time_s": round(max(0.0, last_saved - began), 2), "ended": "killed"}
        closed.append(part)
    return closed


def resumable(folder: Path) -> bool:
    """An interrupted run is worth resuming once it has a checkpoint or a search journal."""
    return any(folder.glob(CHECKPOINTS)) or (folder / SEARCH_JOURNAL).exists()


def suspend(run: Run, ended: str) -> None:
    """A run stopped (`ended`: "interrupted" or "failed") that can be resumed: record this part's wall time,
    then let the folder go."""
    run.parts[-1].update(wall_time_s=round(time.perf_counter() - run.clock, 2), load_average_end=load_average(),
                         ended=ended)
    atomic_write_json(run.dir / CONFIG, config_record(run))
    release(run)


def discard(run: Run) -> None:
    """A run that failed: its folder goes (and `<out>/<experiment>/` when that leaves it empty), so no
    half-written run is left behind, or picked up by a later --resume."""
    shutil.rmtree(run.dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: other runs of the experiment live there
        run.dir.parent.rmdir()
    release(run)


def release(run: Run) -> None:
    if run.lock is not None:
        os.close(run.lock)
        run.lock = None


def finish(run: Run, title: str, metrics: Mapping[str, Any], references: Iterable[Reference]) -> Path:
    """Write metrics.json, references.json and the report, drop the checkpoints (only needed to resume),
    and rename the folder to its final name: the run now looks (and is) complete. Returns the report."""
    this_part = round(time.perf_counter() - run.clock, 2)
    check_finite(metrics)
    run.parts[-1].update(wall_time_s=this_part, load_average_end=load_average(), ended="finished")
    total = round(sum(part["wall_time_s"] for part in run.parts), 2)
    metrics = {**metrics, "wall_time_s": total, **({"wall_time_this_part_s": this_part} if len(run.parts) > 1 else {})}
    atomic_write_json(run.dir / CONFIG, config_record(run))
    atomic_write_json(run.dir / METRICS, metrics)
    write_report(run, title, metrics, references)
    for checkpoint in run.dir.glob(CHECKPOINTS):
        checkpoint.unlink()
    final = run.dir.with_name(run.run_id)
    os.replace(run.dir, final)
    run.dir = final
    (final / LOCK).unlink(missing_ok=True)
    release(run)
    return final / REPORT


def check_finite(metrics: Mapping[str, Any]) -> None:
    """A NaN or infinite metric means the run diverged: a RunError, never a number in metrics.json.
    (An experiment writes None for a metric it did not measure.)"""
    bad = [name for name, value in _leaves(metrics) if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        more = f" (and {len(bad) - 1} more metrics)" if len(bad) > 1 else ""
        raise RunError(f"metric {bad[0]}{more} came out NaN or infinite: the run diverged. Lower the learning rate "
                       "(--set lr=...) or check the inputs")


def _leaves(value: Any, name: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{name}[{index}]")
    else:
        yield name, value


# Cross-entropy this many times above chance (log of the class count) is a diverged classifier, even when finite.
DIVERGED_LOSS_FACTOR = 10.0


def check_classifier_loss(loss: float, classes: int) -> None:
    """A RunError when a classifier's final training loss is far above the loss of guessing uniformly.

    The engine stops a loss that becomes NaN; a learning rate far too large can instead leave a finite
    loss of 1e28 and a model that still gets some answers right, which must not finish as if fine.
    """
    chance = math.log(classes)
    if loss > DIVERGED_LOSS_FACTOR * chance:
        raise RunError(f"the final training loss is {loss:.3g}, far above the {chance:.2f} of guessing uniformly: the "
                       "run diverged. Lower the learning rate (--set lr=...)")


# ---------------------------------------------------------------- the report

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
    atomic_write_json(run.dir / REPORT_PARTS, {
        "notes": run.notes, "sections": [{"title": t, "markdown": m} for t, m in run.sections],
        "figures": [{"path": path, "caption": caption} for path, caption in run.figures]})
    lines = [f"# {run.experiment}: {title}", "",
             f"Wall time {metrics.get('wall_time_s', 0):.1f} s on {machine_summary()} (device {run.device}); "
             f"dlclassics {__version__}, commit {git_commit()}.", ""]
    lines += [f"{sentence}\n" for sentence in (resume_sentence(run.parts), load_sentence(run.parts),
                                                best_configuration_sentence(metrics)) if sentence]
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
    atomic_write_text(run.dir / REPORT, "\n".join(lines) + "\n")


def resume_sentence(parts: Sequence[Mapping[str, Any]]) -> str | None:
    """For a resumed run: how often, this part's wall time and the total."""
    if len(parts) < 2:
        return None
    total = sum(part["wall_time_s"] for part in parts)
    return (f"Resumed after {len(parts) - 1} interruption(s): this last part took {parts[-1]['wall_time_s']:.1f} s "
            f"of {total:.1f} s in all (the wall time above; a killed part counts up to its last saved file).")


# Other work on more than this share of the cores makes a wall time incomparable with an idle machine's.
LOADED_SHARE = 0.5


def load_sentence(parts: Sequence[Mapping[str, Any]]) -> str | None:
    """A warning when other work competed for the cores while the run was timed.

    The 1-minute load average at a part's start is other work (the run has just begun); at its end it
    includes the run's own torch threads, which are subtracted.
    """
    cores, own = os.cpu_count() or 1, torch.get_num_threads()
    starts = [part["load_average_start"][0] for part in parts if part.get("load_average_start")]
    ends = [part["load_average_end"][0] for part in parts if part.get("load_average_end")]
    others = max([*starts, *(end - own for end in ends)], default=0.0)
    if others <= LOADED_SHARE * cores:
        return None
    return (f"**Wall time measured on a loaded machine**: the 1-minute load average was {', '.join(map(str, starts))} "
            f"at the start and {', '.join(map(str, ends))} at the end on {cores} CPU cores, so other work competed "
            "for them; the times are not comparable with an idle machine's.")


def best_configuration_sentence(metrics: Mapping[str, Any]) -> str | None:
    """'The best configuration found: ...' for runs that searched (their metrics carry `best_config`)."""
    best = metrics.get("best_config")
    if not isinstance(best, Mapping) or not best:
        return None
    described = ", ".join(f"{key} = {format_number(value)}" for key, value in best.items())
    score = next(((k, v) for k, v in metrics.items() if k.startswith("best_val_") and isinstance(v, (int, float))),
                 None)
    scored = f", with {score[0].removeprefix('best_').replace('_', ' ')} {format_number(score[1])}" if score else ""
    return f"The best configuration found was {described}{scored}."


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts as a Markdown table (header from the first row)."""
    if not rows:
        return "(none)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_number(row.get(k)) for k in header) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- runs that build on runs (--from-run)

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
        finished.metrics(needs=metrics)
    return finished


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
