"""A run's life in its folder: config.json, start, resume checks, interruption, failure and finish.

A run starts by locking its folder and writing config.json (what decides its numbers, how and where it
ran); a resume is first checked to be the same run. A stopped run records its part's wall time and timers
and lets the folder go; a failed new one is removed; a finished one gets metrics.json, the verdicts and
report, loses its checkpoints and is renamed to its final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dlclassics import __version__
from dlclassics.errors import RunError, UsageError
from dlclassics.files import (
    atomic_write_json,
    jsonable,
)
from dlclassics.runs.contract import is_finite_number
from dlclassics.runs.folder import (
    CHECKPOINTS,
    CONFIG,
    HISTORY,
    INCOMPLETE,
    LOCK,
    METRICS,
    MODEL,
    REFERENCES,
    REPORT,
    git_commit,
    load_average,
    lock_run_dir,
    machine,
)
from dlclassics.runs.report import Reference, write_report
from dlclassics.runs.session import Run
from dlclassics.runs.trackers import Start, open_trackers
from dlclassics.sweep import masked_url

# ---------------------------------------------------------------- config.json

def settings(run: Run) -> dict[str, Any]:
    """What decides a run's numbers, as config.json stores it: a run is only resumed with the same."""
    chosen = {"config": dataclasses.asdict(run.config), "recipe": run.recipe, "changed_options": run.changed_options,
              "data_dir": str(run.data_dir) if run.data_dir else None, "carve_test": run.carve_test,
              "data_checks": "unverified, not comparable" if run.unverified else "official checksums required",
              "workers": run.workers, "study": run.study, "storage": masked_url(run.storage),
              "from_run": run.from_run.provenance() if run.from_run else None}
    return json.loads(json.dumps(chosen, default=jsonable))  # tuples as lists, as read back from the file


def config_record(run: Run) -> dict[str, Any]:
    """config.json: the settings, the code and machine they ran on, and when (the first start is kept)."""
    return {"experiment": run.experiment, "run_id": run.run_id, **settings(run), "package_version": __version__,
            "git_commit": git_commit(), "machine": machine(), "device": str(run.device),
            "device_requested": run.config.device, "command": run.command, "data": run.data_used,
            "headline": run.headline, "threads": run.threads, "accelerations": run.accelerations,
            "world_size": run.world_size,  # how it ran, not what decides its numbers
            "started": run.parts[0]["started"], "parts": run.parts}


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def read_record(folder: Path) -> dict[str, Any]:
    """An interrupted run's config.json; a UsageError when it is missing or not a JSON object."""
    try:
        record = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"--resume {folder} is not a run folder (no readable {CONFIG})") from None
    if not isinstance(record, dict):
        raise UsageError(f"--resume {folder}: its {CONFIG} is not a run's record (not a JSON object)")
    return record


# ---------------------------------------------------------------- a run's life: start, resume, interruption, end

def start(run: Run) -> None:
    """Lock the run's folder, write its config.json and open its trackers; then the experiment's clock starts.

    When resuming, the folder is first checked to be an interrupted run of this experiment with the
    same settings (`check_resume`): a refused resume changes nothing in it.
    """
    previous = check_resume(run) if run.resume else None
    run.lock = lock_run_dir(run.dir)
    try:
        earlier = _closed_parts(run.dir, previous.get("parts", [{"started": previous.get("started")}])) if previous else []
        run.parts = [*earlier, {"started": _timestamp(run.started), "wall_time_s": None,
                                "load_average_start": load_average(), "load_average_end": None}]
        atomic_write_json(run.dir / CONFIG, config_record(run))
        run.trackers = open_trackers(run.log, run.mlflow, tracker_start(run))
    except BaseException:
        if run.resume:
            release(run)  # the interrupted run stays as it was, resumable
        else:
            discard(run)
        raise
    run.clock = time.perf_counter()


def tracker_start(run: Run) -> Start:
    """What the trackers are told of a starting run; its hyperparameters are its recipe and resolved config."""
    params = {"recipe": run.recipe, **dataclasses.asdict(run.config)}
    return Start(run.experiment, run.run_id, run.dir, params, run.resume)


