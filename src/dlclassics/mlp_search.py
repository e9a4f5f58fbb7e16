"""Random search over MLP configurations selected on validation accuracy, then retraining on train+val.

The machinery of S1 Problem 2 shared by `fashion-mlp` (Problems 2.1-2.3: ReLU MLPs) and
`fashion-mlp-enhanced` (Problem 2.4: the same search plus BatchNorm, Dropout and the activation).
An experiment declares a `Config` (a `SearchConfig`), its `SEARCH_SPACES` (name -> {parameter:
choices}) and calls `search_and_retrain` then `save_outputs`; a configuration is a plain dict of
the parameters `layers`, `units`, `lr`, `batch_size`, `l2`, `epochs` and optionally `batchnorm`,
`dropout`, `activation` (absent = the plain ReLU MLP of Problem 2.1).

The search runs through `sweep.optimize`, whose worker processes import `make_objective` by its
dotted path and find the experiment's `Config` and `SEARCH_SPACES` through the module name in the
payload, so the objective needs no pickling.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from dlclassics import plots, sweep
from dlclassics.config import BaseConfig, option, resolve
from dlclassics.data.images import ImageData, load_images
from dlclassics.data.transforms import flat_float, subsample
from dlclassics.engine import (FitResult, cosine_schedule, evaluate_classifier, fit, flat_parameters, held_out,
                               make_optimizer, resolve_device, seed_everything)
from dlclassics.models.mlp import mlp
from dlclassics.runs import Run, atomic_torch_save, atomic_write_csv, markdown_table

SearchSpace = dict[str, tuple]
# The fields that say which examples a search sees: two searches agreeing on these use the same data and split.
DATA_FIELDS = ("seed", "device", "quick", "dataset", "val_fraction", "split_seed", "limit")


@dataclasses.dataclass(frozen=True)
class SearchConfig(BaseConfig):
    """Options of a search-then-retrain experiment; experiments redeclare `space` with their choices."""

    dataset: str = option("fashion-mnist", "image dataset", choices=("fashion-mnist", "mnist"))
    space: str = option("tuned", "search space: the source's grid or ours", choices=("seed", "tuned"))
    trials: int = option(12, "configurations tried by the search (the source needs at least 10)", low=1)
    sampler: str = option("random", "random search or TPE", choices=("random", "tpe"))
    momentum: float = option(0.9, "SGD momentum (Nesterov when > 0); the source used plain SGD", low=0.0, high=0.999)
    cosine: bool = option(True, "cosine learning-rate decay within each training")
    final_epochs: int = option(25, "epochs of the retraining on train+val", low=1)
    val_fraction: float = option(0.2, "share of the training set held out for selection", low=0.05, high=0.5)
    split_seed: int = option(541, "seed of the train/validation split (541 = the source's)", low=0)
    limit: int = option(0, "use only the first N training images (0 = all)", low=0)


@dataclasses.dataclass
class Outcome:
    """What a search and its retraining produced."""

    trials: list[dict[str, Any]]  # one row per finished trial (the search table)
    best_value: float  # best validation accuracy
    params: dict[str, Any]  # the best configuration, `epochs` = its per-trial budget
    model: nn.Module  # retrained on train+val
    result: FitResult  # the retraining's history (with test metrics), iterations and parameter snapshots
    initial: torch.Tensor  # the retraining's initial parameters [P]
    search_time: float
    retrain_time: float


# ---------------------------------------------------------------- data

def train_val_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the source's `random_split`: one permutation from `seed`, train first, validation last."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(fraction * n)
    return order[: n - n_val], order[n - n_val:]


def prepared_data(cfg: SearchConfig, data: ImageData, device: torch.device) -> dict[str, torch.Tensor]:
    """Float inputs (`pixel/255 - 0.5`, the source's centring) for train, validation and test, on `device`."""
    x, y = subsample(flat_float(data.train_x, 0.5), data.train_y, cfg.limit)
    train_idx, val_idx = train_val_split(len(x), cfg.val_fraction, cfg.split_seed)
    tensors = {"x": x, "y": y, "train_x": x[train_idx], "train_y": y[train_idx], "val_x": x[val_idx],
               "val_y": y[val_idx], "test_x": flat_float(data.test_x, 0.5), "test_y": data.test_y}
    return {name: tensor.to(device) for name, tensor in tensors.items()}


# ---------------------------------------------------------------- one training

def build_model(params: dict[str, Any]) -> nn.Sequential:
    """784 -> `layers` x `units` -> 10, with the optional BatchNorm, Dropout and activation of Problem 2.4."""
    return mlp(784, [params["units"]] * params["layers"], 10, activation=params.get("activation", "relu"),
               batchnorm=params.get("batchnorm", False), dropout=params.get("dropout", 0.0))


def train(cfg: SearchConfig, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int, quiet: bool,
          evaluate: Any = None, **fit_options: Any) -> tuple[nn.Module, FitResult]:
    """Build the MLP of `params` and train it with SGD (L2 on weight matrices only) for `params["epochs"]`."""
    generator = seed_everything(seed)
    model = build_model(params).to(x.device)
    optimizer = make_optimizer("sgd", model, params["lr"], params["l2"], cfg.momentum)
    scheduler = cosine_schedule(optimizer, params["epochs"], cfg.cosine)
    result = fit(model, (x, y), optimizer=optimizer, scheduler=scheduler, epochs=params["epochs"],
                 batch_size=params["batch_size"], generator=generator, evaluate=evaluate, quiet=quiet, **fit_options)
    return model, result


def _experiment(module_name: str) -> tuple[type, dict[str, SearchSpace]]:
    module = importlib.import_module(module_name)
    return module.Config, module.SEARCH_SPACES


def make_objective(payload: dict[str, Any]) -> sweep.Objective:
    """The search objective: sample a configuration, train on train, return validation accuracy.

    Module-level so that sweep worker processes can import it; `payload` is plain JSON naming the
    experiment module (for its `Config` and `SEARCH_SPACES`), the config, and where the data is.
    """
    config_class, spaces = _experiment(payload["experiment"])
    cfg = resolve(config_class, payload["config"])
    images = load_images(cfg.dataset, payload["data_dir"], payload["carve_test"])
    data = prepared_data(cfg, images, resolve_device(cfg.device))
    space = spaces[cfg.space]

    def objective(trial: optuna.trial.Trial) -> float:
        params = {name: trial.suggest_categorical(name, list(choices)) for name, choices in space.items()}
        if cfg.quick:
            params["epochs"] = 1
        # Each trial has its own seed, as the source's `seed + loopcount`, whichever worker runs it.
        model, _ = train(cfg, params, data["train_x"], data["train_y"], cfg.seed + trial.number, quiet=True)
        result = evaluate_classifier(model, data["val_x"], data["val_y"])
        trial.set_user_attr("val_loss", round(result["loss"], 5))
        return result["accuracy"]

    return objective


# ---------------------------------------------------------------- search, then retrain

def search_and_retrain(cfg: SearchConfig, run: Run, data: dict[str, torch.Tensor], experiment: str, *,
                       study_name: str = "search", checkpoint: Path | None = None,
                       snapshots: bool = False) -> Outcome:
    """Search on train (selection on validation only), then retrain the best on train+val.

    `experiment` is the module name declaring `Config` and `SEARCH_SPACES`; `study_name` keeps two
    searches of one run apart in its journal. The test set is only looked at during the retraining,
    once per epoch, for the history; it never takes part in the selection.
    """
    _, spaces = _experiment(experiment)
    started = time.perf_counter()
    payload = {"experiment": experiment, "config": dataclasses.asdict(cfg),
               "data_dir": str(run.data_dir) if run.data_dir else None, "carve_test": run.carve_test}
    study = sweep.optimize(f"{__name__}.make_objective", payload, study_dir=run.dir, study_name=study_name,
                           n_trials=cfg.trials, sampler=cfg.sampler, seed=cfg.seed, workers=run.workers,
                           storage_url=run.storage, grid=spaces[cfg.space])
    search_time = time.perf_counter() - started
    best = study.best_trial
    params = dict(best.params)
    if cfg.quick:
        params["epochs"] = 1

    seed = cfg.seed + best.number
    started = time.perf_counter()
    model, result = train(cfg, {**params, "epochs": cfg.final_epochs}, data["x"], data["y"], seed, run.quiet,
                          evaluate=held_out(data["test_x"], data["test_y"], "test"), checkpoint=checkpoint or run.checkpoint_path, resume=run.resume,
                          record_iterations=True, snapshot_parameters=snapshots)
    retrain_time = time.perf_counter() - started
    torch.manual_seed(seed)  # the same seed builds the same network before any step: the initial parameters
    return Outcome(sweep.trial_rows(study), best.value, params, model, result, flat_parameters(build_model(params)),
                   search_time, retrain_time)


def save_outputs(cfg: SearchConfig, run: Run, outcome: Outcome, space: SearchSpace,
                 trajectory: bool = False) -> dict[str, Any]:
    """search.csv, the search table, history, model, figures and (optionally) trajectory.pt; returns metrics.

    The trajectory is `{"parameters": [epochs + 1, P], "hidden": [...], "activation": ...}`, what
    `loss-landscape` reads (it needs `snapshots=True` in `search_and_retrain`).
    """
    trials, params, result = outcome.trials, outcome.params, outcome.result
    atomic_write_csv(run.dir / "search.csv", trials)
    run.add_section("Search (validation accuracy; the test set is never used here)", markdown_table(trials))
    if trajectory:
        parameters = torch.stack([outcome.initial, *result.snapshots])  # [epochs + 1, P]
        atomic_torch_save(run.dir / "trajectory.pt", {"parameters": parameters,
                                                      "hidden": [params["units"]] * params["layers"],
                                                      "activation": params.get("activation", "relu")})
    run.save_history(result.history)
    run.save_model(outcome.model)
    run.note("L2 is applied to weight matrices only, in the search and in the retraining (the source's "
             "retraining applied weight_decay to the biases too).")

    last = [{"iteration": len(result.iterations) - 20 + i + 1, "loss": loss}
            for i, loss in enumerate(result.iterations[-20:])]
    run.save_figure(plots.curves(last, "iteration", {"loss": "training loss (minibatch)"},
                                 "Training loss over the last 20 SGD iterations", "cross-entropy"),
                    "last_iterations", "Training loss, last 20 iterations of the retraining", rows=last)
    run.save_figure(plots.curves(result.history, "epoch", {"train_loss": "train loss", "test_loss": "test loss"},
                                 "Retraining on train+val", "cross-entropy"), "retrain_loss",
                    "Loss per retraining epoch", rows=result.history)
    run.save_figure(plots.curves(result.history, "epoch", {"train_accuracy": "train accuracy",
                                                           "test_accuracy": "test accuracy"},
                                 "Accuracy per retraining epoch", "accuracy"), "retrain_accuracy",
                    "Accuracy per retraining epoch", rows=result.history)
    run.save_figure(plots.scatter_trials(trials, "value", "Search: validation accuracy per trial",
                                         "validation accuracy"), "search",
                    "Validation accuracy of every configuration tried", rows=trials)

    final = result.history[-1]
    return {"best_val_accuracy": outcome.best_value, "test_accuracy": final["test_accuracy"],
            "test_loss": final["test_loss"], "train_loss": final["train_loss"], "trials": len(trials),
            "best_config": {k: params[k] for k in space if k != "epochs"},
            "best_trial_epochs": params["epochs"], "search_time_s": round(outcome.search_time, 2),
            "retrain_time_s": round(outcome.retrain_time, 2), "parameters": int(outcome.initial.numel())}
