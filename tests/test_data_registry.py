"""The dataset registry on generated files: search order, explicit folders, verification (damaged vs not
official), one's own data with --unverified, `data status`, and a new dataset added by its spec alone."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_images, write_image_dataset

from dlclassics.cli import main
from dlclassics.data import images, registry
from dlclassics.data.idx import idx_bytes, read_payload, write_idx
from dlclassics.data.registry import DamagedFile, DataFile, UnofficialFile
from dlclassics.errors import RunError, UsageError


def _checked_spec(folder: Path, name: str = "fashion-mnist") -> images.ImageDatasetSpec:
    """The spec with the sha256 values of the generated files, so verification is really exercised."""
    spec = registry.dataset(name)
    files = tuple(dataclasses.replace(f, sha256=hashlib.sha256(read_payload(registry.file_path(folder, f))).hexdigest())
                  for f in spec.files)
    return dataclasses.replace(spec, files=files)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ---------------------------------------------------------------- search order and explicit folders

def test_search_order_prefers_data_dir_then_env_then_cache(image_data_dir, tmp_path, monkeypatch):
    mnist = registry.dataset("mnist")
    other = write_image_dataset(tmp_path / "env" / "mnist")
    cached = write_image_dataset(tmp_path / "cache" / "mnist")
    assert registry.find_folder(mnist, image_data_dir) == image_data_dir / "mnist"
    assert registry.find_folder(mnist, None) == cached
    monkeypatch.setenv("DLCLASSICS_DATA", str(tmp_path / "env"))
    assert registry.find_folder(mnist, None) == other
    # DIR may also be the dataset's own folder
    assert registry.find_folder(mnist, image_data_dir / "mnist") == image_data_dir / "mnist"


@pytest.mark.parametrize("command", [["data", "status", "mnist"], ["run", "dense-autoencoder", "--quick"]])
def test_a_wrong_data_dir_is_an_error_not_a_silent_fallback(image_data_dir, tmp_path, capsys, command):
    write_image_dataset(tmp_path / "cache" / "fashion-mnist")  # a copy that must not be used instead
    write_image_dataset(tmp_path / "cache" / "mnist")
    out = tmp_path / "runs"
    code = main([*command, "--data-dir", str(tmp_path / "nonexistent"), *(["--out", str(out)] if "run" in command else [])])
    line = _one_line(capsys)
    assert code == 2 and "nonexistent does not exist" in line
    assert not (out / "dense-autoencoder").exists()  # a refused run leaves no runs/<id>/ folder


def test_a_data_dir_without_the_files_names_what_was_looked_for(image_data_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "status", "mnist", "--data-dir", str(tmp_path / "empty")]) == 2
    line = _one_line(capsys)
    assert "holds none of the 'mnist' files" in line and "train-images-idx3-ubyte" in line


def test_env_data_dir_that_does_not_exist_is_an_error(image_data_dir, tmp_path, monkeypatch):
    write_image_dataset(tmp_path / "cache" / "mnist")
    monkeypatch.setenv("DLCLASSICS_DATA", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=r"\$DLCLASSICS_DATA .*missing does not exist"):
        images.load_images("mnist")


def test_unreadable_folder_is_one_line(image_data_dir, monkeypatch, capsys):
    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", denied)
    assert main(["data", "status", "mnist", "--data-dir", str(image_data_dir)]) == 1
    assert "permission denied" in _one_line(capsys)


def test_unreadable_file_is_one_line(image_data_dir, monkeypatch):
    def denied(path, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("dlclassics.data.idx.open", denied, raising=False)
    with pytest.raises(RunError, match="permission denied; make it readable"):
        images.load_images("mnist", image_data_dir)


# ---------------------------------------------------------------- verification

def test_mnist_training_files_are_verified_in_both_forms(tmp_path):
    """Uncompressed training files of the right shape but other content are not official (issue: only the
    .gz md5 was known, so raw files passed unchecked)."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    pictures, labels = make_class_images(60000, 0)
    write_idx(folder / "train-images-idx3-ubyte", pictures)
    write_idx(folder / "train-labels-idx1-ubyte", labels)
    for entry in images.MNIST.files[:2]:
        with pytest.raises(UnofficialFile, match="not the official 'mnist' file"):
            registry.read_verified(images.MNIST, folder / entry.name, entry)
    assert {s.split: s.state for s in registry.status("mnist", folder)[1]}["train"] == "unofficial"


