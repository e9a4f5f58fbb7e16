"""Experiment id -> module, one explicit line each. Modules are imported only when used.

Each experiment module defines: a docstring (what it reproduces), `TITLE`, a `Config` dataclass
(defaults = tuned recipe), `RECIPES` (`{"seed": {...}, "tuned": {}}` overrides), `QUICK` (overrides
for the smoke-test size), `REFERENCES` (the source's numbers) and `run(cfg, run) -> metrics`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from dlclassics.errors import UsageError

EXPERIMENTS: dict[str, str] = {
    # A. Classifiers (the catalogue's sections)
    "mnist-mlp": "dlclassics.experiments.mnist_mlp",
    "mnist-classifier": "dlclassics.experiments.mnist_classifier",
    "fashion-mlp": "dlclassics.experiments.fashion_mlp",
    "fashion-mlp-enhanced": "dlclassics.experiments.fashion_mlp_enhanced",
    "cifar-linear": "dlclassics.experiments.cifar_linear",
    "cifar-mlp": "dlclassics.experiments.cifar_mlp",
    "cifar-cnn": "dlclassics.experiments.cifar_cnn",
    "cifar-lenet-search": "dlclassics.experiments.cifar_lenet_search",
    "cifar-transfer": "dlclassics.experiments.cifar_transfer",
    "fgsm": "dlclassics.experiments.fgsm",
    # B. Representation learning and generative models
    "dense-autoencoder": "dlclassics.experiments.dense_autoencoder",
    "vae": "dlclassics.experiments.vae",
    "latent-optimization": "dlclassics.experiments.latent_optimization",
    "vae-loglik": "dlclassics.experiments.vae_loglik",
    "topic-vae": "dlclassics.experiments.topic_vae",
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


def title(experiment_id: str) -> str:
    """The experiment's `TITLE`, read from its source without importing it (and torch): `dlclassics list`
    and `run --help` answer in well under a second."""
    spec = importlib.util.find_spec(_module_name(experiment_id))
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "TITLE" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AttributeError(f"{spec.origin} declares no TITLE")


def _module_name(experiment_id: str) -> str:
    try:
        return EXPERIMENTS[experiment_id]
    except KeyError:
        raise UsageError(f"unknown experiment '{experiment_id}'; 'dlclassics list' shows the "
                         f"{len(EXPERIMENTS)} experiments") from None


def load(experiment_id: str) -> ModuleType:
    return importlib.import_module(_module_name(experiment_id))
