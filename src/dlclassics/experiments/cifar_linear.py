"""cifar-linear: a linear (softmax) classifier on CIFAR-10 pixels, the learning rate swept (S2, CIFAR-10 a).

Source: `../shared/seeds/002_2461c30dc0c8b3cd.txt`, CIFAR-10 part a. Linear 3072 -> 10 on pixels scaled to
[0, 1], cross-entropy, Adam with lr in {0.01, 0.001, 0.0001}, the training set split 40k/10k into train
and validation, batch 512, 12 epochs; train and validation accuracy before training and after every
epoch, drawn solid (train) and dashed (validation) per lr. Reference: best lr 0.001, test accuracy
0.374 (public anchor: softmax on raw pixels reaches about 0.39).

Fixed: the source scored every accuracy (the curves and the test number) on raw 0-255 pixels while the
model was trained on 0-1 inputs; here every accuracy is measured on the inputs the model was trained on.
The tuned recipe only standardises the inputs per channel. The lr is chosen on validation; the test set
is scored once, for the chosen model.

Without CIFAR-10, `--dataset fashion-mnist` (or mnist) runs the same code on grey images padded to
32x32 and repeated to 3 channels; the report then says "not comparable (different data)".

    dlclassics run cifar-linear --recipe seed
    dlclassics run cifar-linear --dataset fashion-mnist
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from dlclassics.config import option
from dlclassics.data import cifar
from dlclassics.data.splits import split_data
from dlclassics.runs import Reference, Run
from dlclassics.training.cifar_sweep import SweepConfig, input_layer, report_settings, train_settings

TITLE = "Linear classifier on CIFAR-10, learning rate swept (S2 CIFAR-10 a)"


@dataclasses.dataclass(frozen=True)
class Config(SweepConfig):
    lrs: tuple[float, ...] = option((0.01, 0.001, 0.0001), "Adam learning rates tried, comma separated", low=0.0,
                                    low_open=True)


RECIPES = {"seed": {"standardize": False}, "tuned": {}}
QUICK = {"limit": 500, "epochs": 2, "batch_size": 64}

REFERENCES = [
    Reference("best_lr", 0.001, "best learning rate (validation)", rule="near", tolerance=1e-12, dataset="cifar10"),
    Reference("test_accuracy", 0.374, "test accuracy of the best lr", tolerance=0.01, dataset="cifar10"),
    Reference("test_accuracy", 0.39, "public anchor: softmax on raw pixels", rule="info", dataset="cifar10"),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = run.load_images(cfg.dataset, cifar.load)
    split = split_data(data, cfg.val_fraction, cfg.seed, cfg.limit, run.device)
    pixels = input_layer(split, cfg.standardize)
    inputs = split.train_x[0].numel()

    def linear() -> nn.Module:
        return nn.Sequential(pixels(), nn.Flatten(), nn.Linear(inputs, len(data.classes)))

    with run.timer("train_time_s"):
        trained = train_settings(cfg, run, split, {f"lr = {lr:g}": (linear, lr) for lr in cfg.lrs})
    best, metrics = report_settings(run, trained, split, "lr")
    return {"best_lr": cfg.lrs[trained.index(best)], **metrics}
