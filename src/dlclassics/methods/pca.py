"""Principal component analysis fitted by one SVD: the library's one PCA estimator.

For centred data X - mean = U S Vᵀ, the principal directions are the rows of Vᵀ and the variance
along the j-th is s_j² / (n - 1). By Eckart-Young, projecting onto the first h directions gives the
smallest squared reconstruction error of any rank-h affine map, so PCA's error is the floor a linear
autoencoder with h hidden units can reach but not go below.
"""

from __future__ import annotations

import torch


class PCA:
    """`PCA(n_components).fit(x)` on x [n, d]; `transform` gives codes [n, k], `inverse_transform` maps
    them back to [n, d]. Learned: `mean_` [d], `components_` [k, d] (orthonormal rows, largest variance
    first), `singular_values_`, `explained_variance_`, `explained_variance_ratio_` [k], and
    `noise_variance_`: the mean variance along the d - k discarded directions (probabilistic PCA's
    maximum-likelihood noise; with fewer samples than features it counts the directions without
    variance too, where scikit-learn's averages only over the first min(n, d) - k).

    Each component's sign is fixed so that its largest-magnitude coordinate is positive: the same data
    give the same components whatever the SVD routine returns.
    """

    def __init__(self, n_components: int) -> None:
        self.n_components = n_components

    def fit(self, x: torch.Tensor) -> PCA:
        n, d = x.shape
        if not 1 <= self.n_components <= min(n, d):
            raise ValueError(f"n_components must be between 1 and min(samples, features) = {min(n, d)}; "
                             f"got {self.n_components}")
        self.mean_ = x.mean(0)
        _, singular, vh = torch.linalg.svd(x - self.mean_, full_matrices=False)
        components = vh[: self.n_components]
        largest = components.abs().argmax(1, keepdim=True)
        self.components_ = components * components.gather(1, largest).sign()
        self.singular_values_ = singular[: self.n_components]
        self.explained_variance_ = self.singular_values_.square() / max(n - 1, 1)
        self.explained_variance_ratio_ = self.singular_values_.square() / singular.square().sum()
        discarded = singular[self.n_components:].square().sum() / max(n - 1, 1)
        self.noise_variance_ = discarded.item() / (d - self.n_components) if d > self.n_components else 0.0
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [n, k]: coordinates of x - mean along the components."""
        return (x - self.mean_) @ self.components_.T

    def inverse_transform(self, codes: torch.Tensor) -> torch.Tensor:
        """Points [n, d] of the principal subspace with these codes."""
        return codes @ self.components_ + self.mean_

    def fit_transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.fit(x).transform(x)

    def reconstruction_error(self, x: torch.Tensor) -> float:
        """Mean squared error per entry of x's projection onto the principal subspace (an autoencoder's loss)."""
        return (self.inverse_transform(self.transform(x)) - x).square().mean().item()
