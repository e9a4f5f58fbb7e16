"""The classifier of a finished run, rebuilt as a model of pixels in [0, 1] with its input scaling inside.

Each classifier experiment feeds its network its own scaling of the pixels: `mnist-classifier` pixel/255,
`mnist-mlp` (pixel/255 - 0.5) / 0.5 flattened, `fashion-mlp` pixel/255 - 0.5 flattened. An attack must
perturb the pixels themselves (epsilon is a distance in pixel units, and the clamp is to the valid pixel
range [0, 1]), and a transfer must feed new images the way the network saw its own: so the rebuilt model
is `PixelClassifier(scaling, network)`, a function of [B, C, H, W] pixels in [0, 1].

One `Producer` line per classifier experiment says how its network is scaled and rebuilt from its
config; `PRODUCERS` is the list `fgsm` and `cifar-transfer` accept as `--from-run`. A producer whose
model reads uint8 pixels through its own input layer (pixel/255 first) is `PixelScaling(0.0, 1 / 255)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from dlclassics import registry
from dlclassics.config import resolve
from dlclassics.errors import RunError, UsageError
from dlclassics.files import load_tensor_file
from dlclassics.models.cnn import small_cnn
from dlclassics.models.mlp import mlp
from dlclassics.runs import MODEL, FinishedRun


class PixelScaling(nn.Module):
    """[B, C, H, W] pixels in [0, 1] -> (pixels - center) / scale, flattened for a perceptron: what the
    network was trained on, as the model's first layer."""

    def __init__(self, center: float, scale: float, flatten: bool):
        super().__init__()
        self.center, self.scale, self.flatten = center, scale, flatten

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        scaled = (pixels - self.center) / self.scale
        return scaled.flatten(1) if self.flatten else scaled

    def extra_repr(self) -> str:
        return f"center={self.center}, scale={self.scale}, flatten={self.flatten}"


class PixelClassifier(nn.Sequential):
    """`scaling` then `network` (an nn.Sequential ending in the Linear layer that gives the logits)."""

    def __init__(self, scaling: PixelScaling, network: nn.Sequential):
        super().__init__()
        self.scaling, self.network = scaling, network

    def backbone(self) -> nn.Sequential:
        """Everything but the last layer: pixels -> the features the last layer classifies [B, F]."""
        return nn.Sequential(self.scaling, *self.network[:-1])

    @property
    def feature_size(self) -> int:
        return self.network[-1].in_features


@dataclasses.dataclass(frozen=True)
class ImageShape:
    """What the rebuilt network reads and says: channels, side of the square image, classes."""

    channels: int
    size: int
    classes: int


# network(producer's resolved config, its metrics.json, the image shape) -> the untrained network
Builder = Callable[[Any, Mapping[str, Any], ImageShape], nn.Sequential]


@dataclasses.dataclass(frozen=True)
class Producer:
    """How a classifier experiment scales its inputs, and how its network is built from its config."""

    center: float
    scale: float
    flatten: bool
    build: Builder
    needs_metrics: tuple[str, ...] = ()  # metrics.json keys `build` reads

    def scaling(self) -> PixelScaling:
        return PixelScaling(self.center, self.scale, self.flatten)


def _small_cnn(cfg: Any, metrics: Mapping[str, Any], shape: ImageShape) -> nn.Sequential:
    return small_cnn(tuple(cfg.channels), cfg.hidden, shape.classes, cfg.dropout, shape.channels, shape.size)


def _mlp(cfg: Any, metrics: Mapping[str, Any], shape: ImageShape) -> nn.Sequential:
    return mlp(shape.channels * shape.size ** 2, list(cfg.hidden), shape.classes)


def _searched_mlp(cfg: Any, metrics: Mapping[str, Any], shape: ImageShape) -> nn.Sequential:
    best = metrics["best_config"]  # the searched configuration the retrained model has
    return mlp(shape.channels * shape.size ** 2, [best["units"]] * best["layers"], shape.classes,
               activation=best.get("activation", "relu"), batchnorm=best.get("batchnorm", False),
               dropout=best.get("dropout", 0.0))


# One line per classifier experiment (its input scaling is the one its `run` applies).
PRODUCERS: dict[str, Producer] = {
    "mnist-classifier": Producer(0.0, 1.0, False, _small_cnn),  # images_4d: pixel/255
    "mnist-mlp": Producer(0.5, 0.5, True, _mlp),  # flat_float(x, 0.5, 0.5): [-1, 1]
    "fashion-mlp": Producer(0.5, 1.0, True, _searched_mlp, ("best_config",)),  # flat_float(x, 0.5)
    "fashion-mlp-enhanced": Producer(0.5, 1.0, True, _searched_mlp, ("best_config",)),
}


def producer_config(finished: FinishedRun) -> Any:
    """The producer's config from its config.json, resolved (typed, checked) as its own experiment would."""
    module = registry.load(finished.experiment)
    try:
        return resolve(module.Config, finished.record.get("config", {}))
    except UsageError as exc:
        raise UsageError(f"--from-run {finished.folder}: its config.json does not describe a "
                         f"'{finished.experiment}' run ({exc})") from None


def rebuild(experiment: str, cfg: Any, metrics: Mapping[str, Any], shape: ImageShape) -> PixelClassifier:
    """The untrained classifier of `experiment` with config `cfg`: its network behind its input scaling."""
    producer = PRODUCERS[experiment]
    return PixelClassifier(producer.scaling(), producer.build(cfg, metrics, shape))


def load_weights(model: nn.Module, path: Any, what: str) -> nn.Module:
    """`model.network` with the state dict in `path` (read with weights_only=True; keys and shapes checked)."""
    state = load_tensor_file(path, what)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{path} must hold a state dict (names -> tensors); expected {what}")
    try:
        model.network.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{path} does not fit {what}: {' '.join(str(exc).split())[:300]}") from None
    return model


def classifier_builder(finished: FinishedRun, shape: ImageShape) -> Callable[[], PixelClassifier]:
    """A function building the finished run's classifier, untrained (a fresh random initialisation per call)."""
    producer = PRODUCERS[finished.experiment]
    cfg = producer_config(finished)
    metrics = finished.metrics(needs=producer.needs_metrics) if producer.needs_metrics else {}
    return lambda: rebuild(finished.experiment, cfg, metrics, shape)


def load_classifier(finished: FinishedRun, shape: ImageShape) -> PixelClassifier:
    """The trained classifier of a finished run (its model.pt), in eval mode, as a model of [0, 1] pixels."""
    build = classifier_builder(finished, shape)
    what = f"the model of a '{finished.experiment}' run on {shape.channels}x{shape.size}x{shape.size} images"
    return finished.load(MODEL, lambda path: load_weights(build(), path, what)).eval()
