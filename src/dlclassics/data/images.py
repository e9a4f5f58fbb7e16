"""Image datasets stored as IDX files (MNIST, Fashion-MNIST): their specs, reader and loader.

Where the files are looked for and how they are verified is the registry's (`data/registry.py`);
this module says what an IDX image set is: an images file [N, H, W] and a labels file [N] per split,
each checked against the sha256 of its decompressed content. A new IDX image set is one more
`register(ImageDatasetSpec(...))`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from dlclassics.data.idx import read_idx
from dlclassics.data.registry import (
    DataFile,
    DatasetSpec,
    UnofficialFile,
    dataset,
    file_path,
    names,
    read_verified,
    register,
    require_folder,
)
from dlclassics.errors import RunError, UsageError

if TYPE_CHECKING:  # torch is imported where data is loaded, so that listing the datasets stays cheap
    import torch

# With --unverified a file may hold any number of items, up to this bound (a 28x28 set of this size
# takes 1.6 GB): a header claiming more is refused before anything is read.
MAX_UNVERIFIED_ITEMS = 2_000_000


@dataclasses.dataclass(frozen=True)
class ImageDatasetSpec(DatasetSpec):
    """An IDX image set: per split an `images` file [N, H, W] and a `labels` file [N]."""

    classes: tuple[str, ...] = ()
    channels: int = 1
    image_size: int = 28
    mirror_symmetric: bool = True  # a mirrored image is still one of its class (not so for digits)

    def read_file(self, path: Path, entry: DataFile, unverified: bool) -> tuple[torch.Tensor, bytes]:
        item = (self.image_size, self.image_size) if entry.role == "images" else ()

        def check_shape(shape: tuple[int, ...]) -> None:
            if tuple(shape[1:]) != item:
                raise RunError(f"{path} holds arrays of shape {list(shape)}; '{self.name}' {entry.role} are "
                               f"[N{''.join(f', {s}' for s in item)}]")
            if not unverified and entry.shape is not None and tuple(shape) != entry.shape:
                raise UnofficialFile(f"{path} is not the official '{self.name}' file {entry.name} (it holds "
                                     f"{shape[0]:,} {entry.role}, the official one {entry.shape[0]:,}); to run on "
                                     "your own data, pass --unverified (results are then marked not comparable)")
            if shape[0] > MAX_UNVERIFIED_ITEMS:
                raise RunError(f"{path} claims {shape[0]:,} {entry.role}, more than the {MAX_UNVERIFIED_ITEMS:,} "
                               "this reader accepts; is it the right file?")

        return read_idx(path, ndim=1 + len(item), check_shape=check_shape)

    def load(self, folder: Path, carve_test: float = 0.0, unverified: bool = False) -> ImageData:
        return _load(self, folder, carve_test, unverified)


MNIST = register(ImageDatasetSpec(
    name="mnist",
    title="MNIST handwritten digits (LeCun et al.), 60,000 train + 10,000 test, 28x28 grey",
    kind="images",
    classes=tuple(str(d) for d in range(10)),
    mirror_symmetric=False,
    files=(
        # Training hashes: sha256 of the decompressed official files (the same values are published by
        # several independent loaders); only the .gz md5 is on the original page.
        DataFile("train-images-idx3-ubyte", "train", "images",
                 "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", (60000, 28, 28)),
        DataFile("train-labels-idx1-ubyte", "train", "labels",
                 "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", (60000,)),
        DataFile("t10k-images-idx3-ubyte", "test", "images",
                 "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", (10000, 28, 28)),
        DataFile("t10k-labels-idx1-ubyte", "test", "labels",
                 "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", (10000,)),
    ),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    folder_aliases=("mnist-t10k",),
    install_hint="run 'dlclassics data fetch mnist' (needs network) or pass --data-dir to a folder holding the IDX files",
))

FASHION_MNIST = register(ImageDatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST (Zalando), 60,000 train + 10,000 test, 28x28 grey",
    kind="images",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    files=(
        DataFile("train-images-idx3-ubyte", "train", "images",
                 "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", (60000, 28, 28)),
        DataFile("train-labels-idx1-ubyte", "train", "labels",
                 "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", (60000,)),
        DataFile("t10k-images-idx3-ubyte", "test", "images",
                 "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", (10000, 28, 28)),
        DataFile("t10k-labels-idx1-ubyte", "test", "labels",
                 "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", (10000,)),
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    install_hint="run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), "
                 "'dlclassics data fetch fashion-mnist', or pass --data-dir",
))


def image_spec(name: str) -> ImageDatasetSpec:
    return dataset(name, kind="images")  # type: ignore[return-value]


def image_datasets() -> tuple[str, ...]:
    """The registered image sets: the `choices` of every image experiment's `dataset` option."""
    return names("images")