def check_resume(run: Run) -> dict[str, Any]:
    """The config.json of the interrupted run in `run.dir`, if this command may continue it; else a UsageError.

    Only an `*.incomplete` folder of the same experiment, started with the same settings (config,
    seed, dataset, data, what it builds on), whose checkpoints are plain tensor files.
    """
    from dlclassics.files import load_tensor_file

    folder = run.dir
    if not folder.name.endswith(INCOMPLETE):
        raise UsageError(f"--resume {folder} is a finished run (no {INCOMPLETE} suffix) and is never resumed; "
                         "start a new run without --resume")
    record = read_record(folder)
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
    recorded_config = record.get("config", {})
    if not isinstance(recorded_config, Mapping):
        return [f"its {CONFIG} holds no options ('config' is {recorded_config!r})"]
    old = {**recorded_config, **{k: v for k, v in record.items() if k in chosen and k != "config"}}
    new = {**chosen["config"], **{k: v for k, v in chosen.items() if k != "config"}}
    return [f"{name} was {_shown(old[name])}, now {_shown(new[name])}" for name in old
            if name in new and old[name] != new[name]]


def _shown(value: Any) -> str:
    return repr(value["path"]) if isinstance(value, Mapping) and "path" in value else repr(value)


def _closed_parts(folder: Path, parts: Any) -> list[dict[str, Any]]:
    """Earlier parts with their wall times; a killed part (no time recorded) counts up to its last saved file."""
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        raise UsageError(f"--resume {folder}: its {CONFIG} has no readable 'parts' list; it was not written by "
                         "dlclassics (or was edited): start a new run without --resume")
    closed = []
    for part in parts:
        if not isinstance(part.get("wall_time_s"), (int, float)):
            try:
                began = time.mktime(time.strptime(part["started"], "%Y-%m-%dT%H:%M:%S"))
            except (KeyError, TypeError, ValueError):
                raise UsageError(f"--resume {folder}: a part in its {CONFIG} has no readable start time "
                                 "('started' as YYYY-MM-DDTHH:MM:SS); start a new run without --resume") from None
            last_saved = max((path.stat().st_mtime for path in folder.rglob("*")
                              if path.is_file() and path.name != LOCK), default=began)
            part = {**part, "wall_time_s": round(max(0.0, last_saved - began), 2), "ended": "killed"}
        closed.append(part)
    return closed


def suspend(run: Run, ended: str) -> None:
    """A run stopped (`ended`: "interrupted" or "failed") that can be resumed: record this part's wall time,
    then let the folder go."""
    run.parts[-1].update(wall_time_s=round(time.perf_counter() - run.clock, 2), load_average_end=load_average(),
                         ended=ended, timings=run.timings)
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
    give the trackers the final metrics and files, and rename the folder to its final name: the run now
    looks (and is) complete. Returns the report."""
    this_part = round(time.perf_counter() - run.clock, 2)
    check_finite(metrics)
    run.parts[-1].update(wall_time_s=this_part, load_average_end=load_average(), ended="finished")
    total = round(sum(part["wall_time_s"] for part in run.parts), 2)
    metrics = {**metrics, **timings_of_all_parts(run), "wall_time_s": total,
               **({"wall_time_this_part_s": this_part} if len(run.parts) > 1 else {})}
    atomic_write_json(run.dir / CONFIG, config_record(run))
    atomic_write_json(run.dir / METRICS, metrics)
    write_report(run, title, metrics, references)
    for checkpoint in run.dir.glob(CHECKPOINTS):
        checkpoint.unlink()
    run.trackers.finish(numbers(metrics), [run.dir / path for path, _ in run.figures],
                        [run.dir / name for name in TRACKED_FILES if (run.dir / name).is_file()])
    final = run.dir.with_name(run.run_id)
    os.replace(run.dir, final)
    run.dir = final
    (final / LOCK).unlink(missing_ok=True)
    release(run)
    return final / REPORT


# The files trackers keep of a finished run, besides its figures.
TRACKED_FILES = (REPORT, METRICS, CONFIG, REFERENCES, HISTORY, MODEL)


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics, nested ones named by their path ("best_config.lr"), for trackers."""
    return {name: float(value) for name, value in _leaves(metrics) if isinstance(value, (int, float))}


def timings_of_all_parts(run: Run) -> dict[str, float]:
    """`run.timer`'s seconds summed over the run's parts: a resumed run's training time counts the training
    done before each interruption too (a part killed with -9 recorded none and adds nothing)."""
    totals = dict(run.timings)
    for part in run.parts[:-1]:
        earlier = part.get("timings")
        for name, seconds in (earlier.items() if isinstance(earlier, dict) else ()):
            if name in totals and is_finite_number(seconds):
                totals[name] = round(totals[name] + seconds, 2)
    return totals


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
