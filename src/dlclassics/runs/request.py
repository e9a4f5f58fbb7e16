"""What a command asks for, checked and run: `dlclassics run` and `dlclassics.run(...)` come here.

A `RunRequest` holds the command's values; `prepare` resolves the config (recipe, quick size, TOML file,
shortcut options, --set) and checks every option, the trackers and the `--from-run` folder before any
folder exists; `run_prepared` runs the experiment in this process or as one rank of a process group, and
`execute` takes it through its life (`runs.lifecycle`): start, the experiment's work, and its end --
finished, interrupted (resumable), lost (a process or the study's database went away: kept), or failed.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from dlclassics import distributed, registry
from dlclassics.config import load_toml, parse_assignments, resolve
from dlclassics.engine import accelerations, resolve_device, run_accelerations, seed_everything
from dlclassics.errors import LostResource, RunError, UsageError
from dlclassics.runs.contract import FinishedRun, read_finished_run
from dlclassics.runs.folder import (
    latest_incomplete,
    new_run_dir,
    resumable,
    run_id,
)
from dlclassics.runs.lifecycle import discard, finish, read_record, start, suspend
from dlclassics.runs.session import Run
from dlclassics.runs.trackers import check as check_trackers
from dlclassics.sweep import finished_trials, own_study_name

RECIPES = ("seed", "tuned")
NOT_RECIPE = ("seed", "device")  # options that do not make a run "custom": another seed is the same recipe


# ---------------------------------------------------------------- what a command asks for

@dataclasses.dataclass
class RunRequest:
    """One `dlclassics run` as plain values: what the command line (or a Python caller) asks for."""

    experiment: str
    recipe: str = "tuned"
    quick: bool = False
    config_file: Path | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # shortcut flags (dataset, epochs, ...)
    assignments: list[str] = dataclasses.field(default_factory=list)  # --set KEY=VALUE
    data_dir: Path | None = None
    carve_test: float = 0.0
    unverified: bool = False
    out: Path = Path("runs")
    resume: str | None = None  # "latest" or a folder
    workers: int = 1
    nproc: int = 1
    threads: int | None = None
    storage: str | None = None
    study: str | None = None
    from_run: Path | None = None
    quiet: bool = False
    log: str | None = None  # --log tensorboard
    mlflow: str | None = None  # --mlflow URI
    notebook: bool = False  # progress as tqdm.auto bars (`dlclassics.run` sets it in a Jupyter kernel)
    accelerations: dict[str, str] = dataclasses.field(default_factory=dict)  # --capture, --precision, --channels-last
    argv: list[str] = dataclasses.field(default_factory=list)  # what --nproc hands to each process; resume repeats it


@dataclasses.dataclass
class Prepared:
    """A request checked and resolved, before any folder exists."""

    request: RunRequest
    module: ModuleType
    config: Any
    changed_options: list[str]  # options whose values differ from the recipe's (seed and device aside)
    from_run: FinishedRun | None
    place: distributed.Placement | None


def prepare(request: RunRequest) -> Prepared:
    """Resolve the config (recipe, quick size, TOML file, shortcut options, --set) and check every option,
    the `--from-run` folder and the trackers: a bad one is a UsageError before anything is written."""
    module = registry.load(request.experiment)
    if request.recipe not in RECIPES:
        raise UsageError(f"recipe '{request.recipe}' is unknown; use {' or '.join(RECIPES)}")
    layers = [module.RECIPES.get(request.recipe, {}),
              {**module.QUICK, "quick": True} if request.quick else {},
              load_toml(request.config_file) if request.config_file else {},
              request.options,
              parse_assignments(request.assignments)]
    config = resolve(module.Config, *layers, searched=getattr(module, "SEARCHED", None))
    recipe_config = resolve(module.Config, *layers[:2])
    changed = [f.name for f in dataclasses.fields(config) if f.name not in NOT_RECIPE
               and getattr(config, f.name) != getattr(recipe_config, f.name)]
    if request.study and not hasattr(module, "SEARCHED"):
        raise UsageError(f"--study: {request.experiment} runs no hyperparameter search")
    if request.study and not request.storage:
        raise UsageError("--study joins a study in a shared database: give its --storage URL too")
    if not 0.0 <= request.carve_test < 1.0:
        raise UsageError(f"--carve-test must be a fraction in [0, 1); got {request.carve_test}")
    place = distributed.placement()
    check_processes(request, place)
    from_run = None
    if request.from_run is not None:
        upstream = getattr(module, "FROM_RUN", None)
        if upstream is None:
            raise UsageError(f"'{request.experiment}' does not build on another run; drop --from-run")
        from_run = read_finished_run(request.from_run, upstream.experiments, upstream.files, upstream.metrics)
    if place is None or place.rank == 0:  # the other processes of a group log nothing
        check_trackers(request.log, request.mlflow)
    return Prepared(request, module, config, changed, from_run, place)


def check_processes(request: RunRequest, place: distributed.Placement | None) -> None:
    """--nproc against torchrun's variables, and against the search options that start processes of their own."""
    if request.nproc < 1:
        raise UsageError(f"--nproc must be at least 1; got {request.nproc}")
    if place is not None and request.nproc not in (1, place.local_world_size):
        raise UsageError(f"--nproc {request.nproc}, but torchrun started {place.local_world_size} processes on "
                         "this machine; leave --nproc out under torchrun")
    if (place.world_size if place else request.nproc) > 1 and (request.workers > 1 or request.storage):
        raise UsageError("--workers and --storage run search trials in processes of their own; with --nproc or "
                         "torchrun every trial trains on all the processes instead: leave them out")


