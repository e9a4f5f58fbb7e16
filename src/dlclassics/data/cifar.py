"""CIFAR-10 (Krizhevsky 2009) in both official layouts, and the padded grey stand-in for machines without it.

The two layouts, as the archives of the CIFAR page unpack:
- binary (`cifar-10-batches-bin/`, preferred; what `dlclassics data fetch cifar10` downloads):
  data_batch_1.bin .. data_batch_5.bin and test_batch.bin, each 10,000 fixed-length records of 1 label
  byte + 3,072 pixel bytes (the 1,024 red values, then green, then blue, rows in order). Read with
  numpy; no pickle at all.
- python (`cifar-10-batches-py/`, what torchvision keeps in `./data`): data_batch_1 .. data_batch_5 and
  test_batch, each a pickled dict {data: uint8 [10000, 3072], labels: [10000 ints], ...}. Read with
  `RestrictedUnpickler`, which admits only what a pickled numpy array needs and refuses every other
  global before it is looked up, so a crafted file cannot run code.

The registry looks for the files in `<root>/cifar10/`, `<root>/cifar-10-batches-bin/`,
`<root>/cifar-10-batches-py/` and `<root>` (one of the archive folders, or the folder they were
extracted into), with the usual search order; a folder holding both layouts is read as binary.

Checksums: the python files have published md5s (the ones torchvision checks); for the binary files
none is published, only for their archive (md5 and sha256 on the CIFAR page), which `data fetch`
checks before extracting anything. A binary file placed by hand is checked for its exact length
(10,000 whole records) and its labels (0-9) only.

Grey image sets (MNIST, Fashion-MNIST) stand in for CIFAR-10 where it cannot be had: zero-padded to
32x32 and repeated to 3 channels, so every CIFAR experiment runs its real code path offline; such
runs are marked "not comparable: different data".
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlclassics.data import images
from dlclassics.data.images import ImageData
from dlclassics.data.registry import (
    CACHE_DIR,
    Archive,
    DamagedFile,
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

KIND = "colour-images"
SIDE, CHANNELS = 32, 3
PIXELS = CHANNELS * SIDE * SIDE  # 3,072 bytes per image
RECORD = 1 + PIXELS  # one label byte, then the pixels
BATCH = 10_000  # records per official batch file
# With --unverified a batch may hold any number of records up to this bound (600 MB); more is refused unread.
MAX_UNVERIFIED_RECORDS = 200_000
BINARY_DIR, PYTHON_DIR = "cifar-10-batches-bin", "cifar-10-batches-py"
BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
BINARY_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"


# ---------------------------------------------------------------- the python layout, unpickled safely

class _ArrayClass:
    """Stands for `numpy.ndarray` inside a pickle: only ever an argument of `_empty_array`, never called."""


def _empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """What `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` gives a pickle: an empty array that the
    following BUILD fills through `ndarray.__setstate__` from bytes in the file (so its size is bounded by the
    file's). Any other call, e.g. one asking numpy to allocate a huge shape, is refused."""
    if subtype is not _ArrayClass or tuple(shape) != (0,):
        raise pickle.UnpicklingError("numpy array reconstruction with unexpected arguments")
    return np.empty(0, dtype=np.uint8)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the three globals a pickled numpy array names; every other global
    (`os.system`, `builtins.eval`, `subprocess.Popen`...) is refused before it is imported or called."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _empty_array,  # the name numpy 1 writes (the official files)
               ("numpy._core.multiarray", "_reconstruct"): _empty_array,  # and numpy 2
               ("numpy", "ndarray"): _ArrayClass,
               ("numpy", "dtype"): np.dtype}

    def find_class(self, module: str, name: str) -> Any:
        allowed = self.ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which this reader refuses "
                                         "(only numpy arrays are admitted)")
        return allowed


