"""Hyperparameter search through Optuna: random search or TPE, resumable, with parallel workers.

A search of `n` trials is `n` slots, queued as waiting trials when the study is created: each carries
its index 0..n-1 and, when the points are drawn up front, its grid point. Processes take waiting slots
one at a time until none is left, so exactly `n` trials finish, however many processes share the work.
A slot whose trial did not finish (Ctrl-C, a killed worker) is queued again with the same index and
parameters, so a resumed search tries the same points with the same seeds as an uninterrupted one and
its table has no gap; a trial that fails by its own error (a RunError, such as a diverging loss) keeps
its slot and is not retried.

The study is a journal file in the run folder by default (Optuna's JournalFileBackend: safe for
several local processes). Only this run's processes use it, so a trial still "running" once they have
all stopped belongs to a dead process. `--storage URL` takes any Optuna database URL; for PostgreSQL
shared by many machines we use a small connection pool with pre-ping and heartbeats: any process fails
a trial whose heartbeat stopped and queues its slot again. The study is named after the run; another
run joins it on purpose with `--study NAME`, and only with the same search (its `signature`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import signal
import sys
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import torch

from dlclassics.errors import LostResource, RunError, UsageError

Objective = Callable[[optuna.trial.Trial], float]
# How often a running trial reports it is alive, and after how long without a report it is failed.
HEARTBEAT_SECONDS = int(os.environ.get("DLCLASSICS_SWEEP_HEARTBEAT", "10"))
GRACE_SECONDS = int(os.environ.get("DLCLASSICS_SWEEP_GRACE", "30"))
STOP_SECONDS = 30  # how long stopped workers get to leave their trials in order before they are killed
INDEX = "index"  # trial user attribute: the slot the trial fills
GROUP = "group"  # trial user attribute: trials of one group can train together (see BatchedObjective)
SURPLUS = "surplus"  # trial user attribute: taken when no slot was left, pruned before doing any work
ERROR = "error"  # trial user attribute: the RunError that failed it
SIGNATURE = "signature"  # study user attribute: what the trials' values depend on
STATES = optuna.trial.TrialState
LOST_STORAGE = 3  # a worker's exit code when the study's storage went away

# Our own one line per trial replaces Optuna's log (which prints a traceback for every failed trial).
optuna.logging.set_verbosity(optuna.logging.ERROR)


@dataclasses.dataclass(frozen=True)
class Search:
    """What to search: `n_trials` slots, how they are drawn, and what their values depend on.

    `signature` (JSON values: the search space, the data, the training recipe) is recorded in the
    study; a resumed or joined study with another signature is refused, since its trials would
    not be this search's. With a finite `grid` and the random sampler, the points are distinct.
    """

    n_trials: int
    signature: dict[str, Any]
    direction: str = "maximize"
    sampler: str = "random"
    seed: int = 0
    grid: dict[str, tuple] | None = None
    metric: str = "value"  # what the trial lines call the value


@dataclasses.dataclass(frozen=True)
class StudyPlace:
    """Which study, and where: a journal in `folder`, or the database at `storage_url`."""

    name: str
    folder: Path
    storage_url: str | None = None
    join: bool = False  # join an existing study (refused when there is none) instead of starting or resuming one

    @property
    def heartbeats(self) -> bool:
        """Trials in a database send heartbeats (the journal is the run's own: see `_fail_orphans`)."""
        return self.storage_url is not None

    def describe(self) -> str:
        where = masked_url(self.storage_url) if self.storage_url else f"{self.folder / 'study.journal'}"
        return f"study '{self.name}' in {where}"


@dataclasses.dataclass(frozen=True)
class BatchedObjective:
    """An objective whose trials can train together: those of one `group` (their architecture, say), up to
    `size` at a time, as one stacked network that fills a device one trial alone leaves idle.

    `suggest(trial)` gives a trial's parameters; `group(params)` a string naming what trials must share to
    train together (None: this one trains alone); `train(batch)` trains a batch of (trial, parameters) and
    returns each trial's value, or the RunError that failed it. Called with one trial it is a plain
    objective, which is how a search on a shared database (whose trials send heartbeats) runs it.
    """

    suggest: Callable[[optuna.trial.Trial], dict[str, Any]]
    group: Callable[[dict[str, Any]], str | None]
    train: Callable[[list[tuple[optuna.trial.Trial, dict[str, Any]]]], list[float | RunError]]
    size: int

    def __call__(self, trial: optuna.trial.Trial) -> float:
        outcome = self.train([(trial, self.suggest(trial))])[0]
        if isinstance(outcome, RunError):
            raise outcome
        return outcome


@dataclasses.dataclass(frozen=True)
class WorkerObjective:
    """How a worker process builds the objective: `build(setup)`.

    Both travel to spawned processes by pickling: `build` must be a module-level function and
    `setup` plain data (a config dict, the space, where the data is), so that each worker loads
    its data once and nothing is imported by name.
    """

    build: Callable[[Any], Objective]
    setup: Any


def own_study_name(experiment: str, run_id: str) -> str:
    """The study a run starts: named after the experiment and the run id."""
    return f"{experiment}-{run_id}"


def trial_index(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> int:
    """The slot a trial fills: its number in the search table and the offset of its seed."""
    return trial.user_attrs[INDEX]


# ---------------------------------------------------------------- storage and study

def masked_url(url: str | None) -> str | None:
    """A database URL fit to print or record: its password (user:PASSWORD@, ?password=) shown as ***."""
    return None if url is None else without_password(url, url)


def without_password(text: str, url: str) -> str:
    """`text` (a URL, or a driver's message that may quote it) with the password of `url` shown as ***:
    the one place a storage password is hidden before anything is printed or recorded."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "(a URL that could not be parsed: not shown)"
    if password:
        text = text.replace(f":{password}@", ":***@").replace(password, "***")
        text = text.replace(urllib.parse.unquote(password), "***")
    for pair in parts.query.split("&"):
        if pair.lower().startswith("password=") and len(pair) > len("password="):
            text = text.replace(pair, "password=***")
    return text


def open_storage(url: str | None, folder: Path) -> optuna.storages.BaseStorage:
    """The study's storage: a journal file in `folder`, or the database at `url`."""
    if url is None:
        from optuna.storages.journal import JournalFileBackend

        folder.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    if "://" not in url:
        raise UsageError("--storage expects a database URL such as postgresql://user@host/db "
                         "(the value given has no '://')")
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna: no warning for each process
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True},
                heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=_queue_again)
    except ImportError as exc:  # SQLAlchemy found no driver for the URL's database
        raise UsageError(f"--storage {masked_url(url)} needs a database driver that is not installed "
                         f"({exc.name or exc}): pip install 'dlclassics[postgres]' for PostgreSQL (psycopg2)") from None
    except Exception as exc:  # server down, bad credentials: all reach the user as one line
        reason = without_password(str(exc).splitlines()[0], url)
        raise RunError(f"cannot open the study storage {masked_url(url)}: {reason}") from None


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    raise UsageError(f"unknown sampler '{kind}'; use random or tpe")


