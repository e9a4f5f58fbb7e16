"""fgsm: our batched accuracy-vs-epsilon curves vs the source's attack run image by image, in one process.

The source (S2 part e) attacks with these lines: `data.requires_grad = True`, `output = net(data)`, a
CrossEntropyLoss, `net.zero_grad()`, `loss.backward()`, `data + epsilon * data.grad.data.sign()` and a
second forward; to draw a curve over a test set the loop runs once per image (a DataLoader of batch 1,
as PyTorch's FGSM tutorial does) and per epsilon, the weights' gradients computed every time. The copy
here adds only the clamp to [0, 1] (the source's bug, and free), so both give the same accuracies.

Ours (`dlclassics.experiments.fgsm`): one input gradient per image for all epsilons (it does not depend
on epsilon), the experiment's batches (256 images: their activations stay in cache, where 1,024 images'
spill, half the speed), no weight gradients, channels_last; then PGD, 10 steps per epsilon,
dropping the images already fooled. The source's loop is timed on `--source-images` images and scaled
to the whole test set (every image costs the same). Timings on a shared machine are noisy: run alone.

    flock /tmp/dlclassics-timing.lock python benchmarks/bench_fgsm.py --from-run runs/mnist-classifier/<run>
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlclassics.data.transforms import images_4d
from dlclassics.errors import RunError
from dlclassics.experiments import fgsm
from dlclassics.runs.contract import read_finished_run
from dlclassics.training.classifiers import (
    PRODUCERS,
    ImageShape,
    SmallCnn,
    load_classifier,
    rebuild,
)

SHAPE = ImageShape(1, 28, 10)


def source_fgsm(net: nn.Module, loader: DataLoader, epsilon: float) -> int:
    """The source's attack lines over a loader (the clamp added); returns how many stay correct."""
    lossFn = nn.CrossEntropyLoss()  # noqa: N806 -- the source's names
    correct = 0
    for data, target in loader:
        data.requires_grad = True
        output = net(data)
        loss = lossFn(output, target)
        net.zero_grad()
        loss.backward()
        sign_data_grad = data.grad.data.sign()
        perturbed_data = (data + epsilon * sign_data_grad).clamp(0, 1)
        perturbed_output = net(perturbed_data)
        correct += ((output.argmax(1) == target) & (perturbed_output.argmax(1) == target)).sum().item()
    return correct


def victim(from_run: Path | None) -> tuple[nn.Module, str]:
    if from_run is None:
        torch.manual_seed(0)
        return rebuild("mnist-classifier", SmallCnn(), {}, SHAPE).eval(), "mnist-classifier's CNN, random weights"
    finished = read_finished_run(from_run, tuple(PRODUCERS), ("model.pt",))
    return load_classifier(finished, SHAPE), f"{finished.experiment} run {from_run.name}"


def test_images() -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from dlclassics.data.images import load_images

        data = load_images("fashion-mnist")
        return images_4d(data.test_x, 1, 28), data.test_y, "Fashion-MNIST test split"
    except RunError:
        generator = torch.Generator().manual_seed(0)
        return torch.rand(10_000, 1, 28, 28, generator=generator), torch.randint(0, 10, (10_000,)), "random images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", type=Path, help="a finished classifier run (default: random CNN weights)")
    parser.add_argument("--source-images", type=int, default=300, help="images the per-image loop is timed on")
    parser.add_argument("--pgd-steps", type=int, default=10)
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]  # 1-minute load average: other work inflates both timings

    model, described = victim(args.from_run)
    x, y, source = test_images()
    settings = fgsm.Config()
    epsilons, batch_size = fgsm.epsilon_grid(settings, 28), settings.batch_size
    ours_model = copy.deepcopy(model).to(memory_format=torch.channels_last).requires_grad_(False)
    x_last = x.contiguous(memory_format=torch.channels_last)

    fgsm.fgsm_curve(ours_model, x_last[:256], y[:256], epsilons, 256)  # warm-up: oneDNN picks its kernels
    started = time.perf_counter()
    ours = fgsm.fgsm_curve(ours_model, x_last, y, epsilons, batch_size)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    robust = fgsm.pgd_curve(ours_model, x_last, y, epsilons, args.pgd_steps, settings.pgd_step_factor, batch_size,
                            seed=0)
    pgd_s = time.perf_counter() - started

    n = args.source_images
    rows = []
    for name, batch in (("source: per image (DataLoader batch 1)", 1), ("source's loop at its batch of 4", 4)):
        loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch)
        started = time.perf_counter()
        correct = [source_fgsm(model, loader, eps) for eps in epsilons]
        seconds = (time.perf_counter() - started) * len(x) / n
        mismatch = max(abs(c - int(ours[e, :n].sum())) for e, c in enumerate(correct))
        rows.append((name, seconds, mismatch))
    rows.append(("ours: batched FGSM curve", ours_s, 0))

    print(f"{len(x):,} test images ({source}), {described}, {len(epsilons)} epsilons 0..{epsilons[-1]:g}, "
          f"batches of {batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{load_at_start:.2f} at the start")
    print(f"source loops timed on {n} images and scaled to {len(x):,}\n")
    print(f"{'FGSM curve':<40} {'seconds':>9} {'ms/image':>9} {'vs ours':>8} {'images counted differently':>27}")
    for name, seconds, mismatch in rows:
        print(f"{name:<40} {seconds:9.2f} {1000 * seconds / len(x):9.3f} {seconds / ours_s:7.1f}x {mismatch:27d}")
    print(f"\nours: FGSM {ours_s:.2f} s + PGD ({args.pgd_steps} steps, random start) {pgd_s:.2f} s = "
          f"{ours_s + pgd_s:.2f} s for the whole test set (target < 60 s)")
    print("accuracy, FGSM / PGD: " + ", ".join(f"{eps:g}: {f:.3f}/{p:.3f}" for eps, f, p in
                                              zip(epsilons, ours.float().mean(1), robust.float().mean(1))))
    print(f"speed-up of ours over the source's per-image loop: {rows[0][1] / ours_s:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
