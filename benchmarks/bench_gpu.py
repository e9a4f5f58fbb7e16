"""GPU benchmark: `engine.fit` against a plain PyTorch loop of the same network and steps, on CUDA.

Two trainings, each run three ways on the same data, network initialisation and optimizer:

- engine: `engine.fit(..., capture=True)`: the captured step that a fit of at least
  `engine.CAPTURE_MIN_STEPS` steps gets by default on CUDA, and for the CNN bf16 and channels_last (see
  `engine.choose_acceleration`);
- engine_eager: `engine.fit(..., capture=False)`, to show what the capture adds;
- plain loop: the usual hand-written loop (shuffle, slice, forward, cross-entropy, zero_grad, backward,
  step, `loss.item()` for the running loss), eager and in float32.

(mlp) fashion-mlp's retraining: a 784-256-256-10 ReLU MLP, batch 64, Nesterov SGD (lr 0.1, momentum 0.9,
      L2 1e-4 on weights, cosine decay), 20 epochs (18,750 steps) on 60,000 Fashion-MNIST images (random
      images of that shape if the data is absent: the speed is the same).
(cnn) cifar-cnn's tuned network (experiments/cifar_cnn.py: whitening conv, three conv blocks) with its
      augmented, label-smoothed step, batch 512, 10 epochs on 50,000 random 32x32 images.

For each: seconds of the whole training and of its first epoch (the engine compiles and captures there),
the steady state as ms per step and images per second over the later epochs, and the FLOP rate (torch's FlopCounterMode
counts one step's forward and backward) as a share of this GPU's measured matmul peak (best 8192^3
product, in float32 and in bf16: each training is compared with the peak of the precision it runs in).

Without CUDA it prints one line saying why it skipped and exits 0.

    python benchmarks/bench_gpu.py [--parts mlp,cnn] [--mlp-epochs 20] [--cnn-epochs 10] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dlclassics.data.images import load_images
from dlclassics.data.transforms import flat_float
from dlclassics.engine import Step, classification_step, cosine_schedule, fit, make_optimizer, seed_everything
from dlclassics.errors import RunError, UsageError
from dlclassics.experiments.cifar_cnn import Config, augmented_step, fast_cnn, init_whitening, sgd, warmup_decay
from dlclassics.models.mlp import mlp
from dlclassics.models.pixels import Pixels

SKIP = "bench_gpu: skipped: no CUDA device is available (torch.cuda.is_available() is False); it measures a GPU"


@dataclasses.dataclass
class Training:
    """One benchmark training: how to build it afresh (same seed each time), its data and its step."""

    name: str
    build: Callable[[], tuple[nn.Module, torch.optim.Optimizer, Any]]  # model, optimizer, scheduler
    data: tuple[torch.Tensor, torch.Tensor]
    batch_size: int
    step: Step
    precision: str  # of the engine's run: "fp32" or "bf16", for the peak it is compared with


# ---------------------------------------------------------------- the two trainings

def fashion_images(rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's training images as fashion-mlp prepares them, or random ones of the same shape."""
    try:
        data = load_images("fashion-mnist")
        x, y = flat_float(data.train_x, 0.5)[:rows], data.train_y.long()[:rows]
    except (RunError, UsageError):
        generator = torch.Generator().manual_seed(0)
        x, y = torch.rand(rows, 784, generator=generator) - 0.5, torch.randint(0, 10, (rows,), generator=generator)
    return x.to(device), y.to(device)


def mlp_training(rows: int, epochs: int, device: torch.device) -> Training:
    def build() -> tuple[nn.Module, torch.optim.Optimizer, Any]:
        torch.manual_seed(0)
        model = mlp(784, [256, 256], 10).to(device)
        optimizer = make_optimizer("sgd", model, 0.1, 1e-4, momentum=0.9)
        return model, optimizer, cosine_schedule(optimizer, epochs)

    return Training("mlp 784-256-256-10", build, fashion_images(rows, device), 64, classification_step, "fp32")


def cnn_training(rows: int, epochs: int, widths: tuple[int, ...], device: torch.device) -> Training:
    cfg = Config(widths=widths)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (rows, 3, 32, 32), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, 10, (rows,), generator=generator).to(device)

    def build() -> tuple[nn.Module, torch.optim.Optimizer, Any]:
        torch.manual_seed(0)
        model = nn.Sequential(Pixels([0.5] * 3, [0.25] * 3), *fast_cnn(widths, 10)).to(device)
        init_whitening(model[1], model[0](images[:2000]))
        model = model.to(memory_format=torch.channels_last)
        optimizer = sgd(model, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)
        return model, optimizer, warmup_decay(optimizer, epochs, cfg.warmup_epochs)

    return Training(f"cnn {'-'.join(map(str, widths))}", build, (images, labels), cfg.batch_size,
                    augmented_step(cfg), "bf16")


# ---------------------------------------------------------------- three ways to train

def engine_run(training: Training, epochs: int, capture: bool) -> list[float]:
    """Timestamps (s) at the start and after each epoch of `engine.fit`, the device synchronised."""
    model, optimizer, scheduler = training.build()
    stamps = [synchronized_clock()]
    fit(model, training.data, optimizer=optimizer, scheduler=scheduler, epochs=epochs,
        batch_size=training.batch_size, generator=seed_everything(0), step=training.step, quiet=True,
        capture=capture, on_epoch_end=lambda *_: stamps.append(synchronized_clock()))
    return stamps