def _open_study(place: StudyPlace, search: Search) -> optuna.Study:
    """Start, resume or (with `place.join`) join the study, and check it is this search's."""
    storage = open_storage(place.storage_url, place.folder)
    sampler = make_sampler(search.sampler, search.seed)
    if place.join:
        try:
            study = optuna.load_study(study_name=place.name, storage=storage, sampler=sampler)
        except KeyError:
            raise UsageError(f"--study: there is no {place.describe()}; give the name another run "
                             "recorded in its config.json, or leave out --study to start a new study") from None
    else:
        study = optuna.create_study(study_name=place.name, storage=storage, direction=search.direction,
                                    sampler=sampler, load_if_exists=True)
    wanted = json.loads(json.dumps(search.signature))  # as stored: tuples become lists
    recorded = study.user_attrs.get(SIGNATURE)
    if recorded is None:
        study.set_user_attr(SIGNATURE, wanted)
    elif recorded != wanted:
        differ = sorted(key for key in wanted.keys() | recorded.keys() if wanted.get(key) != recorded.get(key))
        raise UsageError(f"{place.describe()} searches something else (its {', '.join(differ)} differ from this "
                         "run's options); use the options it was started with, or start a new study")
    return study


# ---------------------------------------------------------------- slots

def distinct_points(grid: dict[str, tuple], n: int, seed: int) -> list[dict[str, Any]]:
    """Random search without repetition: `n` distinct points of a finite grid (all of it when smaller).

    Optuna's RandomSampler draws with replacement, so on a small grid it tries the same point twice.
    """
    sizes = [len(choices) for choices in grid.values()]
    picks = torch.randperm(math.prod(sizes), generator=torch.Generator().manual_seed(seed))[:n]
    points = []
    for flat in picks.tolist():
        point = {}
        for (name, choices), size in zip(grid.items(), sizes):
            flat, index = divmod(flat, size)
            point[name] = choices[index]
        points.append(point)
    return points


