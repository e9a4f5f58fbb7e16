"""Matrix factorisation of ratings, as estimators: `fit(ratings)` returns self, learned attributes end
in `_`, `predict(users, items)` gives ratings [N].

- `ItemMean`, `TruncatedSVD` and `ALS` are the source's three models (S2 B.1 (a), (b), (c)).
- `BiasedALS` is the biased factorisation of the recommender literature (Koren, Bell & Volinsky 2009),
  r_ui ~ mu + b_u + b_i + p_u . q_i, fitted by alternating least squares; rank 0 is the baseline.
- `BayesianMF` is Bayesian probabilistic matrix factorisation (Salakhutdinov & Mnih 2008) of the same
  biased model, by Gibbs sampling, predicting with the average over the samples; optionally with
  SVD++'s implicit feedback (who rated what) as side information in the priors (`ImplicitPrior`).

Every solver is a batch of small ridge regressions, one per user (or item). With the other side's
features F [n_other, k] fixed and targets t, user u solves

    (sum_{i rated by u} f_i f_i^T + Lambda) x_u = sum_{i rated by u} t_ui f_i.

For all users at once the left sides are one sparse-dense product, the [users, items] 0/1 CSR matrix
of who rated what times the [items, k(k+1)/2] matrix of the upper triangles of the items' outer
products f_i f_i^T, and the right sides the CSR matrix of targets times F. No [ratings, k, k] tensor is ever built: the work is
ratings x k^2 multiply-adds in the sparse kernel plus one batched Cholesky, and the memory beyond the
ratings is the two CSR index arrays (8 bytes per rating for each side) and a target per rating.

Cold start: a user (or item) without training ratings has an empty left side, so its ridge solution is
0 and its prediction is the baseline mu + b_i (mu + b_u, or mu); `BayesianMF` zeroes such vectors
explicitly (its prior would otherwise give them noise). `cold_start_count` says how many test ratings
this rule decides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator
from typing import Protocol

import torch

CHUNK = 1 << 16  # ratings per gather of [chunk, rank] factor rows (a few MB)


class Ratings(Protocol):
    """What the estimators read: ratings as parallel tensors over a shared index, user [N] and item [N]
    (int64, in 0..n_users-1 and 0..n_items-1) and value [N] (`data.ratings.Ratings` is one)."""

    users: torch.Tensor
    items: torch.Tensor
    values: torch.Tensor
    n_users: int
    n_items: int


# ---------------------------------------------------------------- shared algebra

class RatingMatrix:
    """The training ratings as a CSR matrix [rows, cols] seen from one side (users x items or items x
    users): the pattern is built once, the values (targets) change every half-step. Within a row the
    ratings keep their original order (the product does not need sorted columns); indices are int32,
    so the pattern costs 8 bytes per rating."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int) -> None:
        order = torch.argsort(rows, stable=True)
        self.counts = torch.bincount(rows, minlength=n_rows)  # ratings per row
        self.order = order.to(torch.int32)  # rating index of each CSR slot
        self.crow = torch.cat([self.counts.new_zeros(1), self.counts.cumsum(0)]).to(torch.int32)
        self.col = cols[order].to(torch.int32)
        self.shape = (n_rows, n_cols)

    def _csr(self, slot_values: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(self.crow, self.col, slot_values, size=self.shape, check_invariants=False)

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse matrix holding `values` (one per rating, in the ratings' order)."""
        return self._csr(values[self.order])

    def gram(self, features: torch.Tensor) -> torch.Tensor:
        """[rows, k, k]: sum over each row's ratings of f f^T, with f the rated column's features [cols, k].
        Only the upper triangle's k (k + 1) / 2 entries go through the sparse product (half the work)."""
        k = features.shape[1]
        upper_i, upper_j = torch.triu_indices(k, k)
        outer = features[:, upper_i] * features[:, upper_j]  # [cols, k(k+1)/2]
        pattern = self._csr(torch.ones(len(self.order), dtype=features.dtype))  # who rated what
        upper = pattern @ outer  # [rows, k(k+1)/2]
        gram = features.new_empty(self.shape[0], k, k)
        gram[:, upper_i, upper_j] = upper
        gram[:, upper_j, upper_i] = upper
        return gram

    def weighted_sum(self, targets: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """[rows, k]: sum over each row's ratings of target * f."""
        return self.csr(targets) @ features


def solve_ridge(matrix: RatingMatrix, targets: torch.Tensor, features: torch.Tensor,
                penalty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's ridge solution x [rows, k] (`penalty` [k] on the diagonal of the left sides A) and the
    right sides b [rows, k]. At x = A^-1 b a row's objective |t - F x|^2 + x^T P x equals t^T t - b^T x,
    so the objective after a half-step needs no pass over the ratings."""
    lhs = matrix.gram(features) + torch.diag(penalty)
    rhs = matrix.weighted_sum(targets, features)
    return torch.cholesky_solve(rhs[:, :, None], torch.linalg.cholesky(lhs))[:, :, 0], rhs


def _dot(left: torch.Tensor, right: torch.Tensor) -> float:
    """sum(left * right) in float64."""
    return (left.double() * right.double()).sum().item()


def pair_dots(left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[N]: left[rows[n]] . right[cols[n]], gathered a chunk at a time (never [N, k] at once)."""
    out = torch.empty(len(rows), dtype=left.dtype)
    for start in range(0, len(rows), CHUNK):
        stop = start + CHUNK
        out[start:stop] = (left[rows[start:stop]] * right[cols[start:stop]]).sum(1)
    return out


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one thread inside the block, and restore the thread count after it.

    These solvers are many small batched operations (k x k systems, k <= 50): torch's intra-op threads
    cost more than they save, and on a machine whose cores are busy a thread waiting for a descheduled
    peer costs milliseconds per operation (one BayesianMF fit on MovieLens: 80 s on 2 threads, 4.6 s on
    one, on 2 cores under load). One thread also makes the sums' order, hence the numbers, the same on
    every machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def both_sides(ratings: Ratings) -> tuple[RatingMatrix, RatingMatrix]:
    return (RatingMatrix(ratings.users, ratings.items, ratings.n_users, ratings.n_items),
            RatingMatrix(ratings.items, ratings.users, ratings.n_items, ratings.n_users))


def dense(ratings: Ratings) -> torch.Tensor:
    """[n_users, n_items] with the ratings in place and 0 where none was given (the source's matrix; only
    for data of MovieLens-100k's size)."""
    matrix = torch.zeros(ratings.n_users, ratings.n_items, dtype=ratings.values.dtype)
    matrix[ratings.users, ratings.items] = ratings.values
    return matrix


def rmse(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    return (predicted - actual).double().square().mean().sqrt().item()


def mae(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    return (predicted - actual).double().abs().mean().item()


def mse(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    return (predicted - actual).double().square().mean().item()


def cold_start_count(train: Ratings, test: Ratings) -> dict[str, int]:
    """Test ratings whose user, or item, has no training rating (predicted by the baseline rule)."""
    seen_users = torch.bincount(train.users, minlength=train.n_users) > 0
    seen_items = torch.bincount(train.items, minlength=train.n_items) > 0
    return {"cold_users": int((~seen_users[test.users]).sum()), "cold_items": int((~seen_items[test.items]).sum())}


def _clip(predictions: torch.Tensor, clip: tuple[float, float] | None) -> torch.Tensor:
    return predictions if clip is None else predictions.clamp(*clip)


# ---------------------------------------------------------------- the source's models

class ItemMean:
    """The source's (a): each item's mean training rating. Items without training ratings get
    `unseen`: 0.0 reproduces the source (its dict held 0 for them), None gives the global mean."""

    def __init__(self, unseen: float | None = None) -> None:
        self.unseen = unseen

    def fit(self, ratings: Ratings) -> ItemMean:
        counts = torch.bincount(ratings.items, minlength=ratings.n_items)
        sums = torch.zeros(ratings.n_items, dtype=torch.float64).index_add_(0, ratings.items, ratings.values.double())
        fill = ratings.values.double().mean() if self.unseen is None else torch.tensor(self.unseen, dtype=torch.float64)
        self.means_ = torch.where(counts > 0, sums / counts.clamp_min(1), fill)
        return self

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.means_[items]


class TruncatedSVD:
    """The source's (b): the rank-d SVD of the zero-filled [users, items] training matrix, U_d S_d V_d^T,
    read at the asked entries (the zeros pull every prediction towards 0: the source's point)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def fit(self, ratings: Ratings) -> TruncatedSVD:
        if not 1 <= self.rank <= min(ratings.n_users, ratings.n_items):
            raise ValueError(f"rank must be between 1 and {min(ratings.n_users, ratings.n_items)}; got {self.rank}")
        left, singular, right_t = torch.linalg.svd(dense(ratings), full_matrices=False)
        self.user_factors_ = left[:, : self.rank]  # [users, d], orthonormal columns
        self.singular_values_ = singular[: self.rank]
        self.item_factors_ = right_t[: self.rank].T  # [items, d]
        return self

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return pair_dots(self.user_factors_ * self.singular_values_, self.item_factors_, users, items)


class ALS:
    """The source's (c): minimise sum over observed (r_ui - p_u . q_i)^2 + reg (|P|^2 + |Q|^2) by
    alternating exact ridge solves, item factors first, from the rank-d SVD (P = U_d, Q = V_d S_d as the
    source) or from small random factors, until neither factor matrix moves (`torch.allclose` with
    rtol/atol, the source's `np.allclose`), a sweep lowers the objective by less than the fraction `tol`
    (0: never; the factors can drift for hundreds of sweeps along directions the objective hardly
    sees), or `max_sweeps`.

    `history_` holds the objective before the first and after every half-step (it never increases:
    each half-step minimises it exactly over one block; see `solve_ridge` for how it is had cheaply).
    """

    def __init__(self, rank: int, reg: float = 10.0, init: str = "svd", max_sweeps: int = 100, tol: float = 0.0,
                 rtol: float = 1e-5, atol: float = 1e-8, seed: int = 0) -> None:
        self.rank, self.reg, self.init, self.max_sweeps, self.tol = rank, reg, init, max_sweeps, tol
        self.rtol, self.atol, self.seed = rtol, atol, seed

    def _start(self, ratings: Ratings) -> tuple[torch.Tensor, torch.Tensor]:
        if self.init == "svd":
            svd = TruncatedSVD(self.rank).fit(ratings)
            return svd.user_factors_, svd.item_factors_ * svd.singular_values_
        generator = torch.Generator().manual_seed(self.seed)
        scale = 0.1
        return (scale * torch.randn(ratings.n_users, self.rank, generator=generator, dtype=ratings.values.dtype),
                scale * torch.randn(ratings.n_items, self.rank, generator=generator, dtype=ratings.values.dtype))

    def objective(self, ratings: Ratings, users: torch.Tensor | None = None,
                  items: torch.Tensor | None = None) -> float:
        """Squared error on the ratings plus the L2 penalty, for these factors (default: the fitted ones)."""
        users = self.user_factors_ if users is None else users
        items = self.item_factors_ if items is None else items
        residual = ratings.values - pair_dots(users, items, ratings.users, ratings.items)
        return (residual.double().square().sum() + self.reg * (users.double().square().sum()
                                                                + items.double().square().sum())).item()

    def fit(self, ratings: Ratings) -> ALS:
        if self.reg <= 0:
            raise ValueError(f"reg must be > 0 (users or items without ratings make the system singular); got {self.reg}")
        by_user, by_item = both_sides(ratings)
        users, items = self._start(ratings)
        penalty = torch.full((self.rank,), self.reg, dtype=ratings.values.dtype)
        squares = ratings.values.double().square().sum().item()
        self.history_ = [self.objective(ratings, users, items)]
        for sweep in range(1, self.max_sweeps + 1):
            new_items, rhs = solve_ridge(by_item, ratings.values, users, penalty)
            self.history_.append(squares - _dot(rhs, new_items) + self.reg * _dot(users, users))
            new_users, rhs = solve_ridge(by_user, ratings.values, new_items, penalty)
            self.history_.append(squares - _dot(rhs, new_users) + self.reg * _dot(new_items, new_items))
            still = (torch.allclose(new_users, users, self.rtol, self.atol)
                     and torch.allclose(new_items, items, self.rtol, self.atol))
            flat = self.history_[-3] - self.history_[-1] < self.tol * self.history_[-1]
            users, items = new_users, new_items
            if still or flat:
                break
        self.user_factors_, self.item_factors_, self.n_sweeps_ = users, items, sweep
        return self

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return pair_dots(self.user_factors_, self.item_factors_, users, items)


# ---------------------------------------------------------------- beyond the source

@dataclasses.dataclass
class BiasedStart:
    """Where both biased factorisations start: the two sides' rating matrices, the mean rating mu, the
    ratings minus mu, and small random user and item rows [n, width] drawn from `generator`."""

    generator: torch.Generator
    by_user: RatingMatrix
    by_item: RatingMatrix
    global_mean: float
    centred: torch.Tensor
    users: torch.Tensor
    items: torch.Tensor


def biased_start(ratings: Ratings, width: int, seed: int) -> BiasedStart:
    generator = torch.Generator().manual_seed(seed)
    by_user, by_item = both_sides(ratings)
    global_mean = ratings.values.double().mean().item()
    dtype = ratings.values.dtype
    users = 0.1 * torch.randn(ratings.n_users, width, generator=generator, dtype=dtype)
    items = 0.1 * torch.randn(ratings.n_items, width, generator=generator, dtype=dtype)
    return BiasedStart(generator, by_user, by_item, global_mean, ratings.values - global_mean, users, items)


class BiasedALS:
    """r_ui ~ mu + b_u + b_i + p_u . q_i with mu the mean training rating, by ALS: a user step solves
    [b_u, p_u] against the item features [1, q_i] and targets r - mu - b_i with penalties
    (reg_bias, reg, ..., reg); the item step is its mirror image. Factors start small and random
    (`seed`); predictions are clipped to `clip`. `rank=0` is the baseline predictor (biases only).
    """

    def __init__(self, rank: int = 10, reg: float = 10.0, reg_bias: float = 10.0, sweeps: int = 15,
                 seed: int = 0, clip: tuple[float, float] | None = None) -> None:
        self.rank, self.reg, self.reg_bias, self.sweeps = rank, reg, reg_bias, sweeps
        self.seed, self.clip = seed, clip

    def fit(self, ratings: Ratings) -> BiasedALS:
        if self.reg <= 0 or self.reg_bias <= 0:
            raise ValueError(f"reg and reg_bias must be > 0; got {self.reg}, {self.reg_bias}")
        start = biased_start(ratings, self.rank, self.seed)
        by_user, by_item, centred, users, items = start.by_user, start.by_item, start.centred, start.users, start.items
        self.global_mean_ = start.global_mean
        dtype = ratings.values.dtype
        user_bias, item_bias = torch.zeros(ratings.n_users, dtype=dtype), torch.zeros(ratings.n_items, dtype=dtype)
        penalty = torch.tensor([self.reg_bias] + [self.reg] * self.rank, dtype=dtype)
        for _ in range(self.sweeps):
            solution, _ = solve_ridge(by_user, centred - item_bias[ratings.items], _with_ones(items), penalty)
            user_bias, users = solution[:, 0], solution[:, 1:]
            solution, _ = solve_ridge(by_item, centred - user_bias[ratings.users], _with_ones(users), penalty)
            item_bias, items = solution[:, 0], solution[:, 1:]
        self.user_bias_, self.item_bias_ = user_bias, item_bias
        self.user_factors_, self.item_factors_ = users, items
        return self

    def baseline(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """mu + b_u + b_i: the prediction without the factors (of users and items never seen, exactly)."""
        return self.global_mean_ + self.user_bias_[users] + self.item_bias_[items]

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dots = pair_dots(self.user_factors_, self.item_factors_, users, items)
        return _clip(self.baseline(users, items) + dots, self.clip)


def _with_ones(features: torch.Tensor) -> torch.Tensor:
    """[n, 1 + k]: a column of ones (the bias's feature) before the factors."""
    return torch.cat([torch.ones(len(features), 1, dtype=features.dtype), features], 1)


class ImplicitPrior:
    """SVD++'s implicit feedback (Koren 2008) as side information in one side's prior (Porteous, Asuncion &
    Welling 2010): a user's vector x_u ~ N(m + Bᵀ f_u, Lambda^-1), where f_u marks the items u rated, each
    1 / sqrt(count) whatever the rating, and the rows b_j of B [items, 1 + k] are SVD++'s y_j: what rating
    item j says about a user's tastes. Which items a user chose to rate is information the ratings' values
    do not carry, and it is the same for a user's test ratings (the training pairs only: never the test's).

    B has the conjugate prior MN(0, I / reg, Lambda^-1), so given the vectors X, m and Lambda it is matrix
    normal, MN(G^-1 Fᵀ (X - m), G^-1, Lambda^-1) with G = FᵀF + reg I. F is fixed, so G's Cholesky factor
    is computed once, and a draw is one solve with it plus two sparse products (see `draw`). G is dense,
    [features, features]: 1,682 x 1,682 on MovieLens-100k, but 70,000 x 70,000 for MovieLens-10M's items
    (whose features are the users who rated them), too large for this implementation.
    """

    def __init__(self, matrix: RatingMatrix, transposed: RatingMatrix, rows: torch.Tensor, reg: float, width: int,
                 dtype: torch.dtype) -> None:
        weights = matrix.counts.to(dtype).clamp_min(1).rsqrt()[rows]  # per rating: 1 / sqrt(its row's count)
        self.features, self.features_t = matrix.csr(weights), transposed.csr(weights)  # F [rows, n], Fᵀ [n, rows]
        gram = self.features_t @ self.features.to_dense() + reg * torch.eye(matrix.shape[1], dtype=dtype)
        self.factor = torch.linalg.cholesky(gram)
        self.reg = reg
        self.coefficients = torch.zeros(matrix.shape[1], width, dtype=dtype)  # B, starting from the plain prior
        self.offsets = torch.zeros(matrix.shape[0], width, dtype=dtype)  # Bᵀ f of every row: F B

    def draw(self, residuals: torch.Tensor, precision: torch.Tensor, generator: torch.Generator) -> None:
        """B from its matrix-normal conditional given `residuals` X - m [rows, 1 + k] and Lambda, by perturbation
        (Papandreou & Yuille 2010): B = G^-1 (Fᵀ (X - m + E) + sqrt(reg) E') with the rows of E and E' drawn from
        N(0, Lambda^-1) has the conditional's mean, and row covariance G^-1 (FᵀF + reg I) G^-1 = G^-1."""
        upper = torch.linalg.cholesky(precision).T  # Lambda = U^T U, so U^-1 z ~ N(0, Lambda^-1)

        def gaussian_rows(count: int) -> torch.Tensor:
            normal = torch.randn(len(upper), count, generator=generator, dtype=upper.dtype)
            return torch.linalg.solve_triangular(upper, normal, upper=True).T

        right = (self.features_t @ (residuals + gaussian_rows(len(residuals)))
                 + math.sqrt(self.reg) * gaussian_rows(len(self.coefficients)))
        self.coefficients = torch.cholesky_solve(right, self.factor)
        self.offsets = self.features @ self.coefficients

    def wishart_terms(self) -> tuple[torch.Tensor, int]:
        """What B adds to Lambda's Wishart conditional (its prior depends on Lambda): reg BᵀB to the inverse
        scale, and one degree of freedom per feature."""
        return self.reg * self.coefficients.T @ self.coefficients, len(self.coefficients)


class BayesianMF:
    """Bayesian probabilistic matrix factorisation (Salakhutdinov & Mnih 2008) with biases, by Gibbs
    sampling: the Bayesian version of `BiasedALS`.

    Model: r_ui ~ N(mu + b_u + b_i + p_u . q_i, 1/alpha), mu the mean training rating; each user's
    x_u = [b_u, p_u] ~ N(m_U, Lambda_U^-1), each item's [b_i, q_i] likewise, and (m, Lambda) ~
    Normal-Wishart(m0 = 0, beta0 = 2, nu0 = rank + 1, W0 = I). A sweep draws the users' (m_U,
    Lambda_U) given their current vectors, then every x_u from N(A^-1 c, A^-1) with
    A = Lambda_U + alpha sum f f^T, c = alpha sum (r - mu - b_i) f + Lambda_U m_U and item features
    f = [1, q_i] (the ridge system of the module docstring, with the prior as penalty), then the same
    for the items. Predictions average over the samples after `burn_in` sweeps (all kept: memory
    (sweeps - burn_in) x (users + items) x (rank + 1)); users and items without training ratings use
    the rest of the model (their own vectors set to 0: the baseline rule).

    `implicit` > 0 adds the implicit feedback to both sides' priors (`ImplicitPrior`, `implicit` the
    precision of B's rows): users get the items they rated as features, items the users who rated them.
    """

    def __init__(self, rank: int = 10, sweeps: int = 100, burn_in: int = 20, noise_precision: float = 2.0,
                 seed: int = 0, clip: tuple[float, float] | None = None, implicit: float = 0.0) -> None:
        self.rank, self.sweeps, self.burn_in, self.noise_precision = rank, sweeps, burn_in, noise_precision
        self.seed, self.clip, self.implicit = seed, clip, implicit

    def fit(self, ratings: Ratings) -> BayesianMF:
        if not 0 <= self.burn_in < self.sweeps:
            raise ValueError(f"burn_in must be in [0, sweeps); got {self.burn_in} of {self.sweeps}")
        start = biased_start(ratings, self.rank + 1, self.seed)  # column 0 is the bias, columns 1: the factors
        generator, by_user, by_item, centred = start.generator, start.by_user, start.by_item, start.centred
        users, items = start.users, start.items
        self.global_mean_ = start.global_mean
        users[:, 0], items[:, 0] = 0, 0
        width, dtype = self.rank + 1, users.dtype
        user_prior, item_prior = ((ImplicitPrior(by_user, by_item, ratings.users, self.implicit, width, dtype),
                                   ImplicitPrior(by_item, by_user, ratings.items, self.implicit, width, dtype))
                                  if self.implicit > 0 else (None, None))
        self.samples_: list[tuple[torch.Tensor, torch.Tensor]] = []
        for sweep in range(self.sweeps):
            users = self._draw(by_user, centred - items[ratings.items, 0], _with_ones(items[:, 1:]), users, generator,
                               user_prior)
            items = self._draw(by_item, centred - users[ratings.users, 0], _with_ones(users[:, 1:]), items, generator,
                               item_prior)
            if sweep >= self.burn_in:
                self.samples_.append((users * (by_user.counts > 0)[:, None], items * (by_item.counts > 0)[:, None]))
        return self

    def _draw(self, matrix: RatingMatrix, targets: torch.Tensor, features: torch.Tensor, current: torch.Tensor,
              generator: torch.Generator, side: ImplicitPrior | None = None) -> torch.Tensor:
        """One Gibbs block: the prior's (m, Lambda) given `current` [rows, 1 + k] (and its B, with `side`),
        then every row's vector."""
        if side is None:
            mean, precision = _draw_normal_wishart(current, generator)
            prior = precision @ mean
        else:
            mean, precision = _draw_normal_wishart(current - side.offsets, generator, *side.wishart_terms())
            side.draw(current - mean, precision, generator)
            prior = (mean + side.offsets) @ precision  # each row's Lambda (m + Bᵀ f); Lambda is symmetric
        alpha = self.noise_precision
        lhs = precision + alpha * matrix.gram(features)
        rhs = alpha * matrix.weighted_sum(targets, features) + prior
        factor = torch.linalg.cholesky(lhs)
        centre = torch.cholesky_solve(rhs[:, :, None], factor)
        noise = torch.randn(centre.shape, generator=generator, dtype=centre.dtype)
        # centre + L^-T z has covariance (L L^T)^-1 = lhs^-1.
        return (centre + torch.linalg.solve_triangular(factor.transpose(1, 2), noise, upper=True))[:, :, 0]

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(users), dtype=self.samples_[0][0].dtype)
        for user_vectors, item_vectors in self.samples_:
            total += (user_vectors[users, 0] + item_vectors[items, 0]
                      + pair_dots(user_vectors[:, 1:], item_vectors[:, 1:], users, items))
        return _clip(self.global_mean_ + total / len(self.samples_), self.clip)


def _draw_normal_wishart(factors: torch.Tensor, generator: torch.Generator, extra_scatter: torch.Tensor | None = None,
                         extra_dof: int = 0, beta0: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, Lambda) from the Normal-Wishart posterior given the rows of `factors` [n, k] (BPMF eq. 14), with
    `extra_scatter` and `extra_dof` from other Gaussians of precision Lambda (an `ImplicitPrior`'s B)."""
    n, k = factors.shape
    mean = factors.mean(0)
    centred = factors - mean
    scatter = centred.T @ centred
    if extra_scatter is not None:
        scatter = scatter + extra_scatter
    # W* ^-1 = W0^-1 + S + beta0 n / (beta0 + n) (mu0 - mean)(mu0 - mean)^T, with W0 = I, mu0 = 0.
    scale_inverse = torch.eye(k, dtype=factors.dtype) + scatter + beta0 * n / (beta0 + n) * torch.outer(mean, mean)
    precision = _draw_wishart(torch.cholesky_inverse(torch.linalg.cholesky(scale_inverse)), k + n + extra_dof,
                              generator)
    beta = beta0 + n
    lower = torch.linalg.cholesky(beta * precision)
    noise = torch.randn(k, 1, generator=generator, dtype=factors.dtype)
    draw = n * mean / beta + torch.linalg.solve_triangular(lower.T, noise, upper=True)[:, 0]
    return draw, precision


def _draw_wishart(scale: torch.Tensor, dof: int, generator: torch.Generator) -> torch.Tensor:
    """Wishart(scale, dof) by Bartlett's decomposition: L A A^T L^T with L = chol(scale), A lower
    triangular, A_jj^2 ~ chi^2(dof - j) (a sum of squared normals: dof is an integer here), A_jl ~ N(0, 1)."""
    k = len(scale)
    normals = torch.randn(k, dof, generator=generator, dtype=scale.dtype)
    keep = torch.arange(dof)[None, :] < (dof - torch.arange(k))[:, None]  # row j sums dof - j squares
    bartlett = torch.randn(k, k, generator=generator, dtype=scale.dtype).tril(-1)
    bartlett = bartlett + torch.diag((normals.square() * keep).sum(1).sqrt())
    product = torch.linalg.cholesky(scale) @ bartlett
    return product @ product.T