def launches_processes(prepared: Prepared) -> bool:
    """Whether this command starts `--nproc` processes (outside torchrun) instead of running here."""
    return prepared.request.nproc > 1 and prepared.place is None


def run_prepared(prepared: Prepared) -> Path | None:
    """Run the experiment in this process, or as one rank of a process group (--nproc, torchrun): rank 0
    records the run in its folder and returns its report; the other ranks run it in a scratch copy of
    that folder and return None. Every fit in it takes the request's accelerations (engine.accelerations)."""
    request, place = prepared.request, prepared.place
    threads = distributed.use_threads(place.local_world_size if place else 1, request.threads)
    device = resolve_device(prepared.config.device)
    hint = distributed.busy_machine_hint(threads, request.threads) if place is None or place.rank == 0 else None
    with accelerations(**request.accelerations):
        if place is None:
            return execute(prepared.module, new_run(prepared, device, threads), hint)
        with distributed.process_group(place, device) as device:
            if place.rank == 0:
                run = new_run(prepared, device, threads)
                distributed.send_run_folder(run.dir, run.resume)
                return execute(prepared.module, run, hint)
            try:
                with distributed.scratch_run_folder() as (folder, resume):
                    work(prepared.module, run_record(prepared, device, threads, folder, resume))
            except KeyboardInterrupt:  # rank 0 says how to resume
                raise RunError("interrupted") from None
            return None


def new_run(prepared: Prepared, device: torch.device, threads: int) -> Run:
    """The Run: in a new folder, or in the interrupted one `--resume` names (checked when it starts)."""
    request = prepared.request
    if request.resume == "latest":
        folder = latest_incomplete(request.out, request.experiment)
        if folder is None:
            raise UsageError(f"--resume: no interrupted run of '{request.experiment}' under {request.out}")
    elif request.resume:
        folder = Path(request.resume)
        if not folder.is_dir():
            raise UsageError(f"--resume {folder}: no such run folder")
    else:
        folder = new_run_dir(request.out, request.experiment)
    run = run_record(prepared, device, threads, folder, bool(request.resume))
    if prepared.config.quick:
        run.mark_not_comparable("--quick: a smoke-test size run, not comparable with the source")
    return run


