"""cifar-lenet-search: random search over the widths of a LeNet-style CNN on CIFAR-10 (S2, CIFAR-10 d).

Source: `../shared/seeds/002_2461c30dc0c8b3cd.txt`, CIFAR-10 part d. conv(3 -> o1, 5x5) - ReLU - 3x3 max-pool
- conv(o1 -> o2, 5x5) - ReLU - 3x3 max-pool - fc o3 - fc o4 - fc 10 (ReLU between), inputs normalised with
mean/std 0.5; 20 configurations drawn at random with o1, o2 in [100, 200), o3 in [60, 200), o4 in
[40, 200); each trained with SGD lr 0.001 momentum 0.9, batch 4, 10 epochs. Reference: train accuracy
0.87 and test 0.68 for o1 = 173, o2 = 134, o3 = 175, o4 = 113.

The search runs through the project's sweep engine (Optuna, random sampler, resumable, `--workers`).
Each trial trains on the training part of a held-out split and is scored on validation only; its
model is kept in `trials/`, and the test set is scored once, for the chosen trial. At batch 4 one
trial takes hours on a CPU; the tuned recipe trains each configuration at batch 64 with Nesterov
momentum and a cosine decay for 3 epochs (same space, same 20 trials).

    dlclassics run cifar-lenet-search --recipe seed
    dlclassics run cifar-lenet-search --dataset fashion-mnist --workers 2
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from dlclassics import plots, sweep
from dlclassics.config import (
    BaseConfig,
    batch_size_option,
    dataset_option,
    epochs_option,
    limit_option,
    lr_option,
    option,
    resolve,
)
from dlclassics.data import cifar
from dlclassics.data.cifar import cifar_datasets
from dlclassics.data.images import ImageData
from dlclassics.data.splits import Split, split_data
from dlclassics.engine import (
    cosine_schedule,
    evaluate_classifier,
    fit,
    held_out,
    seed_everything,
    sgd,
)
from dlclassics.files import atomic_torch_save, atomic_write_csv
from dlclassics.models.pixels import Pixels, channel_stats
from dlclassics.runs import Reference, Run, markdown_table
from dlclassics.training.search import search_on_run

TITLE = "LeNet-style CNN on CIFAR-10: random search over its widths (S2 CIFAR-10 d)"

# The source's np.random.randint(low, high) ranges, as inclusive integer bounds.
SPACE = {"o1": (100, 199), "o2": (100, 199), "o3": (60, 199), "o4": (40, 199)}


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = dataset_option("cifar10", cifar_datasets,
                                  "CIFAR-10, or a grey stand-in padded to 32x32 (not comparable)")
    trials: int = option(20, "configurations drawn by the search", low=1)
    sampler: str = option("random", "random search (the source's) or TPE", choices=("random", "tpe"))
    epochs: int = epochs_option(3, "training epochs per configuration")
    batch_size: int = batch_size_option(64)
    lr: float = lr_option(0.02, "SGD learning rate")
    momentum: float = option(0.9, "SGD momentum", low=0.0, high=0.999)
    nesterov: bool = option(True, "Nesterov momentum")
    cosine: bool = option(True, "cosine learning-rate decay over each training")
    standardize: bool = option(True, "standardise inputs per channel (training-split statistics); off = the "
                                     "source's mean/std 0.5")
    val_fraction: float = option(0.2, "share of the training split held out for selection", low=0.0, high=0.5,
                                 low_open=True)
    limit: int = limit_option()


RECIPES = {"seed": {"epochs": 10, "batch_size": 4, "lr": 0.001, "nesterov": False, "cosine": False,
                    "standardize": False},
           "tuned": {}}
QUICK = {"limit": 200, "trials": 2, "epochs": 1, "batch_size": 32}

REFERENCES = [
    Reference("test_accuracy", 0.68, "test accuracy of the chosen configuration", tolerance=0.02, dataset="cifar10"),
    Reference("train_accuracy", 0.87, "its training accuracy", rule="info", dataset="cifar10"),
    Reference("best_config", "o1 173, o2 134, o3 175, o4 113", "the source's best configuration", rule="info",
              dataset="cifar10"),
]


def lenet(o1: int, o2: int, o3: int, o4: int, classes: int) -> nn.Sequential:
    """The source's Net with 5x5 kernels and 3x3 pooling: 32 -> 28 -> 9 -> 5 -> 1, so fc1 reads o2 values."""
    return nn.Sequential(nn.Conv2d(3, o1, 5), nn.ReLU(), nn.MaxPool2d(3), nn.Conv2d(o1, o2, 5), nn.ReLU(),
                         nn.MaxPool2d(3), nn.Flatten(), nn.Linear(o2, o3), nn.ReLU(), nn.Linear(o3, o4), nn.ReLU(),
                         nn.Linear(o4, classes))