def _done(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished, or failed by its own error (not retried)."""
    return trial.state == STATES.COMPLETE or (trial.state == STATES.FAIL and ERROR in trial.user_attrs)


def _holds_slot(trial: optuna.trial.FrozenTrial) -> bool:
    """Waiting, running or done: the slot needs no new try."""
    return trial.state in (STATES.WAITING, STATES.RUNNING) or _done(trial)


def _slot_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if INDEX in t.user_attrs]


def _queue_slots(study: optuna.Study, search: Search,
                 group: Callable[[dict[str, Any]], str | None] | None = None) -> list[int]:
    """Queue each slot 0..n-1 that no trial holds: again with the parameters of its unfinished try,
    or new (a distinct grid point in a new random search, else whatever the sampler draws).
    With `group` (a BatchedObjective's), slots whose parameters are known are labelled with their group
    and queued group by group, so that trials of one group are taken one after another.
    Returns the slots queued again; they run after the slots that were waiting already."""
    trials = _slot_trials(study)
    held = {trial_index(t) for t in trials if _holds_slot(t)}
    tried = {trial_index(t): t.params for t in trials}
    points = []
    if not trials and search.grid is not None and search.sampler == "random":
        points = distinct_points(search.grid, search.n_trials, search.seed)
    slots = []
    for index in range(search.n_trials):
        if index not in held:
            params = tried.get(index, points[index] if index < len(points) else {})
            label = group(params) if group is not None and params else None
            attributes = {INDEX: index} if label is None else {INDEX: index, GROUP: label}
            slots.append((label or "", index, params, attributes))
    if group is not None:
        slots.sort(key=lambda slot: slot[:2])
    for _, _, params, attributes in slots:
        study.enqueue_trial(params, user_attrs=attributes)
    return sorted(set(tried) - held)


def _say_resuming(study: optuna.Study, n_trials: int, again: list[int]) -> None:
    """"resuming at trial N" when some slots are finished, naming the interrupted ones that run again."""
    finished = {trial_index(t) for t in _slot_trials(study) if _done(t)}
    if 0 < len(finished) < n_trials:
        first = min(set(range(n_trials)) - finished)
        rerun = f"; interrupted, run again after the waiting ones: {', '.join(map(str, again))}" if again else ""
        print(f"resuming at trial {first} ({len(finished)} of {n_trials} trials finished{rerun})",
              file=sys.stderr, flush=True)


def _queue_again(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Called for a trial whose heartbeat stopped, by the one process that failed it: queue its slot again."""
    if INDEX in trial.user_attrs and not any(trial_index(t) == trial_index(trial) and _holds_slot(t)
                                             for t in _slot_trials(study)):
        study.enqueue_trial(trial.params, user_attrs={INDEX: trial_index(trial)})


def _fail_orphans(study: optuna.Study, heartbeats: bool) -> None:
    """Fail the trials whose process is gone. A database knows them by their stopped `heartbeats`; in the
    run's own journal, called while none of the run's processes runs a trial, every running trial is one."""
    if heartbeats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return
    for trial in study.get_trials(deepcopy=False, states=(STATES.RUNNING,)):
        study.tell(trial.number, state=STATES.FAIL)


# ---------------------------------------------------------------- running trials

def _beaten(study: optuna.Study, trial: optuna.trial.Trial) -> bool:
    """Whether this trial's slot is filled already: taken from an empty queue (no slot), or another try of
    the same slot finished or runs with a lower number (two processes queued a slot again at once)."""
    index = trial.user_attrs.get(INDEX)
    if index is None:
        return True
    for other in _slot_trials(study):
        if trial_index(other) != index or other.number == trial.number:
            continue
        if _done(other) or (other.state == STATES.RUNNING and other.number < trial.number):
            return True
    return False


def _guarded(objective: Objective, study: optuna.Study) -> Objective:
    def run_one(trial: optuna.trial.Trial) -> float:
        if _beaten(study, trial):
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned("surplus: the slot is filled already")
        try:
            return objective(trial)
        except RunError as exc:
            trial.set_user_attr(ERROR, str(exc))
            raise
    return run_one


def _trial_line(metric: str) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """One printed line per finished trial: its index, configuration, value and wall time."""
    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if INDEX not in trial.user_attrs or SURPLUS in trial.user_attrs:
            return
        config = ", ".join(f"{name}={value}" for name, value in trial.params.items())
        if trial.state == STATES.COMPLETE:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
            print(f"trial {trial_index(trial)}: {config} -> {metric} {trial.value:.4f} ({seconds:.1f} s)",
                  file=sys.stderr, flush=True)
        elif trial.state == STATES.FAIL:
            print(f"trial {trial_index(trial)}: {config} failed: {trial.user_attrs.get(ERROR)}",
                  file=sys.stderr, flush=True)
    return report


def run_trials(study: optuna.Study, objective: Objective, *, heartbeats: bool = False, metric: str = "value",
               quiet: bool = False, stop: StopFlag | None = None) -> None:
    """This process's share: take waiting slots one at a time until none is left (or `stop` is raised).

    With `heartbeats` (a database shared by many machines) it also waits for other processes' running
    trials: if one of them dies, its slot comes back to the queue and is run here.
    """
    guarded = _guarded(objective, study)
    callbacks = [] if quiet else [_trial_line(metric)]
    batched = isinstance(objective, BatchedObjective) and objective.size > 1 and not heartbeats
    while stop is None or not stop.is_raised():
        with _storage_guard(study):
            if heartbeats:
                _fail_orphans(study, heartbeats)
            states = {t.state for t in _slot_trials(study)}
            if STATES.WAITING in states and batched:
                _run_batch(study, objective, callbacks)
            elif STATES.WAITING in states:
                study.optimize(guarded, n_trials=1, catch=(RunError,), callbacks=callbacks)
            elif STATES.RUNNING in states and heartbeats:
                time.sleep(HEARTBEAT_SECONDS)
            else:
                return


def _next_group(study: optuna.Study, size: int) -> int:
    """How many waiting trials, from the next one on, share its group (at most `size`; 1 without a group)."""
    waiting = sorted(study.get_trials(deepcopy=False, states=(STATES.WAITING,)), key=lambda t: t.number)
    label = waiting[0].user_attrs.get(GROUP) if waiting else None
    if label is None:
        return 1
    count = 0
    for trial in waiting[:size]:
        if trial.user_attrs.get(GROUP) != label:
            break
        count += 1
    return count


def _by_group(taken: list[tuple[optuna.trial.Trial, dict[str, Any]]],
              group: Callable[[dict[str, Any]], str | None]) -> list[list[tuple[optuna.trial.Trial, dict[str, Any]]]]:
    """The trials taken, as batches that train together: one per group, and one per trial without a group."""
    batches: dict[Any, list[tuple[optuna.trial.Trial, dict[str, Any]]]] = {}
    for trial, params in taken:
        label = group(params)
        batches.setdefault(label if label is not None else ("alone", trial.number), []).append((trial, params))
    return list(batches.values())


def _run_batch(study: optuna.Study, objective: BatchedObjective,
               callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]]) -> None:
    """Take the next waiting trials of one group, train them together, and record each one's outcome.

    Another process may take some of them first: a trial taken here then belongs to another group, and
    trains in a batch of its own. An interruption (or an error that is not a trial's own) fails the
    trials taken here without an error attribute, so a resumed search queues their slots again.
    """
    taken: list[tuple[optuna.trial.Trial, dict[str, Any]]] = []
    told: set[int] = set()
    try:
        for _ in range(_next_group(study, objective.size)):
            trial = study.ask()
            if _beaten(study, trial):
                trial.set_user_attr(SURPLUS, True)
                study.tell(trial, state=STATES.PRUNED)
                break
            taken.append((trial, objective.suggest(trial)))
        for batch in _by_group(taken, objective.group):
            for (trial, _), outcome in zip(batch, objective.train(batch), strict=True):
                if isinstance(outcome, RunError):
                    trial.set_user_attr(ERROR, str(outcome))
                    frozen = study.tell(trial, state=STATES.FAIL)
                else:
                    frozen = study.tell(trial, outcome)
                told.add(trial.number)
                for callback in callbacks:
                    callback(study, frozen)
    except BaseException:
        for trial, _ in taken:
            if trial.number not in told:
                study.tell(trial, state=STATES.FAIL)
        raise