def plain_loop(training: Training, epochs: int) -> list[float]:
    """The same steps in the textbook loop: eager, float32, the running loss read every step."""
    model, optimizer, scheduler = training.build()
    inputs, targets = training.data
    generator = seed_everything(0)
    stamps = [synchronized_clock()]
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
        running_loss = 0.0
        for start in range(0, len(order), training.batch_size):
            rows = order[start:start + training.batch_size]
            loss = training.step(model, [inputs[rows], targets[rows]])["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * len(rows)
        if scheduler is not None:
            scheduler.step()
        stamps.append(synchronized_clock())
    return stamps


def synchronized_clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


# ---------------------------------------------------------------- rates

def step_flops(training: Training) -> float:
    """FLOPs of one training step (forward and backward) on one batch, counted on a copy of the model."""
    model, _, _ = training.build()
    probe = copy.deepcopy(model)
    batch = [tensor[:training.batch_size] for tensor in training.data]
    with FlopCounterMode(display=False) as counter:
        training.step(probe, batch)["loss"].backward()
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, size: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` size^3 matrix products in `dtype` on the current GPU."""
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    torch.matmul(a, b)  # warmup: cuBLAS picks its kernel
    best = math.inf
    for _ in range(repeats):
        start = synchronized_clock()
        torch.matmul(a, b)
        best = min(best, synchronized_clock() - start)
    return 2 * size**3 / best


def rates(stamps: Sequence[float], training: Training, flops: float, peak: float) -> dict[str, float]:
    """First epoch's seconds; then per step, images/s and FLOP rate over the later epochs."""
    rows, steps = len(training.data[0]), math.ceil(len(training.data[0]) / training.batch_size)
    later = (stamps[-1] - stamps[1]) / (len(stamps) - 2)  # seconds per epoch after the first
    return {"first_epoch_s": stamps[1] - stamps[0], "total_s": stamps[-1] - stamps[0],
            "ms_per_step": later / steps * 1e3, "images_per_s": rows / later,
            "flops": flops * steps / later, "fraction_of_peak": flops * steps / later / peak}


def measure(training: Training, epochs: int, peaks: dict[str, float]) -> dict[str, Any]:
    flops = step_flops(training)
    peak = peaks[training.precision]
    runs = {"engine": engine_run(training, epochs, True), "engine_eager": engine_run(training, epochs, False),
            "plain_loop": plain_loop(training, epochs)}
    result: dict[str, Any] = {"rows": len(training.data[0]), "batch_size": training.batch_size, "epochs": epochs,
                              "flops_per_step": flops, "precision": training.precision}
    print(f"\n{training.name}, batch {training.batch_size}, {epochs} epochs of {len(training.data[0]):,} images "
          f"({flops / 1e9:.3f} GFLOP per step)")
    for name, stamps in runs.items():
        result[name] = rates(stamps, training, flops, peak)
        row = result[name]
        print(f"  {name:12s}: {row['total_s']:6.2f} s in all, first epoch {row['first_epoch_s']:6.2f} s, then "
              f"{row['ms_per_step']:.3f} ms/step = "
              f"{row['images_per_s']:,.0f} images/s, {row['flops'] / 1e12:.2f} TFLOP/s = "
              f"{row['fraction_of_peak']:.1%} of the {training.precision} matmul peak")
    result["speedup"] = result["plain_loop"]["ms_per_step"] / result["engine"]["ms_per_step"]
    result["speedup_in_all"] = result["plain_loop"]["total_s"] / result["engine"]["total_s"]
    print(f"  engine / plain loop: {result['speedup']:.1f}x per step after the first epoch, "
          f"{result['speedup_in_all']:.1f}x in all (target >= 5x on the mlp)")
    return result


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--mlp-epochs", type=int, default=20, help="(mlp) epochs (>= 2: the first warms up)")
    parser.add_argument("--cnn-epochs", type=int, default=10, help="(cnn) epochs (>= 2: the first warms up)")
    parser.add_argument("--mlp-rows", type=int, default=60000, help="(mlp) training images")
    parser.add_argument("--cnn-rows", type=int, default=50000, help="(cnn) training images")
    parser.add_argument("--widths", default="32,64,128", help="(cnn) channels of the three blocks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if min(args.mlp_epochs, args.cnn_epochs) < 2:
        parser.error("--mlp-epochs and --cnn-epochs must be at least 2 (the first epoch is timed apart)")
    if args.quick:
        args.mlp_epochs, args.cnn_epochs, args.mlp_rows, args.cnn_rows = 2, 2, 6400, 2048
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(SKIP)
        return 0
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak (8192^3): float32 {peaks['fp32'] / 1e12:.1f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.1f} TFLOP/s")
    results: dict[str, Any] = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device),
                               "peak_flops": peaks, "quick": args.quick}
    parts = set(args.parts.split(","))
    if "mlp" in parts:
        results["mlp"] = measure(mlp_training(args.mlp_rows, args.mlp_epochs, device), args.mlp_epochs, peaks)
    if "cnn" in parts:
        widths = tuple(int(width) for width in args.widths.split(","))
        training = cnn_training(args.cnn_rows, args.cnn_epochs, widths, device)
        results["cnn"] = measure(training, args.cnn_epochs, peaks)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
