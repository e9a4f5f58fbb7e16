"""Engine benchmark: `engine.fit` against the source's DataLoader loop, time to 0.87, FLOP/s of a wide MLP.

All in one process on the same data (Fashion-MNIST, `pixel/255 - 0.5`, as `fashion-mlp` prepares it):

(a) Training samples/s of the fashion-mlp seed network (784-40-40-40-10 ReLU, SGD lr 0.01, L2 0.001 on
    weights) at batch 16 and 256, through `engine.fit` and through a faithful copy of the source's
    `train_epoch` (S1 Problem 2: TensorDataset + DataLoader(shuffle=True), nn.CrossEntropyLoss, SGD),
    best of `--repeats` epochs each, interleaved; then where one step's time goes (data, forward,
    backward, optimizer, the rest), as the median microseconds per step over hooked real steps.
(b) Training wall time (evaluation excluded) until test accuracy first reaches 0.87, for the seed recipe
    (the source's best configuration retrained on all 60k) and the tuned recipe (wider, momentum, cosine),
    both through `engine.fit`, test accuracy measured every `--eval-every` training samples.
(c) Achieved training FLOP/s of a 784-1024-1024-10 MLP at batch 256 through `engine.fit`, as a share of
    this machine's float32 matmul peak (best 2048^3 `torch.matmul`), beside the share that the step's own
    matrix products reach alone (the ceiling for this shape).

Timings on a loaded machine are unreliable: each number is a best of repetitions after a warmup, and
the load average is printed and recorded; final numbers must be measured on a quiet machine.

    python benchmarks/bench_engine.py [--parts abc] [--repeats 5] [--threads N] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlclassics import engine
from dlclassics.data.images import load_images
from dlclassics.data.transforms import flat_float
from dlclassics.engine import (
    classification_step,
    evaluate_classifier,
    fit,
    make_optimizer,
    seed_everything,
)
from dlclassics.errors import RunError, UsageError
from dlclassics.models.mlp import mlp


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An MLP and its SGD training, as the fashion-mlp recipes set them (restated here, not imported)."""

    hidden: tuple[int, ...]
    batch_size: int
    lr: float
    l2: float  # on weight matrices only
    momentum: float  # Nesterov when > 0
    epochs: int
    cosine: bool


# The source's best configuration, retrained on train+val for 50 epochs (its reference run crosses 0.87 at epoch 16).
SEED = Recipe(hidden=(40, 40, 40), batch_size=16, lr=0.01, l2=1e-3, momentum=0.0, epochs=50, cosine=False)
# A typical winner of the tuned search space (2-3 layers of 128-256, batch 64-256, lr 0.02-0.1), retrained 20 epochs.
TUNED = Recipe(hidden=(256, 256), batch_size=128, lr=0.1, l2=1e-4, momentum=0.9, epochs=20, cosine=True)
WIDE = (1024, 1024)
PHASES = ("data", "forward", "backward", "optimizer", "other")


def build(recipe: Recipe, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = mlp(784, list(recipe.hidden), 10)
    optimizer = make_optimizer("sgd", model, recipe.lr, recipe.l2, recipe.momentum)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs) if recipe.cosine else None
    return model, optimizer, scheduler


# ---------------------------------------------------------------- data

def load_data(synthetic: bool) -> tuple[dict[str, torch.Tensor], bool]:
    """Fashion-MNIST train (60k) and test (10k) as flat floats; random images of the same shape if absent."""
    if not synthetic:
        try:
            data = load_images("fashion-mnist")
            return {"x": flat_float(data.train_x, 0.5), "y": data.train_y.long(),
                    "test_x": flat_float(data.test_x, 0.5), "test_y": data.test_y.long()}, True
        except (RunError, UsageError) as error:
            print(f"NOTE: Fashion-MNIST is not available ({error}).\n"
                  "      Using random images of the same shape: (a) and (c) time the same work; (b) is skipped.")
    generator = torch.Generator().manual_seed(0)
    return {"x": torch.rand(60000, 784, generator=generator) - 0.5,
            "y": torch.randint(0, 10, (60000,), generator=generator),
            "test_x": torch.rand(10000, 784, generator=generator) - 0.5,
            "test_y": torch.randint(0, 10, (10000,), generator=generator)}, False


# ---------------------------------------------------------------- the source's loop (S1 Problem 2)

def extract_model_params(model: nn.Module) -> torch.Tensor:
    """The source's helper: all parameters as one vector (its `train_epoch` returns them every epoch)."""
    return torch.cat([p.view(-1) for p in model.parameters() if p.requires_grad])


