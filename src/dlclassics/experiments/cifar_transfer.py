"""cifar-transfer: a pretrained backbone's features for a new task: frozen, fine-tuned, or trained from scratch.

Source: `../shared/seeds/002_2461c30dc0c8b3cd.txt`, transfer learning. torchvision's ImageNet-pretrained
AlexNet, its last layer replaced by Linear(4096, 10), CIFAR-10 resized to 256x256, Adam lr 1e-3, batch
512; (a) features frozen: test accuracy 0.83, loss 0.577; (b) the whole network fine-tuned: 0.79, 0.556.
Fixed: the source's freezing line set `param.required_grad` (a typo: nothing was frozen, so its run (a)
trained every layer); it fed the network without ImageNet normalisation; and it scored one batch of 512
test images. Here `frozen` trains only the new last layer, the normalisation is the model's first layer,
and accuracy is over the whole test set.

The AlexNet is `models.alexnet` (torchvision's keys and shapes, weights from `--weights FILE`, sha256
checked). On a CPU (about 9 images/s forward at 224 px) the frozen backbone's features are computed
once, batched, and cached in the run folder under a checksum of weights + images + resolution, where
later runs find them; `resolution` and `limit` make a CPU run take minutes. Fine-tuning is a GPU recipe.

ImageNet weights are not installable everywhere, so the same study runs offline on a backbone from our
own runs: `--backbone-run runs/mnist-classifier/<run>` (a CNN trained on Fashion-MNIST, say) transfers
to `--dataset mnist`, and the report gives test accuracy against the number of labelled target examples
for frozen features, fine-tuning and the same network trained from scratch: when transfer helps.

    dlclassics run cifar-transfer --backbone-run runs/mnist-classifier/<run> --data-dir DIR --carve-test 0.2
    dlclassics run cifar-transfer --weights alexnet-owt-7be5be79.pth --set modes=frozen --set limit=2000
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import nn

from dlclassics.config import BaseConfig, batch_size_option, dataset_option, limit_option, lr_option, option
from dlclassics.data.images import ImageData, image_datasets, image_spec
from dlclassics.data.transforms import images_4d, subsample
from dlclassics.engine import batched_outputs, evaluate_classifier, fit, make_optimizer, seed_everything
from dlclassics.errors import RunError, UsageError
from dlclassics.files import atomic_torch_save, atomic_write_bytes, load_tensor_file
from dlclassics.models import alexnet
from dlclassics.runs import MODEL, Reference, Run, Upstream, markdown_table
from dlclassics.training.classifiers import (
    PRODUCERS,
    ImageShape,
    classifier_builder,
    load_classifier,
)

TITLE = "Transfer learning: frozen, fine-tuned and from-scratch networks against the labels available (S2)"

# The backbone from one of our classifier runs (`--backbone-run`, the same as --from-run).
FROM_RUN = Upstream(tuple(PRODUCERS), files=(MODEL,), metrics=("test_accuracy",))
MODES = ("frozen", "finetune", "scratch")
# AlexNet on these 2 CPU cores at 224 px (catalogue): ~9 images/s forward, ~3 training; cost ~ side squared.
ALEXNET_FORWARD_224, ALEXNET_TRAIN_224 = 9.0, 3.0


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = dataset_option("mnist", image_datasets, "target dataset the backbone's features are transferred to")
    weights: str = option("", "torchvision's AlexNet weights file (alexnet-owt-7be5be79.pth); not needed with "
                              "--backbone-run")
    resolution: int = option(128, "side AlexNet sees the images resized to (the source: 256)",
                             low=alexnet.MIN_RESOLUTION, high=512)
    modes: tuple[str, ...] = option(MODES, "what is trained: frozen (new last layer only), finetune (every layer, "
                                           "from the pretrained weights), scratch (every layer, random init)")
    labels: tuple[int, ...] = option((100, 300, 1000, 0), "labelled target examples per training (0 = all)", low=0)
    repeats: int = option(3, "trainings per labels count and mode, each on another random subset", low=1)
    steps: int = option(600, "optimiser steps per training (epochs = steps / batches per epoch)", low=1)
    batch_size: int = batch_size_option(64)
    lr: float = lr_option(1e-3, "Adam learning rate of the new last layer (frozen) and from scratch")
    finetune_lr: float = lr_option(3e-4, "Adam learning rate when fine-tuning every layer")
    feature_batch: int = option(256, "images per batched feature computation", low=1)
    limit: int = limit_option("images of each split")


RECIPES: dict[str, dict[str, Any]] = {
    # the source: all of CIFAR-10 at 256 px, 60 epochs of 98 batches of 512, Adam 1e-3 for both runs
    "seed": {"resolution": 256, "labels": (0,), "modes": ("frozen", "finetune"), "repeats": 1, "steps": 5880,
             "batch_size": 512, "lr": 1e-3, "finetune_lr": 1e-3},
    "tuned": {}}
QUICK = {"labels": (20, 0), "repeats": 1, "steps": 12, "batch_size": 16, "limit": 120, "resolution": 64,
         "feature_batch": 64}

REFERENCES = [
    Reference("frozen_test_accuracy", 0.83, "(a) frozen backbone: test accuracy (source: AlexNet on CIFAR-10, "
              "where it trained every layer)", tolerance=0.02, dataset="cifar10"),
    Reference("frozen_test_loss", 0.577, "(a) frozen backbone: test loss (source: AlexNet on CIFAR-10)",
              rule="lower", tolerance=0.05, dataset="cifar10"),
    Reference("finetune_test_accuracy", 0.79, "(b) fine-tuned backbone: test accuracy (source: AlexNet on "
              "CIFAR-10)", tolerance=0.02, dataset="cifar10"),
    Reference("finetune_test_loss", 0.556, "(b) fine-tuned backbone: test loss (source: AlexNet on CIFAR-10)",
              rule="lower", tolerance=0.05, dataset="cifar10"),
]


# ---------------------------------------------------------------- the backbone

@dataclasses.dataclass
class Backbone:
    """A pretrained feature extractor: pixels [B, C, H, W] in [0, 1] -> features [B, size]."""

    description: str
    source: str  # what it was trained on, for the figure's title
    features: nn.Module
    size: int
    fresh: Callable[[], nn.Module]  # the same layers, randomly initialised (the from-scratch baseline)
    resolution: int  # the side the features are computed at


def own_backbone(run: Run, data: ImageData) -> Backbone:
    """All but the last layer of the classifier of the --backbone-run run."""
    finished = run.from_run
    theirs = finished.options.get("dataset", "mnist")
    spec = image_spec(theirs)
    if (spec.channels, spec.image_size) != (data.channels, data.image_size):
        raise UsageError(f"--backbone-run {finished.folder} read {spec.channels}x{spec.image_size}x{spec.image_size} "
                         f"images ({theirs}), {data.name} has {data.channels}x{data.image_size}x{data.image_size}; "
                         "pass a target dataset of the same shape")
    if theirs == data.name:
        run.note(f"the backbone was trained on {theirs} itself: this measures re-training, not transfer")
    shape = ImageShape(spec.channels, spec.image_size, len(spec.classes))
    build = classifier_builder(finished, shape)
    trained = load_classifier(finished, shape)
    return Backbone(f"the {finished.experiment} run {finished.folder} (trained on {theirs})",
                    f"{finished.experiment} on {theirs}", trained.backbone(), trained.feature_size,
                    lambda: build().backbone(), spec.image_size)


def alexnet_backbone(cfg: Config, run: Run) -> Backbone:
    """torchvision's ImageNet AlexNet up to classifier.5 (4096 features), ImageNet normalisation in front."""
    if not cfg.weights:
        raise UsageError(f"cifar-transfer needs a pretrained backbone: {alexnet.how_to_get_weights()}")
    model = alexnet.load_alexnet(cfg.weights, run.unverified)
    if run.unverified:
        run.mark_not_comparable(f"weights: {cfg.weights} accepted with --unverified, not checked against the "
                                f"official {alexnet.WEIGHTS_FILE}; not comparable")
    return Backbone(f"torchvision's AlexNet ({Path(cfg.weights).name}) at {cfg.resolution} px",
                    f"AlexNet on ImageNet ({cfg.resolution} px)", alexnet.backbone(model, cfg.resolution),
                    alexnet.FEATURES,
                    lambda: alexnet.backbone(alexnet.AlexNet(), cfg.resolution), cfg.resolution)


