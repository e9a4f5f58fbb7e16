"""he-init: numerical checks of the He-initialisation derivation, and signal variance across depth.

Source: `../shared/seeds/001_9651b007d7353d63.txt`, Problem 1. The source derives, for a layer
z = sum_j w_j x_j with weights independent of inputs, i.i.d. and zero-mean,
    (1) Var[z] = n Var[w] E[x^2]                      (not Var[x]: inputs after ReLU have a mean),
    (2) Var[z_{l-1}] = 2 E[x_l^2], x_l = ReLU(z_{l-1}) (symmetric zero-mean weights, zero bias),
which together give He's choice Var[w] = 2/n. There are no numbers to match (theory), so this
experiment measures each identity by Monte Carlo with its standard error, shows where an assumption
breaks it (a bias), and follows the pre-activation variance through 50 layers of width 512 under He,
Xavier/Glorot and a fixed small std, for ReLU and tanh.

    dlclassics run he-init
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from dlclassics.config import MAX_WIDTH, BaseConfig, option
from dlclassics.runs import Reference, Run, markdown_table

TITLE = "He initialisation: the derivation checked numerically (S1 Problem 1)"
SCHEMES = ("he", "xavier", "fixed")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    width: int = option(512, "units per layer (and input dimension)", low=2, high=MAX_WIDTH)
    depth: int = option(50, "layers followed through the deep network", low=2)
    fixed_std: float = option(0.01, "weight std of the 'fixed small std' scheme", low=0.0, low_open=True)
    mc_samples: int = option(20_000, "Monte-Carlo draws of (w, x) per identity check", low=100)
    ensemble_inputs: int = option(2048, "inputs, each through its own freshly initialised network", low=16)
    network_inputs: int = option(128, "inputs through ONE real network per scheme (finite-width wobble); 0 = skip",
                                 low=0)


RECIPES: dict[str, dict[str, Any]] = {"seed": {}, "tuned": {}}  # theory: nothing to tune
QUICK = {"width": 64, "depth": 12, "mc_samples": 2000, "ensemble_inputs": 256, "network_inputs": 32}

REFERENCES = [
    Reference("identity1_abs_z", "Var[z] = n Var[w] E[x^2]", "identity (1): |measured - predicted| in standard errors",
              rule="at_most", target=4.0),
    Reference("identity2_abs_z", "Var[z] = 2 E[ReLU(z)^2]", "identity (2): |measured - predicted| in standard errors",
              rule="at_most", target=4.0),
    Reference("he_relu_max_drift", "He keeps Var[z] constant", "He/ReLU: largest relative drift of Var[z_l] from "
              "layer 1", rule="at_most", target=0.2),
]


def weight_std(scheme: str, fan_in: int, fan_out: int, fixed_std: float) -> float:
    """He: sqrt(2/n_in); Xavier/Glorot (normal): sqrt(2/(n_in + n_out)); fixed: a constant."""
    return {"he": math.sqrt(2.0 / fan_in), "xavier": math.sqrt(2.0 / (fan_in + fan_out)), "fixed": fixed_std}[scheme]


def _moment_row(case: str, measured: torch.Tensor, predicted: torch.Tensor, paired: torch.Tensor) -> dict[str, Any]:
    """One check: measured and predicted means of per-draw terms, error, its standard error, z-score.

    `paired` is the per-draw difference whose mean is the error, so its std / sqrt(M) is the SE."""
    error = (measured - predicted).item()
    se = (paired.std() / math.sqrt(len(paired))).item()
    return {"case": case, "measured": measured.item(), "predicted": predicted.item(), "error": error,
            "standard_error": se, "z": error / se}


def check_identity1(n: int, samples: int, generator: torch.Generator) -> list[dict[str, Any]]:
    """Var[sum_j w_j x_j] against n Var[w] E[x^2], for Gaussian and uniform He weights.

    Inputs x = ReLU(g), g ~ N(0, 1): E[x^2] = 1/2 exactly, Var[x] = 1/2 - 1/(2 pi); the row
    'n Var[w] Var[x]' shows that using the variance of the inputs (as for zero-mean inputs) is wrong."""
    var_w = 2.0 / n
    x = torch.relu(torch.randn(samples, n, generator=generator))  # [M, n]
    weights = {"Gaussian w ~ N(0, 2/n)": torch.randn(samples, n, generator=generator) * math.sqrt(var_w),
               "uniform w ~ U(-a, a), same variance": (torch.rand(samples, n, generator=generator) * 2 - 1)
               * math.sqrt(3 * var_w)}
    predicted = torch.tensor(n * var_w * 0.5)  # n Var[w] E[x^2] with E[ReLU(g)^2] = 1/2
    naive = torch.tensor(n * var_w * (0.5 - 1 / (2 * math.pi)))  # n Var[w] Var[x]
    rows = []
    for case, w in weights.items():
        z = (w * x).sum(1)  # [M]
        centred = (z - z.mean()) ** 2  # per-draw terms whose mean is the sample variance
        rows.append(_moment_row(case, centred.mean(), predicted, centred - predicted))
    rows.append(_moment_row("counter-check, uniform w: n Var[w] Var[x] (wrong)", centred.mean(), naive,
                            centred - naive))
    return rows


def check_identity2(n: int, samples: int, generator: torch.Generator) -> list[dict[str, Any]]:
    """Var[z] against 2 E[ReLU(z)^2] for z = w.x + b; holds for symmetric zero-mean w and b = 0 only.

    Paired estimator: per draw, (z - mean)^2 - 2 ReLU(z)^2, whose mean is the error."""
    x = torch.rand(samples, n, generator=generator)  # any inputs independent of w (here U(0, 1))
    std = math.sqrt(2.0 / n)
    cases = {"Gaussian w, b = 0": (torch.randn(samples, n, generator=generator) * std, 0.0),
             "uniform w, b = 0": ((torch.rand(samples, n, generator=generator) * 2 - 1) * std * math.sqrt(3), 0.0),
             "counter-check: Gaussian w, b = 0.5": (torch.randn(samples, n, generator=generator) * std, 0.5)}
    rows = []
    for case, (w, bias) in cases.items():
        z = (w * x).sum(1) + bias
        centred, doubled = (z - z.mean()) ** 2, 2 * torch.relu(z) ** 2
        rows.append(_moment_row(case, centred.mean(), doubled.mean(), centred - doubled))
    return rows


def ensemble_variance(activation: str, scheme: str, width: int, depth: int, inputs: int, fixed_std: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Var[z_l], l = 1..depth, over weights AND inputs: every input gets its own fresh network.

    For Gaussian W [n, n] independent of x, each z_i = W_i . x ~ N(0, std^2 ||x||^2) independently
    across i, so z = std ||x|| eps with eps ~ N(0, I_n) is an exact draw of one fresh layer; a whole
    layer costs O(B n) instead of O(B n^2). This is the expectation the derivation is about.
    Returns [depth]."""
    std = weight_std(scheme, width, width, fixed_std)
    # float64: a vanishing signal reaches 1e-40 within 50 layers, where float32 turns denormal (slow)
    x = torch.randn(inputs, width, generator=generator, dtype=torch.float64)  # standard-normal inputs [B, n]
    variances = []
    for _ in range(depth):
        eps = torch.randn(inputs, width, generator=generator, dtype=torch.float64)
        z = std * x.norm(dim=1, keepdim=True) * eps  # [B, n]
        variances.append(z.pow(2).mean())  # E[z] = 0 exactly (symmetric weights)
        x = ACTIVATIONS[activation](z)
    return torch.stack(variances)


