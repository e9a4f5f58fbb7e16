"""A hyperparameter search on a run: its study, where the study lives, and its trials run.

Every searching experiment (fashion-mlp, fashion-mlp-enhanced, cifar-lenet-search) calls `search_on_run`
with its objective and plan; the study's name, place (the run folder's journal or `--storage`), joining
(`--study`), workers and quietness come from the run.
"""

from __future__ import annotations

import sys

import optuna

from dlclassics import sweep
from dlclassics.runs import Run


def search_on_run(run: Run, objective: sweep.Objective, plan: sweep.Search,
                  worker_objective: sweep.WorkerObjective, study_suffix: str = "") -> optuna.Study:
    """Fill the plan's slots in the run's study (its own, or the one it joins with --study); `study_suffix`
    keeps two searches of one run apart."""
    own = sweep.own_study_name(run.experiment, run.run_id)
    name = run.study or own
    place = sweep.StudyPlace(name + study_suffix, run.dir, run.storage, join=name != own)
    run.note(f"search: {place.describe()}")
    if run.storage and not run.quiet:
        sweep.open_storage(run.storage, run.dir)  # a bad URL is one error line, before any "join it" advice
        print(f"search: {place.describe()}; other machines join it with --storage {sweep.masked_url(run.storage)} "
              f"--study {name}", file=sys.stderr, flush=True)
    return sweep.optimize(objective, plan, place, workers=run.workers, worker_objective=worker_objective,
                          quiet=run.quiet)