# ---------------------------------------------------------------- the feature cache

def digest(header: str, tensors: list[tuple[str, torch.Tensor]]) -> str:
    """sha256 of a header and named tensors (names, shapes, dtypes and bytes)."""
    result = hashlib.sha256(header.encode())
    for name, tensor in tensors:
        result.update(f"{name}|{list(tensor.shape)}|{tensor.dtype}".encode())
        result.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return result.hexdigest()


def weights_digest(backbone: Backbone) -> str:
    """The backbone's layers, its every weight and the resolution it sees: what its features depend on."""
    return digest(f"{backbone.features!r}|resolution={backbone.resolution}",
                  list(backbone.features.state_dict().items()))


def feature_key(weights: str, images: torch.Tensor) -> str:
    """The cache key of the features of `images` under the backbone whose `weights_digest` is `weights`."""
    return digest(weights, [("images", images)])


def compute_features(features: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N, size], in eval mode (no dropout, no batch-norm updates), batch by batch."""
    return batched_outputs(features, images, batch_size)


def read_cache(path: Path, key: str, count: int, size: int) -> torch.Tensor | None:
    """The cached features in `path` if it holds exactly these (same key, shape); None otherwise."""
    if not path.is_file():
        return None
    try:
        saved = load_tensor_file(path, "a feature cache {'key': ..., 'features': [N, F]}")
    except RunError:
        return None  # damaged: computed again
    features = saved.get("features") if isinstance(saved, dict) else None
    if saved.get("key") != key or not isinstance(features, torch.Tensor) or tuple(features.shape) != (count, size):
        return None
    return features


def cached_features(folder: Path, backbone: Backbone, weights: str, images: torch.Tensor, split: str,
                    batch_size: int) -> tuple[torch.Tensor, str]:
    """(features [N, size], where they came from): this run folder's cache file, a sibling run's (linked in
    here), or computed and cached. `weights` is the backbone's `weights_digest`; the file name carries the
    key, so any change of weights, images or resolution means another file."""
    key = feature_key(weights, images)
    name = f"features-{split}-{key[:16]}.pt"
    own = folder / name
    for candidate in (own, *sorted(path for path in folder.parent.glob(f"*/{name}") if path != own)):
        features = read_cache(candidate, key, len(images), backbone.size)
        if features is not None:
            if candidate != own:
                link_or_copy(candidate, own)
            return features, "reused" if candidate == own else f"reused from {candidate.parent.name}"
    features = compute_features(backbone.features, images.to(next(backbone.features.parameters()).device),
                                batch_size).cpu()
    atomic_torch_save(own, {"key": key, "features": features})
    return features, "computed"


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no second copy on disk), or a copy where the file system has none."""
    try:
        os.link(source, target)
    except OSError:
        atomic_write_bytes(target, source.read_bytes())