@dataclasses.dataclass
class Prepared:
    """What every trial trains on, the same in every worker process."""

    split: Split
    stats: tuple[list[float], list[float]]  # per-channel mean and std of the input layer
    classes: int

    def model(self, params: dict[str, int]) -> nn.Sequential:
        return nn.Sequential(Pixels(*self.stats), *lenet(**params, classes=self.classes)).to(self.split.train_x.device)


def prepare(cfg: Config, data: ImageData, device: torch.device) -> Prepared:
    split = split_data(data, cfg.val_fraction, cfg.seed, cfg.limit, device)
    stats = channel_stats(split.train_x) if cfg.standardize else ([0.5] * 3, [0.5] * 3)
    return Prepared(split, stats, len(data.classes))


def train_one(cfg: Config, params: dict[str, int], prepared: Prepared, seed: int
              ) -> tuple[nn.Module, list[dict[str, float]]]:
    generator = seed_everything(seed)
    model = prepared.model(params)
    split = prepared.split
    optimizer = sgd(model, cfg.lr, cfg.momentum, cfg.nesterov, weight_decay=0.0)
    result = fit(model, (split.train_x, split.train_y), optimizer=optimizer, epochs=cfg.epochs,
                 scheduler=cosine_schedule(optimizer, cfg.epochs, cfg.cosine), batch_size=cfg.batch_size,
                 generator=generator, evaluate=held_out(split.val_x, split.val_y, "val", 1024), quiet=True)
    return model, result.history


def objective(cfg: Config, prepared: Prepared, folder: Trials) -> sweep.Objective:
    """The search objective: draw o1..o4, train on the training part, keep the model and its curves in the
    run's `trials/` folder, return the validation accuracy."""

    def objective(trial: optuna.trial.Trial) -> float:
        params = {name: trial.suggest_int(name, low, high) for name, (low, high) in SPACE.items()}
        index = sweep.trial_index(trial)  # the trial's slot: its seed offset and row, whichever worker runs it
        model, history = train_one(cfg, params, prepared, cfg.seed + index)
        train = evaluate_classifier(model, prepared.split.train_x, prepared.split.train_y, 1024)
        trial.set_user_attr("train_accuracy", round(train["accuracy"], 5))
        trial.set_user_attr("val_loss", round(history[-1]["val_loss"], 5))
        folder.save(index, model, history)
        return history[-1]["val_accuracy"]

    return objective


def worker_objective(payload: dict[str, Any]) -> sweep.Objective:
    """The objective of a sweep worker process (module-level, built from plain data), on the data it loads once."""
    cfg = resolve(Config, payload["config"])
    data = cifar.load(cfg.dataset, payload["data_dir"], payload["carve_test"], payload["unverified"])
    return objective(cfg, prepare(cfg, data, torch.device(payload["device"])), Trials(Path(payload["trials_dir"])))