@contextlib.contextmanager
def _storage_guard(study: optuna.Study) -> Iterator[None]:
    """An error while the study's storage cannot be reached (a database that went down) is a LostResource:
    one line, and the trials already finished stay in the storage to resume. Any other error is raised as
    it is (and the storage's own failure inside Optuna may surface as any exception type)."""
    try:
        yield
    except (RunError, UsageError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _reachable(study):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LostResource(f"lost the study's storage ({first[:200]}); the finished trials are kept there, and "
                           "the run resumes once it is reachable again") from None


def _reachable(study: optuna.Study) -> bool:
    try:
        study.get_trials(deepcopy=False)
        return True
    except Exception:  # whatever the driver raises for a server that is gone
        return False


def _interrupt_once(signum: int, frame: Any) -> None:
    """A worker's Ctrl-C: stop the running trial; ignore the copies that follow (the terminal's and the
    main process's), so the worker leaves its trial in order instead of dying mid-write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@dataclasses.dataclass(frozen=True)
class StopFlag:
    """Tells the worker processes to stop after their trial: a file, not a multiprocessing Event, whose
    named semaphore would tie the workers to multiprocessing's resource tracker (a tracker that dies then
    fills stderr with KeyError tracebacks when the workers end)."""

    path: Path

    def raise_(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def is_raised(self) -> bool:
        return self.path.exists()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _worker(worker_objective: WorkerObjective, search: Search, place: StudyPlace, seed: int, threads: int,
            quiet: bool, stop: StopFlag) -> None:
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        if stop.is_raised():
            return
        torch.set_num_threads(threads)
        objective = worker_objective.build(worker_objective.setup)
        study = optuna.load_study(study_name=place.name, storage=open_storage(place.storage_url, place.folder),
                                  sampler=make_sampler(search.sampler, seed))
        run_trials(study, objective, heartbeats=place.heartbeats, metric=search.metric, quiet=quiet, stop=stop)
    except KeyboardInterrupt:
        pass  # its trial failed and is queued again when the search resumes; the main process says so
    except LostResource:
        sys.exit(LOST_STORAGE)  # the main process meets the same storage and says so, once


def _stop_workers(processes: list[Any], stop: StopFlag) -> None:
    """Ctrl-C reached the main process: stop every worker and wait until each has left its trial in order."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon them mid-write
    try:
        stop.raise_()
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_workers(worker_objective: WorkerObjective, search: Search, place: StudyPlace, seed: int, workers: int,
                 quiet: bool) -> list[int]:
    """`workers` spawned processes share the study until no slot is waiting; returns their exit codes."""
    threads = worker_threads(workers)
    context = multiprocessing.get_context("spawn")
    stop = StopFlag(place.folder / f".stop-workers-{os.getpid()}")
    processes = [context.Process(target=_worker, args=(worker_objective, search, place, seed + rank, threads,
                                                       quiet, stop))
                 for rank in range(workers)]
    # Workers start with Ctrl-C ignored (inherited) until they can stop cleanly: no traceback from an import.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for process in processes:
            process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        _stop_workers(processes, stop)
        raise
    finally:
        stop.clear()
    return [process.exitcode for process in processes]