@dataclasses.dataclass
class ImageData:
    """A dataset in memory: uint8 images [N, H, W] (grey) or [N, C, H, W] and int64 labels [N] per split."""

    name: str
    classes: tuple[str, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    comparable: bool = True  # False when the test split was carved out of another split, or unverified
    note: str = ""
    channels: int = 1
    image_size: int = 28
    mirror_symmetric: bool = True  # random flips are a fair augmentation (False for digits)

    @property
    def summary(self) -> str:
        """One line for a run's report: which data, from where, how much."""
        return f"data: {self.name} from {self.source} ({len(self.train_x):,} train, {len(self.test_x):,} test images)"


def _load_split(spec: ImageDatasetSpec, folder: Path, split: str,
                unverified: bool) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = {entry.role: read_verified(spec, file_path(folder, entry), entry, unverified)
               for entry in spec.files if entry.split == split}
    images, labels = tensors["images"], tensors["labels"].long()
    if len(images) == 0:
        raise RunError(f"{folder}: the {split} split of '{spec.name}' holds no images")
    if len(images) != len(labels):
        raise RunError(f"{folder}: the {split} images ({len(images)}) and labels ({len(labels)}) differ in number")
    if len(labels) and int(labels.max()) >= len(spec.classes):
        raise RunError(f"{folder}: the {split} labels go up to {int(labels.max())}, but '{spec.name}' has "
                       f"{len(spec.classes)} classes")
    return images, labels


def _load(spec: ImageDatasetSpec, folder: Path, carve_test: float, unverified: bool) -> ImageData:
    present = [s for s in spec.splits if all(file_path(folder, e) for e in spec.files if e.split == s)]
    shape = {"channels": spec.channels, "image_size": spec.image_size, "mirror_symmetric": spec.mirror_symmetric}
    notes = []
    if unverified:
        notes.append(f"data: unverified, not comparable (files in {folder} were not checked against the "
                     f"official '{spec.name}' checksums)")
    if present == list(spec.splits):
        if carve_test:
            raise UsageError(f"--carve-test {carve_test:g}: {folder} holds both splits of '{spec.name}', so there is "
                             "nothing to carve (its own test split is used); drop --carve-test")
        train, test = (_load_split(spec, folder, s, unverified) for s in ("train", "test"))
        return ImageData(spec.name, spec.classes, *train, *test, source=str(folder), comparable=not unverified,
                         note="; ".join(notes), **shape)
    if not present:
        raise RunError(f"{folder} holds only part of a split of '{spec.name}'; {spec.install_hint}")
    if not 0.0 < carve_test < 1.0:
        raise RunError(f"{folder} holds only the {present[0]} split of '{spec.name}'; pass --carve-test 0.2 to "
                       f"split it into train and test (results then are not comparable with the source), or "
                       f"{spec.install_hint}")
    import torch

    images, labels = _load_split(spec, folder, present[0], unverified)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = int(round(carve_test * len(images)))
    if not 1 <= n_test < len(images):
        raise RunError(f"--carve-test {carve_test:g} of the {len(images):,} images in {folder} leaves an empty "
                       f"{'test' if n_test < 1 else 'training'} split; choose a fraction that keeps images on both sides")
    test_idx, train_idx = order[:n_test], order[n_test:]
    notes.append(f"train/test carved from the {present[0]} split only ({len(train_idx)}/{n_test}, fraction "
                 f"{carve_test}); numbers are not comparable with the source's")
    return ImageData(spec.name, spec.classes, images[train_idx], labels[train_idx], images[test_idx],
                     labels[test_idx], source=str(folder), comparable=False, note="; ".join(notes), **shape)


def load_images(name: str, data_dir: Path | None = None, carve_test: float = 0.0,
                unverified: bool = False) -> ImageData:
    """Locate, verify and load an image set; `carve_test` makes a test split when one is missing."""
    spec = image_spec(name)
    return spec.load(require_folder(spec, data_dir), carve_test=carve_test, unverified=unverified)