def test_damaged_and_unofficial_files_get_different_messages(image_data_dir, monkeypatch, capsys):
    folder = image_data_dir / "fashion-mnist"
    monkeypatch.setitem(registry.DATASETS, "fashion-mnist", _checked_spec(folder))
    assert main(["data", "status", "fashion-mnist", "--data-dir", str(image_data_dir)]) == 0
    raw = folder / "train-images-idx3-ubyte"
    raw.write_bytes(read_payload(folder / "train-images-idx3-ubyte.gz"))
    (folder / "train-images-idx3-ubyte.gz").unlink()
    payload = bytearray(raw.read_bytes())
    payload[100] ^= 0xFF  # one byte changed: readable, but not the official content
    raw.write_bytes(bytes(payload))
    assert main(["data", "status", "fashion-mnist", "--data-dir", str(image_data_dir)]) == 1
    assert "unofficial" in capsys.readouterr().out
    with pytest.raises(UnofficialFile, match="--unverified"):
        images.load_images("fashion-mnist", image_data_dir)
    raw.write_bytes(bytes(payload[:-10]))  # truncated: damaged
    assert main(["data", "status", "fashion-mnist", "--data-dir", str(image_data_dir)]) == 1
    assert "damaged" in capsys.readouterr().out
    with pytest.raises(DamagedFile, match="truncated"):
        images.load_images("fashion-mnist", image_data_dir, unverified=True)


def test_own_data_runs_with_unverified_and_is_marked(image_data_dir, tmp_path, monkeypatch, capsys):
    """A real, different MNIST-format set (here 300 generated digits against MNIST's official checksums)."""
    monkeypatch.setitem(registry.DATASETS, "mnist", images.MNIST)  # the official checksums
    own = write_image_dataset(tmp_path / "own", n_train=300, n_test=100)
    code = main(["run", "mnist-mlp", "--quick", "--quiet", "--data-dir", str(own), "--out", str(tmp_path / "r")])
    line = _one_line(capsys)
    assert code == 1 and "not the official 'mnist' file" in line and "--unverified" in line
    assert not (tmp_path / "r" / "mnist-mlp").exists()
    assert main(["run", "mnist-mlp", "--quick", "--quiet", "--unverified", "--data-dir", str(own),
                 "--out", str(tmp_path / "r")]) == 0
    (folder,) = (tmp_path / "r" / "mnist-mlp").iterdir()
    assert json.loads((folder / "config.json").read_text())["data_checks"] == "unverified, not comparable"
    report = (folder / "report.md").read_text()
    assert "unverified, not comparable" in report and "| met |" not in report


def test_raw_and_gzip_files_load_the_same(tmp_path, image_data_dir):
    write_image_dataset(tmp_path / "raw" / "mnist", gzip=False)
    raw = images.load_images("mnist", tmp_path / "raw")
    packed = images.load_images("mnist", image_data_dir)
    assert raw.train_x.dtype == packed.train_x.dtype == torch.uint8 and raw.train_x.shape == (600, 28, 28)
    assert (raw.train_x == packed.train_x).all() and (raw.test_y == packed.test_y).all()


def test_partial_folder_needs_carve_test(image_data_dir, capsys):
    for path in (image_data_dir / "mnist").glob("train-*"):
        path.unlink()
    assert main(["data", "status", "mnist", "--data-dir", str(image_data_dir)]) == 0
    assert "partial" in capsys.readouterr().out
    with pytest.raises(RunError, match="--carve-test"):
        images.load_images("mnist", image_data_dir)
    carved = images.load_images("mnist", image_data_dir, carve_test=0.25)
    again = images.load_images("mnist", image_data_dir, carve_test=0.25)
    assert not carved.comparable and len(carved.test_x) == 50 and len(carved.train_x) == 150
    assert (carved.test_y == again.test_y).all()  # deterministic


