"""Image classifiers that other runs build on: mnist-classifier's CNN trained, and any classifier run rebuilt.

`mnist-classifier` trains a small CNN, and `fgsm` trains the same CNN as its victim when no finished run
is given: both call `train_cnn` with a `CnnConfig`.

A finished classifier run is rebuilt as a model of pixels in [0, 1] with its input scaling inside. Each
classifier experiment feeds its network its own scaling of the pixels: `mnist-classifier` pixel/255,
`mnist-mlp` (pixel/255 - 0.5) / 0.5 flattened, `fashion-mlp` pixel/255 - 0.5 flattened. An attack must
perturb the pixels themselves (epsilon is a distance in pixel units, and the clamp is to the valid pixel
range [0, 1]), and a transfer must feed new images the way the network saw its own: so the rebuilt model
is `PixelClassifier(scaling, network)`, a function of [B, C, H, W] pixels in [0, 1].

One `Producer` line per classifier experiment says how its network is scaled, which of its options shape
the network (a small dataclass that the producer's own `Config` extends, so both read the same field
declarations) and how the network is built from them; `PRODUCERS` is the list `fgsm` and
`cifar-transfer` accept as `--from-run`. A producer whose model reads uint8 pixels through its own input
layer (pixel/255 first) is `PixelScaling(0.0, 1 / 255)`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from dlclassics.config import (
    BaseConfig,
    batch_size_option,
    dataset_option,
    epochs_option,
    limit_option,
    lr_option,
    option,
    resolve,
    width_option,
)
from dlclassics.data.images import ImageData, image_datasets
from dlclassics.data.splits import holdout
from dlclassics.data.transforms import images_4d, subsample
from dlclassics.engine import (
    check_classifier_loss,
    classification_step,
    cosine_schedule,
    evaluate_classifier,
    held_out,
    make_optimizer,
)
from dlclassics.errors import RunError, UsageError
from dlclassics.files import load_tensor_file
from dlclassics.models.cnn import small_cnn
from dlclassics.models.flip_average import FlipAverage
from dlclassics.models.mlp import mlp
from dlclassics.runs import MODEL, FinishedRun, Run

# ---------------------------------------------------------------- the options that shape each network


@dataclasses.dataclass(frozen=True)
class SmallCnn:
    """mnist-classifier's network: two conv layers and a hidden fully connected layer."""

    channels: tuple[int, ...] = width_option((16, 32), "channels of the two conv layers, comma separated")
    hidden: int = width_option(128, "units of the hidden fully connected layer")
    dropout: float = option(0.0, "dropout before the output layer", low=0.0, high=0.9)

    def __post_init__(self) -> None:
        if len(self.channels) != 2:
            raise UsageError(f"option 'channels' needs two values (first,second conv layer); got {self.channels}")


@dataclasses.dataclass(frozen=True)
class MlpLayers:
    """mnist-mlp's network: the widths of its hidden layers."""

    hidden: tuple[int, ...] = width_option((128, 64), "hidden layer widths, comma separated")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A searched network: no option shapes it, its searched configuration is in metrics.json."""


# ---------------------------------------------------------------- mnist-classifier's CNN, trained

@dataclasses.dataclass(frozen=True)
class ClassifierTraining(BaseConfig):
    """How the two MNIST classifiers train (S3's MLP, S4's CNN): Adam, a cosine decay, the same budget."""

    dataset: str = dataset_option("mnist", image_datasets)
    lr: float = lr_option(2e-3)
    batch_size: int = batch_size_option(128)
    epochs: int = epochs_option(10)
    cosine: bool = option(True, "decay the learning rate to 0 along a cosine over the epochs")
    limit: int = limit_option()


@dataclasses.dataclass(frozen=True)
class CnnConfig(SmallCnn, ClassifierTraining):
    """mnist-classifier's options: the CNN and its training (`fgsm` trains the same CNN for its victim)."""

    val_fraction: float = option(0.1, "fraction of the training split held out for validation", low=0.0,
                                 high=0.5, low_open=True)
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", low=0.0, high=0.9)
    flip: bool = option(False, "random horizontal flips in training, and the test scored on the mean logits of "
                               "each image and its mirror (skipped on digits)")
    translate: int = option(0, "random translations in training, by up to this many pixels each way", low=0,
                            high=8)


# The smoke-test size of mnist-classifier, and of the CNN `fgsm` trains.
CNN_QUICK = {"limit": 500, "epochs": 2, "batch_size": 32}


@dataclasses.dataclass
class TrainedClassifier:
    model: nn.Sequential  # the network, trained, reading pixels in [0, 1]
    history: list[dict[str, float]]  # per epoch: train loss and accuracy, validation loss and accuracy
    test: dict[str, Any]  # `evaluate_classifier` on the test split: loss, accuracy, probabilities


ConfigT = TypeVar("ConfigT")


def without_mirrors(cfg: ConfigT, data: ImageData, run: Run, **off: Any) -> ConfigT:
    """`cfg` with its options that mirror images (random flips, a mirror average) set to their `off`
    values on data whose mirror images are not of their class (digits: a mirrored 2 is no digit); the run
    notes which it turned off."""
    mirroring = {name: value for name, value in off.items() if getattr(cfg, name) != value}
    if data.mirror_symmetric or not mirroring:
        return cfg
    run.note(f"{', '.join(mirroring)}: no mirrored images on {data.name} (a mirrored image is not one of its class)")
    return dataclasses.replace(cfg, **mirroring)


