"""mnist-mlp: the MNIST multi-layer perceptron of S3's second notebook.

Source: `../shared/seeds/003_6b180435be9e82cc.txt`, second notebook. A 784-128-64-10 ReLU network
with LogSoftmax + NLLLoss (= cross-entropy on logits), Adam lr 1e-3, batch 64, 15 epochs, inputs
normalised to [-1, 1]. Reference: test accuracy 0.9717 after 3.2 minutes of training.
Also runs on Fashion-MNIST (`--dataset fashion-mnist`).

    dlclassics run mnist-mlp --recipe seed
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from dlclassics import plots
from dlclassics.data.transforms import flat_float, subsample
from dlclassics.engine import check_classifier_loss, cosine_schedule, evaluate_classifier, held_out, make_optimizer
from dlclassics.models.mlp import mlp
from dlclassics.runs import Reference, Run
from dlclassics.training.classifiers import ClassifierTraining, MlpLayers

TITLE = "MLP classifier on MNIST (S3)"


@dataclasses.dataclass(frozen=True)
class Config(MlpLayers, ClassifierTraining):
    """The network's options (`MlpLayers`, which a consumer of this run reads back) and its training's
    (the same as mnist-classifier's CNN)."""


RECIPES = {"seed": {"lr": 1e-3, "batch_size": 64, "epochs": 15, "cosine": False}, "tuned": {}}
QUICK = {"limit": 500, "epochs": 2, "batch_size": 32}

REFERENCES = [
    Reference("test_accuracy", 0.9717, "test accuracy (full MNIST)", rule="higher", tolerance=0.003, dataset="mnist"),
    Reference("train_time_s", 192.0, "training time, seconds (3.2 min)", rule="at_most", dataset="mnist"),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = run.load_images(cfg.dataset)
    # S3 normalises with mean 0.5, std 0.5: pixels in [-1, 1].
    train_x, train_y = subsample(flat_float(data.train_x, 0.5, 0.5), data.train_y, cfg.limit)
    test_x, test_y = flat_float(data.test_x, 0.5, 0.5), data.test_y
    train_x, train_y, test_x, test_y = run.to_device(train_x, train_y, test_x, test_y)

    model = mlp(train_x.shape[1], list(cfg.hidden), len(data.classes)).to(run.device)
    optimizer = make_optimizer("adam", model, cfg.lr)
    scheduler = cosine_schedule(optimizer, cfg.epochs, cfg.cosine)

    with run.timer("train_time_s"):
        result = run.fit(model, (train_x, train_y), optimizer=optimizer, scheduler=scheduler, epochs=cfg.epochs,
                         batch_size=cfg.batch_size, evaluate=held_out(test_x, test_y, "test"))
    check_classifier_loss(result.history[-1]["train_loss"], len(data.classes))
    run.save_history(result.history)
    run.save_model(model)

    final = evaluate_classifier(model, test_x, test_y)
    predicted = final["probabilities"].argmax(1)
    save_classifier_figures(run, data.classes, data.test_x, test_y, final["probabilities"], result.history)
    return {"test_accuracy": final["accuracy"], "test_loss": final["loss"],
            "train_loss": result.history[-1]["train_loss"],
            "misclassified": int((predicted != test_y).sum())}


def save_classifier_figures(run: Run, classes: tuple[str, ...], images: torch.Tensor, targets: torch.Tensor,
                            probabilities: torch.Tensor, history: list[dict[str, float]]) -> None:
    """Loss curve, S3's "view classify" figure, confusion matrix and a misclassified-examples grid."""
    run.save_figure(plots.curves(history, "epoch", {"train_loss": "train loss", "test_loss": "test loss"},
                                 "Cross-entropy per epoch", "loss"), "loss", "Training and test loss", rows=history)
    targets, probabilities = targets.cpu(), probabilities.cpu()
    shown = torch.arange(5)
    run.save_figure(plots.view_classify(images[shown], probabilities[shown], targets[shown], classes,
                                        "Test images and predicted class probabilities"),
                    "view_classify", "View classify: first five test images",
                    data={"images": images[shown], "probabilities": probabilities[shown], "labels": targets[shown]})
    predicted = probabilities.argmax(1)
    matrix = plots.confusion_matrix(predicted, targets, len(classes))
    run.save_figure(plots.confusion_figure(matrix, classes, "Confusion matrix (test set)"), "confusion",
                    "Confusion matrix on the test set", data={"confusion": matrix})
    wrong = torch.nonzero(predicted != targets).flatten()[:20]
    titles = [f"{classes[targets[i]][:7]}->{classes[predicted[i]][:7]}" for i in wrong]
    run.save_figure(plots.image_grid(images[wrong], "Misclassified test images (true -> predicted)", titles),
                    "misclassified", "Misclassified test examples",
                    data={"indices": wrong, "true": targets[wrong], "predicted": predicted[wrong]})