def test_missing_dataset_is_one_clear_line(image_data_dir, tmp_path, capsys):
    code = main(["run", "mnist-mlp", "--quick", "--out", str(tmp_path / "r")])  # no --data-dir: cache, system
    line = _one_line(capsys)
    assert code == 1 and "was not found" in line
    assert not (tmp_path / "r" / "mnist-mlp").exists()


# ---------------------------------------------------------------- a new dataset by its spec alone

TINY = images.ImageDatasetSpec(
    name="tiny-digits", title="a test-only IDX set of 16x16 images in 4 classes", kind="images",
    classes=("a", "b", "c", "d"), image_size=16,
    files=(DataFile("tiny-train-images", "train", "images"), DataFile("tiny-train-labels", "train", "labels"),
           DataFile("tiny-test-images", "test", "images"), DataFile("tiny-test-labels", "test", "labels")),
    install_hint="generated by the test")


def _write_tiny(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    hashes = {}
    for split, n in (("train", 240), ("test", 80)):
        labels = rng.integers(0, 4, n).astype(np.uint8)
        pictures = rng.integers(0, 50, (n, 16, 16)).astype(np.uint8)
        for cls in range(4):
            pictures[labels == cls, 4 * cls:4 * cls + 4, 4:12] = 255
        for role, array in (("images", pictures), ("labels", labels)):
            write_idx(folder / f"tiny-{split}-{role}.gz", array)
            hashes[f"tiny-{split}-{role}"] = hashlib.sha256(idx_bytes(array)).hexdigest()
    return hashes


def test_a_new_image_dataset_needs_only_its_spec(tmp_path, monkeypatch, capsys):
    hashes = _write_tiny(tmp_path / "data" / "tiny-digits")
    spec = dataclasses.replace(TINY, files=tuple(dataclasses.replace(f, sha256=hashes[f.name]) for f in TINY.files))
    monkeypatch.setattr(registry, "DATASETS", dict(registry.DATASETS))
    registry.register(spec)
    data_dir = tmp_path / "data"
    assert main(["data", "status", "--data-dir", str(data_dir), "tiny-digits"]) == 0
    assert "tiny-digits    train  ok" in capsys.readouterr().out
    for experiment in ("mnist-mlp", "mnist-classifier"):
        assert main(["run", experiment, "--quick", "--quiet", "--dataset", "tiny-digits", "--data-dir", str(data_dir),
                     "--out", str(tmp_path / "r")]) == 0
        (folder,) = (tmp_path / "r" / experiment).iterdir()
        assert json.loads((folder / "metrics.json").read_text())["test_accuracy"] > 0.25  # it learned something
    assert main(["run", "mnist-mlp", "--dry-run", "--dataset", "no-such-set"]) == 2
    assert "tiny-digits" in _one_line(capsys)  # the choices come from the registry


FASHION_FROM_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION_FROM_DEBIAN.is_dir(), reason=f"Debian's dataset-fashion-mnist is not installed at "
                                                            f"{FASHION_FROM_DEBIAN}")
def test_the_installed_fashion_mnist_matches_the_shipped_checksums():
    """The real files, not generated ones: every split of Debian's Fashion-MNIST passes the sha256 values
    this package ships (CI installs the package; the other tests switch the checksums off)."""
    folder, splits = registry.status("fashion-mnist", FASHION_FROM_DEBIAN.parent)
    assert folder == FASHION_FROM_DEBIAN
    assert [(split.split, split.state) for split in splits] == [("train", "ok"), ("test", "ok")]
    assert all(entry.sha256 for entry in registry.dataset("fashion-mnist").files)