def optimize(objective: Objective, search: Search, place: StudyPlace, *, workers: int = 1,
             worker_objective: WorkerObjective | None = None, quiet: bool = False) -> optuna.Study:
    """Start, resume or join the study and run until all `search.n_trials` slots are filled.

    One worker runs `objective` in this process. More spawn processes that build their own from
    `worker_objective`; if one of them dies, this process fails its trial and runs the slot itself.
    """
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if workers > 1 and worker_objective is None:
        raise ValueError("several workers need a worker_objective to build the objective from")
    study = _open_study(place, search)
    # A resumed study or another worker must not replay the same random draws: the sampler's seed
    # depends on how many trials exist already and on the worker's rank.
    seed = search.seed + 100_003 * len(study.get_trials(deepcopy=False))
    _fail_orphans(study, place.heartbeats)
    group = objective.group if isinstance(objective, BatchedObjective) and objective.size > 1 else None
    again = _queue_slots(study, search, group)
    if not quiet:
        _say_resuming(study, search.n_trials, again)
    if workers > 1:
        codes = _run_workers(worker_objective, search, place, seed, workers, quiet)
        dead = [code for code in codes if code != 0]
        if dead:
            print(f"{len(dead)} sweep worker(s) stopped early (exit codes {dead}); their trials run again here",
                  file=sys.stderr, flush=True)
        with _storage_guard(study):
            _fail_orphans(study, place.heartbeats)
            _queue_slots(study, search, group)
        seed += workers
    study.sampler = make_sampler(search.sampler, seed)
    # A trial a dead worker left is run here on a worker's thread count, so it scores as it would have there.
    with torch_threads(worker_threads(workers) if workers > 1 else torch.get_num_threads()):
        run_trials(study, objective, heartbeats=place.heartbeats, metric=search.metric, quiet=quiet)
    return study


