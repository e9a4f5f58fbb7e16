"""Steps per second of MALA and ULA on S0's EnergyRegressor: ours vs S0's sampler loops, same process.

The "source" loops below re-implement S0's `sampling_algos.py` style faithfully: every step
recomputes the current state's energy and gradient with `.backward()` (so the network's weight
gradients are computed and accumulated too), MALA evaluates the proposal a second time, the step's
scalar is rebuilt as a tensor, and each state is appended to a Python list as a CPU copy. S0 ran one
chain; with a batch of chains the accept/reject uses torch.where per chain instead of S0's
`if (u < alpha).item()`. S0's log-proposal scale (-tau/4) is kept: it changes acceptances, not cost.

Ours is `dlclassics.methods.mcmc.langevin`: one energy-and-gradient evaluation per step for both
algorithms, input gradients only, samples written into a preallocated tensor.

Variants are timed in interleaved rounds and the median round is kept, so load from other
processes on a shared machine hits all of them alike (the numbers are still noisy there).

    python benchmarks/bench_mcmc.py [--chains 16 1] [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from dlclassics.methods.mcmc import freeze, langevin
from dlclassics.models.energy import EnergyRegressor

TAU = 0.01


def source_mala(model: torch.nn.Module, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    samples = []
    for _ in range(steps):
        x.requires_grad = True
        e_x = model(x)
        e_x.sum().backward()
        g = x.grad
        x.grad = None
        xi = torch.randn_like(x)
        sqrt_lr = torch.sqrt(torch.Tensor([TAU]))
        x_dash = x - 0.5 * TAU * g + sqrt_lr * xi
        e_x_dash = model(x_dash)
        e_x_dash.sum().backward()
        g_dash = x.grad
        x.grad = None
        log_q_back = -0.25 * TAU * torch.norm(x - x_dash + 0.5 * TAU * g_dash, dim=1) ** 2
        log_q_forward = -0.25 * TAU * torch.norm(x_dash - x + 0.5 * TAU * g, dim=1) ** 2
        alpha = torch.clamp(torch.exp(e_x.squeeze(1) - e_x_dash.squeeze(1) + log_q_back - log_q_forward), max=1.0)
        accept = torch.rand(len(x)) < alpha
        x = torch.where(accept[:, None], x_dash, x).detach().requires_grad_()
        samples.append(x.detach().cpu())
    return samples


def source_ula(model: torch.nn.Module, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    samples = []
    for _ in range(steps):
        x.requires_grad = True
        e_x = model(x)
        e_x.sum().backward()
        g = x.grad
        x.grad = None
        xi = torch.randn_like(x)
        sqrt_lr = torch.sqrt(torch.Tensor([TAU]))
        x = (x - 0.5 * TAU * g + sqrt_lr * xi).detach().requires_grad_()
        samples.append(x.detach().cpu())
    return samples


def ours(model: torch.nn.Module, metropolis: bool) -> Callable[[torch.Tensor, int], object]:
    def sample(x: torch.Tensor, steps: int) -> object:
        return langevin(model, x, tau=TAU, burn_in=0, n_samples=steps, metropolis=metropolis,
                        generator=torch.Generator().manual_seed(0))
    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    source_model = EnergyRegressor()  # weights do not change the cost
    our_model = freeze(copy.deepcopy(source_model))
    variants = {"source MALA": lambda x, n: source_mala(source_model, x, n),
                "source ULA": lambda x, n: source_ula(source_model, x, n),
                "ours MALA": ours(our_model, True), "ours ULA": ours(our_model, False)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} rounds of {args.steps} steps")
    for chains in args.chains:
        x0 = torch.randn(chains, 784)
        for run in variants.values():  # warm-up
            run(x0.clone(), 2)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                started = time.perf_counter()
                run(x0.clone(), args.steps)
                times[name].append((time.perf_counter() - started) / args.steps)
        per_step = {name: statistics.median(values) for name, values in times.items()}
        print(f"\n{chains} chain(s): steps per second (median round)")
        for name, seconds in per_step.items():
            print(f"  {name:<12} {1 / seconds:8.2f} steps/s  ({seconds * 1000:7.1f} ms/step)")
        print(f"  speed-up MALA, ours / source: {per_step['source MALA'] / per_step['ours MALA']:.2f}x (target >= 2)")
        print(f"  speed-up ULA,  ours / source: {per_step['source ULA'] / per_step['ours ULA']:.2f}x")
        print(f"  cost MALA / ULA, ours:   {per_step['ours MALA'] / per_step['ours ULA']:.2f} (target <= 1.15)")
        print(f"  cost MALA / ULA, source: {per_step['source MALA'] / per_step['source ULA']:.2f} (S0 reported 2.27)")


if __name__ == "__main__":
    main()
