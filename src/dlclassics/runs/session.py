"""A run session: one experiment's run from its start to its report, in the spirit of Lightning Fabric.

The session owns everything around the experiment's own work, so an experiment module holds only its
idea: the config is resolved from the recipe, the device is resolved once, the process is seeded, the
folder is created (or an interrupted one taken back with `--resume`) and locked, and config.json records
what decides the numbers. The experiment's `run(cfg, run)` receives the `Run`: it loads data through it
(`run.load_images`, `run.use_data`: the data's source goes into the report), trains with `run.fit`
(checkpoint, resume, quiet and progress passed for it), times with `run.timer`, and saves figures,
history and model through it. At the end the session writes metrics, verdicts and the report and renames
the folder; on Ctrl-C or an error it keeps a resumable folder or removes a failed one. The trackers a
command asks for (`--log tensorboard`, `--mlflow URI`: `runs.trackers`) are checked with the options,
opened with the folder, fed by `run.fit` and the searches, and given the final metrics and files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch

from dlclassics import __version__, distributed, registry
from dlclassics.config import load_toml, parse_assignments, resolve
from dlclassics.engine import FitResult, fit, resolve_device, seed_everything
from dlclassics.errors import LostResource, RunError, UsageError
from dlclassics.files import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    jsonable,
    make_dirs,
)
from dlclassics.runs.contract import FinishedRun, read_finished_run
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
    latest_incomplete,
    load_average,
    lock_run_dir,
    machine,
    new_run_dir,
    resumable,
    run_id,
)
from dlclassics.runs.report import Reference, write_report
from dlclassics.runs.trackers import Start, Trackers, Trial, open_trackers
from dlclassics.runs.trackers import check as check_trackers
from dlclassics.sweep import finished_trials, masked_url, own_study_name

D = TypeVar("D")
RECIPES = ("seed", "tuned")
NOT_RECIPE = ("seed", "device")  # options that do not make a run "custom": another seed is the same recipe
MIN_SPLIT_IMAGES = 20  # fewer images in a split leave an empty validation set or a figure without examples


# ---------------------------------------------------------------- what the experiment receives

@dataclasses.dataclass
class Run:
    """What an experiment's `run` function receives besides its config: where to write, and how."""

    experiment: str
    dir: Path
    config: Any
    device: torch.device  # resolved once from config.device ("auto" -> cuda, mps or cpu)
    recipe: str = "tuned"
    changed_options: list[str] = dataclasses.field(default_factory=list)  # set beyond the recipe
    command: list[str] = dataclasses.field(default_factory=list)  # the `dlclassics` arguments that started it
    headline: str | None = None  # the metric that sums the run up (the experiment's HEADLINE), for listings
    data_used: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # what `use_data` recorded
    data_dir: Path | None = None
    carve_test: float = 0.0
    unverified: bool = False  # data files accepted without matching the official checksums
    quiet: bool = False
    resume: bool = False
    workers: int = 1  # local processes for searches
    storage: str | None = None  # Optuna database URL for searches shared across machines
    study: str | None = None  # the search's Optuna study (searching experiments only): its own, or one joined
    from_run: FinishedRun | None = None  # an earlier run this one builds on (`--from-run`), checked
    log: str | None = None  # `--log tensorboard`
    mlflow: str | None = None  # `--mlflow URI`
    notebook: bool = False  # progress as tqdm.auto bars (`dlclassics.run` in a Jupyter kernel)
    trackers: Trackers = dataclasses.field(default_factory=Trackers)  # opened when the run starts (rank 0 only)
    epochs_started: int = 0  # epochs of the run's trainings so far: the trackers' steps of the next one follow
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)  # intra-op threads per process
    world_size: int = 1  # processes training together (DistributedDataParallel)
    generator: torch.Generator = dataclasses.field(default_factory=torch.Generator)  # seeded with the run
    notes: list[str] = dataclasses.field(default_factory=list)
    figures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    sections: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # `run.timer` results, into the metrics
    comparable: bool = True
    started: float = dataclasses.field(default_factory=time.time)  # when this part of the run started
    parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one per start or resume, this one last
    lock: int | None = None  # the descriptor holding the folder's lock while the run is going
    clock: float = 0.0  # time.perf_counter() when the experiment's own work started

    @property
    def run_id(self) -> str:
        return run_id(self.dir)

    @property
    def figures_dir(self) -> Path:
        path = self.dir / "figures"
        make_dirs(path)
        return path

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    # ------------------------------------------------------------ data, training, time

    def load_images(self, name: str, loader: Callable[..., D] | None = None) -> D:
        """The image dataset `name` as this run's options say (data folder, carved test split, checksums),
        its source noted in the report. `loader` defaults to `data.images.load_images` (CIFAR passes its own)."""
        if loader is None:
            from dlclassics.data.images import load_images as loader
        data = loader(name, self.data_dir, self.carve_test, self.unverified)
        sizes = {"training": len(data.train_x), "test": len(data.test_x)}
        if min(sizes.values()) < MIN_SPLIT_IMAGES:
            raise RunError(f"data: {name} from {data.source} has {sizes['training']:,} training and {sizes['test']:,} "
                           f"test images; the experiments need at least {MIN_SPLIT_IMAGES} in each to train, hold "
                           "out and draw their figures")
        return self.use_data(data)

    def use_data(self, data: D) -> D:
        """Record loaded data: its summary (`data.summary`) in the report's notes, its name and source in
        config.json (the data the run really used, whatever its options say), and the run marked not
        comparable with its reason (`data.note`) when the data is not the official set."""
        self.note(data.summary)
        self.data_used.append({"name": data.name, "source": str(data.source), "comparable": bool(data.comparable)})
        if not data.comparable:
            self.mark_not_comparable(data.note)
        return data

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensor.to(self.device) for tensor in tensors)

    def fit(self, model: torch.nn.Module, data: Sequence[torch.Tensor], **options: Any) -> FitResult:
        """`engine.fit` with this run's checkpoint, resume flag, quietness, progress label and generator
        (each can be given to override it).

        Each epoch's history row also goes to the run's trackers, at the epochs of the run's earlier
        trainings plus its epoch: the settings of a sweep, or a training of one epoch per call, follow
        each other. In a notebook the progress is a tqdm.auto bar per training instead of the engine's,
        which draws a bar on a terminal only and would print a line per epoch there.
        """
        options = {"checkpoint": self.checkpoint_path, "resume": self.resume, "quiet": self.quiet,
                   "desc": self.experiment, "generator": self.generator, **options}
        first_step, caller = self.epochs_started, options.get("on_epoch_end")
        self.epochs_started += options["epochs"]
        with epoch_bar(options["desc"], options["epochs"], shown=self.notebook and not options["quiet"]) as bar:
            def on_epoch_end(model: torch.nn.Module, epoch: int, row: dict[str, float]) -> None:
                if caller is not None:
                    caller(model, epoch, row)
                self.trackers.epoch(first_step + epoch, row)
                bar(epoch, row)

            return fit(model, data, **{**options, "on_epoch_end": on_epoch_end,
                                       "quiet": options["quiet"] or self.notebook})

    def log_trials(self, search: str, trials: Sequence[Trial]) -> None:
        """A search's finished trials, for the run's trackers (`search` names it among the run's searches)."""
        self.trackers.trials(search, trials)

    @contextlib.contextmanager
    def timer(self, metric: str) -> Iterator[None]:
        """Time the block; its seconds become the metric `metric` (rounded to 0.01 s)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[metric] = round(time.perf_counter() - started, 2)

    # ------------------------------------------------------------ the report's parts

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


@contextlib.contextmanager
def epoch_bar(desc: str, epochs: int, shown: bool) -> Iterator[Callable[[int, Mapping[str, float]], None]]:
    """A tqdm.auto bar over a training's epochs, the last epoch's metrics beside it (in Jupyter a widget);
    yields what advances it to an epoch. Nothing is drawn unless `shown`."""
    if not shown:
        yield lambda epoch, row: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs, desc=desc, unit="epoch")

    def advance(epoch: int, row: Mapping[str, float]) -> None:
        bar.update(epoch - bar.n)  # a resumed training starts after its checkpoint's epoch
        bar.set_postfix({key: f"{value:.4g}" for key, value in row.items() if key != "epoch"})

    try:
        yield advance
    finally:
        bar.close()


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
    that folder and return None."""
    request, place = prepared.request, prepared.place
    threads = distributed.use_threads(place.local_world_size if place else 1, request.threads)
    device = resolve_device(prepared.config.device)
    hint = distributed.busy_machine_hint(threads, request.threads) if place is None or place.rank == 0 else None
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
               headline=getattr(prepared.module, "HEADLINE", None),
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


def read_record(folder: Path) -> dict[str, Any]:
    """An interrupted run's config.json; a UsageError when it is missing or not a JSON object."""
    try:
        record = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"--resume {folder} is not a run folder (no readable {CONFIG})") from None
    if not isinstance(record, dict):
        raise UsageError(f"--resume {folder}: its {CONFIG} is not a run's record (not a JSON object)")
    return record


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
            "headline": run.headline, "threads": run.threads,
            "world_size": run.world_size,  # how it ran, not what decides its numbers
            "started": run.parts[0]["started"], "parts": run.parts}


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


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
            if name in totals and isinstance(seconds, (int, float)) and math.isfinite(seconds):
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
