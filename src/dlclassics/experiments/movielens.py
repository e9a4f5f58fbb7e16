"""movielens: S2 B.1's recommender on MovieLens-100k, and a five-fold table beside Surprise's.

Source: `../shared/seeds/002_2461c30dc0c8b3cd.txt`, B.1. The source splits `u.data` at random 80/20
(`np.random.seed(1); np.random.permutation`) and fits (a) each movie's mean training rating, test MSE
1.064; (b) the rank-d SVD of the zero-filled training matrix, d in {1, 2, 5, 10, 20, 50}; (c) ALS on
the observed entries only, L2 lambda = 10, initialised from the SVD, d in {2, 5, 10, 20, 50}, until the
factors stop moving; "d = 5 generalises best". All three are reproduced faithfully, including the
source's choice that movies without training ratings are predicted 0 in (a) (it gives 1.0636, its
1.064; the fixed number, with the global mean for them, is reported beside it).

Beyond the source: the standard protocol of the recommender literature, five-fold cross-validation
on the published folds u1..u5 with RMSE and MAE per fold and the fit+test time, for the item mean, the
baseline (mu + b_u + b_i), a biased factorisation by ALS and a Bayesian one (BPMF with biases, Gibbs
sampling, and SVD++'s implicit feedback, who rated what, as side information in its priors), all in
`methods/mf.py`; Surprise's published table (the catalogue) beside ours. Their hyperparameters were
chosen on a 90/10 split of u1.base (seed 0), never on a test fold. Validation RMSE of Bayesian MF there
(burn-in 20, noise precision 1.5 unless said): 0.9011 plain (rank 10, 100 sweeps: the earlier recipe,
five-fold test 0.8969); 0.8860 with the implicit feedback at prior precision 1 (0.8901 at 3, 0.8863 at
0.5); 0.8823 with 200 sweeps (noise precision 1.25: 0.8835, 1.75: 0.8847); 0.8815 at rank 15 (prior
precision 0.5: 0.8819, 2: 0.8833) and 0.8805 at rank 20, in 1.4x rank 15's time.

    dlclassics run movielens --data-dir ../shared/datasets
    dlclassics run movielens --recipe seed --data-dir ../shared/datasets
    dlclassics run movielens --set ratings_file=ratings.csv --set scale=0.5,5
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dlclassics import plots
from dlclassics.config import BaseConfig, dataset_option, option
from dlclassics.data.ratings import (
    SEPARATORS,
    Ratings,
    RatingsData,
    load_ratings_or_file,
    ratings_datasets,
)
from dlclassics.errors import UsageError
from dlclassics.methods.mf import (
    ALS,
    BayesianMF,
    BiasedALS,
    ItemMean,
    TruncatedSVD,
    cold_start_count,
    mae,
    mse,
    rmse,
    single_threaded,
)
from dlclassics.runs import Reference, Run, markdown_table

TITLE = "MovieLens-100k: item mean, SVD and ALS (S2 B.1), and a five-fold table beside Surprise's"
MODELS = ("item-mean", "baseline", "biased-als", "bayesian-mf")  # see BUILDERS
# Surprise's published ML-100k five-fold table (u1..u5): RMSE, MAE, fit+test time (from the catalogue).
SURPRISE = [("SVD++ (Surprise's best)", 0.919, 0.721, "~90 s"), ("SVD", 0.934, 0.737, "6 s"),
            ("KNNBaseline", 0.931, "-", "-"), ("BaselineOnly", 0.944, 0.748, "-"), ("SlopeOne", 0.946, "-", "-"),
            ("NMF", 0.963, "-", "-"), ("random", 1.518, "-", "-")]


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = dataset_option("movielens-100k", ratings_datasets, "ratings dataset")
    ratings_file: str = option("", "your own ratings instead: CSV/TSV of user,item,rating[,timestamp] "
                                   "(MovieLens 1M/10M '::' and 20M/25M CSV files are read as they are)")
    separator: str = option("auto", "column separator of ratings_file", choices=tuple(SEPARATORS))
    scale: tuple[float, ...] = option((1.0, 5.0), "lowest,highest rating of ratings_file (MovieLens 10M-25M: 0.5,5)")
    n_folds: int = option(5, "random folds of ratings_file", low=2)
    source_split: bool = option(True, "the source's part: 80/20 split (numpy seed 1), item mean, SVD, ALS")
    svd_ranks: tuple[int, ...] = option((1, 2, 5, 10, 20, 50), "(b) ranks of the SVD of the zero-filled matrix", low=1)
    als_ranks: tuple[int, ...] = option((2, 5, 10, 20, 50), "(c) ranks of the source's ALS", low=1)
    als_reg: float = option(10.0, "(c) L2 lambda of the source's ALS", low=0.0, low_open=True)
    als_max_sweeps: int = option(100, "(c) sweeps at most", low=1)
    als_tol: float = option(1e-6, "(c) also stop when a sweep lowers the objective by less than this fraction "
                                  "(0: only the source's rule, factors unchanged to np.allclose)", low=0.0)
    five_fold: bool = option(True, "the standard protocol: RMSE and MAE per fold, fit+test time, per model")
    folds: tuple[str, ...] = option(("u1", "u2", "u3", "u4", "u5"), "published folds of the dataset (u1..u5, ua, ub)")
    models: tuple[str, ...] = option(MODELS, f"models of the five-fold table ({', '.join(MODELS)})")
    rank: int = option(15, "bayesian-mf: rank", low=1)
    sweeps: int = option(200, "bayesian-mf: Gibbs sweeps", low=1)
    burn_in: int = option(20, "bayesian-mf: sweeps discarded before averaging", low=0)
    noise_precision: float = option(1.5, "bayesian-mf: 1 / the noise variance of a rating", low=0.0, low_open=True)
    implicit: float = option(1.0, "bayesian-mf: prior precision of the implicit-feedback weights (0: plain BPMF, "
                                  "without who-rated-what)", low=0.0)
    biased_rank: int = option(20, "biased-als: rank", low=1)
    biased_reg: float = option(15.0, "biased-als: L2 on the factors", low=0.0, low_open=True)
    reg_bias: float = option(5.0, "biased-als and baseline: L2 on the biases", low=0.0, low_open=True)
    biased_sweeps: int = option(20, "biased-als and baseline: ALS sweeps", low=1)


# The source loops until np.allclose holds; at d = 20 that takes over 2,000 sweeps (the test MSE moves in
# the 3rd decimal after the first 100), so the seed recipe stops at 300 and says which d were cut.
# The five-fold models are beyond the source (the seed recipe skips them); their defaults are tuned on the
# validation split of u1.base (the module docstring's numbers) against the earlier recipe, rank 10, 100 sweeps,
# plain BPMF (five-fold 0.8969, `--set implicit=0 --set rank=10 --set sweeps=100`):
#   implicit 1.0: who rated what lowers the validation RMSE by 0.015, the largest gain found.
#   sweeps 200: more posterior samples in the average, 0.004 lower; rank 15: 0.001 lower, well inside 60 s.
#   burn_in 20, noise_precision 1.5: unchanged, still the best of those tried (burn-in 40: the same to 1e-4).
RECIPES: dict[str, dict[str, Any]] = {"seed": {"five_fold": False, "als_tol": 0.0, "als_max_sweeps": 300},
                                      "tuned": {}}
QUICK = {"svd_ranks": (1, 2, 5), "als_ranks": (2, 5), "als_max_sweeps": 5, "sweeps": 10, "burn_in": 2,
         "biased_sweeps": 3, "folds": ("u1", "u2")}

HEADLINE = "five_fold_rmse"  # what listings show: the standard protocol's RMSE, not the source split's MSE

REFERENCES = [
    Reference("item_mean_test_mse", 1.064, "(a) item-mean test MSE, the source's 80/20 split", rule="near",
              tolerance=0.0005, dataset="movielens-100k"),
    Reference("als_best_rank", 5, "(c) ALS rank with the lowest test MSE", rule="near", tolerance=0,
              dataset="movielens-100k"),
    Reference("five_fold_rmse", 0.919, "five-fold mean RMSE, our best model (Surprise's best, SVD++: 0.919)",
              rule="lower", dataset="movielens-100k"),
    # Not the source's: the raised goal (issue 21), beside the earlier recipe's 0.8969 (plain BPMF).
    Reference("five_fold_rmse", 0.8969, "five-fold mean RMSE, our best model (earlier: 0.8969; goal <= 0.890)",
              rule="at_most", target=0.890, dataset="movielens-100k"),
    Reference("five_fold_mae", 0.721, "five-fold mean MAE, our best model (SVD++: 0.721)", rule="lower",
              dataset="movielens-100k"),
    Reference("five_fold_time_s", 90.0, "its five-fold fit+test time, s (SVD++ ~90 s; goal < 60 s)", rule="at_most",
              target=60.0, dataset="movielens-100k"),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    unknown = [name for name in cfg.models if name not in MODELS]
    if unknown:
        raise UsageError(f"option 'models': unknown {', '.join(unknown)}; choose among {', '.join(MODELS)}")
    data = run.use_data(load_ratings_or_file(cfg.dataset, cfg.folds if cfg.five_fold else (), cfg.ratings_file,
                                             cfg.separator, cfg.scale, cfg.n_folds, cfg.seed, run.data_dir,
                                             run.unverified))
    if cfg.source_split:
        check_ranks(cfg, min(data.ratings.n_users, data.ratings.n_items))
    metrics: dict[str, Any] = {}
    with single_threaded():
        if cfg.source_split:
            metrics.update(source_part(cfg, run, data))
        if cfg.five_fold:
            metrics.update(five_fold(cfg, run, data))
    return metrics


# ---------------------------------------------------------------- the source's part

def check_ranks(cfg: Config, largest: int) -> None:
    """Ranks are between 1 and min(users, items): a rank-d factorisation of a smaller matrix does not exist."""
    if not cfg.svd_ranks or not cfg.als_ranks:
        raise UsageError("options 'svd_ranks' and 'als_ranks' need at least one rank each (or --set source_split=false)")
    if max(cfg.svd_ranks + cfg.als_ranks) > largest:
        raise UsageError(f"ranks go up to min(users, items) = {largest} for these ratings; got "
                         f"{max(cfg.svd_ranks + cfg.als_ranks)} (--set svd_ranks=... als_ranks=...)")


def source_split(ratings: Ratings) -> tuple[Ratings, Ratings]:
    """The source's split: `np.random.seed(1); perm = np.random.permutation(n)`, the first 80% train."""
    order = torch.from_numpy(np.random.RandomState(1).permutation(len(ratings)))
    n_train = int(0.8 * len(ratings))
    return ratings.subset(order[:n_train]), ratings.subset(order[n_train:])


