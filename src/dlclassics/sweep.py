"""Hyperparameter search through Optuna: random search or TPE, resumable, with parallel workers.

By default the study is a journal file inside the run folder (Optuna's JournalFileBackend: safe
for several local processes, unlike SQLite with several writers), so a resumed run continues it.
`--storage URL` takes any Optuna database URL; for PostgreSQL shared by many machines we use a
small connection pool with pre-ping and heartbeats, so that a killed worker's trial is marked
failed (and replaced) instead of staying "running" forever.

Exactly `n_trials` trials finish: each worker runs one trial at a time while fewer are finished
or running, and a trial that finds, once started, that others already fill the quota is pruned
as surplus before doing any work (two workers can race for the last place).
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from dlclassics.errors import RunError, UsageError

Objective = Callable[[optuna.trial.Trial], float]
# How often a running trial reports it is alive, and after how long without a report it is failed.
HEARTBEAT_SECONDS = int(os.environ.get("DLCLASSICS_SWEEP_HEARTBEAT", "10"))
GRACE_SECONDS = int(os.environ.get("DLCLASSICS_SWEEP_GRACE", "30"))
SURPLUS = "surplus"
ERROR = "error"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_storage(url: str | None, study_dir: Path) -> optuna.storages.BaseStorage:
    """The study's storage: a journal file in `study_dir`, or the database at `url`."""
    if url is None:
        from optuna.storages.journal import JournalFileBackend

        study_dir.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    if "://" not in url:
        raise UsageError(f"--storage expects a database URL such as postgresql://user@host/db, got {url!r}")
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True},
            heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    except Exception as exc:  # driver missing, server down, bad credentials: all reach the user as one line
        raise RunError(f"cannot open the study storage {url}: {str(exc).splitlines()[0]}") from None


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    raise UsageError(f"unknown sampler '{kind}'; use random or tpe")


def _counts_towards_quota(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished, running, or failed by its own error (a killed worker's trial gets replaced)."""
    states = optuna.trial.TrialState
    if trial.state in (states.COMPLETE, states.RUNNING):
        return True
    return trial.state == states.FAIL and ERROR in trial.user_attrs


def _quota_filled(study: optuna.Study, before: int | None = None) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False)
               if _counts_towards_quota(t) and (before is None or t.number < before))


def _guarded(objective: Objective, study: optuna.Study, n_trials: int) -> Objective:
    def run_one(trial: optuna.trial.Trial) -> float:
        if _quota_filled(study, before=trial.number) >= n_trials:
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned("surplus: the quota was filled by other workers")
        try:
            return objective(trial)
        except RunError as exc:
            trial.set_user_attr(ERROR, str(exc))
            raise
    return run_one


def run_trials(study: optuna.Study, objective: Objective, n_trials: int) -> None:
    """This process's share of the study: one trial at a time until `n_trials` are accounted for."""
    guarded = _guarded(objective, study, n_trials)
    for _ in range(3 * n_trials):  # a bound, in case every trial keeps failing
        if _quota_filled(study) >= n_trials:
            return
        study.optimize(guarded, n_trials=1, catch=(RunError,))


def _worker(factory_path: str, payload: dict[str, Any], storage_url: str | None, study_dir: str,
            study_name: str, sampler: str, seed: int, n_trials: int, threads: int) -> None:
    torch.set_num_threads(threads)
    module_name, _, function_name = factory_path.rpartition(".")
    objective = getattr(importlib.import_module(module_name), function_name)(payload)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, Path(study_dir)),
                              sampler=make_sampler(sampler, seed))
    run_trials(study, objective, n_trials)


def enqueue_distinct(study: optuna.Study, space: dict[str, tuple], n_trials: int, seed: int) -> None:
    """Random search without repetition: queue `n_trials` distinct points of a finite grid.

    Optuna's RandomSampler draws with replacement, so on a small grid it tries the same point twice;
    queued trials are taken by the workers first. Only done for a new study.
    """
    if study.get_trials(deepcopy=False):
        return
    sizes = [len(choices) for choices in space.values()]
    total = math.prod(sizes)
    picks = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: min(n_trials, total)]
    for flat in picks.tolist():
        point = {}
        for (name, choices), size in zip(space.items(), sizes):
            flat, index = divmod(flat, size)
            point[name] = choices[index]
        study.enqueue_trial(point)


def optimize(factory_path: str, payload: dict[str, Any], *, study_dir: Path, study_name: str, n_trials: int,
             direction: str = "maximize", sampler: str = "random", seed: int = 0, workers: int = 1,
             storage_url: str | None = None, grid: dict[str, tuple] | None = None) -> optuna.Study:
    """Create or resume a study and finish `n_trials` trials with `workers` local processes.

    `factory_path` names a module-level function `make_objective(payload) -> objective(trial)`;
    each worker process imports it, so the objective needs no pickling. With a finite `grid` and
    the random sampler, the points are drawn without repetition.
    """
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    storage = open_storage(storage_url, study_dir)
    study = optuna.create_study(study_name=study_name, storage=storage, direction=direction,
                                sampler=make_sampler(sampler, seed), load_if_exists=True)
    if grid is not None and sampler == "random":
        enqueue_distinct(study, grid, n_trials, seed)
    # A resumed study or a second worker must not replay the same random draws: the sampler's seed
    # depends on how many trials exist already and on the worker's rank.
    seed = seed + 100_003 * len(study.get_trials(deepcopy=False))
    if workers == 1:
        module_name, _, function_name = factory_path.rpartition(".")
        study.sampler = make_sampler(sampler, seed)
        run_trials(study, getattr(importlib.import_module(module_name), function_name)(payload), n_trials)
        return study
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(factory_path, payload, storage_url, str(study_dir),
                                                         study_name, sampler, seed + rank, n_trials, threads))
                 for rank in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise RunError(f"{len(failed)} sweep worker(s) exited with an error (exit codes {failed}); "
                       "re-run with --resume to finish the study")
    return study


def completed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per finished trial: number, parameters, value, wall time and attributes."""
    rows = []
    for trial in completed_trials(study):
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        rows.append({"trial": trial.number, **trial.params, "value": trial.value, "seconds": round(seconds, 2),
                     **{k: v for k, v in trial.user_attrs.items() if k not in (SURPLUS, ERROR)}})
    return sorted(rows, key=lambda row: row["trial"])