def network_variance(activation: str, scheme: str, width: int, depth: int, inputs: int, fixed_std: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Var[z_l] through ONE real network (one weight matrix per layer, shared by all inputs).

    At finite width its variance wanders from the ensemble value (fluctuations grow like exp(5 L / n),
    Hanin & Rolnick 2018), which the figure shows beside the ensemble curve. Returns [depth]."""
    std = weight_std(scheme, width, width, fixed_std)
    x = torch.randn(inputs, width, generator=generator, dtype=torch.float64)
    variances = []
    for _ in range(depth):
        z = x @ (torch.randn(width, width, generator=generator, dtype=torch.float64) * std).T  # [B, n]
        variances.append(z.var())
        x = ACTIVATIONS[activation](z)
    return torch.stack(variances)


def blowup_depth(ratio: torch.Tensor, factor: float = 100.0) -> int | None:
    """First layer (1-based) where Var[z_l] / Var[z_1] has left [1/factor, factor], or None."""
    outside = torch.nonzero((ratio < 1 / factor) | (ratio > factor)).flatten()
    return int(outside[0]) + 1 if len(outside) else None


def run(cfg: Config, run: Run) -> dict[str, Any]:
    generator = run.generator
    identity1 = check_identity1(cfg.width, cfg.mc_samples, generator)
    identity2 = check_identity2(cfg.width, cfg.mc_samples, generator)
    run.add_section("Identity (1): Var[z] = n Var[w] E[x^2]",
                    f"n = {cfg.width}, x = ReLU(g), g ~ N(0, 1), {cfg.mc_samples:,} draws of (w, x).\n\n"
                    + markdown_table(identity1))
    run.add_section("Identity (2): Var[z_{l-1}] = 2 E[x_l^2] with x_l = ReLU(z_{l-1})",
                    "The bias row breaks the assumption b = 0 and must fail.\n\n" + markdown_table(identity2))

    curves: dict[str, torch.Tensor] = {}
    for activation in ACTIVATIONS:
        for scheme in SCHEMES:
            key = f"{scheme}_{activation}"
            curves[key] = ensemble_variance(activation, scheme, cfg.width, cfg.depth, cfg.ensemble_inputs,
                                            cfg.fixed_std, generator)
            if cfg.network_inputs:
                curves[f"{key}_one_network"] = network_variance(activation, scheme, cfg.width, cfg.depth,
                                                                cfg.network_inputs, cfg.fixed_std, generator)
    ratios = {key: values / values[0] for key, values in curves.items()}
    depth_rows = [{"scheme": key.replace("_", " / ", 1).replace("_", " "), "Var[z_1]": curves[key][0].item(),
                   f"Var[z_{cfg.depth}] / Var[z_1]": ratios[key][-1].item(),
                   "100x vanished/exploded at layer": blowup_depth(ratios[key]) or f"not within {cfg.depth}"}
                  for key in curves]
    run.add_section("Signal across depth", "Ensemble = every input through its own freshly initialised network "
                    "(the expectation the derivation is about); 'one network' = a single real network.\n\n"
                    + markdown_table(depth_rows))
    save_depth_figure(run, cfg, ratios)

    he_relu = ratios["he_relu"]
    return {"identity1_abs_z": max(abs(r["z"]) for r in identity1[:2]),
            "identity2_abs_z": max(abs(r["z"]) for r in identity2[:2]),
            "identity2_bias_z": identity2[2]["z"],
            "he_relu_max_drift": (he_relu - 1).abs().max().item(),
            **{f"blowup_layer_{key}": blowup_depth(ratios[key]) for key in curves
               if not key.endswith("one_network")}}


def save_depth_figure(run: Run, cfg: Config, ratios: dict[str, torch.Tensor]) -> None:
    """Var[z_l] / Var[z_1] per layer on a log axis: one panel per activation, the 100x band dashed."""
    figure, panels = plt.subplots(1, len(ACTIVATIONS), figsize=(11, 4.2), sharey=True)
    layers = np.arange(1, cfg.depth + 1)
    colours = dict(zip(SCHEMES, ("tab:blue", "tab:orange", "tab:green")))
    labels = {"he": "He, std sqrt(2/n)", "xavier": "Xavier, std sqrt(2/(n_in+n_out))",
              "fixed": f"fixed std {cfg.fixed_std:g}"}
    for axes, activation in zip(panels, ACTIVATIONS):
        for scheme in SCHEMES:
            key = f"{scheme}_{activation}"
            axes.plot(layers, ratios[key].clamp_min(1e-30).numpy(), color=colours[scheme], label=labels[scheme])
            if f"{key}_one_network" in ratios:
                axes.plot(layers, ratios[f"{key}_one_network"].clamp_min(1e-30).numpy(), ":", color=colours[scheme])
        axes.plot([], [], ":", color="black", label="dotted: one real network")
        for bound in (1e-2, 1e2):
            axes.axhline(bound, color="grey", linestyle="--", linewidth=0.8)
        axes.set(yscale="log", ylim=(1e-12, 1e4), xlabel="layer l", title=f"{activation}, width {cfg.width}")
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("Var[z_l] / Var[z_1]")
    panels[0].legend(fontsize=7, loc="lower left")
    figure.suptitle("Pre-activation variance across depth (dashed: the 100x band)")
    figure.tight_layout()
    run.save_figure(figure, "variance_depth", "Pre-activation variance across depth, relative to layer 1",
                    data={"layer": layers, **{k: v.numpy() for k, v in ratios.items()}})
