"""Conv-net benchmark: training images/s of the CIFAR-10 CNNs, and the tuned CNN's FLOP rate against the matmul peak.

All on random uint8 images [N, 3, 32, 32] (throughput does not depend on the pixels), in one process:

(a) Training images/s of the tuned `cifar-cnn` network (batch 512, augmentation, channels_last) through
    `engine.fit`, and of the source's CNN (conv 3 -> 200 5x5, 8x8 pool, linear; SGD momentum 0.9, batch 4)
    through `engine.fit` and through a faithful copy of the source's loop: a Dataset that converts and
    normalises one image at a time (ToTensor + Normalize), DataLoader(batch_size=4, shuffle=True,
    num_workers=2), `loss.item()` every step. Best of `--repeats` timed passes, after a warmup.
(b) The tuned network's training step in FLOP/s (convolutions and matrix products, forward and backward,
    counted by torch's FlopCounterMode) as a share of this machine's float32 matmul peak (best 2048^3
    `torch.matmul`). Target: >= 0.35.

Timings on a loaded machine are unreliable: the load average is printed and recorded; run it alone
(`flock /tmp/dlclassics-timing.lock python benchmarks/bench_convnet.py`).

    python benchmarks/bench_convnet.py [--repeats 3] [--threads N] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dlclassics.engine import classification_step, fit, seed_everything
from dlclassics.experiments import cifar_cnn
from dlclassics.experiments.cifar_cnn import (
    Config,
    augmented_step,
    fast_cnn,
    init_whitening,
    sgd,
    source_cnn,
)
from dlclassics.models.pixels import Pixels


def tuned_model(images: torch.Tensor, widths: tuple[int, ...]) -> nn.Module:
    model = nn.Sequential(Pixels([0.5] * 3, [0.25] * 3), *fast_cnn(widths, 10))
    init_whitening(model[1], model[0](images[:500]))
    return model.to(memory_format=torch.channels_last)


def source_model() -> nn.Module:
    return nn.Sequential(Pixels([0.5] * 3, [0.5] * 3), *source_cnn(200, 8, 10))


def engine_pass(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int, step: Any,
                lr: float, nesterov: bool) -> float:
    """Seconds of one `engine.fit` epoch over the images."""
    optimizer = sgd(model, lr, 0.9, nesterov, 0.0)
    start = time.perf_counter()
    fit(model, (images, labels), optimizer=optimizer, epochs=1, batch_size=batch, generator=seed_everything(0),
        step=step, quiet=True)
    return time.perf_counter() - start


class SourceDataset(Dataset):
    """torchvision's CIFAR10 with ToTensor + Normalize(0.5, 0.5): one image converted per __getitem__."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return (self.images[index].float() / 255 - 0.5) / 0.5, int(self.labels[index])


def source_pass(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, workers: int) -> float:
    """Seconds of one epoch of the source's loop (part c): DataLoader batch 4, SGD lr 0.001 momentum 0.9."""
    network = model[1:]  # the source normalises in the dataset, not in the model
    loader = DataLoader(SourceDataset(images, labels), batch_size=4, shuffle=True, num_workers=workers)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.001, momentum=0.9)
    start = time.perf_counter()
    running_loss = 0.0
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss = criterion(network(inputs), targets)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return time.perf_counter() - start


def best_of(repeats: int, timer: Callable[[], float]) -> float:
    timer()  # warmup
    return min(timer() for _ in range(repeats))


def matmul_peak(size: int, repeats: int) -> float:
    """float32 FLOP/s of the best of `repeats` size^3 matrix products (all threads)."""
    a, b, out = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    torch.matmul(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (the best counts)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--images", type=int, default=4096, help="(a, b) images per timed pass, tuned network")
    parser.add_argument("--source-images", type=int, default=1000, help="(a) images per timed pass, batch 4")
    parser.add_argument("--workers", type=int, default=2, help="(a) DataLoader workers of the source's loop")
    parser.add_argument("--peak-size", type=int, default=2048, help="(b) side of the square matmul for the peak")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.images, args.source_images, args.workers, args.peak_size = 1, 64, 16, 0, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config()
    widths = (8, 16, 16) if args.quick else tuple(cfg.widths)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (args.images,), generator=generator)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(),
                               "widths": widths, "quick": args.quick}
    print(f"torch {torch.__version__}, {results['threads']} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in results['load_average_start'])} on {os.cpu_count()} CPUs")

    batch = min(cfg.batch_size, args.images)
    tuned = tuned_model(images, widths)
    step = augmented_step(cfg)
    tuned_s = best_of(args.repeats, lambda: engine_pass(tuned, images, labels, batch, step, cfg.lr, True))
    small, small_labels = images[:args.source_images], labels[:args.source_images]
    source = source_model()
    engine_s = best_of(args.repeats, lambda: engine_pass(source, small, small_labels, 4, classification_step,
                                                         0.001, False))
    loop_s = best_of(args.repeats, lambda: source_pass(source, small, small_labels, args.workers))
    results.update({"tuned_images_per_s": args.images / tuned_s, "source_engine_images_per_s": len(small) / engine_s,
                    "source_loop_images_per_s": len(small) / loop_s})
    rate = results["tuned_images_per_s"]
    print(f"(a) tuned CNN {'-'.join(map(str, widths))}, batch {batch}, engine.fit: {rate:.0f} images/s "
          f"(an epoch of 50,000 in {50000 / rate:.0f} s)")
    print(f"    source CNN, batch 4: engine.fit {results['source_engine_images_per_s']:.0f} images/s, the source's "
          f"DataLoader loop ({args.workers} workers) {results['source_loop_images_per_s']:.0f} images/s "
          f"({results['source_engine_images_per_s'] / results['source_loop_images_per_s']:.2f}x)")

    flops = cifar_cnn.training_flops(tuned, images[:batch], step, labels[:batch])
    peak = matmul_peak(args.peak_size, args.repeats + 2)
    achieved = flops * results["tuned_images_per_s"]
    results.update({"tuned_flop_per_image": flops, "peak_flops": peak, "tuned_flops": achieved,
                    "fraction_of_peak": achieved / peak, "load_average_end": os.getloadavg()})
    print(f"(b) matmul peak ({args.peak_size}^3): {peak / 1e9:.1f} GFLOP/s; tuned CNN training "
          f"{flops / 1e9:.3f} GFLOP/image -> {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.2f} of peak "
          "(target >= 0.35)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
