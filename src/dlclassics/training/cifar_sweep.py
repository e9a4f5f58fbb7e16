"""The CIFAR-10 sweeps of one model per setting: `cifar-linear` (learning rates) and `cifar-mlp` (widths).

Both follow the source's recipe for its parts a and b: the training split held out 40k/10k into train and
validation, one model per setting trained with Adam from the same seed, train and validation accuracy on
the whole sets before training and after every epoch, drawn solid and dashed per setting; the setting is
chosen on the final validation accuracy and scored once on the test set. So they share their options
(`SweepConfig`), the input layer, the training of the settings and their report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from dlclassics.config import BaseConfig, batch_size_option, dataset_option, epochs_option, limit_option, option
from dlclassics.data.cifar import cifar_datasets
from dlclassics.data.splits import Split
from dlclassics.engine import evaluate_classifier, held_out, make_optimizer, seed_everything
from dlclassics.models.pixels import Pixels, channel_stats
from dlclassics.runs import Run, markdown_table

SOURCE_BUG = ("The source scored every accuracy (curves and test) on raw 0-255 pixels while training on 0-1 "
              "inputs; here all accuracies are measured on the inputs the model was trained on.")


@dataclasses.dataclass(frozen=True)
class SweepConfig(BaseConfig):
    """Options shared by the CIFAR sweeps of one model per setting (`cifar-linear`, `cifar-mlp`)."""

    dataset: str = dataset_option("cifar10", cifar_datasets,
                                  "CIFAR-10, or a grey stand-in padded to 32x32 (not comparable)")
    batch_size: int = batch_size_option(512)
    epochs: int = epochs_option(12, "training epochs per setting")
    standardize: bool = option(True, "standardise inputs per channel (training-split mean/std); off = the "
                                     "source's pixel/255")
    val_fraction: float = option(0.2, "share of the training split held out for validation (the source's 10k "
                                      "of 50k)", low=0.0, high=0.5, low_open=True)
    limit: int = limit_option()


def input_layer(split: Split, standardize: bool) -> Callable[[], Pixels]:
    """A factory of the input layer: pixel/255, standardised per channel with training-split statistics or not."""
    mean, std = channel_stats(split.train_x) if standardize else ([0.0] * 3, [1.0] * 3)
    return lambda: Pixels(mean, std)


@dataclasses.dataclass
class Trained:
    label: str
    model: nn.Module
    history: list[dict[str, float]]  # epoch 0 (before training) then one row per epoch


def train_settings(cfg: SweepConfig, run: Run, split: Split,
                   settings: dict[str, tuple[Callable[[], nn.Module], float]]) -> list[Trained]:
    """Train one model per setting (label -> (builder, Adam lr)) from the same seed, with the source's
    per-epoch accuracies: on the whole training and validation sets, in eval mode, before training too."""
    # These full-set numbers replace `fit`'s running means of train loss and accuracy in each history row.
    def accuracies(model: nn.Module, epoch: int) -> dict[str, float]:
        return {**held_out(split.train_x, split.train_y, "train", 2048)(model, epoch),
                **held_out(split.val_x, split.val_y, "val", 2048)(model, epoch)}

    trained = []
    for index, (label, (build, lr)) in enumerate(settings.items()):
        generator = seed_everything(cfg.seed)  # every setting starts from the same random state
        model = build().to(run.device)
        before = {"epoch": 0, **accuracies(model, 0)}
        result = run.fit(model, (split.train_x, split.train_y), optimizer=make_optimizer("adam", model, lr),
                         epochs=cfg.epochs, batch_size=cfg.batch_size, generator=generator, evaluate=accuracies,
                         checkpoint=run.dir / f"checkpoint-{index}.pt", desc=f"{run.experiment} {label}")
        trained.append(Trained(label, model, [before, *result.history]))
    return trained


def accuracy_figure(trained: list[Trained], title: str) -> Any:
    """Train (solid) and validation (dashed) accuracy per epoch, one colour per setting, as the source drew it."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(7.0, 4.4))
    for index, item in enumerate(trained):
        epochs = [row["epoch"] for row in item.history]
        axes.plot(epochs, [row["train_accuracy"] for row in item.history], color=f"C{index}", label=item.label)
        axes.plot(epochs, [row["val_accuracy"] for row in item.history], color=f"C{index}", linestyle="--")
    axes.plot([], [], color="black", label="train (solid)")
    axes.plot([], [], color="black", linestyle="--", label="validation (dashed)")
    axes.set(title=title, xlabel="epoch (0 = before training)", ylabel="accuracy")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    return figure


def report_settings(run: Run, trained: list[Trained], split: Split, setting_name: str
                    ) -> tuple[Trained, dict[str, Any]]:
    """Choose the setting with the best final validation accuracy, score it once on the test set, write the
    history, the settings table, the figure and the model; returns (the chosen one, metrics)."""
    best = max(trained, key=lambda item: item.history[-1]["val_accuracy"])
    test = evaluate_classifier(best.model, split.test_x, split.test_y, batch_size=2048)
    rows = [{setting_name: item.label, **row} for item in trained for row in item.history]
    run.save_history(rows)
    table = [{setting_name: item.label, "train accuracy": item.history[-1]["train_accuracy"],
              "val accuracy": item.history[-1]["val_accuracy"],
              "best val accuracy (epoch)": max(row["val_accuracy"] for row in item.history)} for item in trained]
    run.add_section(f"Settings (chosen on the final validation accuracy: {best.label})", markdown_table(table))
    run.save_figure(accuracy_figure(trained, f"Accuracy per epoch and {setting_name}"), "accuracy",
                    f"Train (solid) and validation (dashed) accuracy per epoch, one colour per {setting_name}",
                    rows=rows)
    run.save_model(best.model)
    run.note(SOURCE_BUG)
    run.note(f"{len(split.train_x):,} training, {len(split.val_x):,} validation (held out of the training split) "
             f"and {len(split.test_x):,} test images")
    return best, {"best_setting": best.label, "best_val_accuracy": best.history[-1]["val_accuracy"],
                  "train_accuracy": best.history[-1]["train_accuracy"], "test_accuracy": test["accuracy"],
                  "test_loss": test["loss"]}
