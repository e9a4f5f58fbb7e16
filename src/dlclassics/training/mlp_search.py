"""Random search over MLP configurations selected on validation accuracy, then retraining on train+val.

The machinery of S1 Problem 2 shared by `fashion-mlp` (Problems 2.1-2.3: ReLU MLPs) and
`fashion-mlp-enhanced` (Problem 2.4: the same search plus BatchNorm, Dropout and the activation).
An experiment declares a `Config` (a `SearchConfig` whose `SPACES` are its search spaces: name ->
{parameter: choices}) and calls `search_and_retrain` then `save_outputs`; a configuration is a plain
dict of the parameters `layers`, `units`, `lr`, `batch_size`, `l2`, `epochs` (the per-trial budget)
and optionally `batchnorm`, `dropout`, `activation` (absent = the plain ReLU MLP of Problem 2.1).
fashion-mlp's own search (`FashionMlpConfig`, its spaces and recipes) lives here too, because
fashion-mlp-enhanced trains it as its baseline.

The search runs on the run's study (`training.search.search_on_run`): in this process on the data
already loaded, and in worker processes (`--workers N`) from a `TrialSetup` (the config values, the
space and where the data is), each loading the data once. Trials that differ only in learning rate and
L2 can train at once as one stacked network (`train_stacked`, `stack_trials`): on a GPU one small trial
leaves the device idle.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import optuna
import torch
from torch import nn

from dlclassics import plots, sweep
from dlclassics.config import (
    MAX_WIDTH,
    BaseConfig,
    check_range,
    coerce,
    dataset_option,
    epochs_option,
    limit_option,
    option,
)
from dlclassics.data.images import ImageData, image_datasets, load_images
from dlclassics.data.transforms import flat_float, subsample
from dlclassics.engine import (
    FitResult,
    classification_step,
    cosine_schedule,
    evaluate_classifier,
    fit,
    flat_parameters,
    held_out,
    make_optimizer,
    seed_everything,
)
from dlclassics.errors import RunError, UsageError
from dlclassics.files import atomic_torch_save, atomic_write_csv
from dlclassics.models import stacked
from dlclassics.models.mlp import mlp
from dlclassics.runs import Run, markdown_table
from dlclassics.training.search import search_on_run
from dlclassics.training.stacked import CopySGD, fit_copies

SearchSpace = dict[str, tuple]
# The fields that say which examples a search sees: two searches agreeing on these use the same data and split.
DATA_FIELDS = ("seed", "device", "quick", "dataset", "val_fraction", "split_seed", "limit")
# The fields a trial's value depends on besides its parameters: what a worker process needs to train it.
TRIAL_FIELDS = (*DATA_FIELDS, "momentum", "cosine", "label_smoothing", "stack_trials")
# Trials trained at once on a GPU by default (`stack_trials` 0): a guess, not yet measured on a GPU. On the
# CPU one at a time: stacking 4 trials measured 1.2-1.8x faster with 2 threads on a quiet machine, but 0.9x
# (2 x 256 units) with one thread beside another job (`benchmarks/bench_trials.py`).
GPU_STACK = 16


# What a narrowed search dimension may take (`--set narrow=units=128/256`), as option ranges: a width of 0,
# a negative learning rate or a batch of 0 is refused before the run starts, as any option would be.
DIMENSION_RANGES: dict[str, dict[str, Any]] = {
    "layers": {"low": 1, "high": 64}, "units": {"low": 1, "high": MAX_WIDTH},
    "lr": {"low": 0.0, "low_open": True}, "batch_size": {"low": 1}, "l2": {"low": 0.0}, "epochs": {"low": 1},
    "dropout": {"low": 0.0, "high": 0.95},
}


@dataclasses.dataclass(frozen=True)
class SearchConfig(BaseConfig):
    """Options of a search-then-retrain experiment; experiments set `SPACES` and redeclare `space`."""

    SPACES: ClassVar[dict[str, SearchSpace]] = {}  # the experiment's search spaces, by name

    dataset: str = dataset_option("fashion-mnist", image_datasets)
    space: str = option("tuned", "search space: the source's grid or ours", choices=("seed", "tuned"))
    narrow: tuple[str, ...] = option((), "fix or narrow search dimensions: NAME=VALUE or NAME=V1/V2, comma "
                                         "separated (e.g. lr=0.05,units=128/256)")
    trials: int = option(12, "configurations tried by the search (the source needs at least 10)", low=1)
    sampler: str = option("random", "random search or TPE", choices=("random", "tpe"))
    momentum: float = option(0.9, "SGD momentum (Nesterov when > 0); the source used plain SGD", low=0.0, high=0.999)
    cosine: bool = option(True, "cosine learning-rate decay within each training")
    # +0.5 points of validation accuracy for the ReLU MLP (0.8978 -> 0.9029, 2 x 128 units, 20 epochs).
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy in every training (the source: 0)",
                                    low=0.0, high=0.9)
    stack_trials: int = option(0, "trials that differ only in lr and L2 trained at once as one stacked network, "
                                  f"at most this many (0 = auto: {GPU_STACK} on a GPU, 1 on the CPU)", low=0)
    epochs: int = epochs_option(25, "epochs of the retraining on train+val")
    val_fraction: float = option(0.2, "share of the training set held out for selection", low=0.05, high=0.5)
    split_seed: int = option(541, "seed of the train/validation split (541 = the source's)", low=0)
    limit: int = limit_option()

    def __post_init__(self) -> None:
        self.search_space()  # a bad `narrow` is refused with the other options, before the run starts

    def search_space(self) -> SearchSpace:
        """The space `space` names, with the dimensions `narrow` fixes or narrows."""
        space = dict(self.SPACES.get(self.space, {}))
        for item in self.narrow:
            name, sep, values = item.partition("=")
            if not sep or not values:
                raise UsageError(f"option 'narrow' expects NAME=VALUE or NAME=V1/V2, got {item!r}")
            if name not in space:
                raise UsageError(f"option 'narrow': '{name}' is not a dimension of the {self.space} search space "
                                 f"({', '.join(space)})")
            kind = type(space[name][0])
            space[name] = tuple(coerce(f"narrow={name}", kind, value) for value in values.split("/"))
            check_range(f"narrow={name}", space[name], DIMENSION_RANGES.get(name, {}))
        return space


def searched(config: type[SearchConfig]) -> dict[str, str]:
    """The experiment's `SEARCHED` hook: for each search dimension that is not an option, how to fix
    or narrow it (what `--set NAME=...` answers instead of "unknown option")."""
    fields = {f.name: f.default for f in dataclasses.fields(config)}
    default = config.SPACES[fields["space"]]
    hints: dict[str, str] = {}
    for space in config.SPACES.values():
        for name in space:
            if name in fields or name in hints:
                continue
            choices = [str(choice) for choice in default.get(name, space[name])]
            hints[name] = (f"fix it with --set narrow={name}={choices[0]}, or narrow it with --set "
                           f"narrow={name}={'/'.join(choices[:2])} (the {fields['space']} space tries "
                           f"{'/'.join(choices)})")
    return hints


# ---------------------------------------------------------------- fashion-mlp's search

# The source's grid (seed) and ours (tuned). Epochs is part of the seed space, as in the source.
FASHION_MLP_SPACES: dict[str, SearchSpace] = {
    "seed": {"layers": (2, 3, 4, 5, 6), "units": (5, 10, 20, 30, 40),
             "lr": (0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001),
             "batch_size": (8, 12, 16, 20, 32, 48, 64, 128, 145, 256),
             "l2": (0.0, 0.0005, 0.001, 0.0001, 0.00001), "epochs": (15, 20, 25)},
    # Widths up to 256: 512 units cost 2.5x the time for under 0.3 points of accuracy here.
    "tuned": {"layers": (2, 3), "units": (128, 256), "lr": (0.02, 0.05, 0.1),
              "batch_size": (64, 128, 256), "l2": (0.0, 1e-5, 1e-4, 5e-4), "epochs": (3,)},
}


@dataclasses.dataclass(frozen=True)
class FashionMlpConfig(SearchConfig):
    """fashion-mlp's options: the ReLU MLPs of Problems 2.1-2.3."""

    SPACES = FASHION_MLP_SPACES
    space: str = option("tuned", "search space: the source's grid or ours", choices=tuple(FASHION_MLP_SPACES))
    trials: int = option(10, "configurations tried by the search (the source needs at least 10)", low=1)
    epochs: int = epochs_option(20, "epochs of the retraining on train+val")


