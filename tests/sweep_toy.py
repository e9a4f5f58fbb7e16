"""A cheap objective for the sweep tests, which spawned worker processes rebuild from `make_objective`.

`payload`: `sleep` (seconds per trial), `die_at` (a slot whose first try kills its process, as
`kill -9` would) and `marker` (the file that says the kill happened). Run as a script, it searches
until interrupted (the Ctrl-C test).
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch

from dlclassics import sweep


def make_objective(payload):
    def objective(trial):
        x = trial.suggest_float("x", -5.0, 5.0)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("threads", torch.get_num_threads())
        if sweep.trial_index(trial) == payload.get("die_at") and not Path(payload["marker"]).exists():
            Path(payload["marker"]).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(payload.get("sleep", 0.02))
        return -(x - 1.0) ** 2

    return objective


def make_batched_objective(payload):
    """A batched objective over the grid BATCHED_GRID: trials of one width train together (a sleep each
    batch), and record how many trained at once and in which process; `die_at` kills the process of the
    batch holding that slot, once."""
    def suggest(trial):
        return {name: trial.suggest_categorical(name, list(choices)) for name, choices in BATCHED_GRID.items()}

    def train(batch):
        if any(sweep.trial_index(trial) == payload.get("die_at") for trial, _ in batch) \
                and not Path(payload["marker"]).exists():
            Path(payload["marker"]).touch()
            os.kill(os.getpid(), signal.SIGKILL)  # the whole batch's process dies, as kill -9 would
        time.sleep(payload.get("sleep", 0.02))
        for trial, _ in batch:
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("trained_at_once", len(batch))
        return [float(params["width"] * 10 + params["lr"]) for _, params in batch]

    return sweep.BatchedObjective(suggest, lambda params: f"width={params['width']}", train, payload["size"])


BATCHED_GRID = {"width": (1, 2, 3), "lr": (1, 2, 3, 4)}


def search(folder, n_trials, workers, payload, quiet=False):
    """The toy search the tests run: `n_trials` slots of a journal study in `folder`."""
    return sweep.optimize(make_objective(payload), sweep.Search(n_trials, {"toy": 1}),
                          sweep.StudyPlace("toy", Path(folder)), workers=workers,
                          worker_objective=sweep.WorkerObjective(make_objective, payload), quiet=quiet)


if __name__ == "__main__":  # python sweep_toy.py FOLDER TRIALS WORKERS SLEEP
    folder, n_trials, workers, sleep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    try:
        search(folder, n_trials, workers, {"sleep": sleep})
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