def source_part(cfg: Config, run: Run, data: RatingsData) -> dict[str, Any]:
    """(a) item mean, (b) rank-d SVD, (c) ALS, each on the source's 80/20 split, in float64 as numpy."""
    train, test = source_split(data.ratings.to(torch.float64))
    item_mean = mse(ItemMean(unseen=0.0).fit(train).predict(test.users, test.items), test.values)
    item_mean_fixed = mse(ItemMean().fit(train).predict(test.users, test.items), test.values)
    unseen = cold_start_count(train, test)["cold_items"]
    run.note(f"(a) {unseen} test ratings are of movies without training ratings: the source predicts them 0 "
             f"(test MSE {item_mean:.4f}, its 1.064); with the global mean instead, {item_mean_fixed:.4f}.")

    rows: dict[int, dict[str, Any]] = {d: {"d": d} for d in sorted(set(cfg.svd_ranks + cfg.als_ranks))}
    for d in cfg.svd_ranks:
        svd = TruncatedSVD(d).fit(train)
        rows[d].update(svd_train_mse=_mse_of(svd, train), svd_test_mse=_mse_of(svd, test))
    capped = []
    for d in cfg.als_ranks:
        started = time.perf_counter()
        als = ALS(d, cfg.als_reg, init="svd", max_sweeps=cfg.als_max_sweeps, tol=cfg.als_tol).fit(train)
        rows[d].update(als_train_mse=_mse_of(als, train), als_test_mse=_mse_of(als, test), als_sweeps=als.n_sweeps_,
                       als_fit_s=round(time.perf_counter() - started, 2))
        if als.n_sweeps_ == cfg.als_max_sweeps:
            capped.append(f"d = {d} (last sweep lowered the objective by "
                          f"{(als.history_[-3] - als.history_[-1]) / als.history_[-1]:.1e})")
    table = list(rows.values())
    columns = ("d", "svd_train_mse", "svd_test_mse", "als_train_mse", "als_test_mse", "als_sweeps", "als_fit_s")
    run.add_section("The source's split: (b) SVD and (c) ALS",
                    markdown_table([{key: row.get(key, "-") for key in columns} for row in table]))
    if capped:
        run.note(f"(c) ALS stopped at als_max_sweeps = {cfg.als_max_sweeps} before a stopping rule held for "
                 f"{', '.join(capped)}.")
    run.save_figure(plots.curves(table, "d", {"svd_train_mse": "(b) SVD train", "svd_test_mse": "(b) SVD test",
                                              "als_train_mse": "(c) ALS train", "als_test_mse": "(c) ALS test"},
                                 "MSE against rank d on the source's 80/20 split", "MSE", logy=True),
                    "mse_vs_rank", "Train and test MSE against d for the SVD (b) and ALS (c)", rows=table)
    als_rows = [row for row in table if "als_test_mse" in row]
    best = min(als_rows, key=lambda row: row["als_test_mse"])
    return {"item_mean_test_mse": item_mean, "item_mean_test_mse_fixed": item_mean_fixed,
            "svd_best_test_mse": min(row["svd_test_mse"] for row in table if "svd_test_mse" in row),
            "als_best_rank": best["d"], "als_best_test_mse": best["als_test_mse"]}


