"""energy-regressor: S0 Task 0, the `EnergyRegressor` and the MSE (and R^2) of its energies.

Source: `../shared/seeds/000_6ebb978367e9de68.txt`, Task 0. A 14.4M-parameter MLP 784 -> 4096 ->
2048 -> ... -> 2 -> 1 with ReLU between the layers, loaded from a state-dict file and evaluated
by the MSE of its energies on a data file `{"x": [N, 784], "energy": [N, 1]}`. Reference: loss
288.1554 on the source's 100,000-example file with its trained weights.

The source's files are not available. With `--set data_file=... --set weights_file=...` this
experiment evaluates them exactly as the source did (files are read with weights_only=True; a
pickled object is refused; the network's widths are read from the weights' shapes). Without them it
builds an energy it can compute exactly (a Gaussian mixture in the top principal coordinates of
Fashion-MNIST plus an isotropic residual, see `methods/energy_task.py`), draws an (x, energy) set
from it, saves the test set in the source's file format, trains the regressor on all but a
validation tenth of the training set and reports train, validation and test MSE and R^2. Either file
alone works too: a data file alone is split 80/20 and trained on; weights alone are evaluated on the
generated set.

The tuned recipe (the source gave none for training) trains a shallow 784 -> 512 -> 128 -> 1 ReLU
net, not S0's architecture, on 30,000 generated examples: 10 epochs of Adam at 1e-3 with a cosine
decay, minibatches of 128, on standardised energies. The exact energy is a Gaussian mixture's
-log p(x) in 784-d: mostly a quadratic in the 752 residual directions, i.e. a smooth function of a
few norms and projections of the pixels that two wide ReLU layers approximate directly. S0's
network could represent it too (its first layers are wider still), but it does not train to it in
minutes: 13 plain ReLU layers taper to widths 8 -> 4 -> 2, with no normalisation or skip connection;
under PyTorch's default initialisation the signal shrinks layer by layer, a dead or saturated unit in
the width-2 layer removes half of what reaches the output, and every step costs about 30 times the
shallow net's. On validation data it stayed far below the goal with the seed's training, with Adam
at larger batches and rates for 10 epochs, and with He initialisation (which fitted the exact samples
and real images but predicted no high energies for the noise-to-sample paths); `--recipe seed`
trains it as before. mcmc-sampling rebuilds either network from the run folder
(`training.energy.load_energy_weights` reads the widths from the weights' shapes).

    dlclassics run energy-regressor
    dlclassics run energy-regressor --recipe seed
    dlclassics run energy-regressor --set data_file=A4_test_data.pt --set weights_file=trained_model_weights.pth
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from dlclassics import plots
from dlclassics.config import (
    BaseConfig,
    batch_size_option,
    dataset_option,
    epochs_option,
    lr_option,
    option,
    width_option,
)
from dlclassics.data.energy_files import load_energy_data, save_energy_data
from dlclassics.data.images import image_datasets
from dlclassics.errors import RunError
from dlclassics.files import atomic_torch_save
from dlclassics.methods.energy_task import PARTS, build_energy_task
from dlclassics.models.energy import SOURCE_HIDDEN, EnergyRegressor
from dlclassics.runs import Reference, Run, markdown_table
from dlclassics.runs.products import ENERGY_TEST_DATA, ENERGY_WEIGHTS, EXACT_ENERGY, PIXEL_STATS
from dlclassics.training.energy import (
    REGRESSOR_BATCH_SIZE,
    REGRESSOR_HIDDEN,
    REGRESSOR_LR,
    load_energy_weights,
    mse,
    predict,
    train_energy_regressor,
)

TITLE = "Energy regressor: S0's MLP or a smaller tuned one, the MSE and R^2 of its energies (S0 Task 0)"

# What a run writes for `mcmc-sampling --from-run` (a run on generated data writes all of them) is named
# in `runs.products`: ENERGY_WEIGHTS, EXACT_ENERGY, ENERGY_TEST_DATA and the metrics PIXEL_STATS.
MIN_SPLIT_EXAMPLES = 10  # a data file alone is split 80/20: both parts need a few examples


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    data_file: str = option("", "S0's data file {'x': [N, 784], 'energy': [N, 1]} ('' = generate one)")
    weights_file: str = option("", "S0's weights file, an EnergyRegressor state dict ('' = train one)")
    dataset: str = dataset_option("fashion-mnist", image_datasets, "images the exact energy is fitted to")
    pca_components: int = option(32, "principal coordinates carrying the Gaussian mixture", low=1, high=783)
    mixture_components: int = option(10, "Gaussian mixture components", low=1)
    fit_images: int = option(0, "training images the exact energy is fitted to (0 = all)", low=0)
    n_train: int = option(30000, "generated training examples (validation included)", low=3)
    n_test: int = option(2000, "generated test examples", low=3)
    val_fraction: float = option(0.1, "share of the training examples held out for validation", low=0.0, high=0.5)
    hidden: tuple[int, ...] = width_option(REGRESSOR_HIDDEN, "hidden widths of the regressor, comma separated")
    epochs: int = epochs_option(10)
    batch_size: int = batch_size_option(REGRESSOR_BATCH_SIZE)
    lr: float = lr_option(REGRESSOR_LR, "Adam learning rate (cosine decay to 0)")


# The source only evaluated given weights and did not say how they were trained: "seed" is S0's
# network with this project's first recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": {"hidden": SOURCE_HIDDEN, "n_train": 10000, "val_fraction": 0.0, "epochs": 3, "batch_size": 32,
             "lr": 3e-4},
    # hidden 512,128: two wide ReLU layers fit the smooth exact energy; S0's 13-layer net tapering to width 2
    #   stays far below on validation data and costs about 30x per step (see the module docstring).
    # n_train 30000: generated examples are free, and tripling them cut the validation MSE by about 40%.
    # val_fraction 0.1: a validation split of the training examples, what the recipe was chosen on.
    # epochs 10, batch_size 128, lr 1e-3: the shallow net's validation R^2 levels off by then (20 epochs overfit).
    "tuned": {},
}
QUICK = {"n_train": 240, "n_test": 60, "epochs": 1, "batch_size": 32, "pca_components": 8, "mixture_components": 2,
         "fit_images": 1000}

REFERENCES = [
    Reference("file_loss", 288.1554, "MSE on S0's 100,000-example test file with S0's weights", rule="near",
              tolerance=0.001),
    Reference("test_loss", "(none)", "MSE on our generated test set (exact energies)", rule="info"),
    # Not the source's: the raised goal (issue 21), on our generated test set.
    Reference("test_r2", "not reported", "R^2 of the energies on our generated test set (goal: >= 0.90)",
              rule="at_least", target=0.90, own_data=True),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    generator = run.generator
    if cfg.data_file and cfg.weights_file:  # S0 Task 0 exactly: evaluate the given weights on the given file
        x, energy = load_energy_data(cfg.data_file)
        model = load_energy_weights(cfg.weights_file).to(run.device)
        run.add_section("Model", model_summary(model))
        run.note(f"evaluated {cfg.weights_file} on {cfg.data_file} ({len(x):,} examples), as S0's get_results.py")
        return {"file_loss": mse(model, x, energy), "examples": len(x)}

    parts: torch.Tensor | None = None
    pixels: dict[str, float] = {}
    if cfg.data_file:
        x, energy = load_energy_data(cfg.data_file)
        if len(x) < MIN_SPLIT_EXAMPLES:
            raise RunError(f"{cfg.data_file} holds {len(x)} example(s); training on 80% and testing on the rest "
                           f"needs at least {MIN_SPLIT_EXAMPLES} (or add --set weights_file=... to evaluate weights)")
        (x_train, e_train), (x_test, e_test) = split(x, energy, 0.2, generator)
        run.mark_not_comparable(f"trained on 80% of {cfg.data_file} and tested on the rest (S0 gave no training recipe)")
    else:
        data = run.load_images(cfg.dataset)
        task = build_energy_task(data.train_x, data.test_x, pca_components=cfg.pca_components,
                                 mixture_components=cfg.mixture_components, n_train=cfg.n_train, n_test=cfg.n_test,
                                 seed=cfg.seed, generator=generator, fit_images=cfg.fit_images)
        x_train, e_train, x_test, e_test, parts = task.x_train, task.e_train, task.x_test, task.e_test, task.part_test
        save_energy_data(run.dir / ENERGY_TEST_DATA, x_test, e_test)  # S0's data-file format
        pixels = dict(zip(PIXEL_STATS, (task.pixel_mean, task.pixel_std)))
        atomic_torch_save(run.dir / EXACT_ENERGY, task.exact.state_dict())
        run.mark_not_comparable(
            f"S0's data and weights are not available: energies are exact -log p(x) of a {cfg.mixture_components}-"
            f"component Gaussian mixture on the top {cfg.pca_components} principal coordinates of {cfg.dataset} "
            f"(pixels standardised with mean {task.pixel_mean:.4f}, std {task.pixel_std:.4f}) times an isotropic "
            "Gaussian residual; a third each of exact samples, real images and noise-to-sample paths. "
            f"The test set is saved in S0's format as {ENERGY_TEST_DATA}")

    held_out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {"test": (x_test, e_test)}
    if cfg.weights_file:
        model = load_energy_weights(cfg.weights_file).to(run.device)
        history: list[dict[str, float]] = []
    else:
        (x_train, e_train), validation = split(x_train, e_train, cfg.val_fraction, generator)
        if len(validation[0]) > 1:  # R^2 needs a spread of energies
            held_out = {"val": validation, **held_out}
        model, history = train_energy_regressor(
            x_train, e_train, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, hidden=cfg.hidden,
            generator=generator, device=run.device,
            evaluate=lambda m: {k: v for name, (x, e) in held_out.items() for k, v in scores(m, x, e, name).items()},
            checkpoint=run.checkpoint_path, resume=run.resume, quiet=run.quiet, desc=run.experiment)
        run.save_history(history)
        run.save_model(model, ENERGY_WEIGHTS)  # S0's weights-file format: a plain EnergyRegressor state dict
        run.checkpoint_path.unlink(missing_ok=True)  # Adam's state, only needed to resume
        if cfg.hidden != SOURCE_HIDDEN:
            run.note(f"the network is 784 -> {' -> '.join(map(str, cfg.hidden))} -> 1, not S0's: S0's 13 plain "
                     "ReLU layers tapering to widths 8 -> 4 -> 2 could represent this smooth energy but do not train "
                     "to it in minutes (the signal shrinks through the layers, and a dead unit in the width-2 layer "
                     "cuts off part of the energies' range; `--recipe seed` trains S0's net). The weights file keeps "
                     "S0's format and key names; mcmc-sampling rebuilds the network from its shapes.")
    run.add_section("Model", model_summary(model))

    predicted = predict(model, x_test)
    metrics: dict[str, Any] = {**scores(model, x_train, e_train, "train")}
    for name, (x, e) in held_out.items():
        metrics.update(scores(model, x, e, name))
    metrics.update({"test_energy_variance": e_test.var(unbiased=False).item(),  # the MSE of predicting the mean
                    "train_examples": len(x_train), "test_examples": len(x_test), **pixels})
    if "val" in held_out:
        metrics["val_examples"] = len(held_out["val"][0])
    if parts is not None:
        rows = [{"part": name, "examples": int((parts == i).sum()),
                 "test_mse": torch.nn.functional.mse_loss(predicted[parts == i], e_test[parts == i]).item(),
                 "energy_mean": e_test[parts == i].mean().item(), "energy_std": e_test[parts == i].std().item()}
                for i, name in enumerate(PARTS) if (parts == i).any()]
        run.add_section("Test MSE per kind of example", markdown_table(rows))
    save_figures(run, history, e_test, predicted, parts)
    return metrics


def split(x: torch.Tensor, energy: torch.Tensor, fraction: float, generator: torch.Generator
          ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((x, energy) kept, (x, energy) held out): a random `fraction` of the examples held out."""
    order = torch.randperm(len(x), generator=generator)
    kept, held = order[:int((1 - fraction) * len(x))], order[int((1 - fraction) * len(x)):]
    return (x[kept], energy[kept]), (x[held], energy[held])


