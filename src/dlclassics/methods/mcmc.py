"""Langevin samplers for an energy E(x) (target p(x) ~ exp(-E(x))), over many chains at once.

S0's parameterisation (its `sampling_algos.py`), with step tau:

    x' = x - (tau / 2) grad E(x) + sqrt(tau) xi,        xi ~ N(0, I)

Algo-2 (ULA) always moves to x'. Algo-1 (MALA) accepts x' with probability
min(1, exp(E(x) - E(x') + log q(x | x') - log q(x' | x))), where q(b | a) = N(b; a - (tau/2) grad E(a),
tau I) is the proposal density. (S0 scaled the log-densities by -tau/4 instead of -1/(2 tau),
which makes its correction almost a plain energy test; we use the exact densities.)

Each step costs ONE energy-and-gradient evaluation, for both samplers: MALA evaluates the proposal
only and keeps each chain's current energy and gradient; on acceptance the proposal's become the
current ones. S0 re-evaluated the current state too, which made its MALA 2.3x slower than its ULA.
This loop is the idea being taught, so it is written out here rather than in `engine.fit`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch

Energy = Callable[[torch.Tensor], torch.Tensor]  # states [C, D] -> energies [C] or [C, 1]


def energy_and_grad(energy: Energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E(x) [C] and grad_x E(x) [C, D] with one forward and one backward pass.

    The chains are independent, so d(sum_c E(x_c)) / d x_c = grad E(x_c). Parameters of an energy
    network should have requires_grad=False (see `freeze`): then the backward pass computes input
    gradients only, not the weight gradients S0's loop also paid for.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        e = energy(x).reshape(-1)
        (grad,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), grad


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no parameter gradients: the sampler differentiates with respect to x only."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@dataclasses.dataclass
class Chains:
    """What a sampling run kept and measured."""

    samples: torch.Tensor  # [S, C, D] kept states, on the sampling device
    energies: torch.Tensor  # [S, C] their energies
    acceptance_rate: float  # fraction of accepted proposals after burn-in (1.0 for ULA)
    burn_in_time_s: float
    total_time_s: float
    evaluations: int  # energy-and-gradient calls (each on all C chains at once)


def _sync(device: torch.device) -> None:
    """Finish queued GPU work before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def langevin(energy: Energy, x0: torch.Tensor, *, tau: float, burn_in: int, n_samples: int, metropolis: bool,
             generator: torch.Generator) -> Chains:
    """Run C = len(x0) chains for burn_in + n_samples steps; keep the last n_samples states of each.

    `metropolis=True` is MALA (Algo-1), False is ULA (Algo-2). `generator` lives on x0's device.
    """
    device = x0.device
    chains, dim = x0.shape
    samples = torch.empty(n_samples, chains, dim, dtype=x0.dtype, device=device)
    kept_energies = torch.empty(n_samples, chains, dtype=x0.dtype, device=device)
    accepted = torch.zeros((), dtype=torch.int64, device=device)
    noise_scale = math.sqrt(tau)
    _sync(device)
    started = time.perf_counter()
    burn_in_time = 0.0
    x = x0.clone()
    e, grad = energy_and_grad(energy, x)
    evaluations = 1
    for step in range(burn_in + n_samples):
        xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device)
        proposal = x - (0.5 * tau) * grad + noise_scale * xi  # [C, D]
        e_new, grad_new = energy_and_grad(energy, proposal)
        evaluations += 1
        if metropolis:
            # -log q(x'|x) = |x' - x + tau/2 grad E(x)|^2 / (2 tau) = |xi|^2 / 2 (+ const)
            # -log q(x|x') = |x - x' + tau/2 grad E(x')|^2 / (2 tau)
            log_q_forward = -0.5 * xi.square().sum(1)
            log_q_backward = -(x - proposal + (0.5 * tau) * grad_new).square().sum(1) / (2 * tau)
            log_alpha = e - e_new + log_q_backward - log_q_forward  # [C]; NaN (a diverged proposal) rejects
            u = torch.rand(chains, generator=generator, dtype=x.dtype, device=device)
            accept = u.log() < log_alpha
            x = torch.where(accept[:, None], proposal, x)
            e = torch.where(accept, e_new, e)
            grad = torch.where(accept[:, None], grad_new, grad)
            if step >= burn_in:
                accepted += accept.sum()
        else:
            x, e, grad = proposal, e_new, grad_new
        if step == burn_in - 1:
            _sync(device)
            burn_in_time = time.perf_counter() - started
        if step >= burn_in:
            samples[step - burn_in] = x
            kept_energies[step - burn_in] = e
    _sync(device)
    total = time.perf_counter() - started
    rate = accepted.item() / max(1, n_samples * chains) if metropolis else 1.0
    return Chains(samples, kept_energies, rate, burn_in_time, total, evaluations)


def effective_sample_size(trace: np.ndarray) -> float:
    """Multi-chain ESS of a scalar trace [S, C] (Geyer's initial monotone sequence, as in Stan).

    Autocorrelations are computed per chain by FFT, averaged over chains and combined with the
    between-chain variance, so chains stuck in different places count as few samples.
    """
    trace = np.asarray(trace, dtype=np.float64)
    steps, chains = trace.shape
    if steps < 4 or not np.all(np.isfinite(trace)):
        return float("nan")
    centred = trace - trace.mean(0)
    size = 1 << (2 * steps - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=size, axis=0)
    autocov = np.fft.irfft(spectrum * spectrum.conj(), n=size, axis=0)[:steps] / steps  # [S, C]
    within = autocov[0].mean() * steps / (steps - 1)
    between = trace.mean(0).var(ddof=1) if chains > 1 else 0.0
    var_plus = within * (steps - 1) / steps + between
    if var_plus <= 0:
        return float("nan")
    rho = 1.0 - (within - autocov.mean(1)) / var_plus  # [S], rho[0] = 1
    rho[0] = 1.0
    pairs = rho[: steps - steps % 2].reshape(-1, 2).sum(1)  # Gamma_m = rho_2m + rho_2m+1
    negative = np.flatnonzero(pairs <= 0)
    pairs = np.minimum.accumulate(pairs[: negative[0] if len(negative) else len(pairs)])
    tau_int = max(-1.0 + 2.0 * pairs.sum(), 1.0 / math.log10(max(steps * chains, 10)))
    return float(steps * chains / tau_int)
