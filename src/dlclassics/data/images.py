"""MNIST-style image datasets: where their IDX files are looked for, how they are verified, loaded.

Search order (first folder holding any of the dataset's files wins):
`--data-dir DIR` (either `DIR/<name>/` or DIR itself), `$DLCLASSICS_DATA` (same two forms),
the user cache `~/.cache/dlclassics/<name>`, then system folders `/usr/share/datasets/<name>`
(where Debian's `dataset-fashion-mnist` installs). Every file is checked against the sha256 of
its decompressed payload (or, where only that is published, the md5 of the official .gz).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from dlclassics.data.idx import parse_idx, read_payload, sha256
from dlclassics.errors import RunError, UsageError

SPLITS = ("train", "test")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlclassics"
SYSTEM_DIRS = (Path("/usr/share/datasets"),)


@dataclasses.dataclass(frozen=True)
class IdxFile:
    split: str
    kind: str  # "images" or "labels"
    name: str  # file name without .gz
    sha256: str | None = None  # of the decompressed payload
    gz_md5: str | None = None  # of the official .gz, where the payload hash is not published


@dataclasses.dataclass(frozen=True)
class ImageDatasetSpec:
    name: str
    classes: tuple[str, ...]
    files: tuple[IdxFile, ...]
    mirrors: tuple[str, ...]
    folder_aliases: tuple[str, ...] = ()
    install_hint: str = ""

    def folder_names(self) -> tuple[str, ...]:
        return (self.name, *self.folder_aliases)


MNIST = ImageDatasetSpec(
    name="mnist",
    classes=tuple(str(d) for d in range(10)),
    files=(
        IdxFile("train", "images", "train-images-idx3-ubyte", gz_md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        IdxFile("train", "labels", "train-labels-idx1-ubyte", gz_md5="d53e105ee54ea40749a09fcbcd1e9432"),
        IdxFile("test", "images", "t10k-images-idx3-ubyte",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        IdxFile("test", "labels", "t10k-labels-idx1-ubyte",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    folder_aliases=("mnist-t10k",),
    install_hint="run 'dlclassics data fetch mnist' (needs network) or pass --data-dir to a folder holding the IDX files",
)

FASHION_MNIST = ImageDatasetSpec(
    name="fashion-mnist",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    files=(
        IdxFile("train", "images", "train-images-idx3-ubyte",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        IdxFile("train", "labels", "train-labels-idx1-ubyte",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        IdxFile("test", "images", "t10k-images-idx3-ubyte",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        IdxFile("test", "labels", "t10k-labels-idx1-ubyte",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    install_hint="run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), "
                 "'dlclassics data fetch fashion-mnist', or pass --data-dir",
)

IMAGE_DATASETS = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}


def image_spec(name: str) -> ImageDatasetSpec:
    try:
        return IMAGE_DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset '{name}'; choose one of {', '.join(IMAGE_DATASETS)}") from None


def candidate_dirs(spec: ImageDatasetSpec, data_dir: Path | None) -> list[Path]:
    """Folders to look in, most specific first."""
    roots: list[Path] = []
    for explicit in (data_dir, os.environ.get("DLCLASSICS_DATA") or None):
        if explicit is not None:
            root = Path(explicit).expanduser()
            roots += [root / folder for folder in spec.folder_names()] + [root]
    roots += [CACHE_DIR / spec.name]
    roots += [system / folder for system in SYSTEM_DIRS for folder in spec.folder_names()]
    return roots


def file_path(folder: Path, entry: IdxFile) -> Path | None:
    for candidate in (folder / f"{entry.name}.gz", folder / entry.name):
        if candidate.is_file():
            return candidate
    return None


def find_folder(spec: ImageDatasetSpec, data_dir: Path | None) -> Path | None:
    """The first candidate folder that holds any of the dataset's files (and not another dataset's)."""
    for folder in candidate_dirs(spec, data_dir):
        if any(file_path(folder, entry) for entry in spec.files) and not _holds_other_dataset(folder, spec):
            return folder
    return None


def _holds_other_dataset(folder: Path, spec: ImageDatasetSpec) -> bool:
    """MNIST and Fashion-MNIST share file names: a folder given directly is told apart by the
    checksum of its (small) label files."""
    for other in IMAGE_DATASETS.values():
        if other.name == spec.name:
            continue
        for entry in (e for e in other.files if e.kind == "labels" and e.sha256):
            path = file_path(folder, entry)
            try:
                if path is not None and sha256(read_payload(path)) == entry.sha256:
                    return True
            except RunError:
                continue
    return False


def verify_file(path: Path, entry: IdxFile) -> bytes:
    """The decompressed payload, after its checksum matched; RunError naming the file otherwise."""
    if entry.gz_md5 is not None and path.suffix == ".gz":
        if hashlib.md5(path.read_bytes()).hexdigest() != entry.gz_md5:
            raise RunError(f"{path} is corrupt (md5 of the .gz does not match the official file); "
                           "delete it and fetch it again")
    payload = read_payload(path)
    if entry.sha256 is not None and sha256(payload) != entry.sha256:
        raise RunError(f"{path} is corrupt (sha256 of its content does not match); delete it and fetch it again")
    return payload


@dataclasses.dataclass
class SplitStatus:
    split: str
    state: str  # "ok", "missing", "corrupt"
    detail: str


def status(name: str, data_dir: Path | None = None) -> tuple[Path | None, list[SplitStatus]]:
    """Where the dataset was found and the state of each split, for `dlclassics data status`."""
    spec = image_spec(name)
    folder = find_folder(spec, data_dir)
    report = []
    for split in SPLITS:
        entries = [e for e in spec.files if e.split == split]
        if folder is None or not all(file_path(folder, e) for e in entries):
            report.append(SplitStatus(split, "missing", "not found in " + (str(folder) if folder else "any location")))
            continue
        try:
            for entry in entries:
                verify_file(file_path(folder, entry), entry)
            report.append(SplitStatus(split, "ok", str(folder)))
        except RunError as exc:
            report.append(SplitStatus(split, "corrupt", str(exc)))
    return folder, report


@dataclasses.dataclass
class ImageData:
    """A dataset in memory: uint8 images [N, 28, 28] and int64 labels [N] per split."""

    name: str
    classes: tuple[str, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    comparable: bool = True  # False when the test split was carved out of another split
    note: str = ""


def _load_split(spec: ImageDatasetSpec, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = {}
    for entry in (e for e in spec.files if e.split == split):
        path = file_path(folder, entry)
        tensors[entry.kind] = parse_idx(verify_file(path, entry), str(path), 3 if entry.kind == "images" else 1)
    images, labels = tensors["images"], tensors["labels"].long()
    if len(images) != len(labels):
        raise RunError(f"{folder}: the {split} images ({len(images)}) and labels ({len(labels)}) differ in number")
    return images, labels


def load_images(name: str, data_dir: Path | None = None, carve_test: float = 0.0) -> ImageData:
    """Load, verify and return a dataset; `carve_test` makes a test split when one is missing."""
    spec = image_spec(name)
    folder = find_folder(spec, data_dir)
    if folder is None:
        raise RunError(f"dataset '{name}' was not found (looked in {', '.join(map(str, candidate_dirs(spec, data_dir)))}); "
                       f"{spec.install_hint}")
    present = [s for s in SPLITS if all(file_path(folder, e) for e in spec.files if e.split == s)]
    if present == list(SPLITS):
        train, test = (_load_split(spec, folder, s) for s in SPLITS)
        return ImageData(name, spec.classes, *train, *test, source=str(folder))
    if not present:
        raise RunError(f"{folder} holds only part of a split of '{name}'; {spec.install_hint}")
    if not 0.0 < carve_test < 1.0:
        raise RunError(f"{folder} holds only the {present[0]} split of '{name}'; pass --carve-test 0.2 to split it "
                       f"into train and test (results then are not comparable with the source), or {spec.install_hint}")
    images, labels = _load_split(spec, folder, present[0])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = int(round(carve_test * len(images)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    note = (f"train/test carved from the {present[0]} split only ({len(train_idx)}/{n_test}, fraction {carve_test}); "
            "numbers are not comparable with the source's")
    return ImageData(name, spec.classes, images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                     source=str(folder), comparable=False, note=note)


def load_for_run(run: Any, name: str) -> ImageData:
    """Load a dataset for a run, noting its source and marking the run when the split was carved."""
    data = load_images(name, run.data_dir, run.carve_test)
    run.note(f"data: {name} from {data.source} ({len(data.train_x):,} train, {len(data.test_x):,} test images)")
    if not data.comparable:
        run.mark_not_comparable(data.note)
    return data
