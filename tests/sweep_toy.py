"""A cheap objective for the sweep tests, importable by spawned worker processes."""

import os
import time


def make_objective(payload):
    def objective(trial):
        x = trial.suggest_float("x", -5.0, 5.0)
        trial.set_user_attr("pid", os.getpid())
        time.sleep(payload.get("sleep", 0.02))
        return -(x - 1.0) ** 2

    return objective