def train_cnn(cfg: CnnConfig, run: Run, data: ImageData) -> TrainedClassifier:
    """The small CNN trained with Adam on `data` (pixels in [0, 1]): validation held out of the training split
    for the curves, the untouched test split scored once at the end."""
    train_x, train_y, val_x, val_y = holdout(data.train_x, data.train_y, cfg.val_fraction, cfg.seed)
    shape = (data.channels, data.image_size)
    train_x, train_y = subsample(images_4d(train_x, *shape), train_y, cfg.limit)
    train_x, train_y, val_x, val_y, test_x, test_y = run.to_device(
        train_x, train_y, images_4d(val_x, *shape), val_y, images_4d(data.test_x, *shape), data.test_y)
    run.note(f"{len(train_x):,} training, {len(val_x):,} validation (held out of the training split, "
             f"seed {cfg.seed}) and {len(test_x):,} test images")

    # channels_last lets oneDNN pick its fastest CPU convolutions (about 1.4x here).
    model = small_cnn(tuple(cfg.channels), cfg.hidden, len(data.classes), cfg.dropout, *shape).to(run.device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer("adam", model, cfg.lr)
    flip = without_mirrors(cfg, data, run, flip=False).flip
    step = functools.partial(classification_step, label_smoothing=cfg.label_smoothing, flip=flip,
                             shift=cfg.translate)
    validate = held_out(val_x, val_y, "val", 1024)
    scored = FlipAverage(model) if flip else model  # what validation and test score
    with run.timer("train_time_s"):
        result = run.fit(model, (train_x, train_y), optimizer=optimizer, step=step,
                         scheduler=cosine_schedule(optimizer, cfg.epochs, cfg.cosine), epochs=cfg.epochs,
                         batch_size=cfg.batch_size, evaluate=lambda _, epoch: validate(scored, epoch))
    check_classifier_loss(result.history[-1]["train_loss"], len(data.classes))
    return TrainedClassifier(model, result.history, evaluate_classifier(scored, test_x, test_y, batch_size=1024))


# ---------------------------------------------------------------- a finished classifier run, rebuilt

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


# network(the producer's network options, its metrics.json, the image shape) -> the untrained network
Builder = Callable[[Any, Mapping[str, Any], ImageShape], nn.Sequential]


@dataclasses.dataclass(frozen=True)
class Producer:
    """How a classifier experiment scales its inputs, which of its options shape its network, and how the
    network is built from them."""

    center: float
    scale: float
    flatten: bool
    options: type  # a dataclass of the network's options, as the producer's Config declares them
    build: Builder
    needs_metrics: tuple[str, ...] = ()  # metrics.json keys `build` reads

    def scaling(self) -> PixelScaling:
        return PixelScaling(self.center, self.scale, self.flatten)


def _small_cnn(cfg: SmallCnn, metrics: Mapping[str, Any], shape: ImageShape) -> nn.Sequential:
    return small_cnn(tuple(cfg.channels), cfg.hidden, shape.classes, cfg.dropout, shape.channels, shape.size)


def _mlp(cfg: MlpLayers, metrics: Mapping[str, Any], shape: ImageShape) -> nn.Sequential:
    return mlp(shape.channels * shape.size ** 2, list(cfg.hidden), shape.classes)


def _searched_mlp(cfg: NoOptions, metrics: Mapping[str, Any], shape: ImageShape) -> nn.Sequential:
    best = metrics["best_config"]  # the searched configuration the retrained model has
    return mlp(shape.channels * shape.size ** 2, [best["units"]] * best["layers"], shape.classes,
               activation=best.get("activation", "relu"), batchnorm=best.get("batchnorm", False),
               dropout=best.get("dropout", 0.0))


# One line per classifier experiment (its input scaling is the one its `run` applies).
PRODUCERS: dict[str, Producer] = {
    "mnist-classifier": Producer(0.0, 1.0, False, SmallCnn, _small_cnn),  # images_4d: pixel/255
    "mnist-mlp": Producer(0.5, 0.5, True, MlpLayers, _mlp),  # flat_float(x, 0.5, 0.5): [-1, 1]
    "fashion-mlp": Producer(0.5, 1.0, True, NoOptions, _searched_mlp, ("best_config",)),  # flat_float(x, 0.5)
    "fashion-mlp-enhanced": Producer(0.5, 1.0, True, NoOptions, _searched_mlp, ("best_config",)),
}


def producer_config(finished: FinishedRun) -> Any:
    """The producer's network options from its config.json, resolved (typed, checked) as its own run did."""
    options = PRODUCERS[finished.experiment].options
    names = {field.name for field in dataclasses.fields(options)}
    recorded = {name: value for name, value in finished.options.items() if name in names}
    try:
        return resolve(options, recorded)
    except UsageError as exc:
        raise UsageError(f"--from-run {finished.folder}: its config.json does not describe a "
                         f"'{finished.experiment}' run ({exc})") from None


def rebuild(experiment: str, cfg: Any, metrics: Mapping[str, Any], shape: ImageShape) -> PixelClassifier:
    """The untrained classifier of `experiment` with network options `cfg`: its network behind its input scaling."""
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
