"""Every registered experiment runs end to end at --quick size on generated data in its dataset's layout (so none can be added
without a test), every experiment that builds on another run (--from-run) runs on its producer's run,
and (marked slow) every experiment runs on two processes (--nproc 2)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import generated_data_for_every_experiment, run_quick

from dlclassics import registry

# experiment -> the experiment whose finished run it reads with --from-run
PRODUCERS = {"fashion-mlp-enhanced": "fashion-mlp", "latent-optimization": "vae", "vae-loglik": "vae",
             "loss-landscape": "fashion-mlp", "mcmc-sampling": "energy-regressor"}
# experiment -> the option and experiment whose run it needs even alone (no ImageNet weights here)
NEEDS_A_RUN = {"cifar-transfer": ("--backbone-run", "mnist-classifier")}

QuickRun = Callable[..., Path]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickRun]:
    """`quick_run(experiment, producer=None)`: the folder of a --quick run (on a run of `producer` when
    given), made once for this module, so a producer's run serves its own test and its consumers'."""
    root = tmp_path_factory.mktemp("smoke")
    made: dict[tuple[str, str | None], Path] = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        data = generated_data_for_every_experiment(root, monkeypatch)

        def run(experiment: str, producer: str | None = None) -> Path:
            if (experiment, producer) not in made:
                option, needed = ("--from-run", producer) if producer else NEEDS_A_RUN.get(experiment, ("", None))
                extra = (option, str(run(needed))) if needed else ()
                out = root / "runs" / (f"from-{producer}" if producer else "alone")
                made[experiment, producer] = run_quick(experiment, data, out, *extra)
            return made[experiment, producer]

        yield run


def check_run_folder(folder: Path) -> None:
    """What every finished run folder holds: the figures its report shows, finite metrics, the verdicts,
    its config, and no temporary files."""
    report = (folder / "report.md").read_text()
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", report)
    assert all((folder / figure).is_file() for figure in figures), figures
    metrics = json.loads((folder / "metrics.json").read_text())
    assert all(math.isfinite(value) for value in metrics.values() if isinstance(value, float)), metrics
    assert isinstance(json.loads((folder / "references.json").read_text()), list)
    assert json.loads((folder / "config.json").read_text())["experiment"] == folder.parent.name
    assert not [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


# One number each quick run must reach on the generated data (learnable classes, known structure): far
# from what an untrained model, a broken loss or a mix-up of splits gives, with room for other machines.
REACHES: dict[str, Callable[[dict], bool]] = {
    "mnist-mlp": lambda m: m["test_accuracy"] >= 0.9,  # chance 0.1
    "mnist-classifier": lambda m: m["test_accuracy"] >= 0.9,
    "fashion-mlp": lambda m: m["test_accuracy"] >= 0.3,  # one epoch per trial, one retraining epoch
    "fashion-mlp-enhanced": lambda m: m["test_accuracy"] >= 0.5,
    "cifar-linear": lambda m: m["test_accuracy"] >= 0.9,
    "cifar-mlp": lambda m: m["test_accuracy"] >= 0.9,
    "cifar-cnn": lambda m: m["test_accuracy"] >= 0.25,
    "cifar-lenet-search": lambda m: m["best_val_accuracy"] >= 0.4,
    "cifar-transfer": lambda m: m["scratch_test_accuracy"] >= 0.5,
    "fgsm": lambda m: m["clean_accuracy"] >= 0.9 and m["pgd_accuracy_0.3"] <= 0.5,  # the attack does damage
    "dense-autoencoder": lambda m: m["test_mse"] < 0.2,
    "vae": lambda m: m["val_loss"] < 784 * math.log(2),  # better than a fair coin per pixel
    "latent-optimization": lambda m: m["lo_mu_travelled"] > 0.05,  # the table's means moved
    "vae-loglik": lambda m: m["test_elbo"] < m["test_logp"],  # the ELBO is below the K-sample estimate
    "topic-vae": lambda m: m["npmi_doc"] > 0.0,
    # Eckart-Young: PCA is optimal on the training images (on test images a solved linear AE may edge below it)
    "autoencoder-vs-pca": lambda m: m["pca_train_mse_h16"] <= m["linear_train_mse_h16"] * (1 + 1e-4),
    "least-squares": lambda m: m["theta_max_abs_error"] < 0.05,
    "optimizers-noisy": lambda m: m["best_test_loss_adam_g2"] < 3.0,
    "he-init": lambda m: m["he_relu_max_drift"] < 0.2,  # He keeps the variance flat
    "loss-landscape": lambda m: m["centre_loss_gap"] < 1e-4 and m["trajectory_plane_gap"] < 1e-4,
    "movielens": lambda m: m["five_fold_rmse"] < 1.0,
    "low-rank": lambda m: m["eckart_young_max_deviation"] < 1e-10,
    "energy-regressor": lambda m: m["train_loss"] < 1.5 * m["test_energy_variance"],
    "mcmc-sampling": lambda m: m["mala_acceptance_rate"] > 0.5,
}


@pytest.mark.parametrize("experiment", list(registry.EXPERIMENTS))
def test_every_experiment_runs_quick(experiment: str, quick_run: QuickRun) -> None:
    folder = quick_run(experiment)
    check_run_folder(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert REACHES[experiment](metrics), metrics


def test_every_experiment_has_a_number_to_reach() -> None:
    assert set(REACHES) == set(registry.EXPERIMENTS)


@pytest.mark.parametrize("experiment, producer", sorted(PRODUCERS.items()))
def test_every_consumer_runs_on_its_producers_run(experiment: str, producer: str, quick_run: QuickRun) -> None:
    folder = quick_run(experiment, producer)
    check_run_folder(folder)
    assert str(quick_run(producer)) in (folder / "report.md").read_text()  # the report names what it built on


@pytest.mark.slow
@pytest.mark.parametrize("experiment", list(registry.EXPERIMENTS))
def test_every_experiment_runs_on_two_processes(experiment: str, data_dir_for_processes: Path,
                                                tmp_path: Path) -> None:
    option, needed = NEEDS_A_RUN.get(experiment, ("", None))
    extra = (option, str(run_quick(needed, data_dir_for_processes, tmp_path / "needed"))) if needed else ()
    folder = run_quick(experiment, data_dir_for_processes, tmp_path / "runs", "--nproc", "2", *extra)
    check_run_folder(folder)
    assert json.loads((folder / "config.json").read_text())["world_size"] == 2


def test_producers_name_registered_experiments() -> None:
    needed = {producer for _, producer in NEEDS_A_RUN.values()}
    assert set(PRODUCERS) | set(PRODUCERS.values()) | set(NEEDS_A_RUN) | needed <= set(registry.EXPERIMENTS)
