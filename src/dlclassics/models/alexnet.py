"""AlexNet exactly as torchvision defines it, in our own code, and torchvision's ImageNet weights checked.

torchvision's `AlexNet` ("one weird trick" variant, Krizhevsky 2014): five convolutions 64-192-384-256-256
with three 3x3 stride-2 max-pools, an adaptive 6x6 average pool, and a classifier Dropout-Linear(9216, 4096)-
ReLU-Dropout-Linear(4096, 4096)-ReLU-Linear(4096, 1000): 61,100,840 parameters. The module names (`features.0`,
..., `classifier.6`) are torchvision's, so its state dict loads here key for key and shape for shape, and no
torchvision install is needed. `load_alexnet` reads the official file `alexnet-owt-7be5be79.pth` with
weights_only=True (nothing is unpickled), checks its sha256 (or, with --unverified, accepts one's own file
in the same format) and names the first wrong key or shape.

The model reads ImageNet-standardised 3-channel images; `ImageNetInput` is the layer in front of it that
takes pixels in [0, 1] (grey or colour, any size) to that, resized to the chosen resolution.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from dlclassics.errors import RunError
from dlclassics.files import load_tensor_file

WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
WEIGHTS_SHA256 = "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MIN_RESOLUTION = 63  # the smallest side whose last max-pool still has a 1x1 input
FEATURES = 4096  # the output of classifier.5, what the replaced last layer classifies


class AlexNet(nn.Module):
    """[B, 3, H, W] ImageNet-standardised images (H, W >= 63) -> logits [B, classes]; torchvision's layers."""

    def __init__(self, classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ImageNetInput(nn.Module):
    """[B, 1 or 3, H, W] pixels in [0, 1] -> [B, 3, R, R] resized (bilinear) and ImageNet-standardised.

    Resizing here, batch by batch, keeps the data at its own size in memory (CIFAR-10 at 256 px would be
    47 GB of floats). The constants are not in the state dict, so AlexNet's keys stay torchvision's.
    """

    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels  # grey -> the same on R, G, B
        if pixels.shape[-1] != self.resolution or pixels.shape[-2] != self.resolution:
            pixels = F.interpolate(pixels, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False)
        return (pixels - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}"


def backbone(model: AlexNet, resolution: int) -> nn.Sequential:
    """Pixels in [0, 1] -> the 4096 features of classifier.5 (everything but the replaced last layer)."""
    return nn.Sequential(ImageNetInput(resolution), model.features, model.avgpool, nn.Flatten(),
                         *model.classifier[:6])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_alexnet(path: Path | str, unverified: bool = False) -> AlexNet:
    """AlexNet with torchvision's ImageNet weights from `path` (sha256 checked unless `unverified`)."""
    path = Path(path)
    expected = f"torchvision's AlexNet state dict ({WEIGHTS_FILE})"
    if not path.is_file():
        raise RunError(f"weights file {path} does not exist; {how_to_get_weights()}")
    if not unverified:
        found = file_sha256(path)
        if found != WEIGHTS_SHA256:
            raise RunError(f"{path} is not torchvision's {WEIGHTS_FILE} (sha256 {found[:12]}..., expected "
                           f"{WEIGHTS_SHA256[:12]}...); pass the official file, or add --unverified for your own "
                           "weights in its format (the run is then marked not comparable)")
    state = load_tensor_file(path, expected)
    with torch.device("meta"):  # names and shapes only: no memory, the random state left alone
        reference = AlexNet().state_dict()
    check_state_dict(path, state, reference)
    model = AlexNet()
    model.load_state_dict(state)
    return model


def check_state_dict(path: Path, state: object, reference: Mapping[str, torch.Tensor]) -> None:
    """A RunError naming the first missing, unexpected or misshapen entry of `state` against `reference`."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{path} must hold a state dict (names -> tensors), as torchvision's {WEIGHTS_FILE} does")
    wrong = {"missing": [key for key in reference if key not in state],
             "unexpected": [key for key in state if key not in reference]}
    if any(wrong.values()):
        parts = [f"{kind} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for kind, keys in wrong.items() if keys]
        raise RunError(f"{path} does not have torchvision's AlexNet keys: {'; '.join(parts)}")
    for key, tensor in reference.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise RunError(f"{path}: {key} has shape {list(state[key].shape)}, torchvision's AlexNet has "
                           f"{list(tensor.shape)}")


def how_to_get_weights() -> str:
    return (f"download torchvision's ImageNet AlexNet weights from {WEIGHTS_URL} (233 MB, sha256 "
            f"{WEIGHTS_SHA256[:12]}...) and pass --weights FILE, or transfer from one of our runs with "
            "--backbone-run runs/mnist-classifier/<run>")