def _mse_of(model: Any, ratings: Ratings) -> float:
    return mse(model.predict(ratings.users, ratings.items), ratings.values)


# ---------------------------------------------------------------- the five-fold table

# The five-fold table's models: name -> a fresh estimator (predictions clipped to the rating scale).
BUILDERS: dict[str, Callable[[Config, tuple[float, float]], Any]] = {
    "item-mean": lambda cfg, scale: ItemMean(),
    "baseline": lambda cfg, scale: BiasedALS(rank=0, reg_bias=cfg.reg_bias, sweeps=cfg.biased_sweeps, clip=scale),
    "biased-als": lambda cfg, scale: BiasedALS(cfg.biased_rank, cfg.biased_reg, cfg.reg_bias, cfg.biased_sweeps,
                                               seed=cfg.seed, clip=scale),
    "bayesian-mf": lambda cfg, scale: BayesianMF(cfg.rank, cfg.sweeps, cfg.burn_in, cfg.noise_precision,
                                                 seed=cfg.seed, clip=scale, implicit=cfg.implicit),
}


def five_fold(cfg: Config, run: Run, data: RatingsData) -> dict[str, Any]:
    """Each model fitted on every fold's training part and scored on its test part."""
    if cfg.burn_in >= cfg.sweeps:
        raise UsageError(f"option 'burn_in' ({cfg.burn_in}) must be smaller than 'sweeps' ({cfg.sweeps})")
    rows = []
    for name in cfg.models:
        for fold, (train, test) in data.folds.items():
            started = time.perf_counter()
            predicted = BUILDERS[name](cfg, data.scale).fit(train).predict(test.users, test.items)
            rows.append({"model": name, "fold": fold, "rmse": rmse(predicted, test.values),
                         "mae": mae(predicted, test.values), "fit_test_s": round(time.perf_counter() - started, 2)})
    cold = {fold: cold_start_count(train, test) for fold, (train, test) in data.folds.items()}
    run.note("cold start (predicted by the baseline rule, mu + b_i or mu + b_u or mu): "
             + "; ".join(f"{fold}: {c['cold_users']} test ratings of unseen users, {c['cold_items']} of unseen items"
                         for fold, c in cold.items()))
    run.save_history(rows, "five_fold.csv")
    summary = [{"model": name, "rmse": float(np.mean([r["rmse"] for r in rows if r["model"] == name])),
                "mae": float(np.mean([r["mae"] for r in rows if r["model"] == name])),
                "fit_test_s": round(sum(r["fit_test_s"] for r in rows if r["model"] == name), 2)}
               for name in cfg.models]
    run.add_section(f"Five-fold table ({', '.join(data.folds)}), ours beside Surprise's",
                    markdown_table(summary + [{"model": f"Surprise {name}", "rmse": r, "mae": m, "fit_test_s": t}
                                              for name, r, m, t in SURPRISE]))
    save_fold_figure(run, rows, list(cfg.models))
    best = min(summary, key=lambda row: row["rmse"])
    return {"five_fold_best_model": best["model"], "five_fold_rmse": best["rmse"], "five_fold_mae": best["mae"],
            "five_fold_time_s": best["fit_test_s"], "five_fold_all_models_s": round(sum(r["fit_test_s"] for r in rows), 2),
            **{f"rmse_{row['model'].replace('-', '_')}": row["rmse"] for row in summary}}


def save_fold_figure(run: Run, rows: list[dict[str, Any]], models: list[str]) -> None:
    """RMSE per fold, one bar per model, Surprise's SVD++ mean as a line."""
    by_fold = {}
    for row in rows:
        by_fold.setdefault(row["fold"], {"fold": row["fold"]})[row["model"]] = row["rmse"]
    figure = plots.grouped_bars(list(by_fold.values()), "fold", models, "Test RMSE per fold", "RMSE")
    axes = figure.axes[0]
    axes.axhline(SURPRISE[0][1], color="black", linestyle="--", linewidth=1)
    axes.text(0.99, SURPRISE[0][1], "Surprise SVD++ (mean)", transform=axes.get_yaxis_transform(), ha="right",
              va="bottom", fontsize=8)
    low = min(row["rmse"] for row in rows)
    axes.set_ylim(low - 0.05, max(row["rmse"] for row in rows) + 0.02)
    run.save_figure(figure, "five_fold_rmse", "Test RMSE per fold and model (dashed: Surprise's best mean)",
                    rows=list(by_fold.values()))
