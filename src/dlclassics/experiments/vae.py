"""vae: the amortised variational auto-encoder of S4 Q1-Q2.

Source: `../shared/seeds/004_a59f37929212bae1.txt`, Sec. 3, Q1 (training, reconstructions) and Q2
(sampling). An MLP encoder and decoder (`models.vae`), Bernoulli likelihood on pixels in [0, 1],
30 epochs. The source reports no numbers, only that train and validation loss decrease together
without diverging and that reconstructions are blurry at epochs 1-5 and sharp by 20-30; prior
samples go from noise to legible digits. The model is saved at epochs 1, 5, 10, 20 and 30
(`model_epoch_<E>.pt`), which `latent-optimization` and `vae-loglik` load with `--from-run`; the
training, the snapshots and their loading are shared with them (`training.vae`).

    dlclassics run vae
    dlclassics run vae --dataset fashion-mnist
"""

from __future__ import annotations

from typing import Any

from dlclassics import plots
from dlclassics.data.splits import first_of_each_class
from dlclassics.runs import Reference, Run
from dlclassics.training.vae import (
    VAE_QUICK,
    VaeConfig,
    decode_mean,
    load_snapshots,
    prior_draws,
    reconstruction_rows,
    train_vae,
    vae_data,
)

TITLE = "Amortised VAE on MNIST: training, reconstructions, prior samples (S4 Q1-Q2)"

Config = VaeConfig  # the VAE's options, which the runs building on this one share

RECIPES = {"seed": {}, "tuned": {}}  # the source gives only "30 epochs": both recipes are the defaults
QUICK = VAE_QUICK

REFERENCES = [
    Reference("val_minus_train_loss", "small, no divergence", "validation loss minus training loss, final epoch",
              rule="info"),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = vae_data(cfg, run)
    history = train_vae(cfg, run, data)
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

