"""latent-optimization: a VAE without an encoder, S4 Q3.

Source: `../shared/seeds/004_a59f37929212bae1.txt`, Q3. Each training image i gets its own
variational parameters q_i(z) = N(mu_i, sigma_i^2), a learnable table optimised jointly with a
decoder of the same shape as `vae`'s, on the same negative ELBO. The source saw every reconstruction
collapse to one blurry blob and prior samples without diversity, and blamed the initialisation.
The report measures that diagnosis: the spread of mu_i within and between classes, the KL of q_i
to the prior, and the diversity of prior samples (mean pairwise distance) for both models.
Figures sit beside the amortised VAE's: trained here, or loaded with `--from-run VAE_RUN`.

The likely cause is the optimiser, not the model: each row of the table sees a gradient only once
per epoch (30 in all), the decoder one every step, so with one learning rate the mu_i barely leave
their random start and the decoder learns the mean image. `table_lr` sets the table's own Adam
learning rate; the seed recipe uses the decoder's (1e-3) for both, as the source's single optimiser.

    dlclassics run latent-optimization --recipe seed
    dlclassics run latent-optimization --from-run runs/vae/<folder>
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from dlclassics import plots
from dlclassics.config import option
from dlclassics.data.splits import first_of_each_class
from dlclassics.errors import UsageError
from dlclassics.models.vae import VAE, decoder, elbo, kl_to_standard_normal
from dlclassics.runs import Reference, Run, Upstream, markdown_table
from dlclassics.training.vae import (
    VAE_QUICK,
    VaeConfig,
    decode_mean,
    load_run,
    load_snapshots,
    prior_draws,
    reconstruction_rows,
    snapshot_epochs,
    snapshot_saver,
    train_vae,
    vae_data,
)

TITLE = "Latent optimisation (per-example q, no encoder) beside the amortised VAE (S4 Q3)"
MUST_MATCH = ("dataset", "latent", "hidden", "likelihood", "epochs", "val_fraction", "limit", "seed")
FROM_RUN = Upstream(("vae",))  # the amortised VAE to compare with; its snapshots are checked when loaded


@dataclasses.dataclass(frozen=True)
class Config(VaeConfig):
    table_lr: float = option(1e-2, "Adam learning rate of the per-example table (mu_i, log sigma_i)", low=0.0,
                             low_open=True)
    init_std: float = option(1.0, "standard deviation of the initial mu_i (log sigma_i start at 0)", low=0.0)


RECIPES = {"seed": {"table_lr": 1e-3}, "tuned": {}}
QUICK = VAE_QUICK

REFERENCES = [
    Reference("lo_between_within_ratio", "collapse: no class information in mu_i",
              "LO: between-class / within-class spread of mu_i", rule="info"),
    Reference("lo_sample_diversity", "no diversity", "LO: mean pairwise distance of prior samples", rule="info"),
]


class LatentTable(nn.Module):
    """q_i(z) = N(mu_i, sigma_i^2) for every training image i, plus the decoder p(x|z)."""

    def __init__(self, count: int, latent: int, hidden: int, init_std: float, generator: torch.Generator) -> None:
        super().__init__()
        self.mu = nn.Parameter(init_std * torch.randn(count, latent, generator=generator))
        self.log_sigma = nn.Parameter(torch.zeros(count, latent))
        self.decoder = decoder(latent, hidden)


def class_spread(mu: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean squared distance of mu_i to its class mean (within) and of class means to the grand mean
    (between, weighted by class size). between/within ~ 0 means the codes carry no class information."""
    one_hot = nn.functional.one_hot(labels, int(labels.max()) + 1).float()  # [N, C]
    means = (one_hot.T @ mu) / one_hot.sum(0).clamp(min=1).unsqueeze(1)  # [C, latent]
    within = (mu - means[labels]).square().sum(1).mean().item()
    between = (means[labels] - mu.mean(0)).square().sum(1).mean().item()
    return {"within": within, "between": between, "ratio": between / max(within, 1e-12)}