FASHION_MLP_RECIPES = {"seed": {"space": "seed", "trials": 10, "momentum": 0.0, "cosine": False, "epochs": 50,
                                "label_smoothing": 0.0},
                       "tuned": {}}
FASHION_MLP_QUICK = {"limit": 600, "trials": 2, "epochs": 2}


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


def train(cfg: SearchConfig, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int,
          fit_with: Callable[..., FitResult] = fit, **fit_options: Any) -> tuple[nn.Module, FitResult]:
    """Build the MLP of `params` and train it with SGD (L2 on weight matrices only) for `params["epochs"]`.

    `seed` seeds the network and the shuffling, so a trial's numbers do not depend on which process runs
    it; `fit_with` is `engine.fit` for a trial and `run.fit` (checkpoint, resume, progress) for the retraining.
    """
    generator = seed_everything(seed)
    model = build_model(params).to(x.device)
    optimizer = make_optimizer("sgd", model, params["lr"], params["l2"], cfg.momentum)
    scheduler = cosine_schedule(optimizer, params["epochs"], cfg.cosine)
    step = functools.partial(classification_step, label_smoothing=cfg.label_smoothing)
    result = fit_with(model, (x, y), optimizer=optimizer, scheduler=scheduler, epochs=params["epochs"],
                      batch_size=params["batch_size"], generator=generator, step=step, **fit_options)
    return model, result


