"""The four CIFAR-10 experiments: --quick runs on generated CIFAR files through the real loader (both layouts)
and on the padded Fashion-MNIST stand-in, the pieces of the tuned CNN recipe, and that it learns."""

import json
from pathlib import Path

import pytest
import torch
from cifar_files import generated_spec, use_spec, write_layouts
from conftest import run_quick

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
    assert rows and all(row["verdict"] == "not comparable (different data)" for row in rows)


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


def test_seed_recipe_builds_the_source_networks(data_dir, tmp_path):
    folder = run_quick("cifar-cnn", data_dir, tmp_path / "runs", "--recipe", "seed")
    assert (folder / "model.pt").is_file()
    network = cifar_cnn.source_cnn(200, 8, 10)
    assert network[-1].in_features == 200 * 3 * 3  # the source's M * floor((33 - 5) / 8) ** 2
    assert network(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    lenet = cifar_lenet_search.lenet(173, 134, 175, 113, 10)
    assert lenet[7].in_features == 134 and lenet(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------- the tuned recipe's pieces

def test_flips_and_translations_move_pixels_only():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    flipped = cifar_cnn.flip_and_translate(images, flip=True, shift=0)
    mirrored = images.flip(-1)
    same = (flipped == images).flatten(1).all(1)
    assert flipped.dtype == torch.uint8 and (same | (flipped == mirrored).flatten(1).all(1)).all()
    assert 10 < int(same.sum()) < 54  # about half are mirrored
    moved = cifar_cnn.flip_and_translate(images, flip=False, shift=2)
    assert moved.shape == images.shape
    # each image is its original shifted by at most 2 pixels each way, with zeros filled in
    for index in range(8):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(moved[index, :, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)],
                                  images[index, :, max(0, dy):32 + min(0, dy), max(0, dx):32 + min(0, dx)])]
        assert len(matches) == 1


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


def test_flip_average_is_mirror_invariant():
    torch.manual_seed(0)
    model = cifar_cnn.FlipAverage(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)))
    images = torch.rand(4, 3, 32, 32)
    assert torch.allclose(model(images), model(images.flip(-1)), atol=1e-6)


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