def diversity(images: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between images [N, 28, 28] (0 = all samples identical)."""
    return torch.pdist(images.reshape(len(images), -1).float()).mean().item()


def lo_snapshot_file(epoch: int) -> str:
    """The latent-optimisation model's weights saved at `epoch` (the VAE's are `snapshot_file`'s)."""
    return f"lo_epoch_{epoch}.pt"


def amortised_vae(cfg: Config, run: Run, data: dict[str, Any]) -> tuple[dict[int, VAE], list[dict[str, float]]]:
    """The amortised VAE's snapshot models and history: from the `--from-run` VAE (which must have seen the
    same data with the same architecture and training), or trained here as a `vae` run would be."""
    if run.from_run is None:  # the same data, architecture and training as a `vae` run, in this run's folder
        history = train_vae(cfg, run, data, prefix="vae_")
        return load_snapshots(cfg, run.dir, run.device, prefix="vae_"), history
    loaded_cfg, models = load_run(run.from_run, run.device)
    differ = [name for name in MUST_MATCH if getattr(loaded_cfg, name) != getattr(cfg, name)]
    if differ:
        raise UsageError(f"--from-run {run.from_run.folder} differs in {', '.join(differ)}; pass the same values "
                         f"(e.g. --set {differ[0]}={getattr(loaded_cfg, differ[0])})")
    run.note(f"amortised VAE loaded from {run.from_run.folder}")
    return models, run.from_run.history()


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = vae_data(cfg, run)
    amortised, vae_history = amortised_vae(cfg, run, data)

    # ---- latent optimisation: the table and the decoder, one Adam with two learning rates
    model = LatentTable(len(data["train_x"]), cfg.latent, cfg.hidden, cfg.init_std, run.generator).to(run.device)
    initial_mu = model.mu.detach().clone()  # to measure how far the mu_i travel from their random start
    optimizer = torch.optim.Adam([{"params": model.decoder.parameters(), "lr": cfg.lr},
                                  {"params": [model.mu, model.log_sigma], "lr": cfg.table_lr}])
    continuous = cfg.likelihood == "continuous-bernoulli"
    keep = snapshot_epochs(cfg.epochs)

    def step(model: LatentTable, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x, index = batch
        terms = elbo(model.decoder, x, model.mu[index], model.log_sigma[index], continuous)
        return {"loss": -terms["elbo"].mean(), "kl": terms["kl"].mean()}

    index = torch.arange(len(data["train_x"]), device=run.device)
    result = run.fit(model, (data["train_x"], index), optimizer=optimizer, epochs=cfg.epochs,
                     batch_size=cfg.batch_size, step=step,
                     on_epoch_end=snapshot_saver(run.dir, cfg.epochs, lo_snapshot_file))
    history = [{**row, **{f"vae_{k}": v for k, v in vae_row.items() if k != "epoch"}}
               for row, vae_row in zip(result.history, vae_history)]
    run.save_history(history)

    # ---- figures beside the amortised model's
    fixed = first_of_each_class(data["train_y"])
    x = data["train_x"][fixed]
    z = prior_draws(cfg, cfg.samples).to(run.device)
    recons, samples = {}, {"VAE": {}, "LO": {}}
    for epoch in keep:
        model.load_state_dict(torch.load(run.dir / lo_snapshot_file(epoch), map_location=run.device,
                                         weights_only=True))
        recons[f"VAE epoch {epoch}"] = decode_mean(amortised[epoch].decoder, amortised[epoch].encoder(x)[0])
        recons[f"LO epoch {epoch}"] = decode_mean(model.decoder, model.mu[fixed])
        samples["VAE"][f"epoch {epoch}"] = decode_mean(amortised[epoch].decoder, z)
        samples["LO"][f"epoch {epoch}"] = decode_mean(model.decoder, z)
    run.save_figure(plots.curves(history, "epoch", {"vae_train_loss": "VAE train loss", "vae_val_loss": "VAE val loss",
                                                    "train_loss": "LO train loss"},
                                 "Negative ELBO per epoch (nats per image)", "-ELBO"), "loss",
                    "Training loss of latent optimisation beside the amortised VAE's", rows=history)
    images, labels = reconstruction_rows(x, recons)
    run.save_figure(plots.image_grid(images, "Training reconstructions: amortised VAE vs latent optimisation",
                                     row_labels=labels), "recon_train",
                    "One training image per class: VAE (posterior mean) and LO (mu_i) reconstructions by epoch",
                    data={"images": images, "indices": fixed})
    run.save_figure(plots.mosaic_panels(samples, f"{cfg.samples} prior samples: VAE (top) vs LO (bottom)"),
                    "samples", "Decoded prior samples, the same z for both models and every epoch",
                    data={f"{m}_{k.replace(' ', '_')}": v for m, per in samples.items() for k, v in per.items()})

    # ---- diagnosis in numbers (final epoch)
    final = amortised[keep[-1]]
    with torch.no_grad():
        vae_mu, vae_log_sigma = final.encoder(data["train_x"])
    rows = []
    for name, mu, log_sigma, picks in (("VAE (encoder)", vae_mu, vae_log_sigma, samples["VAE"]),
                                       ("LO (table)", model.mu.detach(), model.log_sigma.detach(), samples["LO"])):
        spread = class_spread(mu, data["train_y"])
        rows.append({"model": name, "within-class spread": spread["within"], "between-class spread": spread["between"],
                     "between/within": spread["ratio"], "mean sigma": log_sigma.exp().mean().item(),
                     "KL to prior (nats)": kl_to_standard_normal(mu, log_sigma).mean().item(),
                     "prior-sample diversity": diversity(picks[f"epoch {keep[-1]}"])})
    data_diversity = diversity(data["train_x"][: cfg.samples].reshape(-1, 28, 28))
    travelled = (model.mu.detach() - initial_mu).norm(dim=1).mean().item()
    run.add_section("Diagnosis", markdown_table(rows) + f"\n\nSpreads are mean squared distances in latent space; "
                    f"diversity is the mean pairwise L2 distance of {cfg.samples} decoded prior samples "
                    f"(of {cfg.samples} training images: {data_diversity:.2f}). The LO means moved on average "
                    f"{travelled:.3g} from their random start (whose norm is about "
                    f"{cfg.init_std * cfg.latent ** 0.5:.3g}).")
    vae_row, lo_row = rows
    return {"lo_train_loss": history[-1]["train_loss"], "vae_train_loss": history[-1]["vae_train_loss"],
            "vae_between_within_ratio": vae_row["between/within"], "lo_between_within_ratio": lo_row["between/within"],
            "vae_kl": vae_row["KL to prior (nats)"], "lo_kl": lo_row["KL to prior (nats)"],
            "vae_sample_diversity": vae_row["prior-sample diversity"],
            "lo_sample_diversity": lo_row["prior-sample diversity"], "data_diversity": data_diversity,
            "lo_mu_travelled": travelled}