# ---------------------------------------------------------------- one training

@dataclasses.dataclass
class Target:
    """The target task: pixels in [0, 1] [N, C, H, W], labels, and the frozen backbone's features."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    train_features: torch.Tensor | None = None
    test_features: torch.Tensor | None = None


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_one(mode: str, backbone: Backbone, target: Target, chosen: torch.Tensor, cfg: Config, seed: int,
              device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Train for `mode` on the labelled examples `chosen`; (the whole model, its test metrics).

    frozen: a new Linear(size, classes) on the cached features; the backbone's parameters never reach an
    optimizer (and are marked requires_grad=False). finetune: a copy of the backbone and a new last layer,
    every parameter trained. scratch: the same layers randomly initialised, every parameter trained.
    """
    generator = seed_everything(seed)
    head = nn.Linear(backbone.size, target.classes)
    epochs = max(1, round(cfg.steps / math.ceil(len(chosen) / cfg.batch_size)))
    if mode == "frozen":
        backbone.features.requires_grad_(False)
        head = head.to(device)
        fit(head, (target.train_features[chosen].to(device), target.train_y[chosen].to(device)),
            optimizer=make_optimizer("adam", head, cfg.lr), epochs=epochs, batch_size=cfg.batch_size,
            generator=generator, quiet=True)
        test = evaluate_classifier(head, target.test_features.to(device), target.test_y.to(device))
        return nn.Sequential(backbone.features, head), test
    layers = copy.deepcopy(backbone.features) if mode == "finetune" else backbone.fresh()
    model = nn.Sequential(layers.requires_grad_(True), head).to(device)
    fit(model, (target.train_x[chosen].to(device), target.train_y[chosen].to(device)),
        optimizer=make_optimizer("adam", model, cfg.finetune_lr if mode == "finetune" else cfg.lr), epochs=epochs,
        batch_size=cfg.batch_size, generator=generator, quiet=True)
    return model, evaluate_classifier(model, target.test_x.to(device), target.test_y.to(device), cfg.feature_batch)