def train_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module,
                optimizer: torch.optim.Optimizer) -> tuple[float, np.ndarray]:
    """The source's `train_epoch`, verbatim apart from comments."""
    model.train()
    running_loss = 0.0
    for X, y in loader:
        optimizer.zero_grad()
        logits = model(X)
        loss = criterion(logits, y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * X.size(0)
    all_params = extract_model_params(model)
    return running_loss / len(loader.dataset), all_params.detach().cpu().numpy()


def source_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """The source's search optimizer: L2 on parameters named "weight", none on biases, plain SGD."""
    weights = [p for name, p in model.named_parameters() if "weight" in name]
    biases = [p for name, p in model.named_parameters() if "weight" not in name]
    return torch.optim.SGD([{"params": weights, "weight_decay": recipe.l2}, {"params": biases, "weight_decay": 0.0}],
                           lr=recipe.lr)


# ---------------------------------------------------------------- (a) throughput and per-step breakdown

def time_engine_epoch(data: dict[str, torch.Tensor], recipe: Recipe, batch_size: int) -> float:
    model, optimizer, _ = build(recipe)
    generator = seed_everything(0)
    start = time.perf_counter()
    fit(model, (data["x"], data["y"]), optimizer=optimizer, epochs=1, batch_size=batch_size, generator=generator,
        quiet=True)
    return time.perf_counter() - start


def time_source_epoch(data: dict[str, torch.Tensor], recipe: Recipe, batch_size: int) -> float:
    model, _, _ = build(recipe)
    optimizer = source_optimizer(model, recipe)
    loader = DataLoader(TensorDataset(data["x"], data["y"]), batch_size=batch_size, shuffle=True)
    start = time.perf_counter()
    train_epoch(model, loader, nn.CrossEntropyLoss(), optimizer)
    return time.perf_counter() - start


def best_of(repeats: int, *timers: Callable[[], float]) -> list[float]:
    """Best (lowest) time of each timer over `repeats` rounds, interleaved so that load drift hits all alike."""
    best = [math.inf] * len(timers)
    for _ in range(repeats):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer())
    return best


class StepClock:
    """Timestamps from hooks on the real loop; each interval is charged to the phase its opening event starts.

    data: fetching the batch; forward: model + loss (the engine's step also computes the batch accuracy);
    backward: from the first gradient (a hook on the loss) to `optimizer.step`; optimizer: `zero_grad` and
    `step`; other: the loop around them (the source's `.item()`, the engine keeping its outputs and reading
    them every `engine.READ_EVERY` steps, running sums, dispatch). Hooks cost ~1 us each.
    """

    PHASE_OF = {"batch": "data", "batch_done": "other", "zero_grad": "optimizer", "zero_grad_done": "other",
                "forward": "forward", "forward_done": "other", "backward": "backward", "step": "optimizer",
                "step_done": "other"}

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.marks: list[tuple[str, float]] = []
        model.register_forward_pre_hook(lambda *_: self.mark("forward"))
        optimizer.register_step_pre_hook(lambda *_: self.mark("step"))
        optimizer.register_step_post_hook(lambda *_: self.mark("step_done"))
        zero_grad = optimizer.zero_grad

        def timed_zero_grad(*args: Any, **kwargs: Any) -> None:
            self.mark("zero_grad")
            zero_grad(*args, **kwargs)
            self.mark("zero_grad_done")

        optimizer.zero_grad = timed_zero_grad  # type: ignore[method-assign]

    def mark(self, event: str) -> None:
        self.marks.append((event, time.perf_counter()))

    def loss_computed(self, loss: torch.Tensor) -> torch.Tensor:
        self.mark("forward_done")
        loss.register_hook(lambda grad: self.mark("backward"))
        return loss

    def batches(self, batches: Iterable) -> Iterator:
        iterator = iter(batches)
        while True:
            self.mark("batch")
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.mark("batch_done")
            yield batch

    def median_us(self, skip: int) -> dict[str, float]:
        """Median microseconds per step of each phase (steps start at "batch"), after `skip` warmup steps."""
        steps: list[dict[str, float]] = []
        for (event, start), (_, end) in itertools.pairwise(self.marks):
            if event == "batch":
                steps.append(dict.fromkeys(PHASES, 0.0))
            if steps:
                steps[-1][self.PHASE_OF[event]] += (end - start) * 1e6
        rows = steps[skip:-1] or steps  # the last step has no closing mark
        result = {phase: float(np.median([row[phase] for row in rows])) for phase in PHASES}
        totals = [sum(row.values()) for row in rows]
        result["total"] = float(np.median(totals))
        result["best_total"] = float(min(totals))  # the least-disturbed step, for loaded machines
        return result