def worker_threads(workers: int) -> int:
    """Intra-op threads of each of `workers` local worker processes: the cores divided among them."""
    return max(1, (os.cpu_count() or 1) // workers)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` for the block, then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------- results

def finished_trials(storage_url: str, study_name: str) -> int:
    """How many trials of the study in the database finished (0 when it cannot be read): whether a stopped
    run sharing a database has work to resume."""
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, Path(".")))
        return len(study.get_trials(deepcopy=False, states=(STATES.COMPLETE,)))
    except Exception:  # no such study yet, or the database is gone
        return 0


def completed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The finished trials, in slot order."""
    complete = [t for t in _slot_trials(study) if t.state == STATES.COMPLETE]
    return sorted(complete, key=trial_index)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best finished trial; of equal values, the first slot's (the same in a resumed search)."""
    complete = completed_trials(study)
    if not complete:
        raise RunError("no trial of the search finished (every one failed); see the trial lines above")
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(complete, key=lambda t: (sign * t.value, -trial_index(t)))


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float:
    """A finished trial's wall time."""
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def measured_attributes(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """What the objective recorded on a trial (a validation loss), without the search's own bookkeeping."""
    return {key: value for key, value in trial.user_attrs.items() if key not in (INDEX, SURPLUS, ERROR, GROUP)}


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per finished trial: its index, parameters, value, wall time and attributes."""
    return [{"trial": trial_index(trial), **trial.params, "value": trial.value,
             "seconds": round(trial_seconds(trial), 2), **measured_attributes(trial)}
            for trial in completed_trials(study)]
