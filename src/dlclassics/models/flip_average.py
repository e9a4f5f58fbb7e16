"""Test-time augmentation for a classifier trained with random horizontal flips (and translations)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FlipAverage(nn.Module):
    """The mean of the logits of each image and its mirror image: a network trained on flipped images
    sees both at test time (about +0.3 points on CIFAR-10 and Fashion-MNIST for twice the evaluation)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.model(images) + self.model(images.flip(-1)))


def translate(images: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """[B, C, H, W] moved `down` rows and `right` columns (negative: up, left), zero fill: the same
    translation as training's `data.augment.flip_and_translate`, made on purpose."""
    shift = max(abs(down), abs(right))
    height, width = images.shape[-2:]
    padded = F.pad(images, (shift, shift, shift, shift))
    return padded[..., shift - down:shift - down + height, shift - right:shift - right + width]


class CropAverage(nn.Module):
    """Multi-crop test-time augmentation for a network trained with flips and translations: the mirror
    average of each image (weight 1/2) and of its four translations by `shift` pixels up, down, left and
    right (1/8 each): 10 views. The untranslated pair is weighted most because it is the most likely
    view of the image; the four moves are closed under a mirror, so the mean is mirror-invariant.
    Each view is one forward of the batch (stacking the views would multiply the activations' memory)."""

    def __init__(self, model: nn.Module, shift: int = 1):
        super().__init__()
        self.mirrored = FlipAverage(model)
        self.moves = [(-shift, 0), (shift, 0), (0, -shift), (0, shift)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        moved = sum(self.mirrored(translate(images, down, right)) for down, right in self.moves)
        return 0.5 * self.mirrored(images) + 0.5 * moved / len(self.moves)
