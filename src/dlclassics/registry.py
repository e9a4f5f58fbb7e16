"""Experiment id -> module, one explicit line each. Modules are imported only when used.

Each experiment module defines: a docstring (what it reproduces), `TITLE`, a `Config` dataclass
(defaults = tuned recipe), `RECIPES` (`{"seed": {...}, "tuned": {}}` overrides), `QUICK` (overrides
for the smoke-test size), `REFERENCES` (the source's numbers) and `run(cfg, run) -> metrics`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dlclassics.errors import UsageError

EXPERIMENTS: dict[str, str] = {
    # A. Classifiers (the catalogue's sections)
    "mnist-mlp": "dlclassics.experiments.mnist_mlp",
    "mnist-classifier": "dlclassics.experiments.mnist_classifier",
    "fashion-mlp": "dlclassics.experiments.fashion_mlp",
    "fashion-mlp-enhanced": "dlclassics.experiments.fashion_mlp_enhanced",
    # B. Representation learning and generative models
    "dense-autoencoder": "dlclassics.experiments.dense_autoencoder",
    "vae": "dlclassics.experiments.vae",
    "latent-optimization": "dlclassics.experiments.latent_optimization",
    "vae-loglik": "dlclassics.experiments.vae_loglik",
    "autoencoder-vs-pca": "dlclassics.experiments.autoencoder_vs_pca",
    # C. Optimisation and initialisation
    "least-squares": "dlclassics.experiments.least_squares",
    "optimizers-noisy": "dlclassics.experiments.optimizers_noisy",
    "he-init": "dlclassics.experiments.he_init",
    "loss-landscape": "dlclassics.experiments.loss_landscape",
    # D. Recommenders and low rank
    "movielens": "dlclassics.experiments.movielens",
    "low-rank": "dlclassics.experiments.low_rank",
    # E. Energy model and sampling
    "energy-regressor": "dlclassics.experiments.energy_regressor",
    "mcmc-sampling": "dlclassics.experiments.mcmc_sampling",
}


def load(experiment_id: str) -> ModuleType:
    try:
        return importlib.import_module(EXPERIMENTS[experiment_id])
    except KeyError:
        raise UsageError(f"unknown experiment '{experiment_id}'; 'dlclassics list' shows the "
                         f"{len(EXPERIMENTS)} experiments") from None
