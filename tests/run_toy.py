"""toy: a test-only experiment, fast and without data, to drive a run's life through the CLI.

It counts `value += lr` for `epochs` epochs with a checkpoint after each, like a trained model would.
Tests register it with `registry.EXPERIMENTS["toy"] = "run_toy"` and steer it through the module's
hooks (set with monkeypatch), never through its config: a resumed run must see the same config.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from dlclassics.config import BaseConfig, option
from dlclassics.files import atomic_torch_save, load_tensor_file
from dlclassics.runs import METRICS, Reference, Run, Upstream

TITLE = "Toy experiment for the run life-cycle tests"

INTERRUPT_AT: int | None = None  # raise KeyboardInterrupt at the start of this epoch (Ctrl-C)
FAIL: Callable[[], None] | None = None  # called after the last epoch: raise what a test needs
EXTRA_METRICS: dict[str, Any] = {}  # merged into the returned metrics
SECONDS_PER_EPOCH = 0.0  # how long an epoch's training takes (time.sleep), for the timing tests


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    epochs: int = option(3, "epochs", low=1)
    lr: float = option(0.5, "added to the value each epoch", low=0.0, low_open=True)


RECIPES: dict[str, dict[str, Any]] = {"seed": {}, "tuned": {}}
QUICK: dict[str, Any] = {}
REFERENCES = [Reference("value", 1.5, "the value after 3 epochs", rule="near", tolerance=1e-9)]
FROM_RUN = Upstream(("toy",), files=(METRICS,), metrics=("value",))  # a toy run may build on another


def run(cfg: Config, run: Run) -> dict[str, Any]:
    state = {"epoch": 0, "value": 0.0}
    if run.resume and run.checkpoint_path.exists():
        state = load_tensor_file(run.checkpoint_path, "a toy checkpoint")
    first = state["epoch"] + 1
    with run.timer("train_time_s"):
        for epoch in range(first, cfg.epochs + 1):
            if epoch == INTERRUPT_AT:
                raise KeyboardInterrupt
            time.sleep(SECONDS_PER_EPOCH)
            state = {"epoch": epoch, "value": state["value"] + cfg.lr}
            atomic_torch_save(run.checkpoint_path, state)
    if FAIL is not None:
        FAIL()
    run.save_history([{"epoch": e, "value": e * cfg.lr} for e in range(1, cfg.epochs + 1)])
    return {"value": state["value"], "first_epoch_here": first, **EXTRA_METRICS}
