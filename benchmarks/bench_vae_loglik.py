"""Benchmark: importance-sampled log p(x) under a VAE, K = 5000 on 2,000 test images (target < 2 min).

That is the test split `vae-loglik` estimates on, carved from MNIST's t10k (`--carve-test 0.2`): 10 million
decoder rows, as many as K = 1000 on 10,000 images. Ours (`vae_loglik.estimate`: images and samples
batched, one log-sum-exp, the Bernoulli shortcut)
against two re-implementations of coursework style, measured in the same process on a few images and
extrapolated linearly: (a) the source's style, a Python loop over images and over the K samples with
torch.distributions; (b) a loop over images with the K samples of each image in one batch. The last
line times what `vae-loglik` adds per table for its Monte Carlo errors (`replicate_stderr`: the
default replicates of the default number of images, at the same K), apart from the main estimate.
Timing does not depend on the weights, so an untrained VAE of the default shape is used unless
`--from-run VAE_RUN` is given; the inputs are uniform noise (correctness is tested in
tests/test_vae_family.py, against the direct formula and probabilistic PCA). Timings on a shared
machine are noisy; with more processes than cores, OMP_NUM_THREADS=1 avoids OpenMP spin-waits.

    python benchmarks/bench_vae_loglik.py [--images 2000] [--samples 5000] [--from-run runs/vae/<folder>]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch.distributions import Bernoulli, Normal

from dlclassics.experiments.vae_loglik import Config, estimate, replicate_stderr
from dlclassics.models.vae import VAE
from dlclassics.runs.contract import read_finished_run
from dlclassics.training.vae import VaeConfig, load_run


@torch.no_grad()
def source_style(model: VAE, x: torch.Tensor, samples: int) -> torch.Tensor:
    """One image at a time, one sample at a time (the shape of typical coursework code)."""
    results = []
    for image in x:
        mu, log_sigma = model.encoder(image.unsqueeze(0))
        sigma = log_sigma.exp()
        log_w = []
        for _ in range(samples):
            z = mu + sigma * torch.randn_like(mu)
            logits = model.decoder(z)
            log_px = -torch.nn.functional.binary_cross_entropy_with_logits(logits, image.unsqueeze(0), reduction="sum")
            log_pz = Normal(0.0, 1.0).log_prob(z).sum()
            log_qz = Normal(mu, sigma).log_prob(z).sum()
            log_w.append(log_px + log_pz - log_qz)
        results.append(torch.logsumexp(torch.stack(log_w), 0) - math.log(samples))
    return torch.stack(results)


@torch.no_grad()
def per_image_batched(model: VAE, x: torch.Tensor, samples: int) -> torch.Tensor:
    """One image at a time, its K samples in one batch."""
    results = []
    for image in x:
        mu, log_sigma = model.encoder(image.unsqueeze(0))
        q = Normal(mu, log_sigma.exp())
        z = q.sample((samples,)).squeeze(1)  # [K, L]
        log_px = Bernoulli(logits=model.decoder(z), validate_args=False).log_prob(image.expand(samples, -1)).sum(-1)
        log_w = log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z.unsqueeze(1)).squeeze(1).sum(-1)
        results.append(torch.logsumexp(log_w, 0) - math.log(samples))
    return torch.stack(results)


def timed(function, *args) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--from-run", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.from_run:
        cfg, models = load_run(read_finished_run(args.from_run, "vae"), torch.device("cpu"))
        model = models[cfg.epochs]
    else:
        cfg = VaeConfig()
        model = VAE(cfg.latent, cfg.hidden).eval()
    x = torch.rand(args.images, 784)
    settings = Config(samples=(args.samples,))
    print(f"VAE latent {cfg.latent}, hidden {cfg.hidden}; K = {args.samples}; {torch.get_num_threads()} threads")

    estimate(model, x[:20], (20,), settings, False, torch.Generator())  # warm-up: thread pool, allocator
    ours_s, reported = timed(estimate, model, x, settings.samples, settings, False, torch.Generator().manual_seed(0))
    target = ours_s * 1e7 / (args.images * args.samples)  # linear in images x samples
    print(f"ours (batched)          {ours_s:8.1f} s for {args.images:,} images; K = 5000 on 2,000 images: "
          f"{target:.1f} s ({'meets' if target < 120 else 'misses'} the 2-minute target)")
    rows = [("per image, K batched", per_image_batched, 50), ("source style (loops)", source_style, 2)]
    for name, function, count in rows:
        seconds, _ = timed(function, model, x[:count], args.samples)
        projected = seconds / count * args.images
        print(f"{name:<23} {projected:8.1f} s projected ({seconds:.1f} s on {count} images): "
              f"ours is {projected / ours_s:6.1f}x faster")
    errors_s, _ = timed(replicate_stderr, model, x, settings.samples, settings, False, reported,
                        torch.Generator().manual_seed(1))
    print(f"Monte Carlo errors      {errors_s:8.1f} s: {settings.replicates - 1} more estimates of "
          f"{settings.error_images} images ({errors_s / ours_s:.0%} of the {args.images:,}-image estimate)")


if __name__ == "__main__":
    main()
