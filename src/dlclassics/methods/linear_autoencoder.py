"""The linear autoencoder fitted by alternating least squares: exact solves instead of gradient steps.

A linear autoencoder x̂ = D (E x + b) + c with encoder E [h, d] and decoder D [d, h] is a least-squares
problem in each of E and D when the other is held fixed, so each half has a closed form:

- given E, the best decoder regresses the centred data on the codes: D = C Eᵀ (E C Eᵀ)⁻¹;
- given D, the best encoder projects onto D's columns: E = (DᵀD)⁻¹ Dᵀ, D's pseudo-inverse;

where C is the data's covariance, and the biases only carry the mean (codes centred, c the data mean).
Both solves and the loss need nothing but the mean and C, so after one batched pass over the data each
sweep costs O(d² h) whatever the number of images. One sweep maps span(D) to span(C D): subspace iteration
on C, which converges to PCA's subspace, Eckart-Young's minimiser. The error converges much faster than the
subspace, since directions whose eigenvalues are nearly equal are nearly equally good: on all 60,000
Fashion-MNIST images a few sweeps get within 1% of PCA, where full-batch Adam stopped 13.6% above it after
3,000 steps on 8,000 of them. Everything runs in float64: on Fashion-MNIST C's eigenvalues run from 20 down
to 1e-7, the size of a float32 sum's rounding error over 60,000 images.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Moments:
    """The data's mean [d] and covariance [d, d] (divided by n), in float64: all the solves need."""

    mean: torch.Tensor
    covariance: torch.Tensor


@dataclasses.dataclass(frozen=True)
class LinearAutoencoderFit:
    """Weights of x̂ = decoder (encoder x + encoder_bias) + decoder_bias, and the training loss (mean squared
    error per entry) after each sweep."""

    encoder: torch.Tensor  # [h, d]
    encoder_bias: torch.Tensor  # [h]
    decoder: torch.Tensor  # [d, h]
    decoder_bias: torch.Tensor  # [d]
    losses: list[float]


def moments(x: torch.Tensor, batch_size: int = 8192) -> Moments:
    """Mean and covariance of x [n, d], accumulated batch by batch in float64 (a float64 copy of all of x
    would double the memory, and float32 sums lose the small eigenvalues that decide the last digits)."""
    mean = x.sum(0, dtype=torch.float64) / len(x)
    covariance = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for chunk in x.split(batch_size):
        centred = chunk.double() - mean
        covariance.addmm_(centred.T, centred)
    return Moments(mean, covariance / len(x))


def best_decoder(encoder: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """D = C Eᵀ (E C Eᵀ)⁻¹ [d, h]: the least-squares regression of the centred data on the codes E x."""
    cross = encoder @ covariance  # [h, d] = E C, so E C Eᵀ is symmetric positive definite for a full-rank E
    return torch.linalg.solve(cross @ encoder.T, cross).T


def best_encoder(decoder: torch.Tensor) -> torch.Tensor:
    """E = (DᵀD)⁻¹ Dᵀ [h, d]: the codes whose decoding is the orthogonal projection onto D's columns."""
    return torch.linalg.solve(decoder.T @ decoder, decoder.T)


def reconstruction_loss(encoder: torch.Tensor, decoder: torch.Tensor, covariance: torch.Tensor) -> float:
    """Mean squared error per entry of x̂ = D E (x - mean) + mean, from the covariance alone:
    tr((I - DE) C (I - DE)ᵀ) / d = (tr C - 2 tr(E C D) + tr(E C Eᵀ DᵀD)) / d."""
    cross = encoder @ covariance
    total = covariance.trace() - 2 * (cross @ decoder).trace() + ((cross @ encoder.T) * (decoder.T @ decoder)).sum()
    return total.item() / len(covariance)


def alternating_least_squares(stats: Moments, encoder: torch.Tensor, sweeps: int,
                              target: float | None = None) -> LinearAutoencoderFit:
    """From an initial encoder [h, d], alternate the exact decoder and encoder solves `sweeps` times, or until
    the training loss is at most `target`. The solves run in float64; the weights come back in `encoder`'s
    dtype."""
    if sweeps < 1:
        raise ValueError(f"sweeps must be at least 1; got {sweeps}")
    covariance = stats.covariance
    enc = encoder.to(covariance)
    losses: list[float] = []
    for _ in range(sweeps):
        dec = best_decoder(enc, covariance)
        enc = best_encoder(dec)
        losses.append(reconstruction_loss(enc, dec, covariance))
        if target is not None and losses[-1] <= target:
            break
    dtype = encoder.dtype
    return LinearAutoencoderFit(encoder=enc.to(dtype), encoder_bias=(-enc @ stats.mean).to(dtype),
                                decoder=dec.to(dtype), decoder_bias=stats.mean.to(dtype), losses=losses)
