"""vae: the amortised variational auto-encoder of S4 Q1-Q2.

Source: `../shared/seeds/004_a59f37929212bae1.txt`, Sec. 3, Q1 (training, reconstructions) and Q2
(sampling). An MLP encoder and decoder (`models.vae`), Bernoulli likelihood on pixels in [0, 1],
30 epochs. The source reports no numbers, only that train and validation loss decrease together
without diverging and that reconstructions are blurry at epochs 1-5 and sharp by 20-30; prior
samples go from noise to legible digits. The model is saved at epochs 1, 5, 10, 20 and 30
(`model_epoch_<E>.pt`), which `latent-optimization` and `vae-loglik` load with `--from-run`.

    dlclassics run vae
    dlclassics run vae --dataset fashion-mnist
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch

from dlclassics import plots
from dlclassics.config import BaseConfig, option, resolve
from dlclassics.data.images import image_datasets, load_for_run
from dlclassics.data.splits import first_of_each_class, holdout
from dlclassics.data.transforms import flat_float, subsample
from dlclassics.engine import fit, make_optimizer, seed_everything
from dlclassics.errors import RunError, UsageError
from dlclassics.files import atomic_torch_save, load_tensor_file
from dlclassics.models.vae import LIKELIHOODS, VAE, elbo
from dlclassics.runs import FinishedRun, Reference, Run

TITLE = "Amortised VAE on MNIST: training, reconstructions, prior samples (S4 Q1-Q2)"
SNAPSHOTS = (1, 5, 10, 20, 30)


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = option("mnist", "image dataset", choices=image_datasets)
    latent: int = option(20, "latent dimensions", low=1)
    hidden: int = option(256, "hidden units of the encoder's and the decoder's one hidden layer", low=1)
    likelihood: str = option("bernoulli", "pixel likelihood (continuous-bernoulli adds its normaliser)",
                             choices=LIKELIHOODS)
    lr: float = option(1e-3, "Adam learning rate", low=0.0, low_open=True)
    batch_size: int = option(128, "minibatch size", low=1)
    epochs: int = option(30, "training epochs", low=1)
    val_fraction: float = option(0.1, "fraction of the training split held out for validation", low=0.0,
                                 high=0.5, low_open=True)
    samples: int = option(64, "prior samples drawn at each snapshot epoch", low=1)
    limit: int = option(0, "use only the first N training images (0 = all)", low=0)


RECIPES = {"seed": {}, "tuned": {}}  # the source gives only "30 epochs": both recipes are the defaults
QUICK = {"limit": 400, "epochs": 2, "hidden": 32, "samples": 16}

REFERENCES = [
    Reference("val_minus_train_loss", "small, no divergence", "validation loss minus training loss, final epoch",
              rule="info"),
]


def snapshot_epochs(epochs: int) -> list[int]:
    """The source's epochs 1, 5, 10, 20, 30 that the run reaches, plus its last epoch."""
    return sorted({e for e in SNAPSHOTS if e <= epochs} | {epochs})


def snapshot_file(epoch: int, prefix: str = "") -> str:
    """The file of the weights saved at `epoch`, what `--from-run` consumers load (a prefix keeps them
    apart from another model's in the same run folder)."""
    return f"{prefix}model_epoch_{epoch}.pt"


def prepared_data(cfg: Config, run: Run) -> dict[str, Any]:
    """Pixels in [0, 1] as [N, 784]: train / validation (held out of the training split) / test."""
    data = load_for_run(run, cfg.dataset)
    train_x, train_y, val_x, val_y = holdout(data.train_x, data.train_y, cfg.val_fraction, cfg.seed)
    train_x, train_y = subsample(flat_float(train_x), train_y, cfg.limit)
    tensors = {"train_x": train_x, "train_y": train_y, "val_x": flat_float(val_x), "val_y": val_y,
               "test_x": flat_float(data.test_x), "test_y": data.test_y}
    return {"classes": data.classes, **{k: v.to(run.device) for k, v in tensors.items()}}