@dataclasses.dataclass
class Trials:
    """The `trials/` folder of a run: each trial's model (state dict) and per-epoch history."""

    folder: Path

    def path(self, number: int, suffix: str) -> Path:
        return self.folder / f"trial-{number:03d}.{suffix}"

    def save(self, number: int, model: nn.Module, history: list[dict[str, float]]) -> None:
        atomic_write_csv(self.path(number, "csv"), history)
        atomic_torch_save(self.path(number, "pt"), model.state_dict())

    def history(self, number: int) -> list[dict[str, float]]:
        with open(self.path(number, "csv"), newline="") as handle:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = run.load_images(cfg.dataset, cifar.load)  # checks the data (and notes it) before any worker starts
    trials = Trials(run.dir / "trials")
    payload = {"config": dataclasses.asdict(cfg), "device": str(run.device),  # resolved once, by the session
               "data_dir": str(run.data_dir) if run.data_dir else None,
               "carve_test": run.carve_test, "unverified": run.unverified, "trials_dir": str(trials.folder)}
    prepared = prepare(cfg, data, run.device)
    signature = {"space": {name: list(bounds) for name, bounds in SPACE.items()},
                 **{k: v for k, v in payload["config"].items() if k != "device"}}
    plan = sweep.Search(cfg.trials, signature, sampler=cfg.sampler, seed=cfg.seed, metric="validation accuracy")
    with run.timer("search_time_s"):
        study = search_on_run(run, objective(cfg, prepared, trials), plan,
                              sweep.WorkerObjective(worker_objective, payload))
    rows = sweep.trial_rows(study)
    best = sweep.best_trial(study)
    best_index = sweep.trial_index(best)

    split = prepared.split
    model = prepared.model(best.params)
    model.load_state_dict(torch.load(trials.path(best_index, "pt"), weights_only=True))
    test = evaluate_classifier(model, split.test_x, split.test_y, 1024)
    run.save_model(model)
    save_outputs(run, rows, {row["trial"]: trials.history(row["trial"]) for row in rows}, best_index)
    run.note(f"{len(split.train_x):,} training and {len(split.val_x):,} validation images (held out of the "
             f"training split) for the search; the test set ({len(split.test_x):,}) is scored once, for trial "
             f"{best_index}")
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "best_val_accuracy": best.value,
            "train_accuracy": best.user_attrs["train_accuracy"],
            "best_config": ", ".join(f"{name} {best.params[name]}" for name in SPACE),
            "trials": len(rows)}


def save_outputs(run: Run, rows: list[dict[str, Any]], histories: dict[int, list[dict[str, float]]],
                 best: int) -> None:
    """search.csv and the search table, the per-trial curves, the best trial's curves, value per trial."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    atomic_write_csv(run.dir / "search.csv", rows)
    run.add_section("Search (validation accuracy; the test set is never used here)", markdown_table(rows))
    figure, axes = plt.subplots(figsize=(7.0, 4.4))
    for number, history in histories.items():
        chosen = number == best
        axes.plot([row["epoch"] for row in history], [row["val_accuracy"] for row in history],
                  color="C3" if chosen else "grey", alpha=1.0 if chosen else 0.5, linewidth=2 if chosen else 1,
                  marker="o", markersize=4 if chosen else 3, label=f"trial {number} (chosen)" if chosen else None)
    axes.set(title="Validation accuracy per epoch, every trial", xlabel="epoch", ylabel="accuracy")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend()
    run.save_figure(figure, "trials", "Validation accuracy per epoch of every configuration (chosen in red)",
                    rows=[{"trial": n, **row} for n, history in histories.items() for row in history])
    run.save_figure(plots.curves(histories[best], "epoch", {"train_accuracy": "train accuracy (running)",
                                                            "val_accuracy": "val accuracy"},
                                 f"Chosen configuration (trial {best})", "accuracy"),
                    "best_curves", "Training and validation accuracy of the chosen configuration",
                    rows=histories[best])
    run.save_figure(plots.scatter_trials(rows, "value", "Search: validation accuracy per trial",
                                         "validation accuracy"), "search",
                    "Validation accuracy of every configuration tried", rows=rows)