def scores(model: torch.nn.Module, x: torch.Tensor, energy: torch.Tensor, prefix: str) -> dict[str, float]:
    """`<prefix>_loss`, the MSE of the energies, and `<prefix>_r2` = 1 - MSE / variance of the energies
    (the share of their variance explained; 0 for always predicting their mean; none if all are equal)."""
    loss, variance = mse(model, x, energy), energy.var(unbiased=False).item()
    return {f"{prefix}_loss": loss, **({f"{prefix}_r2": 1.0 - loss / variance} if variance > 0 else {})}


def model_summary(model: EnergyRegressor) -> str:
    """The module printout (as S0 showed it) and the parameter count."""
    count = sum(p.numel() for p in model.parameters())
    return f"{count:,} parameters.\n\n```\n{model}\n```"


def save_figures(run: Run, history: list[dict[str, float]], truth: torch.Tensor, predicted: torch.Tensor,
                 parts: torch.Tensor | None) -> None:
    import matplotlib.pyplot as plt

    if history:
        curves = {"train_loss_energy_units": "train MSE", "val_loss": "validation MSE", "test_loss": "test MSE"}
        run.save_figure(plots.curves(history, "epoch", {k: v for k, v in curves.items() if k in history[0]},
                                     "Energy regression loss per epoch", "MSE (energy units squared)", logy=True),
                        "loss", "Train, validation and test MSE per epoch", rows=history)
    figure, axes = plt.subplots(figsize=(5.5, 5.0))
    groups = [(parts == i, name) for i, name in enumerate(PARTS)] if parts is not None else [(None, "test")]
    for mask, name in groups:
        t, p = (truth, predicted) if mask is None else (truth[mask], predicted[mask])
        axes.scatter(t.flatten().numpy(), p.flatten().numpy(), s=4, alpha=0.5, label=name)
    low, high = truth.min().item(), truth.max().item()
    axes.plot([low, high], [low, high], "k--", linewidth=1, label="predicted = true")
    axes.set(title="Predicted vs true energy (test set)", xlabel="true energy", ylabel="predicted energy")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    run.save_figure(figure, "predicted_vs_true", "Predicted against true energies on the test set",
                    data={"true": truth, "predicted": predicted,
                          **({"part": parts} if parts is not None else {})})
