"""The tuned recipes' augmentation: random flips and translations in training, the mirror average at test."""

import functools

import torch

from dlclassics.data.augment import flip_and_translate
from dlclassics.engine import classification_step
from dlclassics.models.flip_average import FlipAverage


def test_flips_and_translations_move_pixels_only():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    flipped = flip_and_translate(images, flip=True, shift=0)
    mirrored = images.flip(-1)
    same = (flipped == images).flatten(1).all(1)
    assert flipped.dtype == torch.uint8 and (same | (flipped == mirrored).flatten(1).all(1)).all()
    assert 10 < int(same.sum()) < 54  # about half are mirrored
    moved = flip_and_translate(images, flip=False, shift=2)
    assert moved.shape == images.shape
    # each image is its original shifted by at most 2 pixels each way, with zeros filled in
    for index in range(8):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(moved[index, :, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)],
                                  images[index, :, max(0, dy):32 + min(0, dy), max(0, dx):32 + min(0, dx)])]
        assert len(matches) == 1


def test_flip_average_is_mirror_invariant():
    torch.manual_seed(0)
    model = FlipAverage(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)))
    images = torch.rand(4, 3, 32, 32)
    assert torch.allclose(model(images), model(images.flip(-1)), atol=1e-6)


def test_the_classification_step_smooths_labels_and_augments_what_the_model_sees():
    torch.manual_seed(0)
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 8 * 8, 3))
    spy = torch.nn.Sequential(torch.nn.Identity(), model)
    spy[0].register_forward_hook(lambda module, inputs, output: seen.append(output))
    images, targets = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    plain = classification_step(spy, [images, targets])
    assert torch.equal(seen[-1], images)
    smoothed = functools.partial(classification_step, label_smoothing=0.2, flip=True, shift=1)(spy, [images, targets])
    assert not torch.equal(seen[-1], images)  # the model saw flipped and translated images
    logits = model(seen[-1])
    expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.2)
    assert torch.allclose(smoothed["loss"], expected) and not torch.allclose(plain["loss"], expected)
