"""Search benchmark: K trials of fashion-mlp's search trained one after another, against the same K trained
at once as one stacked network (`training.mlp_search.train_stacked`), on any device.

The K trials share an architecture (2 hidden layers of `--units`), batch 64 and a 3-epoch budget, and take
their learning rates and L2 from the tuned search space, with seeds 0..K-1, on 48,000 Fashion-MNIST
training images (random images of that shape when the data is absent: the speed is the same). Printed:
seconds of each way (best of `--repeats`, interleaved), trial-steps per second, their ratio, and how far
the stacked trials' validation accuracies and weights are from the one-at-a-time ones (float rounding only).

    python benchmarks/bench_trials.py [--device auto] [--trials 4] [--units 128,256] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_gpu import fashion_images  # the same images, or random ones where the data is absent

from dlclassics.engine import evaluate_classifier, flat_parameters, resolve_device
from dlclassics.training import mlp_search


def training_data(rows: int, device: torch.device) -> dict[str, torch.Tensor]:
    """fashion-mlp's train and validation split (`pixel/255 - 0.5`), or random images of that shape."""
    x, y = fashion_images(rows, device)
    cfg = mlp_search.FashionMlpConfig()
    train, val = mlp_search.train_val_split(len(x), cfg.val_fraction, cfg.split_seed)
    return {"train_x": x[train], "train_y": y[train], "val_x": x[val], "val_y": y[val]}


def configurations(trials: int, units: int, epochs: int) -> list[dict[str, Any]]:
    """`trials` points of the tuned space that differ only in lr and L2 (one stackable group)."""
    space = mlp_search.FASHION_MLP_SPACES["tuned"]
    pairs = itertools.islice(itertools.cycle(itertools.product(space["lr"], space["l2"])), trials)
    return [{"layers": 2, "units": units, "lr": lr, "batch_size": 64, "l2": l2, "epochs": epochs} for lr, l2 in pairs]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def one_at_a_time(cfg: mlp_search.SearchConfig, points: list[dict[str, Any]], data: dict[str, torch.Tensor]
                  ) -> tuple[float, list[torch.nn.Module]]:
    synchronize(data["train_x"].device)
    started = time.perf_counter()
    models = [mlp_search.train(cfg, params, data["train_x"], data["train_y"], seed, quiet=True)[0]
              for seed, params in enumerate(points)]
    synchronize(data["train_x"].device)
    return time.perf_counter() - started, models


def at_once(cfg: mlp_search.SearchConfig, points: list[dict[str, Any]], data: dict[str, torch.Tensor]
            ) -> tuple[float, list[torch.nn.Module]]:
    synchronize(data["train_x"].device)
    started = time.perf_counter()
    models, _ = mlp_search.train_stacked(cfg, points, data["train_x"], data["train_y"], list(range(len(points))))
    synchronize(data["train_x"].device)
    return time.perf_counter() - started, models


def compare(cfg: mlp_search.SearchConfig, points: list[dict[str, Any]], data: dict[str, torch.Tensor],
            repeats: int) -> dict[str, Any]:
    """Best of `repeats` interleaved timings of both ways, and how far apart their results are."""
    times: dict[str, list[float]] = {"one_at_a_time": [], "at_once": []}
    for _ in range(repeats):
        seconds, alone = one_at_a_time(cfg, points, data)
        times["one_at_a_time"].append(seconds)
        seconds, stacked = at_once(cfg, points, data)
        times["at_once"].append(seconds)
    accuracy = [[evaluate_classifier(m, data["val_x"], data["val_y"])["accuracy"] for m in models]
                for models in (alone, stacked)]
    weights = [max(float((flat_parameters(a) - flat_parameters(b)).abs().max()), 0.0) for a, b in zip(alone, stacked)]
    steps = len(points) * points[0]["epochs"] * -(-len(data["train_x"]) // points[0]["batch_size"])
    best = {way: min(values) for way, values in times.items()}
    return {"units": points[0]["units"], "trials": len(points), "seconds": best,
            "trial_steps_per_s": {way: steps / seconds for way, seconds in best.items()},
            "speedup": best["one_at_a_time"] / best["at_once"],
            "max_val_accuracy_difference": max(abs(a - b) for a, b in zip(*accuracy)),
            "max_weight_difference": max(weights)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--trials", type=int, default=4, help="trials trained at once")
    parser.add_argument("--units", default="128,256", help="comma-separated hidden widths to measure")
    parser.add_argument("--epochs", type=int, default=3, help="each trial's epochs (the tuned budget: 3)")
    parser.add_argument("--rows", type=int, default=60000, help="training images before the 80/20 split")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each way; the best is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.repeats, args.units = 1000, 1, 1, "16"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = training_data(args.rows, device)
    cfg = mlp_search.FashionMlpConfig()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_trials: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {load:.2f}, {len(data['train_x'])} training images")
    results = []
    for units in (int(u) for u in args.units.split(",")):
        result = compare(cfg, configurations(args.trials, units, args.epochs), data, args.repeats)
        results.append(result)
        print(f"2 x {units} units, {args.trials} trials: one at a time {result['seconds']['one_at_a_time']:.2f} s, "
              f"at once {result['seconds']['at_once']:.2f} s ({result['speedup']:.2f}x; "
              f"{result['trial_steps_per_s']['at_once']:,.0f} trial-steps/s); largest difference: validation "
              f"accuracy {result['max_val_accuracy_difference']:.4f}, weight {result['max_weight_difference']:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "load": load, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