def train_stacked(cfg: SearchConfig, configurations: list[dict[str, Any]], x: torch.Tensor, y: torch.Tensor,
                  seeds: list[int]) -> tuple[list[nn.Sequential], list[str | None]]:
    """Train configurations that differ only in `lr` and `l2` at once, as one stacked network (see
    `training.stacked`): each starts from the network and shuffling its seed gives it in `train`, and
    ends where `train` would, up to float rounding. Returns the trained networks and, per network, None
    or why its training diverged."""
    networks, generators = [], []
    for params, seed in zip(configurations, seeds, strict=True):
        generators.append(seed_everything(seed))
        networks.append(build_model(params).to(x.device))
    model = stacked.stack(networks)
    optimizer = CopySGD(model, [p["lr"] for p in configurations], [p["l2"] for p in configurations],
                        cfg.momentum, nesterov=True)
    first = configurations[0]
    diverged = fit_copies(model, x, y, optimizer=optimizer, epochs=first["epochs"], batch_size=first["batch_size"],
                          generators=generators, label_smoothing=cfg.label_smoothing, cosine=cfg.cosine)
    return [stacked.unstack(model, k, network) for k, network in enumerate(networks)], diverged


def trials_at_once(cfg: SearchConfig, device: torch.device) -> int:
    """How many trials of one group train together: `stack_trials`, or by default GPU_STACK on a GPU."""
    return cfg.stack_trials or (1 if device.type == "cpu" else GPU_STACK)


def trial_group(params: dict[str, Any]) -> str:
    """What trials must share to train as one stacked network: everything but the learning rate and L2."""
    return ",".join(f"{name}={value}" for name, value in sorted(params.items()) if name not in ("lr", "l2"))


