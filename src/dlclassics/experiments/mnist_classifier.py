"""mnist-classifier: the supervised MNIST classifier of S4 Sec. 2.

Source: `../shared/seeds/004_a59f37929212bae1.txt`, Sec. 2. The source gives no architecture, only a
10-epoch run ending at training loss 0.0133, validation loss 0.0497, validation accuracy 98.43%.
We use a small CNN (`models.cnn.small_cnn`), Adam, a validation split held out from the training
set for the curves and the untouched test split for the final accuracy: `training.classifiers.train_cnn`,
which `fgsm` calls too when it trains this CNN as its victim (with the options' defaults: the narrow CNN).
The tuned recipe widens the CNN and trains it with label smoothing, random mirrors (not on digits) and
1-pixel translations, scoring the mean logits of each image and its mirror; on Fashion-MNIST it must
reach >= 0.930 test accuracy in under 5 minutes on two CPU cores.

    dlclassics run mnist-classifier --recipe seed
    dlclassics run mnist-classifier --dataset fashion-mnist
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dlclassics import plots
from dlclassics.data.images import ImageData
from dlclassics.runs import Reference, Run
from dlclassics.training.classifiers import CNN_QUICK, CnnConfig, TrainedClassifier, train_cnn

TITLE = "Small CNN classifier on MNIST (S4 Sec. 2)"


@dataclasses.dataclass(frozen=True)
class Config(CnnConfig):
    """The CNN's options and its training's, as `fgsm` trains the same CNN for its victim."""


RECIPES = {"seed": {"lr": 1e-3, "batch_size": 64, "epochs": 10, "cosine": False},
           # Chosen on validation accuracy (Fashion-MNIST, 6,000 images held out of the training split): 0.9405,
           # against 0.9312 with dropout 0.3 and 2-pixel translations (under-fitting: training accuracy below
           # validation's) and 0.9212 for the narrow CNN (16/32 channels, 128 hidden units) without them, 10 epochs.
           "tuned": {"channels": (32, 64), "hidden": 256,  # twice as wide: 3-4x the time per image
                     "dropout": 0.1, "label_smoothing": 0.1,  # light regularisers; heavier ones under-fit
                     "flip": True, "translate": 1,  # random mirror and 1-pixel shifts (no mirror on digits)
                     "epochs": 15}}  # the wider net, regularised, still improves after 10 epochs
QUICK = CNN_QUICK

REFERENCES = [
    Reference("val_accuracy", 0.9843, "validation accuracy after 10 epochs (source: MNIST)", rule="higher",
              tolerance=0.003, dataset="mnist"),
    Reference("val_loss", 0.0497, "validation loss (source: MNIST)", rule="lower", tolerance=0.01, dataset="mnist"),
    Reference("train_loss", 0.0133, "training loss (source: MNIST)", rule="info", dataset="mnist"),
    Reference("test_accuracy", 0.91, "test accuracy (our Fashion-MNIST target)", rule="at_least",
              dataset="fashion-mnist"),
    Reference("train_time_s", 300.0, "training time, seconds (our Fashion-MNIST target)", rule="at_most",
              dataset="fashion-mnist"),
    # The raised goal of the tuned recipe (issue 21), and its time on 2 CPU cores.
    Reference("test_accuracy", "not reported", "test accuracy (raised goal: >= 0.930)", rule="at_least",
              target=0.930, dataset="fashion-mnist"),
    Reference("wall_time_s", "not reported", "whole run, s (raised goal on 2 CPU cores: <= 300)", rule="at_most",
              target=300.0, dataset="fashion-mnist"),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = run.load_images(cfg.dataset)
    trained = train_cnn(cfg, run, data)
    run.save_history(trained.history)
    run.save_model(trained.model)
    save_figures(run, trained, data)
    final = trained.history[-1]
    return {"test_accuracy": trained.test["accuracy"], "test_loss": trained.test["loss"],
            "val_accuracy": final["val_accuracy"], "val_loss": final["val_loss"], "train_loss": final["train_loss"]}


def save_figures(run: Run, trained: TrainedClassifier, data: ImageData) -> None:
    """Loss and accuracy per epoch, and the test set's confusion matrix."""
    history = trained.history
    run.save_figure(plots.curves(history, "epoch", {"train_loss": "train loss", "val_loss": "val loss"},
                                 "Cross-entropy per epoch", "loss"), "loss", "Training and validation loss",
                    rows=history)
    run.save_figure(plots.curves(history, "epoch", {"train_accuracy": "train accuracy",
                                                    "val_accuracy": "val accuracy"},
                                 "Accuracy per epoch", "accuracy"), "accuracy", "Training and validation accuracy",
                    rows=history)
    predicted = trained.test["probabilities"].argmax(1).cpu()
    matrix = plots.confusion_matrix(predicted, data.test_y.cpu(), len(data.classes))
    run.save_figure(plots.confusion_figure(matrix, data.classes, "Confusion matrix (test set)"), "confusion",
                    "Confusion matrix on the test set", data={"confusion": matrix})
