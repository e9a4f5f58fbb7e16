"""fashion-mlp: hyperparameter search and retraining of a Fashion-MNIST MLP (S1 Problem 2.1-2.3).

Source: `../shared/seeds/001_9651b007d7353d63.txt`, Problem 2. An MLP 784 -> ReLU hidden layers ->
10 trained with SGD on cross-entropy, inputs `pixel/255 - 0.5`; an 80/20 train/validation split of
the training set (seed 541, the same permutation as the source's `random_split`); a random search
of configurations selected on validation accuracy only, L2 on weight matrices only; then the best
configuration retrained on train+val, recording the flattened parameters after every epoch (the
trajectory `loss-landscape` reads). Reference: best validation 0.8772 (3 layers of 40 units, batch
16, lr 0.01, L2 0.001, 25 epochs), test 0.8771 after 50 retraining epochs; required >= 0.87.

The tuned recipe searches wider networks with momentum SGD and a cosine schedule on a short
per-trial budget, then retrains the winner longer. The search machinery is `dlclassics.mlp_search`,
shared with `fashion-mlp-enhanced`.

    dlclassics run fashion-mlp                # tuned
    dlclassics run fashion-mlp --recipe seed  # the source's search space and retraining
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dlclassics import mlp_search
from dlclassics.config import option
from dlclassics.data.images import load_for_run
from dlclassics.runs import Reference, Run

TITLE = "Fashion-MNIST MLP: random search, then retraining (S1 Problem 2)"

# The parameters after every retraining epoch, for `loss-landscape --from-run`:
# {"parameters": [epochs + 1, P], "hidden": [...], "activation": ...}
TRAJECTORY = "trajectory.pt"

# Search spaces: the source's grid (seed) and ours (tuned). Epochs is part of the seed space, as in the source.
SEARCH_SPACES: dict[str, mlp_search.SearchSpace] = {
    "seed": {"layers": (2, 3, 4, 5, 6), "units": (5, 10, 20, 30, 40),
             "lr": (0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001),
             "batch_size": (8, 12, 16, 20, 32, 48, 64, 128, 145, 256),
             "l2": (0.0, 0.0005, 0.001, 0.0001, 0.00001), "epochs": (15, 20, 25)},
    # Widths up to 256: 512 units cost 2.5x the time for under 0.3 points of accuracy here.
    "tuned": {"layers": (2, 3), "units": (128, 256), "lr": (0.02, 0.05, 0.1),
              "batch_size": (64, 128, 256), "l2": (0.0, 1e-5, 1e-4, 5e-4), "epochs": (3,)},
}


@dataclasses.dataclass(frozen=True)
class Config(mlp_search.SearchConfig):
    SPACES = SEARCH_SPACES
    space: str = option("tuned", "search space: the source's grid or ours", choices=tuple(SEARCH_SPACES))
    trials: int = option(10, "configurations tried by the search (the source needs at least 10)", low=1)
    epochs: int = option(20, "epochs of the retraining on train+val", low=1)


RECIPES = {"seed": {"space": "seed", "trials": 10, "momentum": 0.0, "cosine": False, "epochs": 50},
           "tuned": {}}
QUICK = {"limit": 600, "trials": 2, "epochs": 2}
SEARCHED = mlp_search.searched(Config)  # `--set lr=...` says how to fix or narrow lr instead

REFERENCES = [
    Reference("best_val_accuracy", 0.8772, "best validation accuracy of the search", dataset="fashion-mnist",
              tolerance=0.005),
    Reference("test_accuracy", 0.8771, "test accuracy after retraining", dataset="fashion-mnist", tolerance=0.005),
    Reference("test_accuracy", 0.87, "the assignment's requirement (>= 0.87)", rule="at_least",
              dataset="fashion-mnist"),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    images = load_for_run(run, cfg.dataset)  # checks the data and notes its source before any work starts
    data = mlp_search.prepared_data(cfg, images, run.device)
    space = cfg.search_space()
    outcome = mlp_search.search_and_retrain(cfg, run, data, space, snapshots=True)
    return mlp_search.save_outputs(cfg, run, outcome, space, trajectory=TRAJECTORY)
