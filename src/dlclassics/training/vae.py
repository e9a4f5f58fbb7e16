"""The amortised VAE as `vae`, `latent-optimization` and `vae-loglik` all train, save and load it.

`vae` trains the model and saves its weights at the source's snapshot epochs; `latent-optimization`
sets its own model beside those snapshots and `vae-loglik` estimates log p(x) under the last one,
each either training the VAE in its own run folder or loading a finished `vae` run (`--from-run`).
So the three share the VAE's options (`VaeConfig`), its data splits (`vae_data`), its training with
snapshots (`train_vae`), the snapshot files' names and their loading, and what the figures show
of a model (decoded means of fixed prior draws, rows of reconstructions).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlclassics.config import (
    BaseConfig,
    batch_size_option,
    dataset_option,
    epochs_option,
    limit_option,
    lr_option,
    option,
    resolve,
    width_option,
)
from dlclassics.data.images import image_datasets
from dlclassics.data.splits import holdout
from dlclassics.data.transforms import flat_float, subsample
from dlclassics.engine import make_optimizer
from dlclassics.errors import RunError, UsageError
from dlclassics.files import atomic_torch_save, load_tensor_file
from dlclassics.models.vae import LIKELIHOODS, VAE, elbo
from dlclassics.runs import FinishedRun, Run

SNAPSHOTS = (1, 5, 10, 20, 30)  # the source's epochs whose reconstructions and samples it shows


@dataclasses.dataclass(frozen=True)
class VaeConfig(BaseConfig):
    """The amortised VAE's options: `vae`'s config, which `latent-optimization` extends."""

    dataset: str = dataset_option("mnist", image_datasets)
    latent: int = width_option(20, "latent dimensions")
    hidden: int = width_option(256, "hidden units of the encoder's and the decoder's one hidden layer")
    likelihood: str = option("bernoulli", "pixel likelihood (continuous-bernoulli adds its normaliser)",
                             choices=LIKELIHOODS)
    lr: float = lr_option(1e-3)
    batch_size: int = batch_size_option(128)
    epochs: int = epochs_option(30)
    val_fraction: float = option(0.1, "fraction of the training split held out for validation", low=0.0,
                                 high=0.5, low_open=True)
    samples: int = option(64, "prior samples drawn at each snapshot epoch", low=1)
    limit: int = limit_option()


# The smoke-test size of a VAE run, and of the VAE that `latent-optimization` and `vae-loglik` train.
VAE_QUICK = {"limit": 400, "epochs": 2, "hidden": 32, "samples": 16}


# ---------------------------------------------------------------- snapshots: which epochs, which files

def snapshot_epochs(epochs: int) -> list[int]:
    """The source's epochs 1, 5, 10, 20, 30 that the run reaches, plus its last epoch."""
    return sorted({e for e in SNAPSHOTS if e <= epochs} | {epochs})


def snapshot_file(epoch: int, prefix: str = "") -> str:
    """The file of the weights saved at `epoch`, what `--from-run` consumers load (a prefix keeps them
    apart from another model's in the same run folder)."""
    return f"{prefix}model_epoch_{epoch}.pt"


def snapshot_saver(folder: Path, epochs: int,
                   file: Callable[[int], str]) -> Callable[[nn.Module, int, dict[str, float]], None]:
    """An `on_epoch_end` for `fit` that saves the model's weights to `folder / file(epoch)` at each of
    the snapshot epochs of an `epochs`-long training."""
    keep = snapshot_epochs(epochs)

    def save(model: nn.Module, epoch: int, row: dict[str, float]) -> None:
        if epoch in keep:
            atomic_torch_save(folder / file(epoch), model.state_dict())

    return save


# ---------------------------------------------------------------- data and training

def vae_data(cfg: VaeConfig, run: Run) -> dict[str, Any]:
    """Pixels in [0, 1] as [N, 784] on the run's device: train / validation (held out of the training
    split) / test, with their labels and the class names."""
    data = run.load_images(cfg.dataset)
    train_x, train_y, val_x, val_y = holdout(data.train_x, data.train_y, cfg.val_fraction, cfg.seed)
    train_x, train_y = subsample(flat_float(train_x), train_y, cfg.limit)
    names = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
    tensors = run.to_device(train_x, train_y, flat_float(val_x), val_y, flat_float(data.test_x), data.test_y)
    return {"classes": data.classes, **dict(zip(names, tensors))}


