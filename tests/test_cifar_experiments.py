"""The four CIFAR-10 experiments: --quick runs on generated CIFAR files through the real loader (both layouts)
and on the padded Fashion-MNIST stand-in, the pieces of the tuned CNN recipe, and that it learns."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from cifar_files import generated_spec, use_spec, write_layouts
from conftest import run_quick

from dlclassics import registry
from dlclassics.data import cifar
from dlclassics.experiments import cifar_cnn, cifar_lenet_search
from dlclassics.models.pixels import Pixels, channel_stats

EXPERIMENTS = ("cifar-linear", "cifar-mlp", "cifar-cnn", "cifar-lenet-search")
FIGURES = {"cifar-linear": ["accuracy"], "cifar-mlp": ["accuracy"], "cifar-cnn": ["loss", "accuracy", "confusion"],
           "cifar-lenet-search": ["trials", "best_curves", "search"]}


@pytest.fixture
def data_dir(image_data_dir, monkeypatch) -> Path:
    """Generated MNIST/Fashion-MNIST (conftest) and CIFAR-10 in the binary layout, 300 + 60 images."""
    write_layouts(image_data_dir, per_batch=60, layouts=("bin",))
    use_spec(monkeypatch, generated_spec())
    return image_data_dir


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_quick_on_generated_cifar_files(data_dir, tmp_path, experiment):
    folder = run_quick(experiment, data_dir, tmp_path / "runs")
    metrics = _metrics(folder)
    assert metrics["test_accuracy"] > 0.2  # the generated classes are easy: each run must learn something
    for figure in FIGURES[experiment]:
        assert (folder / "figures" / f"{figure}.png").is_file()
    report = (folder / "report.md").read_text()
    assert f"data: cifar10 from {data_dir / cifar.BINARY_DIR}" in report
    assert "stands in for CIFAR-10" not in report  # the real loader, not the stand-in


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_quick_on_the_fashion_mnist_stand_in(data_dir, tmp_path, experiment):
    folder = run_quick(experiment, data_dir, tmp_path / "runs", "--dataset", "fashion-mnist")
    report = (folder / "report.md").read_text()
    assert "not comparable: different data (fashion-mnist stands in for CIFAR-10" in report
    rows = json.loads((folder / "references.json").read_text())
    # The source's numbers are not comparable; only a goal set on the stand-in itself gets a verdict.
    goals = {reference.description for reference in registry.load(experiment).REFERENCES
             if reference.own_data}
    assert rows and all(row["verdict"] == "not comparable (different data)" for row in rows if row["what"] not in goals)
    assert all(row["verdict"] in ("met", "not met") for row in rows if row["what"] in goals)


@pytest.mark.parametrize(("experiment", "options", "turned_off"), [
    ("cifar-lenet-search", ("--set", "trials=1"), "flip"), ("cifar-cnn", (), "flip, tta")])
def test_digits_standing_in_are_never_mirrored(data_dir, tmp_path, experiment, options, turned_off):
    """A mirrored digit is no digit: on MNIST the tuned recipes' random flips and mirror averages are
    skipped, and the report says so."""
    folder = run_quick(experiment, data_dir, tmp_path / "runs", "--dataset", "mnist", *options)
    assert f"{turned_off}: no mirrored images on mnist" in (folder / "report.md").read_text()
    folder = run_quick(experiment, data_dir, tmp_path / "fashion", "--dataset", "fashion-mnist", *options)
    assert "no mirrored images" not in (folder / "report.md").read_text()


def test_python_layout_runs_the_same_experiment(image_data_dir, tmp_path, monkeypatch):
    root = write_layouts(image_data_dir, per_batch=60)  # both layouts: the binary one is read ...
    use_spec(monkeypatch, generated_spec(root))
    binary = _metrics(run_quick("cifar-linear", root, tmp_path / "a"))
    python = _metrics(run_quick("cifar-linear", root / cifar.PYTHON_DIR, tmp_path / "b"))  # ... or the python one
    assert binary["test_accuracy"] == python["test_accuracy"] and binary["best_lr"] == python["best_lr"]


def test_linear_sweep_records_curves_per_setting_and_chooses_on_validation(data_dir, tmp_path):
    folder = run_quick("cifar-linear", data_dir, tmp_path / "runs", "--set", "lrs=0.01,0.0001")
    rows = (folder / "history.csv").read_text().splitlines()
    assert rows[0].startswith("lr,epoch,") and len(rows) == 1 + 2 * 3  # epochs 0 (before training), 1, 2
    metrics = _metrics(folder)
    assert metrics["best_lr"] in (0.01, 0.0001) and metrics["best_setting"] == f"lr = {metrics['best_lr']:g}"
    assert "raw 0-255 pixels" in (folder / "report.md").read_text()  # the source's bug, said in the report


def test_same_seed_same_numbers(data_dir, tmp_path):
    first = _metrics(run_quick("cifar-mlp", data_dir, tmp_path / "a"))
    second = _metrics(run_quick("cifar-mlp", data_dir, tmp_path / "b"))
    assert {k: v for k, v in first.items() if "time" not in k} == {k: v for k, v in second.items() if "time" not in k}


def test_search_keeps_every_trial_and_scores_test_once(data_dir, tmp_path):
    folder = run_quick("cifar-lenet-search", data_dir, tmp_path / "runs", "--set", "trials=3", "--set", "limit=100")
    search = (folder / "search.csv").read_text().splitlines()
    assert len(search) == 1 + 3 and search[0].startswith("trial,o1,o2,o3,o4,value")
    assert sorted(p.name for p in (folder / "trials").iterdir()) == sorted(
        f"trial-{n:03d}.{suffix}" for n in range(3) for suffix in ("csv", "pt"))
    metrics = _metrics(folder)
    values = [float(line.split(",")[5]) for line in search[1:]]
    assert metrics["best_val_accuracy"] == max(values) and metrics["trials"] == 3
    for bound in ("o1", "o2", "o3", "o4"):
        low, high = cifar_lenet_search.SPACE[bound]
        assert low <= int(metrics["best_config"].split(f"{bound} ")[1].split(",")[0]) <= high


def _chosen_trial(folder: Path) -> int:
    rows = [line.split(",") for line in (folder / "search.csv").read_text().splitlines()[1:]]
    return int(max(rows, key=lambda row: (float(row[5]), -int(row[0])))[0])


@pytest.mark.parametrize("retrain_epochs", [0, 2])
def test_the_chosen_configuration_is_retrained_on_train_and_validation_or_kept(data_dir, tmp_path, retrain_epochs):
    """retrain_epochs 0 scores the chosen trial's own model (the source's way); otherwise a model of the same
    widths trained anew for that many epochs on train + validation."""
    folder = run_quick("cifar-lenet-search", data_dir, tmp_path / "runs", "--set", "trials=2",
                       "--set", f"retrain_epochs={retrain_epochs}")
    scored = torch.load(folder / "model.pt", weights_only=True)
    trial = torch.load(folder / "trials" / f"trial-{_chosen_trial(folder):03d}.pt", weights_only=True)
    assert scored.keys() == trial.keys()
    same = all(torch.equal(scored[key], trial[key]) for key in scored)
    history = (folder / "history.csv").read_text().splitlines()
    report = (folder / "report.md").read_text()
    if retrain_epochs:
        assert not same and len(history) == 1 + retrain_epochs
        # --quick keeps 200 of the training part; the 30 validation images (10% of 300) join them
        assert f"retrained for {retrain_epochs} epochs on train + validation (230 images)" in report
    else:
        assert same and "its model kept" in report


def test_one_cycle_warms_up_then_decays_every_step():
    cfg = cifar_lenet_search.Config()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = cifar_lenet_search.one_cycle(cfg, optimizer, steps=8)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.04, 0.52, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert optimizer.param_groups[0]["lr"] == 0.0
    constant = dataclasses.replace(cfg, schedule="constant")
    assert cifar_lenet_search.one_cycle(constant, optimizer, steps=8) is None


def test_fit_steps_a_per_step_schedule_after_every_batch():
    from dlclassics.engine import fit

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    data = (torch.randn(20, 3), torch.randint(0, 2, (20,)))
    fit(model, data, optimizer=optimizer, scheduler=scheduler, schedule_per_step=True, epochs=2, batch_size=8,
        generator=torch.Generator().manual_seed(0), quiet=True)
    assert scheduler.last_epoch == 2 * 3  # three batches (8, 8, 4) per epoch
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1 / 7)


def test_the_lenet_step_mirrors_about_half_of_a_batch():
    torch.manual_seed(0)
    seen = []
    step = cifar_lenet_search.training_step(cifar_lenet_search.Config())
    batch = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    step(lambda images: seen.append(images) or torch.zeros(len(images), 4), [batch, torch.zeros(200, dtype=torch.long)])
    mirrored = (seen[0] == batch.flip(-1)).flatten(1).all(1)
    assert ((seen[0] == batch).flatten(1).all(1) | mirrored).all() and 60 < int(mirrored.sum()) < 140


def test_seed_recipe_builds_the_source_networks(data_dir, tmp_path):
    folder = run_quick("cifar-cnn", data_dir, tmp_path / "runs", "--recipe", "seed")
    assert (folder / "model.pt").is_file()
    metrics = _metrics(folder)  # without test-time augmentation, validation with it is the last epoch's
    assert metrics["val_accuracy_with_tta"] == metrics["val_accuracy"]
    assert metrics["test_accuracy_without_tta"] == metrics["test_accuracy"]
    network = cifar_cnn.source_cnn(200, 8, 10)
    assert network[-1].in_features == 200 * 3 * 3  # the source's M * floor((33 - 5) / 8) ** 2
    assert network(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    lenet = cifar_lenet_search.lenet(173, 134, 175, 113, 10)
    assert lenet[7].in_features == 134 and lenet(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------- the tuned recipe's pieces

def test_whitening_decorrelates_the_patches():
    torch.manual_seed(0)
    base = torch.rand(300, 1, 32, 32)
    inputs = torch.cat([base, 0.5 * base + 0.5 * torch.rand(300, 1, 32, 32), torch.rand(300, 1, 32, 32)], 1)
    conv = torch.nn.Conv2d(3, cifar_cnn.WHITENING_WIDTH, 2)
    cifar_cnn.init_whitening(conv, inputs, eps=1e-8)
    with torch.no_grad():
        outputs = torch.nn.functional.conv2d(inputs, conv.weight)[:, :12]  # the 12 positive filters
    covariance = torch.cov(outputs.permute(1, 0, 2, 3).reshape(12, -1))
    assert torch.allclose(covariance, torch.eye(12), atol=0.02) and not conv.weight.requires_grad


def test_warmup_then_linear_decay():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cifar_cnn.warmup_decay(optimizer, epochs=6, warmup=2)
    factors = []
    for _ in range(6):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert factors == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25])


def test_pixels_standardise_with_training_statistics():
    images = torch.randint(0, 256, (500, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=64)
    scaled = Pixels(mean, std)(images)
    assert torch.allclose(scaled.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(scaled.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_tuned_cnn_learns_on_the_stand_in(data_dir, tmp_path):
    """The generated classes differ only by where a block sits, which flips and a global max-pool partly hide:
    hard for this network, so "learns" means well above chance, not near perfect."""
    folder = run_quick("cifar-cnn", data_dir, tmp_path / "runs", "--dataset", "fashion-mnist",
                       "--epochs", "6", "--set", "limit=600", "--set", "widths=16,32,32")
    history = [line.split(",") for line in (folder / "history.csv").read_text().splitlines()]
    column = history[0].index("train_loss")
    losses = [float(row[column]) for row in history[1:]]
    assert losses[-1] < 0.8 * losses[0]
    metrics = _metrics(folder)
    assert metrics["test_accuracy"] > 0.4  # chance is 0.1
    assert metrics["train_images_per_s"] > 0 and metrics["train_gflop_per_image"] > 0


def test_convnet_benchmark_quick_run_writes_every_number(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_convnet.py"
    spec = importlib.util.spec_from_file_location("bench_convnet", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--quick", "--json", str(tmp_path / "bench.json")])
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(results))
    for key in ("tuned_images_per_s", "source_engine_images_per_s", "source_loop_images_per_s", "fraction_of_peak"):
        assert results[key] > 0


def test_a_resumed_cnn_follows_its_learning_rate_schedule_as_an_uninterrupted_one(data_dir, tmp_path):
    """cifar-cnn's warm-up/decay schedule is in the checkpoint: stopped in epoch 3 of 4 and resumed, the run
    ends with the same numbers as one that ran straight through."""
    from conftest import interrupted_at_evaluation

    from dlclassics.cli import main

    options = ("--epochs", "4", "--set", "warmup_epochs=2")
    straight = _metrics(run_quick("cifar-cnn", data_dir, tmp_path / "straight", *options))
    argv = ["run", "cifar-cnn", "--quick", "--quiet", "--device", "cpu", "--data-dir", str(data_dir),
            "--out", str(tmp_path / "resumed"), *options]
    with interrupted_at_evaluation(3):
        assert main(argv) == 1
    resumed = _metrics(run_quick("cifar-cnn", data_dir, tmp_path / "resumed", *options, "--resume"))
    timing = {key for key in straight if key.endswith("_s") or "per_s" in key or "gflop_per_s" in key}
    assert {k: v for k, v in resumed.items() if k not in timing and k != "wall_time_this_part_s"} == \
           {k: v for k, v in straight.items() if k not in timing}
