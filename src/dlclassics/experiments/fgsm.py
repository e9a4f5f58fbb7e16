"""fgsm: adversarial examples for any classifier the project trains: FGSM and PGD, over the whole test set.

Source: `../shared/seeds/002_2461c30dc0c8b3cd.txt`, part e. The fast gradient sign method (Goodfellow et
al. 2015): x' = x + epsilon * sign(grad_x loss(f(x), y)), applied with epsilon 0.05 to 4 correctly
classified images of the trained CIFAR CNN; all 4 were misclassified afterwards (the figure).
Fixed: the source added epsilon in its normalised units (std 0.5), i.e. 0.025 = 6.4/255 in pixels, and
never clamped to the valid range. Here the attack works in [0, 1] pixel space on the model with its
input scaling as its first layer (`training.classifiers`), in eval mode, clamped to [0, 1], and every
epsilon is given in pixels and in /255.

Beyond the source: accuracy against epsilon over the whole test set for FGSM and for projected gradient
descent in the L-infinity ball (Madry et al. 2018: random start, `pgd_steps` signed steps of
2.5 epsilon / steps, projected back into the ball and [0, 1]; an image counts as fooled as soon as one
iterate is misclassified, or when it was fooled at a smaller epsilon), beside the public numbers where
the setting matches; and the most damaged images. Both curves are batched over the test set: FGSM needs
one gradient per image for all epsilons (the gradient does not depend on epsilon), PGD drops the images
it has fooled. The attack loops are
the idea of this experiment, so they live here, not in `engine.fit`.

    dlclassics run fgsm --from-run runs/mnist-classifier/<run>   # any classifier run (see PRODUCERS)
    dlclassics run fgsm --dataset fashion-mnist                  # trains mnist-classifier's CNN here first
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F

from dlclassics.config import BaseConfig, batch_size_option, dataset_option, epochs_option, option, resolve
from dlclassics.data.images import ImageData, image_datasets
from dlclassics.data.transforms import images_4d
from dlclassics.engine import evaluate_classifier
from dlclassics.errors import UsageError
from dlclassics.runs import MODEL, Reference, Run, Upstream, markdown_table
from dlclassics.training.classifiers import (
    CNN_QUICK,
    PRODUCERS,
    CnnConfig,
    ImageShape,
    PixelClassifier,
    load_classifier,
    train_cnn,
)

TITLE = "FGSM and PGD attacks on a trained classifier, accuracy against epsilon (S2 part e)"

# A finished classifier run (its model.pt and the test accuracy it measured).
FROM_RUN = Upstream(tuple(PRODUCERS), files=(MODEL,), metrics=("test_accuracy",))
HEADLINE = "fgsm_accuracy_0.025"  # what listings show: the accuracy left at the source's epsilon (6.4/255)

# Public anchors (catalogue): PyTorch's FGSM tutorial (MNIST LeNet) and torchattacks (CIFAR-10 WRN-28-10).
TUTORIAL_MNIST = {0.0: 0.990, 0.05: 0.969, 0.1: 0.908, 0.15: 0.756, 0.2: 0.503, 0.25: 0.303, 0.3: 0.160}
TORCHATTACKS_CIFAR = {0.0: 0.963, 2 / 255: 0.644, 4 / 255: 0.555, 8 / 255: 0.474}
ANCHORS = {"mnist": ("PyTorch FGSM tutorial (LeNet)", TUTORIAL_MNIST),
           "cifar10": ("torchattacks FGSM (WRN-28-10)", TORCHATTACKS_CIFAR)}
SHOWN_IMAGES, DAMAGED_IMAGES = 4, 8


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = dataset_option("fashion-mnist", image_datasets,
                                  "dataset of the classifier trained here (a --from-run run's own wins)")
    epochs: int = epochs_option(10, "epochs of mnist-classifier's CNN, trained here when no --from-run is given")
    epsilons: tuple[float, ...] = option((), "epsilons in pixel units (0 is always added); empty = 0 to 0.3 by "
                                             "0.025 on 28x28 images, 0 to 16/255 by 1/255 on larger ones",
                                         low=0.0, high=1.0)
    figure_epsilon: float = option(0.025, "epsilon of the 4-image figure and the damaged panel (the source's 0.05 "
                                          "in units of std 0.5)", low=0.0, high=1.0, low_open=True)
    pgd_steps: int = option(10, "PGD iterations per epsilon", low=1)
    pgd_step_factor: float = option(2.5, "PGD step = factor * epsilon / steps (Madry et al.: 2.5)", low=0.0,
                                    low_open=True)
    # 256 measured faster than 1,024 on a 2-core CPU (FGSM curve 9.4 -> 5.0 s, PGD 19.0 -> 13.4 s on 10,000
    # Fashion-MNIST images): a batch's activations stay in cache; 64 to 512 were within noise of 256.
    batch_size: int = batch_size_option(256, "test images attacked at once")
    limit: int = option(0, "attack only the first N test images (0 = all)", low=0)


RECIPES: dict[str, dict[str, Any]] = {"seed": {}, "tuned": {}}  # the attack is the source's; only its bugs differ
QUICK = {"epochs": 2, "pgd_steps": 3, "limit": 300, "batch_size": 128}

REFERENCES = [
    Reference("figure_fooled", 4, "of 4 correct test images, misclassified after FGSM (source: CIFAR CNN, 0.025 px)",
              rule="info", dataset="cifar10"),
    Reference("eps0_gap", 0.0, "|accuracy at epsilon 0 - clean accuracy| (must be 0)", rule="at_most", target=0.0),
    *[Reference(f"fgsm_accuracy_{eps:g}", TUTORIAL_MNIST[eps], f"FGSM accuracy at {eps:g} (PyTorch tutorial, LeNet)",
                rule="info", dataset="mnist") for eps in (0.1, 0.2, 0.3)],
    Reference("attack_time_s", 60.0, "FGSM + 10-step PGD curves on the 10,000 test images, s (target)",
              rule="at_most", dataset="fashion-mnist"),
]


# ---------------------------------------------------------------- the attacks (vectorised over the batch)

def loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d x [B, C, H, W], logits [B, K]) for the summed cross-entropy: in eval mode the images are
    independent, so each image's gradient is that of its own loss, as in a per-image loop."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (gradient,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    return gradient, logits.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """x + eps * sign(grad), clamped to the pixel range [0, 1]."""
    return (x + eps * loss_gradient(model, x, y)[0].sign()).clamp(0.0, 1.0)


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(x), size):
        yield x[start:start + size], y[start:start + size]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def fgsm_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float],
               batch_size: int) -> torch.Tensor:
    """Correct [E, N]: image n classified right before and after FGSM at epsilons[e] (the tutorial's count).

    One gradient per image serves every epsilon, and only the images classified right before the attack
    are attacked (the others count as wrong at every epsilon). At epsilon 0 the attack changes nothing,
    so that row is exactly the clean accuracy.
    """
    rows = []
    for xb, yb in batches(x, y, batch_size):
        sign = loss_gradient(model, xb, yb)[0].sign()
        clean = predict(model, xb) == yb
        right, labels, signs = xb[clean], yb[clean], sign[clean]
        row = []
        for eps in epsilons:
            correct = clean.clone()
            if eps > 0:
                correct[clean] = predict(model, (right + eps * signs).clamp(0.0, 1.0)) == labels
            row.append(correct)
        rows.append(torch.stack(row))
    return torch.cat(rows, 1)


def pgd_fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
               generator: torch.Generator) -> torch.Tensor:
    """Fooled [B]: misclassified clean, or at some iterate of L-infinity PGD with a random start.

    Only images not yet fooled are carried to the next step (the first misclassified iterate is a valid
    adversarial example in the ball), so the work shrinks as the attack succeeds.
    """
    fooled = predict(model, x) != y
    active = torch.nonzero(~fooled).flatten()
    if eps == 0 or len(active) == 0:
        return fooled
    start = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1  # uniform in the ball [B, C, H, W]
    adversarial = (x + eps * start).clamp(0.0, 1.0)
    for _ in range(steps):
        if len(active) == 0:
            return fooled
        gradient, logits = loss_gradient(model, adversarial[active], y[active])
        wrong = logits.argmax(1) != y[active]
        fooled[active[wrong]] = True
        active, gradient = active[~wrong], gradient[~wrong]
        stepped = adversarial[active] + step_size * gradient.sign()
        origin = x[active]
        adversarial[active] = torch.minimum(torch.maximum(stepped, origin - eps), origin + eps).clamp(0.0, 1.0)
    fooled[active] |= predict(model, adversarial[active]) != y[active]
    return fooled


def pgd_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float], steps: int,
              step_factor: float, batch_size: int, seed: int) -> torch.Tensor:
    """Correct [E, N]: image n withstood PGD at epsilons[e] (ascending) and at every smaller epsilon.

    An adversarial example found in a smaller ball lies in every larger one, so an image fooled at one
    epsilon counts as fooled at the larger ones and only the others are attacked again: the curve can
    only fall, and most of the work is at the first epsilons.
    """
    generator = torch.Generator().manual_seed(seed)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    rows = []
    for eps in epsilons:
        for chunk in torch.nonzero(~fooled).flatten().split(batch_size):
            fooled[chunk] = pgd_fooled(model, x[chunk], y[chunk], eps, steps, step_factor * eps / steps, generator)
        rows.append(~fooled)
    return torch.stack(rows)


# ---------------------------------------------------------------- the victim

def shape_of(data: ImageData) -> ImageShape:
    return ImageShape(data.channels, data.image_size, len(data.classes))


def finished_victim(run: Run) -> tuple[PixelClassifier, ImageData, float]:
    """The classifier of the --from-run run, its test data, and the test accuracy it measured."""
    finished = run.from_run
    carved = finished.carve_test
    if carved != run.carve_test:
        raise UsageError(f"--from-run {finished.folder} was run with --carve-test {carved:g}, this run with "
                         f"{run.carve_test:g}: pass the same, so that the attacked images are its test split")
    data = run.load_images(finished.options.get("dataset", "mnist"))
    run.note(f"victim: the {finished.experiment} run {finished.folder} (its own dataset, {data.name})")
    return load_classifier(finished, shape_of(data)), data, finished.metrics()["test_accuracy"]


def trained_victim(cfg: Config, run: Run) -> tuple[PixelClassifier, ImageData, float]:
    """mnist-classifier's CNN, with its options at their defaults (its quick size with --quick), trained here
    on `cfg.dataset` for `cfg.epochs` epochs; the test accuracy it reached."""
    layers = [CNN_QUICK if cfg.quick else {},
              {name: getattr(cfg, name) for name in ("dataset", "epochs", "seed", "device", "quick")}]
    cnn_cfg = resolve(CnnConfig, *layers)
    run.announce(f"no --from-run: training mnist-classifier's CNN on {cfg.dataset} for {cfg.epochs} epochs first "
                  "(pass --from-run runs/<classifier>/<run> to attack a finished one)")
    data = run.load_images(cfg.dataset)
    trained = train_cnn(cnn_cfg, run, data)
    victim = PixelClassifier(PRODUCERS["mnist-classifier"].scaling(), trained.model)
    return victim.eval(), data, trained.test["accuracy"]


def epsilon_grid(cfg: Config, size: int) -> list[float]:
    """The epsilons attacked, ascending, 0 included."""
    chosen = cfg.epsilons or ([round(i * 0.025, 4) for i in range(13)] if size <= 28 else [i / 255 for i in range(17)])
    return sorted({0.0, *chosen})


def per_255(eps: float) -> str:
    return f"{eps * 255:.3g}/255"


# ---------------------------------------------------------------- the experiment

def run(cfg: Config, run: Run) -> dict[str, Any]:
    victim, data, producer_accuracy = finished_victim(run) if run.from_run else trained_victim(cfg, run)
    # channels_last lets oneDNN pick its fastest CPU convolutions; attacks need no parameter gradients.
    victim = victim.to(run.device, memory_format=torch.channels_last).requires_grad_(False)
    count = cfg.limit or len(data.test_x)
    x = images_4d(data.test_x[:count], data.channels, data.image_size)
    x, y = x.to(run.device).contiguous(memory_format=torch.channels_last), data.test_y[:count].to(run.device)
    epsilons = epsilon_grid(cfg, data.image_size)

    clean_accuracy = evaluate_classifier(victim, x, y, cfg.batch_size)["accuracy"]
    with run.timer("fgsm_time_s"):
        fgsm_correct = fgsm_curve(victim, x, y, epsilons, cfg.batch_size)
    with run.timer("pgd_time_s"):
        pgd_correct = pgd_curve(victim, x, y, epsilons, cfg.pgd_steps, cfg.pgd_step_factor, cfg.batch_size, cfg.seed)
    fgsm_time, pgd_time = run.timings["fgsm_time_s"], run.timings["pgd_time_s"]
    rows = [{"epsilon": eps, "epsilon_255": round(eps * 255, 3), "fgsm_accuracy": f.float().mean().item(),
             "pgd_accuracy": p.float().mean().item()} for eps, f, p in zip(epsilons, fgsm_correct, pgd_correct)]

    fooled = save_example_figures(cfg, run, victim, x, y, data.classes)
    save_curve_figure(run, rows, data.name, clean_accuracy, cfg.pgd_steps)
    run.add_section("Accuracy against epsilon", curve_table(rows, data.name))
    run.note("Fixed from the source: the attack is in [0, 1] pixel space with the input scaling inside the model, "
             "in eval mode, clamped to [0, 1] (the source added 0.05 in normalised units, 0.025 = 6.4/255 in pixels, "
             f"without a clamp). PGD: random start, {cfg.pgd_steps} steps of {cfg.pgd_step_factor:g} epsilon / "
             "steps; an image counts as fooled at its first misclassified iterate, and at every epsilon above one it "
             "was fooled at (the example lies in the larger ball too).")
    accuracies = "; ".join(f"{row['epsilon']:g} ({per_255(row['epsilon'])}): FGSM {row['fgsm_accuracy']:.4f}, "
                           f"PGD {row['pgd_accuracy']:.4f}" for row in rows)
    run.note(f"{count:,} test images; accuracy at each epsilon -- {accuracies}. Attack wall time "
             f"{fgsm_time + pgd_time:.1f} s (FGSM {fgsm_time:.1f} s, PGD {pgd_time:.1f} s).")
    return {"clean_accuracy": clean_accuracy, "producer_test_accuracy": producer_accuracy,
            "eps0_gap": abs(rows[0]["fgsm_accuracy"] - clean_accuracy), "test_images": count,
            **{f"fgsm_accuracy_{row['epsilon']:g}": row["fgsm_accuracy"] for row in rows},
            **{f"pgd_accuracy_{row['epsilon']:g}": row["pgd_accuracy"] for row in rows},
            "figure_fooled": fooled, "attack_time_s": round(fgsm_time + pgd_time, 2)}


# ---------------------------------------------------------------- figures and tables

def curve_table(rows: list[dict[str, Any]], dataset: str) -> str:
    """Our curve, with the public anchor beside it where the dataset matches."""
    name, anchor = ANCHORS.get(dataset, ("", {}))
    shown = []
    for row in rows:
        match = next((value for eps, value in anchor.items() if abs(eps - row["epsilon"]) < 1e-9), None)
        shown.append({"epsilon (pixels)": row["epsilon"], "epsilon x 255": row["epsilon_255"],
                      "FGSM accuracy": row["fgsm_accuracy"], "PGD accuracy": row["pgd_accuracy"],
                      **({name: match if match is not None else "-"} if anchor else {})})
    caveat = (f"\n\nPublic anchor on the same dataset: {name} (a different network)." if anchor else
              f"\n\nNo public anchor on {dataset}; the catalogue's are on MNIST and CIFAR-10.")
    return markdown_table(shown) + caveat


def save_curve_figure(run: Run, rows: list[dict[str, Any]], dataset: str, clean: float, steps: int) -> None:
    epsilons = [row["epsilon"] for row in rows]
    figure, axes = plt.subplots(figsize=(7.0, 4.4))
    axes.plot(epsilons, [row["fgsm_accuracy"] for row in rows], "-o", markersize=4, label="FGSM")
    axes.plot(epsilons, [row["pgd_accuracy"] for row in rows], "-s", markersize=4, label=f"PGD ({steps} steps)")
    axes.axhline(clean, color="grey", linestyle=":", label=f"clean accuracy {clean:.4f}")
    name, anchor = ANCHORS.get(dataset, ("", {}))
    if anchor:
        axes.plot(list(anchor), list(anchor.values()), "x", color="black", label=f"{name}, FGSM")
    axes.set(xlabel="epsilon (pixel units, images in [0, 1])", ylabel="test accuracy", ylim=(-0.02, 1.02),
             title=f"Accuracy against epsilon on {dataset} ({len(rows)} epsilons)")
    top = axes.secondary_xaxis("top", functions=(lambda e: e * 255, lambda e: e / 255))
    top.set_xlabel("epsilon x 255")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    run.save_figure(figure, "accuracy_vs_epsilon", "Test accuracy against epsilon, FGSM and PGD", rows=rows)


def save_example_figures(cfg: Config, run: Run, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         classes: Sequence[str]) -> int:
    """The source's figure (the first 4 correctly classified test images before and after FGSM) and the panel of
    the images whose true-class probability FGSM lowered most; returns how many of the 4 were fooled."""
    eps = cfg.figure_epsilon
    adversarial = torch.cat([fgsm(model, xb, yb, eps) for xb, yb in batches(x, y, cfg.batch_size)])
    with torch.no_grad():
        clean_p = torch.cat([model(xb).softmax(1) for xb, _ in batches(x, y, cfg.batch_size)])
        adversarial_p = torch.cat([model(xb).softmax(1) for xb, _ in batches(adversarial, y, cfg.batch_size)])
    correct = torch.nonzero(clean_p.argmax(1) == y).flatten()
    shown = correct[:SHOWN_IMAGES]
    drop = clean_p[torch.arange(len(y)), y] - adversarial_p[torch.arange(len(y)), y]
    damaged = drop.argsort(descending=True)[:DAMAGED_IMAGES]
    for name, chosen, what in (("fgsm_examples", shown, f"the first {len(shown)} correctly classified test images"),
                               ("most_damaged", damaged, f"the {len(damaged)} test images FGSM damaged most")):
        figure = attack_grid(x[chosen], adversarial[chosen], y[chosen], clean_p[chosen], adversarial_p[chosen],
                             classes, f"FGSM at epsilon {eps:g} ({per_255(eps)}): {what}", eps)
        run.save_figure(figure, name, f"Before and after FGSM at epsilon {eps:g} ({per_255(eps)}): {what}",
                        data={"clean": x[chosen], "adversarial": adversarial[chosen], "label": y[chosen],
                              "clean_probability": clean_p[chosen], "adversarial_probability": adversarial_p[chosen]})
    return int((adversarial_p[shown].argmax(1) != y[shown]).sum())


def attack_grid(clean: torch.Tensor, adversarial: torch.Tensor, labels: torch.Tensor, clean_p: torch.Tensor,
                adversarial_p: torch.Tensor, classes: Sequence[str], title: str, eps: float) -> plt.Figure:
    """Three rows per image column: the clean image (true and predicted label), the adversarial image
    (prediction and the true class's probability), and the perturbation on a [-eps, eps] colour scale."""
    count = len(clean)
    figure, axes = plt.subplots(3, count, figsize=(1.9 * count + 0.6, 6.4), squeeze=False)
    for column in range(count):
        label = int(labels[column])
        before, after = int(clean_p[column].argmax()), int(adversarial_p[column].argmax())
        show_image(axes[0, column], clean[column])
        axes[0, column].set_title(f"true {classes[label]}\npred {classes[before]} "
                                  f"({clean_p[column, before]:.2f})", fontsize=8)
        show_image(axes[1, column], adversarial[column])
        axes[1, column].set_title(f"pred {classes[after]} ({adversarial_p[column, after]:.2f})\n"
                                  f"p(true) {adversarial_p[column, label]:.2f}", fontsize=8,
                                  color="red" if after != label else "black")
        difference = (adversarial[column] - clean[column]).mean(0).cpu()
        image = axes[2, column].imshow(difference.numpy(), cmap="seismic", vmin=-eps, vmax=eps)
        axes[2, column].set_xticks([])
        axes[2, column].set_yticks([])
    for row, name in enumerate(("clean", "adversarial", "perturbation")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    figure.colorbar(image, ax=axes[2, :].tolist(), fraction=0.03, label="pixel change")
    figure.suptitle(title, fontsize=10)
    return figure


def show_image(axis: Any, image: torch.Tensor) -> None:
    """[C, H, W] in [0, 1]: grey for one channel, colour for three."""
    pixels = image.detach().cpu()
    if len(pixels) == 1:
        axis.imshow(pixels[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        axis.imshow(pixels.permute(1, 2, 0).numpy())
    axis.set_xticks([])
    axis.set_yticks([])