def train(cfg: Config, run: Run, data: dict[str, Any], generator: torch.Generator,
          prefix: str = "") -> list[dict[str, float]]:
    """Fit a VAE (negative ELBO, Adam), saving its weights at the snapshot epochs into the run folder
    as `<prefix>model_epoch_<E>.pt` (a prefix keeps them apart from another model in the same run)."""
    model = VAE(cfg.latent, cfg.hidden).to(run.device)
    optimizer = make_optimizer("adam", model, cfg.lr)
    continuous = cfg.likelihood == "continuous-bernoulli"
    keep = snapshot_epochs(cfg.epochs)

    def step(model: VAE, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = elbo(model.decoder, batch[0], *model.encoder(batch[0]), continuous)
        return {"loss": -terms["elbo"].mean(), "kl": terms["kl"].mean()}

    @torch.no_grad()
    def evaluate(model: VAE, epoch: int) -> dict[str, float]:
        model.eval()
        x = data["val_x"]
        terms = elbo(model.decoder, x, *model.encoder(x), continuous)
        return {"val_loss": -terms["elbo"].mean().item(), "val_kl": terms["kl"].mean().item()}

    def save_snapshot(model: VAE, epoch: int, row: dict[str, float]) -> None:
        if epoch in keep:
            atomic_torch_save(run.dir / snapshot_file(epoch, prefix), model.state_dict())

    result = fit(model, (data["train_x"],), optimizer=optimizer, epochs=cfg.epochs, batch_size=cfg.batch_size,
                 generator=generator, step=step, evaluate=evaluate, on_epoch_end=save_snapshot,
                 checkpoint=run.checkpoint_path.with_name(f"{prefix}checkpoint.pt"), resume=run.resume,
                 quiet=run.quiet, desc=f"{run.experiment} {prefix}".strip())
    run.save_model(model, f"{prefix}model.pt")
    return result.history


def load_snapshot(cfg: Config, device: torch.device, path: Path) -> VAE:
    """A VAE of `cfg`'s shape with the weights in `path` (weights only: nothing is unpickled), in eval mode."""
    state = load_tensor_file(path, f"a VAE state dict (latent {cfg.latent}, hidden {cfg.hidden})")
    model = VAE(cfg.latent, cfg.hidden).to(device)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise RunError(f"{path} does not fit a VAE with latent {cfg.latent} and hidden {cfg.hidden} "
                       f"({' '.join(str(exc).split())[:200]})") from None
    return model.eval()


def load_snapshots(cfg: Config, folder: Path, device: torch.device, prefix: str = "") -> dict[int, VAE]:
    """The models a run of `cfg` saved at its snapshot epochs into `folder`."""
    return {epoch: load_snapshot(cfg, device, Path(folder) / snapshot_file(epoch, prefix))
            for epoch in snapshot_epochs(cfg.epochs)}


def load_run(finished: FinishedRun, device: torch.device) -> tuple[Config, dict[int, VAE]]:
    """The config and the snapshot models of a finished `vae` run (`--from-run`); a UsageError names
    any snapshot that is missing or unreadable."""
    try:
        config = resolve(Config, finished.record.get("config", {}))
    except UsageError as exc:
        raise UsageError(f"--from-run {finished.folder}: its config.json does not describe a vae run ({exc})") from None
    read = functools.partial(load_snapshot, config, device)
    return config, {epoch: finished.load(snapshot_file(epoch), read) for epoch in snapshot_epochs(config.epochs)}


@torch.no_grad()
def decode_mean(decoder: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Decoder probabilities sigmoid(eta) as images [N, 28, 28]: what a reconstruction or a sample shows."""
    return torch.sigmoid(decoder(z)).reshape(-1, 28, 28).cpu()


def prior_draws(cfg: Any, count: int) -> torch.Tensor:
    """Fixed z ~ N(0, I) [count, latent], the same at every epoch so samples can be compared."""
    return torch.randn(count, cfg.latent, generator=torch.Generator().manual_seed(cfg.seed))


def reconstruction_rows(originals: torch.Tensor, rows: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """Images stacked row by row (originals first) for `plots.image_grid`, and the row labels."""
    return torch.cat([originals.reshape(-1, 28, 28).cpu(), *rows.values()]), ["original", *rows]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    generator = seed_everything(cfg.seed)
    data = prepared_data(cfg, run)
    history = train(cfg, run, data, generator)
    run.save_history(history)
    models = load_snapshots(cfg, run.dir, run.device)

    run.save_figure(plots.curves(history, "epoch", {"train_loss": "train loss", "val_loss": "val loss"},
                                 "Negative ELBO per epoch (nats per image)", "-ELBO"), "loss",
                    "Training and validation loss (negative ELBO)", rows=history)
    z = prior_draws(cfg, cfg.samples).to(run.device)
    for split in ("train", "val"):
        fixed = first_of_each_class(data[f"{split}_y"])
        x = data[f"{split}_x"][fixed]
        recons = {f"epoch {e}": decode_mean(m.decoder, m.encoder(x)[0]) for e, m in models.items()}
        images, labels = reconstruction_rows(x, recons)
        run.save_figure(plots.image_grid(images, f"{split} reconstructions (posterior mean) by epoch",
                                         row_labels=labels), f"recon_{split}",
                        f"Reconstructions of one {split} image per class at epochs {', '.join(map(str, models))}",
                        data={"images": images, "indices": fixed})
    samples = {f"epoch {e}": decode_mean(m.decoder, z) for e, m in models.items()}
    run.save_figure(plots.mosaic_panels({"VAE": samples}, f"{cfg.samples} prior samples by epoch"), "samples",
                    "Decoded prior samples z ~ N(0, I), the same z at every epoch",
                    data={k.replace(" ", "_"): v for k, v in samples.items()})
    last = history[-1]
    return {"train_loss": last["train_loss"], "val_loss": last["val_loss"],
            "val_minus_train_loss": last["val_loss"] - last["train_loss"], "train_kl": last["train_kl"],
            "snapshot_epochs": list(models)}