def run_record(prepared: Prepared, device: torch.device, threads: int, folder: Path, resume: bool) -> Run:
    """What the experiment's `run` receives; ranks other than 0 stay quiet."""
    request = prepared.request
    return Run(experiment=request.experiment, dir=folder, config=prepared.config, device=device,
               recipe=request.recipe, changed_options=prepared.changed_options, command=request.argv,
               data_dir=request.data_dir, carve_test=request.carve_test, unverified=request.unverified,
               quiet=request.quiet or distributed.rank() > 0, resume=resume, workers=request.workers,
               storage=request.storage, from_run=prepared.from_run, log=request.log, mlflow=request.mlflow,
               notebook=request.notebook,
               study=study_of(prepared.module, request, folder, resume), threads=threads,
               headline=getattr(prepared.module, "HEADLINE", None), accelerations=run_accelerations(),
               world_size=distributed.world_size())


def study_of(module: ModuleType, request: RunRequest, folder: Path, resume: bool) -> str | None:
    """A searching experiment's study: the one it joins, the one the resumed run used, or its own."""
    if not hasattr(module, "SEARCHED"):
        return None
    recorded = None
    if resume:
        record = read_record(folder)
        recorded = record.get("study") if isinstance(record.get("study"), str) else None
    return request.study or recorded or own_study_name(request.experiment, run_id(folder))


def work(module: ModuleType, run: Run) -> dict[str, Any]:
    """The experiment's own work, on a process seeded with the run's seed."""
    run.generator = seed_everything(run.config.seed)
    return module.run(run.config, run)


def execute(module: ModuleType, run: Run, hint: str | None = None) -> Path:
    """Run one experiment in its run folder and return the report's path; `hint` (advice for a busy
    machine) is printed once the run has started, never before a usage error.

    Only an interruption leaves a new run's folder behind, and only once there is something to resume;
    an error removes it, so a later plain `--resume` never picks up a failed run. A resumed run that
    fails is kept (its checkpoints hold the work of earlier parts), to be resumed again.
    """
    start(run)
    if hint:
        print(f"dlclassics: {hint}", file=sys.stderr)
    try:
        with run.trackers.closing():
            return finish(run, module.TITLE, work(module, run), module.REFERENCES)
    except KeyboardInterrupt:
        if not has_work(run):
            discard(run)
            raise RunError("interrupted before the first checkpoint: nothing to resume yet") from None
        suspend(run, "interrupted")
        raise RunError(f"interrupted; continue with: {resume_command(run.command, run.experiment, run.dir)}") from None
    except BaseException as exc:
        lost = exc if isinstance(exc, LostResource) else distributed.lost_group(exc)
        if lost is not None and (run.resume or has_work(run)):  # nothing the run did is lost: keep it
            suspend(run, "failed")
            raise LostResource(f"{lost}; the run folder is kept: continue with: "
                               f"{resume_command(run.command, run.experiment, run.dir)}") from None
        if not run.resume:
            discard(run)
            if lost is not None:
                raise lost from None
            raise
        suspend(run, "failed")
        if isinstance(exc, (UsageError, RunError)):
            raise type(exc)(f"{exc}; the interrupted run {run.dir} is kept: resume it again once that is fixed") \
                from None
        raise


def has_work(run: Run) -> bool:
    """Whether a stopped run holds work worth resuming: a checkpoint or search journal in its folder, or
    finished trials of its study in a shared database (`--storage`), which a folder alone does not show."""
    if resumable(run.dir):
        return True
    return bool(run.storage and run.study and finished_trials(run.storage, run.study))


def resume_command(command: Sequence[str], experiment: str, folder: Path) -> str:
    """The command that continues the run in `folder`: the one that started it (`command`, its options
    included, which a resume must repeat) with `--resume FOLDER` in place of any earlier --resume, quoted
    for a shell."""
    words, skip = [], False
    for index, word in enumerate(command):
        if skip:
            skip = False
            continue
        if word == "--resume":
            following = command[index + 1] if index + 1 < len(command) else ""
            skip = bool(following) and not following.startswith("-") and Path(following).is_dir()
            continue
        if not word.startswith("--resume="):
            words.append(word)
    words = words or ["run", experiment]
    return shlex.join(["dlclassics", *words, "--resume", str(folder)])