# ---------------------------------------------------------------- the experiment

def check_options(cfg: Config, pool: int) -> list[int]:
    """The labels counts as numbers of examples (0 -> the whole training split), after checking the options."""
    unknown = [mode for mode in cfg.modes if mode not in MODES]
    if unknown:
        raise UsageError(f"option 'modes' takes {', '.join(MODES)}; got {', '.join(unknown)}")
    too_many = [n for n in cfg.labels if n > pool]
    if too_many:
        raise UsageError(f"option 'labels' asks for {too_many[0]:,} labelled examples, but the training split has "
                         f"{pool:,} images (0 = all of them)")
    return sorted({n or pool for n in cfg.labels})


def warn_cpu_time(cfg: Config, run: Run, images: int, counts: list[int]) -> None:
    """Before a long AlexNet job on a CPU: what it will cost, from the catalogue's measured speeds."""
    scale = (224 / cfg.resolution) ** 2
    minutes = images / (ALEXNET_FORWARD_224 * scale) / 60
    text = f"AlexNet features of {images:,} images at {cfg.resolution} px: about {minutes:.0f} min on this CPU, once"
    full = [mode for mode in cfg.modes if mode != "frozen"]
    if full:
        seen = cfg.steps * cfg.batch_size * len(counts) * cfg.repeats * len(full)
        hours = seen / (ALEXNET_TRAIN_224 * scale) / 3600
        text += (f"; {' and '.join(full)} train every layer on {seen:,} images: about {hours:.1f} h -- a GPU recipe "
                 "(on a CPU, --set modes=frozen)")
    run.announce(text)


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = run.load_images(cfg.dataset)
    train_x, train_y = subsample(data.train_x, data.train_y, cfg.limit)
    test_x, test_y = subsample(data.test_x, data.test_y, cfg.limit)
    shape = (data.channels, data.image_size)
    target = Target(images_4d(train_x, *shape), train_y, images_4d(test_x, *shape), test_y, len(data.classes))
    counts = check_options(cfg, len(target.train_x))
    backbone = own_backbone(run, data) if run.from_run else alexnet_backbone(cfg, run)
    backbone.features.to(run.device)
    if not run.from_run and run.device.type == "cpu":
        warn_cpu_time(cfg, run, len(target.train_x) + len(target.test_x), counts)
    run.note(f"backbone: {backbone.description}; {len(target.train_x):,} training and {len(target.test_x):,} test "
             f"images of {data.name}")
    before = weights_digest(backbone)

    if "frozen" in cfg.modes:
        with run.timer("feature_time_s"):
            target.train_features, train_source = cached_features(run.dir, backbone, before, target.train_x, "train",
                                                                  cfg.feature_batch)
            target.test_features, test_source = cached_features(run.dir, backbone, before, target.test_x, "test",
                                                                cfg.feature_batch)
        run.note(f"frozen features ({backbone.size} per image, eval mode): train {train_source}, test {test_source} "
                 f"({run.timings['feature_time_s']:.1f} s); cached as features-*.pt in the run folder, keyed by a "
                 "sha256 of the weights, the images and the resolution, for later runs")

    rows, parameters = [], {}
    for n in counts:
        for repeat in range(cfg.repeats):
            # the first n of one permutation per repeat: the same subset for every mode, nested across n
            chosen = torch.randperm(len(target.train_x), generator=torch.Generator().manual_seed(cfg.seed + repeat))[:n]
            for mode in cfg.modes:
                started = time.perf_counter()
                model, test = train_one(mode, backbone, target, chosen, cfg, cfg.seed + repeat, run.device)
                parameters[mode] = (trainable(model), sum(p.numel() for p in model.parameters()))
                rows.append({"mode": mode, "labels": n, "repeat": repeat, "test_accuracy": test["accuracy"],
                             "test_loss": test["loss"], "train_time_s": round(time.perf_counter() - started, 2)})
    run.save_history(rows)
    summary = summarise(rows)
    unchanged = weights_digest(backbone) == before
    save_report(run, cfg, summary, parameters, counts, len(target.train_x), unchanged, backbone.source, data.name)
    return metrics(summary, parameters, counts, unchanged)