def _unpickle_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [N, 3072], labels uint8 [N]) of a python-layout batch, or DamagedFile."""
    try:
        # latin1 reads the Python 2 byte strings of the official files (as torchvision does).
        batch = RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DamagedFile(f"{source} was refused unread: {exc}; it is not a CIFAR-10 batch, delete it") from None
    except Exception as exc:  # a truncated or garbled pickle fails in many ways; none of them ran code
        raise DamagedFile(f"{source} is not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
                          "delete it and fetch it again") from None
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get("labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DamagedFile(f"{source} holds no uint8 'data' array of shape [N, {PIXELS}]; is it a CIFAR-10 batch?")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(type(v) is int for v in labels):
        raise DamagedFile(f"{source} holds no list of {len(data)} integer 'labels'; is it a CIFAR-10 batch?")
    if labels and not 0 <= min(labels) <= max(labels) < 256:
        raise DamagedFile(f"{source} has labels outside 0..255; is it a CIFAR-10 batch?")
    return data, np.asarray(labels, dtype=np.uint8)


# ---------------------------------------------------------------- the spec

@dataclasses.dataclass(frozen=True)
class CifarFile(DataFile):
    """A batch file; `md5` of the whole file where one is published (the python layout)."""

    md5: str | None = None


@dataclasses.dataclass(frozen=True)
class CifarSpec(DatasetSpec):
    """CIFAR-style batches: `files` in the binary layout (role "records"), `python_files` in the python one
    (role "pickle"); one split is one or more batches, each [N, 3, 32, 32] images and [N] labels."""

    classes: tuple[str, ...] = ()
    python_files: tuple[CifarFile, ...] = ()

    def files_in(self, folder: Path) -> tuple[DataFile, ...]:
        def holds(files: tuple[DataFile, ...]) -> bool:
            return any(file_path(folder, entry) for entry in files)
        return self.python_files if holds(self.python_files) and not holds(self.files) else self.files

    def read_file(self, path: Path, entry: DataFile, unverified: bool) -> tuple[Any, bytes]:
        """((images uint8 [N, 3, 32, 32], labels int64 [N]), the file's bytes)."""
        official = entry.shape[0] if entry.shape is not None and not unverified else None
        if path.stat().st_size > MAX_UNVERIFIED_RECORDS * RECORD * 1.01:  # a pickle adds ~0.5% of framing
            raise RunError(f"{path} is larger than the {MAX_UNVERIFIED_RECORDS:,} images this reader accepts; "
                           "is it the right file?")
        raw = path.read_bytes()
        source = str(path)
        if entry.role == "records":
            pixels, labels = _records(raw, source)
        else:
            pixels, labels = _unpickle_batch(raw, source)
            md5 = getattr(entry, "md5", None)
            if not unverified and md5 is not None and hashlib.md5(raw).hexdigest() != md5:
                raise UnofficialFile(f"{path} is not the official '{self.name}' file {entry.name} (its md5 differs); "
                                     "if it is a damaged download, delete it and fetch it again; to run on your own "
                                     "data, pass --unverified (results are then marked not comparable)")
        if len(labels) and int(labels.max()) >= len(self.classes):
            raise DamagedFile(f"{path} has labels up to {int(labels.max())}, but '{self.name}' has "
                              f"{len(self.classes)} classes; is it a CIFAR-100 file?")
        if official is not None and len(labels) != official:
            raise UnofficialFile(f"{path} is not the official '{self.name}' file {entry.name} (it holds "
                                 f"{len(labels):,} images, the official one {official:,}); to run on your own data, "
                                 "pass --unverified (results are then marked not comparable)")
        import torch  # here, so that listing the datasets does not load torch

        pictures = torch.from_numpy(pixels.reshape(-1, CHANNELS, SIDE, SIDE).copy())
        return (pictures, torch.from_numpy(labels.astype(np.int64))), raw

    def load(self, folder: Path, unverified: bool = False) -> ImageData:
        """Both splits (CIFAR-10 ships both: nothing is carved), every batch verified."""
        import torch

        files = self.files_in(folder)
        missing = [entry.name for entry in files if file_path(folder, entry) is None]
        if missing:
            raise RunError(f"{folder} lacks {', '.join(missing)} of '{self.name}'; {self.install_hint}")
        split = {}
        for name in self.splits:
            parts = [read_verified(self, file_path(folder, e), e, unverified) for e in files if e.split == name]
            split[name] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        note = (f"data: unverified, not comparable (files in {folder} were not checked against the official "
                f"'{self.name}' checksums)") if unverified else ""
        return ImageData(self.name, self.classes, *split["train"], *split["test"], source=str(folder),
                         comparable=not unverified, note=note, channels=CHANNELS, image_size=SIDE)


def _records(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [N, 3072], labels uint8 [N]) of a binary-layout batch: N whole records, nothing else."""
    if len(raw) % RECORD:
        raise DamagedFile(f"{source} is truncated or padded: {len(raw):,} bytes is not a whole number of "
                          f"{RECORD:,}-byte records; delete it and fetch it again")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    return records[:, 1:], records[:, 0]


def _batches(names_: list[str], split: str, role: str, md5s: tuple[str | None, ...]) -> tuple[CifarFile, ...]:
    return tuple(CifarFile(name, split, role, shape=(BATCH,), md5=md5) for name, md5 in zip(names_, md5s))


TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

CIFAR10 = register(CifarSpec(
    name="cifar10",
    title="CIFAR-10 (Krizhevsky 2009), 50,000 train + 10,000 test, 32x32 colour",
    kind=KIND,
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    files=(_batches([f"{b}.bin" for b in TRAIN_BATCHES], "train", "records", (None,) * 5)
           + _batches(["test_batch.bin"], "test", "records", (None,))),
    # md5 of each python-layout file, as published with the dataset and checked by torchvision.
    python_files=(_batches(TRAIN_BATCHES, "train", "pickle",
                           ("c99cafc152244af753f735de768cd75f", "d4bba439e000b95fd0a9bffe97cbabec",
                            "54ebc095f3ab1f0389bbae665268c751", "634d18415352ddfa80567beed471001a",
                            "482c414d41f54cd18b22e5b47cb7c3cb"))
                  + _batches(["test_batch"], "test", "pickle", ("40351d587109b95175f43aff81a1287e",))),
    folder_aliases=(BINARY_DIR, PYTHON_DIR),
    archive=Archive("cifar-10-binary.tar.gz", BINARY_URL, BINARY_SHA256, 170_052_171, member_dir=BINARY_DIR),
    install_hint=(f"run 'dlclassics data fetch cifar10' (needs network), or download {BINARY_URL} (sha256 "
                  f"{BINARY_SHA256}), put it in {CACHE_DIR / 'cifar10'} and run that command, or pass "
                  f"--data-dir to the folder holding {BINARY_DIR}/ or {PYTHON_DIR}/; offline, "
                  "--dataset fashion-mnist runs a stand-in"),
))


# ---------------------------------------------------------------- loading for a run, with the stand-in

def cifar_datasets() -> tuple[str, ...]:
    """The `choices` of every CIFAR experiment's `dataset`: the CIFAR sets, then the grey stand-ins."""
    return names(KIND) + images.image_datasets()


def as_cifar_images(data: ImageData) -> ImageData:
    """A grey set in CIFAR's shape: zero-padded (centred) to 32x32 and repeated to 3 channels, uint8 [N, 3, 32, 32]."""
    import torch

    if data.image_size > SIDE:
        raise UsageError(f"'{data.name}' has {data.image_size}x{data.image_size} images, larger than CIFAR's "
                         f"{SIDE}x{SIDE}; choose a smaller stand-in")

    def convert(pictures: torch.Tensor) -> torch.Tensor:
        grey = pictures.reshape(len(pictures), data.channels, data.image_size, data.image_size)
        before = (SIDE - data.image_size) // 2
        after = SIDE - data.image_size - before
        padded = torch.nn.functional.pad(grey, (before, after, before, after))
        return padded.expand(-1, CHANNELS, -1, -1).contiguous() if data.channels == 1 else padded

    return dataclasses.replace(data, train_x=convert(data.train_x), test_x=convert(data.test_x), channels=CHANNELS,
                               image_size=SIDE)


def load(name: str, data_dir: Path | None = None, carve_test: float = 0.0, unverified: bool = False) -> ImageData:
    """CIFAR-10, or a grey set as its stand-in in CIFAR's shape (then `comparable` is False, the note says why)."""
    spec = dataset(name)
    if isinstance(spec, CifarSpec):
        return spec.load(require_folder(spec, data_dir), unverified=unverified)
    grey = images.load_images(name, data_dir, carve_test, unverified)
    stand_in = (f"not comparable: different data ({name} stands in for CIFAR-10, zero-padded to 32x32 and "
                "repeated to 3 channels)")
    return dataclasses.replace(as_cifar_images(grey), comparable=False,
                               note="; ".join(filter(None, [stand_in, grey.note])))
