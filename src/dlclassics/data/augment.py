"""Random augmentation of a batch of images on its device: flips and translations, as one gather."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def flip_and_translate(images: torch.Tensor, flip: bool, shift: int) -> torch.Tensor:
    """Per image: a random horizontal flip, and a random translation by up to `shift` pixels each way (zero
    fill), as one gather; [B, C, H, W] in and out (uint8 or float), drawn from torch's global generator,
    which `engine.fit` checkpoints, so a resumed run draws the same augmentations."""
    count, channels, height, width = images.shape
    device = images.device
    if flip:
        images = torch.where(torch.rand(count, 1, 1, 1, device=device) < 0.5, images.flip(-1), images)
    if shift == 0:
        return images
    padded = F.pad(images, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (2, count, 1), device=device)
    rows = offsets[0] + torch.arange(height, device=device)  # [B, H]
    columns = offsets[1] + torch.arange(width, device=device)  # [B, W]
    return padded[torch.arange(count, device=device)[:, None, None, None],
                  torch.arange(channels, device=device)[None, :, None, None],
                  rows[:, None, :, None], columns[:, None, None, :]]
