"""Shared fixtures: small generated datasets in the real file formats, and an in-process CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dlclassics.cli import main
from dlclassics.data import registry
from dlclassics.data.idx import write_idx

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def make_class_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose class is a bright 4x4 block at a class-specific place, plus noise:
    learnable in a few steps, so smoke runs can also check that training does something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    pictures = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for cls in range(10):
        row, col = 2 + 6 * (cls // 4), 2 + 6 * (cls % 4)
        pictures[labels == cls, row:row + 4, col:col + 4] = 250
    return pictures, labels


def write_image_dataset(folder: Path, n_train: int = 600, n_test: int = 200, gzip: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gzip else ""
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        pictures, labels = make_class_images(n, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", pictures)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return folder


def unchecked(name: str) -> registry.DatasetSpec:
    """The registered dataset `name` with its checksums and official sizes switched off (generated files
    cannot match the real files)."""
    spec = registry.dataset(name)
    return dataclasses.replace(spec, files=tuple(dataclasses.replace(f, sha256=None, shape=None) for f in spec.files))


def unchecked_image_datasets() -> dict[str, registry.DatasetSpec]:
    """MNIST and Fashion-MNIST, `unchecked`."""
    return {name: unchecked(name) for name in ("mnist", "fashion-mnist")}


def generated_image_data(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir `folder/data` with generated `mnist/` and `fashion-mnist/` folders, whose specs' checksums
    are off, and no other place where datasets are looked for."""
    root = folder / "data"
    for name, unchecked in unchecked_image_datasets().items():
        monkeypatch.setitem(registry.DATASETS, name, unchecked)
        write_image_dataset(root / name)
    monkeypatch.setattr(registry, "SYSTEM_DIRS", ())
    monkeypatch.setattr(registry, "CACHE_DIR", folder / "cache")
    monkeypatch.delenv("DLCLASSICS_DATA", raising=False)
    return root


def unchecked_specs_for_every_experiment() -> dict[str, registry.DatasetSpec]:
    """The specs `generated_data_for_every_experiment`'s files pass: checksums and official sizes off."""
    from cifar_files import generated_spec
    from text_files import unchecked_news

    return {**unchecked_image_datasets(), "cifar10": generated_spec(), "movielens-100k": unchecked("movielens-100k"),
            "20newsgroups": unchecked_news()}


def generated_data_for_every_experiment(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`generated_image_data`, plus every other dataset an experiment reads by default, generated in its
    official layout: CIFAR-10 binary batches, MovieLens-100k, man pages and a 20news-bydate archive."""
    from cifar_files import write_layouts
    from ratings_data import write_movielens
    from text_files import write_text_data

    root = generated_image_data(folder, monkeypatch)
    write_layouts(root, per_batch=60, layouts=("bin",))
    write_movielens(root / "movielens-100k")
    write_text_data(root)
    for name, spec in unchecked_specs_for_every_experiment().items():
        monkeypatch.setitem(registry.DATASETS, name, spec)
    return root


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees an idle machine, so none depends on the load of whatever runs beside it: the
    busy-machine hint (a second stderr line) is tested on its own, with the load it is given."""
    from dlclassics import distributed

    monkeypatch.setattr(distributed, "other_runnable", lambda samples=5: 0.0)


@pytest.fixture
def image_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return generated_image_data(tmp_path, monkeypatch)


@pytest.fixture
def data_dir_for_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`generated_data_for_every_experiment`, also for the Python processes a test starts (`--nproc`): a
    sitecustomize module switches their checksums off as the fixture does in this one."""
    data = generated_data_for_every_experiment(tmp_path, monkeypatch)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nimport conftest\n"
        "from dlclassics.data import registry\n"
        "registry.DATASETS.update(conftest.unchecked_specs_for_every_experiment())\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return data


@contextlib.contextmanager
def interrupted_at_evaluation(call: int) -> Iterator[None]:
    """Within: the `call`-th held-out evaluation raises KeyboardInterrupt, as Ctrl-C during that epoch would."""
    from dlclassics import engine

    real, calls = engine.evaluate_classifier, itertools.count(1)

    def evaluate(*args, **kwargs):
        if next(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "evaluate_classifier", evaluate)
        yield


def run_quick(experiment: str, data_dir: Path, out: Path, *extra: str) -> Path:
    """`dlclassics run EXPERIMENT --quick` in-process; returns the finished run folder."""
    code = main(["run", experiment, "--quick", "--quiet", "--device", "cpu", "--data-dir", str(data_dir),
                 "--out", str(out), *extra])
    assert code == 0
    (folder,) = [p for p in (out / experiment).iterdir() if p.is_dir()]
    assert (folder / "report.md").is_file() and (folder / "metrics.json").is_file()
    assert (folder / "config.json").is_file()
    return folder


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch):
    """The test-only experiment `toy` (tests/run_toy.py) registered, with its hooks reset."""
    import run_toy

    from dlclassics import registry

    monkeypatch.setitem(registry.EXPERIMENTS, "toy", "run_toy")
    monkeypatch.setattr(run_toy, "INTERRUPT_AT", None)
    monkeypatch.setattr(run_toy, "FAIL", None)
    monkeypatch.setattr(run_toy, "EXTRA_METRICS", {})
    monkeypatch.setattr(run_toy, "SECONDS_PER_EPOCH", 0.0)
    return run_toy


def file_digests(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the sha256 of its bytes: to show that a command changed nothing."""
    import hashlib

    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}