def engine_breakdown(data: dict[str, torch.Tensor], recipe: Recipe, batch_size: int, steps: int) -> dict[str, float]:
    """Hooks on a real `engine.fit` over `steps` batches (the data is cut to that many)."""
    model, optimizer, _ = build(recipe)
    clock = StepClock(model, optimizer)
    real_batches = engine.epoch_batches

    def step(model: nn.Module, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = classification_step(model, batch)
        clock.loss_computed(outputs["loss"])
        return outputs

    n = batch_size * steps
    with mock.patch.object(engine, "epoch_batches", lambda *args: clock.batches(real_batches(*args))):
        fit(model, (data["x"][:n], data["y"][:n]), optimizer=optimizer, epochs=1, batch_size=batch_size,
            generator=seed_everything(0), step=step, quiet=True)
    return clock.median_us(skip=min(10, steps // 4))


def source_breakdown(data: dict[str, torch.Tensor], recipe: Recipe, batch_size: int, steps: int) -> dict[str, float]:
    """Hooks on the source's `train_epoch` over `steps` batches."""
    model, _, _ = build(recipe)
    optimizer = source_optimizer(model, recipe)
    clock = StepClock(model, optimizer)
    criterion = nn.CrossEntropyLoss()
    criterion.register_forward_hook(lambda module, inputs, loss: clock.loss_computed(loss))
    n = batch_size * steps
    loader = DataLoader(TensorDataset(data["x"][:n], data["y"][:n]), batch_size=batch_size, shuffle=True)

    class Timed:  # the loader as `train_epoch` sees it, with its `dataset` for the final division
        dataset = loader.dataset

        def __iter__(self) -> Iterator:
            return clock.batches(loader)

    train_epoch(model, Timed(), criterion, optimizer)
    return clock.median_us(skip=min(10, steps // 4))


def part_a(data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    sub = {"x": data["x"][:args.samples], "y": data["y"][:args.samples]}
    results: dict[str, Any] = {"samples_per_epoch": len(sub["x"]), "batches": {}}
    for batch_size in args.batch_sizes:
        best_of(1, lambda: time_engine_epoch(sub, SEED, batch_size), lambda: time_source_epoch(sub, SEED, batch_size))
        ours, source = best_of(args.repeats, lambda: time_engine_epoch(sub, SEED, batch_size),
                               lambda: time_source_epoch(sub, SEED, batch_size))
        steps = min(args.breakdown_steps, len(sub["x"]) // batch_size)
        row = {"ours_samples_per_s": len(sub["x"]) / ours, "source_samples_per_s": len(sub["x"]) / source,
               "ratio": source / ours,
               "ours_us_per_step": ours / math.ceil(len(sub["x"]) / batch_size) * 1e6,
               "source_us_per_step": source / math.ceil(len(sub["x"]) / batch_size) * 1e6,
               "ours_breakdown_us": engine_breakdown(sub, SEED, batch_size, steps),
               "source_breakdown_us": source_breakdown(sub, SEED, batch_size, steps)}
        results["batches"][str(batch_size)] = row
        print(f"  batch {batch_size:4d}: ours {row['ours_samples_per_s']:9.0f} samples/s, source "
              f"{row['source_samples_per_s']:9.0f} samples/s, ratio {row['ratio']:.2f} "
              f"{'(ok)' if row['ratio'] >= 1.0 else '(SLOWER)'}")
        print(f"     per step (us, median of hooked steps)  {'  '.join(f'{p:>9s}' for p in (*PHASES, 'total'))}")
        for side in ("ours", "source"):
            cells = row[f"{side}_breakdown_us"]
            print(f"     {side:38s}  {'  '.join(f'{cells[p]:9.1f}' for p in (*PHASES, 'total'))}")
        print(f"     unhooked mean per step: ours {row['ours_us_per_step']:.1f} us, source {row['source_us_per_step']:.1f} us")
    return results


# ---------------------------------------------------------------- (b) time to accuracy

class Reached(Exception):
    """Raised from inside `fit` once the target accuracy is met, to stop training there."""


class TimeToAccuracy:
    """A `step` for `engine.fit` that measures test accuracy every `every` samples with the clock paused.

    Training time = wall time since `start()` minus the time spent evaluating.
    """

    def __init__(self, data: dict[str, torch.Tensor], every: int, target: float) -> None:
        self.data, self.every, self.target = data, every, target
        self.seen, self.next_check, self.eval_s, self.started = 0, every, 0.0, 0.0
        self.curve: list[dict[str, float]] = []

    def start(self) -> None:
        self.started = time.perf_counter()

    def check(self, model: nn.Module) -> None:
        paused = time.perf_counter()
        accuracy = evaluate_classifier(model, self.data["test_x"], self.data["test_y"])["accuracy"]
        self.curve.append({"train_s": paused - self.started - self.eval_s,
                           "epochs": self.seen / len(self.data["x"]), "test_accuracy": accuracy})
        self.eval_s += time.perf_counter() - paused
        if accuracy >= self.target:
            raise Reached

    def __call__(self, model: nn.Module, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.seen >= self.next_check:
            self.next_check += self.every
            self.check(model)
        self.seen += len(batch[0])
        return classification_step(model, batch)


def time_to_accuracy(data: dict[str, torch.Tensor], recipe: Recipe, every: int, target: float,
                     max_epochs: int) -> dict[str, Any]:
    model, optimizer, scheduler = build(recipe)
    probe = TimeToAccuracy(data, every, target)
    probe.start()
    try:
        fit(model, (data["x"], data["y"]), optimizer=optimizer, scheduler=scheduler,
            epochs=min(recipe.epochs, max_epochs), batch_size=recipe.batch_size, generator=seed_everything(0),
            step=probe, quiet=True)
        probe.check(model)  # after the last step
        reached = False
    except Reached:
        reached = True
    last = probe.curve[-1]
    return {"reached": reached, "train_s": last["train_s"], "epochs": last["epochs"],
            "test_accuracy": last["test_accuracy"], "eval_s": probe.eval_s, "recipe": dataclasses.asdict(recipe),
            "curve": probe.curve}


def part_b(data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for name, recipe in (("seed", SEED), ("tuned", TUNED)):
        row = time_to_accuracy(data, recipe, args.eval_every, args.target, args.max_epochs)
        results[name] = row
        print(f"  {name:5s} {'reached' if row['reached'] else 'did NOT reach'} {args.target} after "
              f"{row['epochs']:.2f} epochs, {row['train_s']:.1f} s of training (test accuracy "
              f"{row['test_accuracy']:.4f}; evaluation {row['eval_s']:.1f} s, excluded)")
    seed, tuned = results["seed"], results["tuned"]
    results["speedup"] = seed["train_s"] / tuned["train_s"]
    bound = "" if seed["reached"] and tuned["reached"] else " (a bound: one side did not reach the target)"
    print(f"  tuned reaches {args.target} {results['speedup']:.1f}x sooner than seed (target >= 5x){bound}")
    print("  (the source's own retraining log first reaches 0.87 at epoch 16, at 4.7 s per epoch)")
    return results


# ---------------------------------------------------------------- (c) FLOP/s of a wide MLP

def matmul_peak(size: int, repeats: int) -> float:
    """float32 FLOP/s of the best of `repeats` size^3 matrix products (all threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.matmul(a, b, out=out)  # warmup
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops(widths: list[int], batch: int) -> int:
    """Matmul FLOPs of one training step: 2*M*N*K per product.

    Forward x @ W^T per layer; backward the weight gradient g^T @ x of every layer and the input gradient
    g @ W of every layer but the first (the data needs no gradient).
    """
    products = [2 * batch * n_in * n_out for n_in, n_out in itertools.pairwise(widths)]
    return 2 * sum(products) + sum(products[1:])


def time_step_matmuls(widths: list[int], batch: int, repeats: int) -> float:
    """Best time of the step's matrix products alone, with the same shapes and preallocated outputs."""
    shapes = []  # (M, K, N) of each product, [M, K] @ [K, N]
    for n_in, n_out in itertools.pairwise(widths):
        shapes.append((batch, n_in, n_out))  # forward
        shapes.append((n_out, batch, n_in))  # weight gradient
    shapes += [(batch, n_out, n_in) for n_in, n_out in itertools.pairwise(widths[1:])]  # input gradients
    operands = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for m, k, n in shapes]
    best = math.inf
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for a, b, out in operands:
            torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return best


def part_c(data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    widths, batch = [784, *WIDE, 10], 256
    recipe = dataclasses.replace(TUNED, hidden=WIDE, batch_size=batch)
    n = batch * args.wide_steps
    sub = {"x": data["x"][:n], "y": data["y"][:n]}
    flops = training_flops(widths, batch)
    peak = matmul_peak(args.peak_size, args.repeats + 2)
    time_engine_epoch(sub, recipe, batch)  # warmup
    (train_s,) = best_of(args.repeats, lambda: time_engine_epoch(sub, recipe, batch))
    peak = max(peak, matmul_peak(args.peak_size, args.repeats + 2))  # again after, in case load changed
    gemm_s = time_step_matmuls(widths, batch, args.repeats)
    achieved = flops * args.wide_steps / train_s
    row = {"widths": widths, "batch": batch, "threads": torch.get_num_threads(), "flops_per_step": flops,
           "peak_flops": peak, "achieved_flops": achieved, "fraction_of_peak": achieved / peak,
           "step_matmuls_flops": flops / gemm_s, "step_matmuls_fraction_of_peak": flops / gemm_s / peak,
           "us_per_step": train_s / args.wide_steps * 1e6, "step_matmuls_us": gemm_s * 1e6,
           "breakdown_us": engine_breakdown(sub, recipe, batch, args.wide_steps)}
    row["best_step_flops"] = flops / (row["breakdown_us"]["best_total"] * 1e-6)
    print(f"  matmul peak ({args.peak_size}^3, {row['threads']} threads): {peak / 1e9:.1f} GFLOP/s")
    print(f"  training {'-'.join(map(str, widths))} batch {batch}: {achieved / 1e9:.1f} GFLOP/s = "
          f"{row['fraction_of_peak']:.2f} of peak (target >= 0.6); {row['us_per_step']:.0f} us/step")
    print(f"  the step's matmuls alone: {row['step_matmuls_flops'] / 1e9:.1f} GFLOP/s = "
          f"{row['step_matmuls_fraction_of_peak']:.2f} of peak; {row['step_matmuls_us']:.0f} us/step")
    cells = row["breakdown_us"]
    print("  per step (us, median): " + ", ".join(f"{p} {cells[p]:.0f}" for p in (*PHASES, "total")))
    print(f"  fastest hooked step: {row['best_step_flops'] / 1e9:.1f} GFLOP/s = {row['best_step_flops'] / peak:.2f} "
          "of peak (a hint at the quiet-machine number; the whole-epoch figure is the measure)")
    return row


# ---------------------------------------------------------------- main

@contextmanager
def section(title: str) -> Iterator[None]:
    print(f"\n{title}")
    start = time.perf_counter()
    yield
    print(f"  ({time.perf_counter() - start:.0f} s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="abc", help="which parts to run: any of a, b, c")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (the best counts)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--samples", type=int, default=12000, help="(a) training samples per timed epoch")
    parser.add_argument("--breakdown-steps", type=int, default=400, help="(a) hooked steps for the breakdown")
    parser.add_argument("--eval-every", type=int, default=6000, help="(b) training samples between evaluations")
    parser.add_argument("--target", type=float, default=0.87, help="(b) test accuracy to reach")
    parser.add_argument("--max-epochs", type=int, default=50, help="(b) cap on each recipe's epochs")
    parser.add_argument("--wide-steps", type=int, default=40, help="(c) training steps per timed epoch")
    parser.add_argument("--peak-size", type=int, default=2048, help="(c) side of the square matmul for the peak")
    parser.add_argument("--synthetic", action="store_true", help="random data instead of Fashion-MNIST; skips (b)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.samples, args.breakdown_steps, args.eval_every = 1, 512, 16, 2000
        args.max_epochs, args.wide_steps, args.peak_size = 1, 2, 256
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data, real = load_data(args.synthetic)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "cpu_count": os.cpu_count(), "real_data": real, "quick": args.quick,
                               "load_average_start": os.getloadavg()}
    print(f"torch {torch.__version__}, {results['threads']} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in results['load_average_start'])} on {os.cpu_count()} CPUs"
          + ("  << loaded machine: numbers are unreliable" if results["load_average_start"][0] > 0.5 else ""))
    if "a" in args.parts:
        with section("(a) training throughput, fashion-mlp seed network 784-40-40-40-10, ours vs source loop"):
            results["a"] = part_a(data, args)
    if "b" in args.parts:
        with section(f"(b) training time to test accuracy {args.target}, tuned vs seed recipe (both engine.fit)"):
            if real:
                results["b"] = part_b(data, args)
            else:
                print("  skipped: needs Fashion-MNIST")
    if "c" in args.parts:
        with section("(c) FLOP/s of a wide MLP vs this machine's matmul peak"):
            results["c"] = part_c(data, args)
    results["load_average_end"] = os.getloadavg()
    print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in results['load_average_end'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