# ---------------------------------------------------------------- results

def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, spread and extremes over the repeats, per mode and labels count."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["labels"]), []).append(row)
    summary = []
    for (mode, n), group in groups.items():
        accuracy = torch.tensor([row["test_accuracy"] for row in group], dtype=torch.float64)
        summary.append({"mode": mode, "labels": n, "repeats": len(group), "mean_accuracy": accuracy.mean().item(),
                        "std_accuracy": accuracy.std().item() if len(group) > 1 else 0.0,
                        "min_accuracy": accuracy.min().item(), "max_accuracy": accuracy.max().item(),
                        "mean_loss": sum(row["test_loss"] for row in group) / len(group)})
    return summary


def metrics(summary: list[dict[str, Any]], parameters: dict[str, tuple[int, int]], counts: list[int],
            unchanged: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for row in summary:
        values[f"{row['mode']}_accuracy_{row['labels']}"] = row["mean_accuracy"]
        if row["labels"] == counts[-1]:  # with every labelled example: the source's setting
            values[f"{row['mode']}_test_accuracy"] = row["mean_accuracy"]
            values[f"{row['mode']}_test_loss"] = row["mean_loss"]
    for mode, (trained, total) in parameters.items():
        values[f"{mode}_trainable_parameters"] = trained
    values["total_parameters"] = max(total for _, total in parameters.values())
    return {**values, "labels_counts": counts, "backbone_unchanged": unchanged}


def save_report(run: Run, cfg: Config, summary: list[dict[str, Any]], parameters: dict[str, tuple[int, int]],
                counts: list[int], pool: int, unchanged: bool, source: str, target: str) -> None:
    """The accuracy table, the parameter counts, the notes and the labels-vs-accuracy figure."""
    by = {(row["mode"], row["labels"]): row for row in summary}
    modes = [mode for mode in MODES if mode in cfg.modes]
    table = [{"labelled examples": f"{n:,}" + (" (all)" if n == pool else ""),
              **{mode: f"{by[mode, n]['mean_accuracy']:.4f} ± {by[mode, n]['std_accuracy']:.4f}" for mode in modes}}
             for n in counts]
    subsets = f"mean ± std over {cfg.repeats} random subsets" if cfg.repeats > 1 else "one random subset each"
    run.add_section(f"Test accuracy against labelled target examples ({subsets})", markdown_table(table))
    run.add_section("Trainable parameters", markdown_table(
        [{"mode": mode, "trainable": parameters[mode][0], "total": parameters[mode][1]} for mode in modes]))
    run.note("Fixed from the source: its freezing line set `param.required_grad` (a typo), so nothing was frozen and "
             "its run (a) trained every layer; here frozen mode trains only the new last layer (parameter counts "
             "above) and the backbone's weights stay bit-identical "
             f"({'checked: unchanged' if unchanged else 'CHANGED -- a bug'}). The input normalisation is the model's "
             "first layer, and accuracy is over the whole test set (the source scored one batch of 512).")
    run.note(f"each training: {cfg.steps} Adam steps of {cfg.batch_size} (lr {cfg.lr:g} new layer and scratch, "
             f"{cfg.finetune_lr:g} fine-tuning); the same labelled subset for every mode")
    figure, axes = plt.subplots(figsize=(7.0, 4.4))
    for mode in modes:
        points = [by[mode, n] for n in counts]
        axes.errorbar(counts, [p["mean_accuracy"] for p in points], yerr=[p["std_accuracy"] for p in points],
                      marker="o", capsize=3, label={"frozen": "frozen features (new last layer only)",
                                                    "finetune": "fine-tuned (every layer)",
                                                    "scratch": "same network from scratch"}[mode])
    axes.set_xscale("log")
    axes.set(xlabel=f"labelled {target} examples (log scale)", ylabel=f"test accuracy ({target})",
             title=f"When does transfer help? {source} -> {target}")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    run.save_figure(figure, "accuracy_vs_labels", "Test accuracy against the number of labelled target examples",
                    rows=summary)