def train_vae(cfg: VaeConfig, run: Run, data: dict[str, Any], prefix: str = "") -> list[dict[str, float]]:
    """Fit a VAE (negative ELBO, Adam), saving its weights at the snapshot epochs into the run folder
    as `<prefix>model_epoch_<E>.pt` and at the end as `<prefix>model.pt` (a prefix keeps them, and the
    checkpoint, apart from another model's in the same run). Returns the per-epoch history."""
    model = VAE(cfg.latent, cfg.hidden).to(run.device)
    optimizer = make_optimizer("adam", model, cfg.lr)
    continuous = cfg.likelihood == "continuous-bernoulli"

    def step(model: VAE, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = elbo(model.decoder, batch[0], *model.encoder(batch[0]), continuous)
        return {"loss": -terms["elbo"].mean(), "kl": terms["kl"].mean()}

    @torch.no_grad()
    def evaluate(model: VAE, epoch: int) -> dict[str, float]:
        model.eval()
        x = data["val_x"]
        terms = elbo(model.decoder, x, *model.encoder(x), continuous)
        return {"val_loss": -terms["elbo"].mean().item(), "val_kl": terms["kl"].mean().item()}

    result = run.fit(model, (data["train_x"],), optimizer=optimizer, epochs=cfg.epochs, batch_size=cfg.batch_size,
                     step=step, evaluate=evaluate,
                     on_epoch_end=snapshot_saver(run.dir, cfg.epochs, functools.partial(snapshot_file, prefix=prefix)),
                     checkpoint=run.checkpoint_path.with_name(f"{prefix}checkpoint.pt"),
                     desc=f"{run.experiment} {prefix}".strip())
    run.save_model(model, f"{prefix}model.pt")
    return result.history


# ---------------------------------------------------------------- loading snapshots

def load_snapshot(cfg: VaeConfig, device: torch.device, path: Path) -> VAE:
    """A VAE of `cfg`'s shape with the weights in `path` (weights only: nothing is unpickled), in eval mode."""
    state = load_tensor_file(path, f"a VAE state dict (latent {cfg.latent}, hidden {cfg.hidden})")
    model = VAE(cfg.latent, cfg.hidden).to(device)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise RunError(f"{path} does not fit a VAE with latent {cfg.latent} and hidden {cfg.hidden} "
                       f"({' '.join(str(exc).split())[:200]})") from None
    return model.eval()


def load_snapshots(cfg: VaeConfig, folder: Path, device: torch.device, prefix: str = "") -> dict[int, VAE]:
    """The models a training of `cfg` saved at its snapshot epochs into `folder`."""
    return {epoch: load_snapshot(cfg, device, Path(folder) / snapshot_file(epoch, prefix))
            for epoch in snapshot_epochs(cfg.epochs)}


def load_run(finished: FinishedRun, device: torch.device) -> tuple[VaeConfig, dict[int, VAE]]:
    """The config and the snapshot models of a finished `vae` run (`--from-run`); a UsageError names
    any snapshot that is missing or unreadable."""
    try:
        config = resolve(VaeConfig, finished.options)
    except UsageError as exc:
        raise UsageError(f"--from-run {finished.folder}: its config.json does not describe a vae run ({exc})") from None
    read = functools.partial(load_snapshot, config, device)
    return config, {epoch: finished.load(snapshot_file(epoch), read) for epoch in snapshot_epochs(config.epochs)}


# ---------------------------------------------------------------- what the figures show of a model

@torch.no_grad()
def decode_mean(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Decoder probabilities sigmoid(eta) as images [N, 28, 28]: what a reconstruction or a sample shows."""
    return torch.sigmoid(decoder(z)).reshape(-1, 28, 28).cpu()


def prior_draws(cfg: VaeConfig, count: int) -> torch.Tensor:
    """Fixed z ~ N(0, I) [count, latent], the same at every epoch so samples can be compared."""
    return torch.randn(count, cfg.latent, generator=torch.Generator().manual_seed(cfg.seed))


def reconstruction_rows(originals: torch.Tensor, rows: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """Images stacked row by row (originals first) for `plots.image_grid`, and the row labels."""
    return torch.cat([originals.reshape(-1, 28, 28).cpu(), *rows.values()]), ["original", *rows]
