"""Small CIFAR-10 sets written by the tests in both official layouts, byte for byte as the real files are
built (never committed): binary records, Python 2 protocol-2 pickles, and the .tar.gz archives."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import tarfile
from pathlib import Path

import numpy as np

from dlclassics.data import cifar, registry

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def make_colour_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels uint8 [n, 3072] and labels [n]: noise plus a bright block whose place and colour give the class,
    so a few training steps can learn it (smoke runs check that training does something)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    pictures = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
    for cls in range(10):
        row, col = 3 + 7 * (cls // 4), 3 + 7 * (cls % 4)
        pictures[labels == cls, cls % 3, row:row + 6, col:col + 6] = 250
    return pictures.reshape(n, -1), labels


def binary_batch(pixels: np.ndarray, labels: np.ndarray) -> bytes:
    """Fixed-length records: 1 label byte + 3,072 pixel bytes each."""
    return np.concatenate([labels[:, None], pixels], axis=1).astype(np.uint8).tobytes()


def _short(text: str) -> bytes:
    data = text.encode("latin1")
    return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING: a Python 2 str


def _int(value: int) -> bytes:
    return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)


def python_batch(pixels: np.ndarray, labels: np.ndarray, batch_label: str = "training batch 1 of 5") -> bytes:
    """The batch dict pickled as the official files are (Python 2 cPickle, protocol 2): str keys, a list of int
    labels, the array through numpy.core.multiarray._reconstruct + ndarray.__setstate__ with its bytes as a str."""
    dtype = (b"cnumpy\ndtype\n" + _short("u1") + _int(0) + _int(1) + b"\x87R"
             + b"(" + _int(3) + _short("|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb")
    raw = pixels.astype(np.uint8).tobytes()
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int(0) + b"\x85" + _short("b")
             + b"\x87R" + b"(" + _int(1) + _int(len(pixels)) + _int(pixels.shape[1]) + b"\x86" + dtype + b"\x89"
             + b"T" + struct.pack("<I", len(raw)) + raw + b"tb")
    label_list = b"](" + b"".join(_int(int(v)) for v in labels) + b"e"
    names = b"](" + b"".join(_short(f"image_{i:05d}.png") for i in range(len(pixels))) + b"e"
    return (b"\x80\x02}(" + _short("batch_label") + _short(batch_label) + _short("labels") + label_list
            + _short("data") + array + _short("filenames") + names + b"u.")


def write_layouts(folder: Path, per_batch: int = 60, layouts: tuple[str, ...] = ("bin", "py")) -> Path:
    """`folder/cifar-10-batches-bin/` and/or `folder/cifar-10-batches-py/` with six batches of `per_batch` images
    (the same images in both layouts); returns `folder`."""
    for index, batch in enumerate(BATCHES):
        pixels, labels = make_colour_images(per_batch, seed=index)
        if "bin" in layouts:
            (folder / cifar.BINARY_DIR).mkdir(parents=True, exist_ok=True)
            (folder / cifar.BINARY_DIR / f"{batch}.bin").write_bytes(binary_batch(pixels, labels))
        if "py" in layouts:
            (folder / cifar.PYTHON_DIR).mkdir(parents=True, exist_ok=True)
            (folder / cifar.PYTHON_DIR / batch).write_bytes(python_batch(pixels, labels))
    return folder


def generated_spec(folder: Path | None = None, archive: Path | None = None) -> cifar.CifarSpec:
    """cifar10 with the official sizes off and, when `folder` is given, the md5s of its python files (so
    verification is really exercised); with `archive`, that file as the official archive."""
    def unchecked(entry: cifar.CifarFile, directory: str) -> cifar.CifarFile:
        path = folder / directory / entry.name if folder is not None else None
        md5 = hashlib.md5(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None
        return dataclasses.replace(entry, shape=None, md5=md5 if entry.md5 else None)

    spec = cifar.CIFAR10
    replaced = dataclasses.replace(
        spec, files=tuple(unchecked(f, cifar.BINARY_DIR) for f in spec.files),
        python_files=tuple(unchecked(f, cifar.PYTHON_DIR) for f in spec.python_files))
    if archive is not None:
        data = archive.read_bytes()
        replaced = dataclasses.replace(replaced, archive=dataclasses.replace(
            spec.archive, sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    return replaced


def use_spec(monkeypatch, spec: cifar.CifarSpec) -> None:
    monkeypatch.setitem(registry.DATASETS, "cifar10", spec)


def tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A .tar.gz of the given members (data for regular files, None for links, folders and devices)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def official_archive(path: Path, source: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    """`cifar-10-binary.tar.gz` as published: cifar-10-batches-bin/ with the six batches, batches.meta.txt and
    readme.html (plus `extra` members, for the hostile archives)."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(tarfile.TarInfo(cifar.BINARY_DIR), None)]
    members[0][0].type = tarfile.DIRTYPE
    for batch in BATCHES:
        members.append((tarfile.TarInfo(f"{cifar.BINARY_DIR}/{batch}.bin"),
                        (source / cifar.BINARY_DIR / f"{batch}.bin").read_bytes()))
    members.append((tarfile.TarInfo(f"{cifar.BINARY_DIR}/batches.meta.txt"),
                    "\n".join(cifar.CIFAR10.classes).encode() + b"\n"))
    members.append((tarfile.TarInfo(f"{cifar.BINARY_DIR}/readme.html"), b"<meta HTTP-EQUIV=\"REFRESH\">\n"))
    return tar_gz(path, members + list(extra))
