"""fashion-mlp-enhanced: the Fashion-MNIST MLP search with BatchNorm, Dropout and other activations (S1 Problem 2.4).

Source: `../shared/seeds/001_9651b007d7353d63.txt`, Problem 2.4. The random search of `fashion-mlp`
(selection on validation accuracy only, L2 on weight matrices only) extended by BatchNorm on/off,
Dropout in {0, 0.2, 0.3, 0.5} and the activation (ReLU, LeakyReLU 0.01, ELU, PReLU); 15
configurations, the best retrained for 50 epochs on train+val. Reference: best validation 0.8871
(4 layers of 256 units, BatchNorm, Dropout 0.2, ReLU, batch 32, lr 0.001, L2 1e-4, 30 epochs), test
0.8868, ahead of fashion-mlp's 0.8771 by 0.0097.

The report sets this run's test accuracy beside fashion-mlp's on the same data and split: from a
finished fashion-mlp run (`--from-run`), or else fashion-mlp's recipe trained here first (the same
numbers as `dlclassics run fashion-mlp` with the same seed). The tuned recipe searches wider networks
with momentum SGD, a cosine schedule and label smoothing 0.1 on a short per-trial budget (raised goal:
test accuracy >= 0.915; 2 x 512 units with BatchNorm, Dropout 0.2 and PReLU reach 0.910 on validation,
and 1-pixel random translations leave that unchanged).
The search machinery, and fashion-mlp's search the baseline repeats, are in `dlclassics.training.mlp_search`.

    dlclassics run fashion-mlp-enhanced                                     # tuned, baseline trained here
    dlclassics run fashion-mlp-enhanced --from-run runs/fashion-mlp/<run>   # compare with a finished run
    dlclassics run fashion-mlp-enhanced --recipe seed                       # the source's search and retraining
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from dlclassics import plots
from dlclassics.config import epochs_option, option, resolve
from dlclassics.errors import UsageError
from dlclassics.files import atomic_write_csv
from dlclassics.runs import METRICS, Reference, Run, Upstream, markdown_table
from dlclassics.training import mlp_search

TITLE = "Fashion-MNIST MLP with BatchNorm, Dropout and other activations, against fashion-mlp (S1 Problem 2.4)"

# The baseline, finished earlier: its test accuracy (and its history, when there) instead of training it here.
FROM_RUN = Upstream(("fashion-mlp",), files=(METRICS,), metrics=("test_accuracy",))

ENHANCEMENTS = {"batchnorm": (True, False), "dropout": (0.0, 0.2, 0.3, 0.5),
                "activation": ("relu", "leaky", "elu", "prelu")}
SEARCH_SPACES: dict[str, mlp_search.SearchSpace] = {
    "seed": {"layers": (3, 4, 5), "units": (64, 128, 256), "lr": (0.001, 0.0005, 0.0001),
             "batch_size": (32, 64, 128), "l2": (0.0, 0.0001, 0.00001), "epochs": (30, 40), **ENHANCEMENTS},
    "tuned": {"layers": (2, 3), "units": (256, 512), "lr": (0.02, 0.05, 0.1), "batch_size": (128, 256),
              "l2": (1e-5, 1e-4, 5e-4), "epochs": (4,), **ENHANCEMENTS},
}


@dataclasses.dataclass(frozen=True)
class Config(mlp_search.SearchConfig):
    SPACES = SEARCH_SPACES
    space: str = option("tuned", "search space: the source's grid or ours", choices=tuple(SEARCH_SPACES))
    trials: int = option(15, "configurations tried by the search (15 in the source)", low=1)
    epochs: int = epochs_option(30, "epochs of the retraining on train+val")
    baseline: str = option("tuned", "fashion-mlp recipe trained here for the comparison (without --from-run)",
                           choices=("seed", "tuned"))


RECIPES = {"seed": {"space": "seed", "trials": 15, "momentum": 0.0, "cosine": False, "epochs": 50,
                    "label_smoothing": 0.0, "baseline": "seed"},
           "tuned": {}}
QUICK = {"limit": 600, "trials": 2, "epochs": 2}
SEARCHED = mlp_search.searched(Config)  # `--set lr=...` says how to fix or narrow lr instead

REFERENCES = [
    Reference("best_val_accuracy", 0.8871, "best validation accuracy of the search", dataset="fashion-mnist",
              tolerance=0.005),
    Reference("test_accuracy", 0.8868, "test accuracy after retraining", dataset="fashion-mnist", tolerance=0.005),
    # Beating fashion-mlp = at least one more test image right (1e-4 of 10,000); the source was ahead by 0.0097.
    Reference("improvement", 0.0097, "test accuracy ahead of fashion-mlp (source 0.8868 vs 0.8771)",
              rule="at_least", target=1e-4),
    # Not the source's: the raised goal of the tuned recipe (issue 21).
    Reference("test_accuracy", "not reported", "test accuracy (goal: >= 0.915)", rule="at_least", target=0.915,
              dataset="fashion-mnist"),
]


def run(cfg: Config, run: Run) -> dict[str, Any]:
    images = run.load_images(cfg.dataset)  # checks the data and notes its source before any work starts
    data = mlp_search.prepared_data(cfg, images, run.device)

    # 1. The baseline: fashion-mlp on the same data and split, finished earlier or trained here.
    baseline = finished_baseline(cfg, run) if run.from_run else trained_baseline(cfg, run, data)

    # 2. The enhanced search and retraining, with the same outputs as fashion-mlp (no trajectory:
    #    BatchNorm's running statistics are not parameters, so a landscape of the parameters alone would be wrong).
    space = cfg.search_space()
    outcome = mlp_search.search_and_retrain(cfg, run, data, space)
    metrics = mlp_search.save_outputs(cfg, run, outcome, space)

    # 3. Side by side.
    improvement = metrics["test_accuracy"] - baseline["test_accuracy"]
    run.add_section("Against fashion-mlp (same data, same split)", comparison_table(metrics, baseline, improvement))
    epochs = sorted({row["epoch"] for row in [*outcome.result.history, *baseline["history"]]})
    ours = {row["epoch"]: row["test_accuracy"] for row in outcome.result.history}
    theirs = {row["epoch"]: row["test_accuracy"] for row in baseline["history"]}
    rows = [{"epoch": e, "enhanced": ours.get(e, float("nan")), "fashion_mlp": theirs.get(e, float("nan"))}
            for e in epochs]
    run.save_figure(plots.curves(rows, "epoch", {"enhanced": "fashion-mlp-enhanced (test)",
                                                 "fashion_mlp": "fashion-mlp (test)"},
                                 "Test accuracy per retraining epoch", "accuracy"), "comparison",
                    "Test accuracy of the enhanced model and of fashion-mlp per retraining epoch", rows=rows)
    return {**metrics, "baseline_test_accuracy": baseline["test_accuracy"], "improvement": round(improvement, 6),
            "baseline_best_val_accuracy": baseline["best_val_accuracy"], "baseline_source": baseline["source"]}


def trained_baseline(cfg: Config, run: Run, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """fashion-mlp's recipe `cfg.baseline` on this run's data fields, searched and retrained here."""
    layers = [mlp_search.FASHION_MLP_RECIPES[cfg.baseline],
              mlp_search.FASHION_MLP_QUICK if cfg.quick else {},
              {name: getattr(cfg, name) for name in mlp_search.DATA_FIELDS}]
    baseline_cfg = resolve(mlp_search.FashionMlpConfig, *layers)
    space = baseline_cfg.search_space()
    outcome = mlp_search.search_and_retrain(baseline_cfg, run, data, space, study_suffix="-baseline",
                                            checkpoint=run.dir / "baseline-checkpoint.pt")
    atomic_write_csv(run.dir / "baseline-search.csv", outcome.trials)
    run.save_history(outcome.result.history, "baseline-history.csv")
    run.note(f"baseline: fashion-mlp's {cfg.baseline} recipe trained in this run (search "
             f"{outcome.search_time:.0f} s, retraining {outcome.retrain_time:.0f} s); its search is baseline-search.csv")
    return {"test_accuracy": outcome.result.history[-1]["test_accuracy"], "best_val_accuracy": outcome.best_value,
            "config": {k: outcome.params[k] for k in space if k != "epochs"}, "history": outcome.result.history,
            "source": f"fashion-mlp {cfg.baseline} recipe, trained here"}


def finished_baseline(cfg: Config, run: Run) -> dict[str, Any]:
    """The metrics of a finished fashion-mlp run (`--from-run`); a different dataset is refused."""
    finished = run.from_run
    folder, theirs, metrics = finished.folder, finished.options, finished.metrics()
    if theirs.get("dataset") != cfg.dataset:
        raise UsageError(f"--from-run {folder} used {theirs.get('dataset')}, this run {cfg.dataset}; "
                         f"pass --dataset {theirs.get('dataset')} or another fashion-mlp run")
    differing = [name for name in mlp_search.DATA_FIELDS if name != "device" and theirs.get(name) != getattr(cfg, name)]
    if differing:
        run.note(f"baseline run {folder} differs in {', '.join(differing)}: not the same data or split")
    history = finished.history()
    run.note(f"baseline: the finished fashion-mlp run {folder}")
    return {"test_accuracy": metrics["test_accuracy"], "best_val_accuracy": metrics.get("best_val_accuracy"),
            "config": metrics.get("best_config", {}), "history": history, "source": str(folder)}


def comparison_table(metrics: dict[str, Any], baseline: dict[str, Any], improvement: float) -> str:
    rows = [{"model": "fashion-mlp", "best configuration": _describe(baseline["config"]),
             "best val accuracy": baseline["best_val_accuracy"], "test accuracy": baseline["test_accuracy"]},
            {"model": "fashion-mlp-enhanced", "best configuration": _describe(metrics["best_config"]),
             "best val accuracy": metrics["best_val_accuracy"], "test accuracy": metrics["test_accuracy"]}]
    verdict = "ahead" if improvement > 0 else "NOT ahead"
    return (markdown_table(rows) + f"\n\nThe enhanced model is {verdict} by {improvement:+.4f} test accuracy "
            f"({improvement * 100:+.2f} points; the source: +0.0097).")


def _describe(config: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in config.items())
