"""fashion-mlp: hyperparameter search and retraining of a Fashion-MNIST MLP (S1 Problem 2.1-2.3).

Source: `../shared/seeds/001_9651b007d7353d63.txt`, Problem 2. An MLP 784 -> ReLU hidden layers ->
10 trained with SGD on cross-entropy, inputs `pixel/255 - 0.5`; an 80/20 train/validation split of
the training set (seed 541, the same permutation as the source's `random_split`); a random search
of configurations selected on validation accuracy only, L2 on weight matrices only; then the best
configuration retrained on train+val, recording the flattened parameters after every epoch (the
trajectory `loss-landscape` reads). Reference: best validation 0.8772 (3 layers of 40 units, batch
16, lr 0.01, L2 0.001, 25 epochs), test 0.8771 after 50 retraining epochs; required >= 0.87.

The tuned recipe searches wider networks with momentum SGD, a cosine schedule and label smoothing 0.1
on a short per-trial budget, then retrains the winner longer (goal: >= 0.900 test accuracy, the whole
run <= 60 s on 2 CPU cores). The search machinery, and this experiment's search
spaces, options and recipes, are in `dlclassics.training.mlp_search`: `fashion-mlp-enhanced` trains
the same search as its baseline.

    dlclassics run fashion-mlp                # tuned
    dlclassics run fashion-mlp --recipe seed  # the source's search space and retraining
"""

from __future__ import annotations

from typing import Any

from dlclassics.runs import Reference, Run
from dlclassics.runs.products import TRAJECTORY
from dlclassics.training import mlp_search

TITLE = "Fashion-MNIST MLP: random search, then retraining (S1 Problem 2)"

# The options, search spaces (the source's grid and ours) and recipes, shared with fashion-mlp-enhanced's baseline.
Config = mlp_search.FashionMlpConfig
RECIPES = mlp_search.FASHION_MLP_RECIPES
QUICK = mlp_search.FASHION_MLP_QUICK
SEARCHED = mlp_search.searched(Config)  # `--set lr=...` says how to fix or narrow lr instead

REFERENCES = [
    Reference("best_val_accuracy", 0.8772, "best validation accuracy of the search", dataset="fashion-mnist",
              tolerance=0.005),
    Reference("test_accuracy", 0.8771, "test accuracy after retraining", dataset="fashion-mnist", tolerance=0.005),
    Reference("test_accuracy", 0.87, "the assignment's requirement (>= 0.87)", rule="at_least",
              dataset="fashion-mnist"),
    # Not the source's: the raised goal of the tuned recipe (issue 21), and its time on 2 CPU cores.
    Reference("test_accuracy", "not reported", "test accuracy (goal: >= 0.900)", rule="at_least", target=0.900,
              dataset="fashion-mnist"),
    Reference("wall_time_s", "not reported", "whole run, s (goal on 2 CPU cores: <= 60)", rule="at_most",
              target=60.0, dataset="fashion-mnist"),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    images = run.load_images(cfg.dataset)  # checks the data and notes its source before any work starts
    data = mlp_search.prepared_data(cfg, images, run.device)
    space = cfg.search_space()
    # The parameters after every retraining epoch are kept: the trajectory `loss-landscape --from-run` reads.
    outcome = mlp_search.search_and_retrain(cfg, run, data, space, snapshots=True)
    return mlp_search.save_outputs(cfg, run, outcome, space, trajectory=TRAJECTORY)