def objective(cfg: SearchConfig, space: SearchSpace, data: dict[str, torch.Tensor]) -> sweep.BatchedObjective:
    """The search objective: take configurations of `space`, train on train, return validation accuracies;
    configurations that differ only in lr and L2 train together (`trials_at_once`)."""
    size = trials_at_once(cfg, data["x"].device)

    def suggest(trial: optuna.trial.Trial) -> dict[str, Any]:
        params = {name: trial.suggest_categorical(name, list(choices)) for name, choices in space.items()}
        return {**params, "epochs": 1} if cfg.quick else params

    def train_trials(batch: list[tuple[optuna.trial.Trial, dict[str, Any]]]) -> list[float | RunError]:
        # Each trial has its own seed, as the source's `seed + loopcount`, whichever worker runs it.
        seeds = [cfg.seed + sweep.trial_index(trial) for trial, _ in batch]
        configurations = [params for _, params in batch]
        if size == 1:
            try:
                models, diverged = [train(cfg, configurations[0], data["train_x"], data["train_y"], seeds[0],
                                          quiet=True)[0]], [None]
            except RunError as exc:
                return [exc]
        else:
            models, diverged = train_stacked(cfg, configurations, data["train_x"], data["train_y"], seeds)
        outcomes: list[float | RunError] = []
        for (trial, _), model, reason in zip(batch, models, diverged, strict=True):
            if reason is not None:
                outcomes.append(RunError(reason))
                continue
            result = evaluate_classifier(model, data["val_x"], data["val_y"])
            trial.set_user_attr("val_loss", round(result["loss"], 5))
            if size > 1:
                trial.set_user_attr("trained_at_once", len(batch))
            outcomes.append(result["accuracy"])
        return outcomes

    return sweep.BatchedObjective(suggest, trial_group, train_trials, size)


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What a sweep worker process needs to rebuild the objective: plain values, sent by pickling."""

    config: dict[str, Any]  # the TRIAL_FIELDS of the config
    device: str  # the run's device, resolved once by the session
    space: SearchSpace
    data_dir: Path | None
    carve_test: float
    unverified: bool


def worker_objective(setup: TrialSetup) -> sweep.BatchedObjective:
    """The objective of a sweep worker process, on the data it loads once."""
    cfg = SearchConfig(**setup.config)
    images = load_images(cfg.dataset, setup.data_dir, setup.carve_test, setup.unverified)
    return objective(cfg, setup.space, prepared_data(cfg, images, torch.device(setup.device)))


# ---------------------------------------------------------------- search, then retrain

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


def search(cfg: SearchConfig, run: Run, data: dict[str, torch.Tensor], space: SearchSpace,
           study_suffix: str = "") -> optuna.Study:
    """Fill `cfg.trials` slots of the run's study (its own, or the one it joins) with trials of `space`."""
    trial_config = {field: getattr(cfg, field) for field in TRIAL_FIELDS}
    signature = {"space": space, "trials": cfg.trials, "sampler": cfg.sampler,
                 **{k: v for k, v in trial_config.items() if k != "device"}}
    plan = sweep.Search(cfg.trials, signature, sampler=cfg.sampler, seed=cfg.seed, grid=space,
                        metric="validation accuracy")
    setup = TrialSetup(trial_config, str(run.device), space, run.data_dir, run.carve_test, run.unverified)
    return search_on_run(run, objective(cfg, space, data), plan, sweep.WorkerObjective(worker_objective, setup),
                         study_suffix)


def search_and_retrain(cfg: SearchConfig, run: Run, data: dict[str, torch.Tensor], space: SearchSpace, *,
                       study_suffix: str = "", checkpoint: Path | None = None, snapshots: bool = False) -> Outcome:
    """Search `space` on train (selection on validation only), then retrain the best on train+val.

    `study_suffix` keeps two searches of one run apart. The test set is only looked at during the
    retraining, once per epoch, for the history; it never takes part in the selection.
    """
    started = time.perf_counter()
    study = search(cfg, run, data, space, study_suffix)
    search_time = time.perf_counter() - started
    best = sweep.best_trial(study)
    params = dict(best.params)
    if cfg.quick:
        params["epochs"] = 1

    seed = cfg.seed + sweep.trial_index(best)
    started = time.perf_counter()
    model, result = train(cfg, {**params, "epochs": cfg.epochs}, data["x"], data["y"], seed, fit_with=run.fit,
                          evaluate=held_out(data["test_x"], data["test_y"], "test"),
                          checkpoint=checkpoint or run.checkpoint_path, record_iterations=True,
                          snapshot_parameters=snapshots)
    retrain_time = time.perf_counter() - started
    torch.manual_seed(seed)  # the same seed builds the same network before any step: the initial parameters
    return Outcome(sweep.trial_rows(study), best.value, params, model, result, flat_parameters(build_model(params)),
                   search_time, retrain_time)


def save_outputs(cfg: SearchConfig, run: Run, outcome: Outcome, space: SearchSpace,
                 trajectory: str | None = None) -> dict[str, Any]:
    """search.csv, the search table, history, model, figures and (optionally) the trajectory file of that
    name, for `loss-landscape` (see `save_trajectory`; it needs `snapshots=True` in `search_and_retrain`);
    returns metrics."""
    trials, params, result = outcome.trials, outcome.params, outcome.result
    atomic_write_csv(run.dir / "search.csv", trials)
    run.add_section("Search (validation accuracy; the test set is never used here)", markdown_table(trials))
    if trajectory:
        save_trajectory(run.dir / trajectory, torch.stack([outcome.initial, *result.snapshots]),
                        [params["units"]] * params["layers"], params.get("activation", "relu"))
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


def save_trajectory(path: Path, parameters: torch.Tensor, hidden: list[int], activation: str) -> None:
    """The trajectory file `loss-landscape` reads, `{"parameters": [epochs + 1, P], "hidden": [...],
    "activation": ...}`: the flat parameters of an MLP 784-`hidden`-10 before training and after every
    epoch, with what rebuilds the network."""
    atomic_torch_save(path, {"parameters": parameters, "hidden": hidden, "activation": activation})
