"""A hyperparameter search on a run: its study, where the study lives, and its trials run.

Every searching experiment (fashion-mlp, fashion-mlp-enhanced, cifar-lenet-search) calls `search_on_run`
with its objective and plan; the study's name, place (the run folder's journal or `--storage`), joining
(`--study`), workers and quietness come from the run, and its finished trials go to the run's trackers.
"""

from __future__ import annotations

import sys

import optuna

from dlclassics import sweep
from dlclassics.runs import Run
from dlclassics.runs.trackers import Trial


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
    study = sweep.optimize(objective, plan, place, workers=run.workers, worker_objective=worker_objective,
                           quiet=run.quiet)
    run.log_trials("search" + study_suffix, tracked_trials(study, plan.metric))
    return study


def tracked_trials(study: optuna.Study, metric: str) -> list[Trial]:
    """The study's finished trials as trackers log them, whichever process ran them: the parameters, the
    objective's value under the plan's metric name ("validation_accuracy"), the seconds it took and the
    numeric attributes the objective recorded (a validation loss)."""
    trials = []
    for trial in sweep.completed_trials(study):
        measured = {key: float(value) for key, value in sweep.measured_attributes(trial).items()
                    if isinstance(value, (int, float))}
        trials.append(Trial(sweep.trial_index(trial), dict(trial.params),
                            {metric.replace(" ", "_"): trial.value, "seconds": sweep.trial_seconds(trial), **measured}))
    return trials
