"""cifar-mlp: a one-hidden-layer ReLU network on CIFAR-10 pixels, the width M swept (S2, CIFAR-10 b).

Source: `../shared/seeds/002_2461c30dc0c8b3cd.txt`, CIFAR-10 part b. 3072 -> M (ReLU) -> 10 with M in
100, 120, ..., 240, Adam lr 0.001, otherwise as `cifar-linear` (40k/10k split of the training set, batch
512, 12 epochs, train/validation accuracy per epoch drawn solid/dashed per M). Reference: best M = 200,
test accuracy 0.456 (public anchor: a two-layer MLP reaches about 0.50).

The source's listing for this part still builds the linear network and reads an `lr` key its settings
lack; we build the network its text describes. Fixed as in `cifar-linear`: every accuracy is measured
on the inputs the model was trained on (the source scored raw 0-255 pixels). M is chosen on validation.

    dlclassics run cifar-mlp --recipe seed
    dlclassics run cifar-mlp --dataset fashion-mnist
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from dlclassics.config import lr_option, width_option
from dlclassics.data import cifar
from dlclassics.data.splits import split_data
from dlclassics.models.mlp import mlp
from dlclassics.runs import Reference, Run
from dlclassics.training.cifar_sweep import SweepConfig, input_layer, report_settings, train_settings

TITLE = "One-hidden-layer MLP on CIFAR-10, width swept (S2 CIFAR-10 b)"


@dataclasses.dataclass(frozen=True)
class Config(SweepConfig):
    widths: tuple[int, ...] = width_option(tuple(range(100, 241, 20)), "hidden widths M tried, comma separated")
    lr: float = lr_option(0.001)


RECIPES = {"seed": {"standardize": False}, "tuned": {}}
QUICK = {"limit": 500, "epochs": 2, "batch_size": 64, "widths": (20, 40)}

REFERENCES = [
    Reference("best_width", 200, "best hidden width M (validation)", rule="near", tolerance=0, dataset="cifar10"),
    Reference("test_accuracy", 0.456, "test accuracy of the best M", tolerance=0.01, dataset="cifar10"),
    Reference("test_accuracy", 0.50, "public anchor: two-layer MLP", rule="info", dataset="cifar10"),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = run.load_images(cfg.dataset, cifar.load)
    split = split_data(data, cfg.val_fraction, cfg.seed, cfg.limit, run.device)
    pixels = input_layer(split, cfg.standardize)
    inputs = split.train_x[0].numel()

    def network(width: int) -> nn.Module:
        return nn.Sequential(pixels(), nn.Flatten(), mlp(inputs, [width], len(data.classes)))

    settings = {f"M = {width}": (lambda width=width: network(width), cfg.lr) for width in cfg.widths}
    with run.timer("train_time_s"):
        trained = train_settings(cfg, run, split, settings)
    best, metrics = report_settings(run, trained, split, "M")
    return {"best_width": cfg.widths[trained.index(best)], **metrics}
