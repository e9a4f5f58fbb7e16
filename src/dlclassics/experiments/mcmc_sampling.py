"""mcmc-sampling: S0 Task 1, Langevin sampling from the energy network, with and without MH.

Source: `../shared/seeds/000_6ebb978367e9de68.txt`, Task 1. Algo-1 = MALA: the Langevin proposal
x' = x - (tau/2) grad E(x) + sqrt(tau) xi (S0's parameterisation) accepted by Metropolis-Hastings;
Algo-2 = ULA: the same proposal, always accepted; tau = 0.01, chains started from N(0, I) noise,
1,000 burn-in steps, then 1,000 kept samples; t-SNE of the samples in 2D and 3D. Reference (one
chain, Apple GPU): Algo-1 burn-in 26.6 s / total 48.6 s, Algo-2 10.5 s / 21.4 s, so Algo-1 cost
2.3x Algo-2. Ours runs many chains at once and costs one energy-and-gradient evaluation per step
for both algorithms (`dlclassics.methods.mcmc`), and reports MALA's acceptance rate and the effective
sample size per second.

The energy network comes from an `energy-regressor` run (`--from-run RUN_DIR`, which also brings
the exact energy it was trained on); without one, a regressor is trained here on a smaller budget.
`--set target=exact` samples the exact energy instead (a check of the sampler in 784-d).

    dlclassics run mcmc-sampling --from-run runs/energy-regressor/<run>
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import numpy as np
import torch

from dlclassics import plots
from dlclassics.config import BaseConfig, dataset_option, epochs_option, option
from dlclassics.data.images import image_datasets
from dlclassics.methods.energy_task import build_energy_task, standardise
from dlclassics.methods.mcmc import Chains, effective_sample_size, freeze, langevin
from dlclassics.methods.pca import PCA
from dlclassics.runs import METRICS, Reference, Run, Upstream, markdown_table
from dlclassics.runs.products import ENERGY_WEIGHTS, EXACT_ENERGY, PIXEL_STATS
from dlclassics.training.energy import (
    REGRESSOR_BATCH_SIZE,
    REGRESSOR_LR,
    load_energy_weights,
    load_exact_energy,
    train_energy_regressor,
)

TITLE = "MALA vs ULA sampling from the energy network, timed, with t-SNE views (S0 Task 1)"

# An energy-regressor run on generated data: its network, and the pixel scale its states live on
# (its exact energy, when there, is used too).
FROM_RUN = Upstream(("energy-regressor",), files=(ENERGY_WEIGHTS, METRICS), metrics=PIXEL_STATS)


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    tau: float = option(0.01, "Langevin step: x' = x - (tau/2) grad E + sqrt(tau) xi", low=0.0, low_open=True)
    burn_in: int = option(1000, "steps before samples are kept", low=1)
    n_samples: int = option(1000, "kept steps per chain (the effective sample size needs 4)", low=4)
    chains: int = option(16, "chains run at once (S0 ran one)", low=1)
    target: str = option("network", "what is sampled: the energy network or the exact energy",
                         choices=("network", "exact"))
    dataset: str = dataset_option("fashion-mnist", image_datasets,
                                  "images for the exact energy and the t-SNE reference points")
    train_examples: int = option(4000, "regressor training set size when no --from-run is given", low=3)
    epochs: int = epochs_option(3, "regressor training epochs when no --from-run is given")
    pca_components: int = option(32, "exact energy (no --from-run): principal coordinates of the mixture", low=1,
                                 high=783)
    mixture_components: int = option(10, "exact energy (no --from-run): Gaussian mixture components", low=1)
    fit_images: int = option(0, "exact energy (no --from-run): training images it is fitted to (0 = all)", low=0)
    tsne_points: int = option(600, "points per algorithm (and data points) in the t-SNE views", low=10)
    tsne_iterations: int = option(1000, "t-SNE optimisation iterations", low=250)


RECIPES: dict[str, dict[str, Any]] = {"seed": {"chains": 1}, "tuned": {}}
QUICK = {"burn_in": 5, "n_samples": 10, "chains": 4, "train_examples": 120, "epochs": 1, "tsne_points": 30,
         "tsne_iterations": 250,
         "pca_components": 8, "mixture_components": 2, "fit_images": 1000}

REFERENCES = [
    Reference("mala_burn_in_time_s", 26.6275, "Algo-1 (MALA) burn-in time, s", rule="at_most"),
    Reference("mala_total_time_s", 48.6032, "Algo-1 (MALA) completion time, s", rule="at_most"),
    Reference("ula_burn_in_time_s", 10.4676, "Algo-2 (ULA) burn-in time, s", rule="at_most"),
    Reference("ula_total_time_s", 21.3794, "Algo-2 (ULA) completion time, s", rule="at_most"),
    Reference("mala_to_ula_time_ratio", 48.6032 / 21.3794, "Algo-1 / Algo-2 completion time (target <= 1.15)",
              rule="at_most", target=1.15),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    generator = run.generator
    data = run.load_images(cfg.dataset)
    network, exact, pixel_mean, pixel_std = energy_source(cfg, run, data, generator)
    reference, _, _ = standardise(data.test_x, pixel_mean, pixel_std)
    energy = exact if cfg.target == "exact" else freeze(network)  # exact: float64 inside, float32 states
    run.mark_not_comparable("S0's trained weights are not available: the energy is ours (see methods/energy_task.py); "
                            f"times are for {cfg.chains} chain(s) on {run.device}, S0's for one chain on an Apple GPU")

    # ---- the two samplers, from the same N(0, I) start (as S0) and the same noise seed
    x0 = torch.randn(cfg.chains, reference.shape[1], generator=generator).to(run.device)
    results = {name: langevin(energy, x0, tau=cfg.tau, burn_in=cfg.burn_in, n_samples=cfg.n_samples,
                              metropolis=name == "mala",
                              generator=torch.Generator(run.device).manual_seed(cfg.seed + 1))
               for name in ("mala", "ula")}

    # ---- timings, acceptance, effective sample size, and (when known) the exact energy of the samples
    directions = PCA(3).fit(reference.double()).components_.T.float()  # top principal axes [D, 3]
    metrics: dict[str, Any] = {}
    rows = []
    for name, chains in results.items():
        summary = summarise(chains, cfg, directions, exact)
        rows.append({"algorithm": {"mala": "Algo-1 MALA", "ula": "Algo-2 ULA"}[name], **summary})
        metrics.update({f"{name}_{key}": value for key, value in summary.items()})
    metrics["mala_to_ula_time_ratio"] = metrics["mala_total_time_s"] / metrics["ula_total_time_s"]
    if exact is not None:
        with torch.no_grad():
            metrics["exact_samples_mean_exact_energy"] = exact(exact.sample(2000, generator)).mean().item()
    run.add_section("Samplers side by side", markdown_table(rows))
    run.note("ESS is Stan's multi-chain estimate over all chains' kept steps; ESS/s divides it by the time "
             "of the kept steps (total minus burn-in). pc1..pc3 are projections on the data's top principal axes")

    save_figures(run, cfg, results, reference, pixel_mean, pixel_std, generator)
    return metrics


def energy_source(cfg: Config, run: Run, data: Any, generator: torch.Generator) -> tuple[Any, Any, float, float]:
    """(energy network, exact energy or None, pixel mean, pixel std) from --from-run or trained here."""
    source = run.from_run
    if source is not None:
        wants_exact = cfg.target == "exact" or source.has(EXACT_ENERGY)
        exact = source.load(EXACT_ENERGY, load_exact_energy).to(run.device) if wants_exact else None
        network = source.load(ENERGY_WEIGHTS, load_energy_weights).to(run.device)
        pixel_mean, pixel_std = (source.metrics()[key] for key in PIXEL_STATS)
        run.note(f"energy network from {source.folder}")
        return network, exact, pixel_mean, pixel_std
    task = build_energy_task(data.train_x, data.test_x, pca_components=cfg.pca_components,
                             mixture_components=cfg.mixture_components, n_train=cfg.train_examples,
                             n_test=max(3, cfg.train_examples // 10), seed=cfg.seed, generator=generator,
                             fit_images=cfg.fit_images)
    model, _ = train_energy_regressor(task.x_train, task.e_train, epochs=cfg.epochs,
                                      batch_size=REGRESSOR_BATCH_SIZE, lr=REGRESSOR_LR, generator=generator,
                                      device=run.device, quiet=run.quiet)
    run.save_model(model)
    run.note(f"no --from-run: trained an EnergyRegressor here on {cfg.train_examples:,} generated examples for "
             f"{cfg.epochs} epochs (energy-regressor's exact energy); a longer energy-regressor run gives a "
             "better network")
    return model, task.exact.to(run.device), task.pixel_mean, task.pixel_std


def summarise(chains: Chains, cfg: Config, directions: torch.Tensor, exact: Any) -> dict[str, float]:
    """Times, acceptance, ESS (energy and the top principal coordinates) and ESS per second."""
    kept_time = chains.total_time_s - chains.burn_in_time_s
    projections = (chains.samples.float().cpu() @ directions).numpy()  # [S, C, 3]
    ess = {"energy": effective_sample_size(chains.energies.float().cpu().numpy())}
    ess.update({f"pc{i + 1}": effective_sample_size(projections[:, :, i]) for i in range(projections.shape[2])})
    summary = {"burn_in_time_s": chains.burn_in_time_s, "total_time_s": chains.total_time_s,
               "steps_per_s": (cfg.burn_in + cfg.n_samples) / chains.total_time_s,
               "acceptance_rate": chains.acceptance_rate, "mean_energy": chains.energies.float().mean().item(),
               **{f"ess_{key}": value for key, value in ess.items()},
               "ess_energy_per_s": ess["energy"] / kept_time, "min_ess_per_s": min(ess.values()) / kept_time}
    if exact is not None:
        with torch.no_grad():
            flat = chains.samples.reshape(-1, chains.samples.shape[-1])
            summary["mean_exact_energy"] = exact(flat.double()).mean().item()
    return summary


def tsne_2d(points: np.ndarray, seed: int, perplexity: float, iterations: int) -> tuple[np.ndarray, str]:
    """openTSNE when installed (faster, FFT-accelerated), else scikit-learn; says which was used."""
    if importlib.util.find_spec("openTSNE") is not None:
        from openTSNE import TSNE

        # openTSNE counts the 250 early-exaggeration iterations separately
        tsne = TSNE(2, perplexity=perplexity, n_iter=iterations - 250, random_state=seed, n_jobs=1)
        return np.asarray(tsne.fit(points)), "openTSNE"
    from sklearn.manifold import TSNE as SkTSNE

    return SkTSNE(2, perplexity=perplexity, max_iter=iterations, random_state=seed).fit_transform(points), "scikit-learn"


def save_figures(run: Run, cfg: Config, results: dict[str, Chains], reference: torch.Tensor, pixel_mean: float,
                 pixel_std: float, generator: torch.Generator) -> None:
    """t-SNE of MALA and ULA samples with data points (2D and 3D), the kept energies, final states."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    # ---- t-SNE after a 50-component PCA of the pooled points (the usual de-noising step)
    groups = {"Algo-1 MALA": results["mala"].samples, "Algo-2 ULA": results["ula"].samples}
    picked = [g.reshape(-1, g.shape[-1]).cpu()[torch.randperm(g.shape[0] * g.shape[1], generator=generator)
                                                 [:cfg.tsne_points]] for g in groups.values()]
    picked.append(reference[torch.randperm(len(reference), generator=generator)[:cfg.tsne_points]])
    labels = np.concatenate([np.full(len(p), i) for i, p in enumerate(picked)])
    names = [*groups, "data (test images)"]
    points = torch.cat(picked).double()
    components = min(50, *points.shape)
    reduced = PCA(components).fit_transform(points).float().numpy()
    perplexity = min(30.0, (len(reduced) - 1) / 3.0)
    embedded_2d, used = tsne_2d(reduced, cfg.seed, perplexity, cfg.tsne_iterations)
    embedded_3d = TSNE(3, perplexity=perplexity, max_iter=cfg.tsne_iterations, random_state=cfg.seed
                       ).fit_transform(reduced)
    run.note(f"t-SNE: 2D by {used}, 3D by scikit-learn, both after a {components}-component PCA of "
             f"{len(reduced)} points ({cfg.tsne_points} per group)")
    for dims, embedded, tool in ((2, embedded_2d, used), (3, embedded_3d, "scikit-learn")):
        figure = plt.figure(figsize=(7, 6))
        axes = figure.add_subplot(projection="3d" if dims == 3 else None)
        for index, name in enumerate(names):
            mask = labels == index
            axes.scatter(*embedded[mask].T, s=5, alpha=0.6, label=name)
        axes.set(title=f"t-SNE ({dims}D, {tool}) of the samples and data", xlabel="t-SNE 1", ylabel="t-SNE 2")
        if dims == 3:
            axes.set_zlabel("t-SNE 3")
        axes.legend(markerscale=3)
        run.save_figure(figure, f"tsne_{dims}d", f"t-SNE in {dims}D ({tool}) of MALA and ULA samples with test images",
                        data={"embedding": embedded, "group": labels})

    history = [{"step": cfg.burn_in + s + 1, **{f"{name}_mean_energy": results[name].energies[s].float().mean().item()
                                                for name in results}} for s in range(cfg.n_samples)]
    run.save_figure(plots.curves(history, "step", {"mala_mean_energy": "Algo-1 MALA", "ula_mean_energy": "Algo-2 ULA"},
                                 "Mean energy over the chains after burn-in", "energy"),
                    "energy_trace", "Mean energy of the kept states per step", rows=history)
    finals = torch.cat([results[name].samples[-1, :8].cpu() for name in results])
    images = (finals * pixel_std + pixel_mean).clamp(0, 1).reshape(-1, 28, 28)
    run.save_figure(plots.image_grid(images, "Final states: first row MALA, second row ULA", columns=8),
                    "final_states", "Final states of the first chains as images", data={"states": finals})
