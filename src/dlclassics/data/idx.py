"""The IDX format of MNIST and Fashion-MNIST, read without torchvision.

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions, then
one 32-bit size per dimension) followed by the payload. Files may be gzip-compressed. We only
need unsigned bytes (type 0x08): images are [N, 28, 28] and labels [N].

The header is read first and its declared shape checked against what the caller expects, so a
file that claims (or, compressed, inflates to) far more than a dataset holds is refused after a
few bytes instead of after filling memory: at most the declared payload plus one byte is read.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from dlclassics.data.registry import DamagedFile

if TYPE_CHECKING:
    import torch

UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
# A check of the declared shape, raising when the file cannot be what the caller wants.
ShapeCheck = Callable[[tuple[int, ...]], None]


def _open(path: Path) -> BinaryIO:
    """The file as a byte stream, decompressed when it is gzip (recognised by its magic, not its name)."""
    handle = open(path, "rb")
    if handle.read(2) == GZIP_MAGIC:
        handle.seek(0)
        return gzip.GzipFile(fileobj=handle)  # type: ignore[return-value]
    handle.seek(0)
    return handle


def _read_exactly(stream: BinaryIO, size: int, source: str) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise DamagedFile(f"{source} is a damaged gzip file ({exc}); delete it and fetch it again") from None


def read_idx(path: Path, ndim: int | None = None, check_shape: ShapeCheck | None = None
             ) -> tuple[torch.Tensor, bytes]:
    """(uint8 tensor, the decompressed bytes) of an IDX file, reading no more than it declares.

    `check_shape(shape)` sees the declared shape before any payload is read.
    """
    source = str(path)
    with _open(path) as stream:
        head = _read_exactly(stream, 4, source)
        dims = _check_head(head, source, ndim)
        sizes = _read_exactly(stream, 4 * dims, source)
        if len(sizes) < 4 * dims:
            raise DamagedFile(f"{source} is truncated inside its header")
        shape = struct.unpack(f">{dims}I", sizes)
        if check_shape is not None:
            check_shape(shape)
        expected = int(np.prod(shape)) if dims else 0
        payload = _read_exactly(stream, expected + 1, source)  # one byte more tells padding apart
    data = head + sizes + payload
    return _array(data, shape, 4 + 4 * dims, source), data


def _check_head(head: bytes, source: str, ndim: int | None) -> int:
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DamagedFile(f"{source} is not an IDX file (wrong magic number); it may be corrupt or another format")
    type_code, dims = head[2], head[3]
    if type_code != UBYTE:
        raise DamagedFile(f"{source} holds IDX type 0x{type_code:02x}; only unsigned bytes (0x08) are supported")
    if ndim is not None and dims != ndim:
        raise DamagedFile(f"{source} has {dims} dimensions, expected {ndim}; is it the right file?")
    return dims


def _array(data: bytes, shape: tuple[int, ...], header: int, source: str) -> torch.Tensor:
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise DamagedFile(f"{source} is truncated or padded: header says {shape} ({expected} bytes), "
                       f"payload has {len(data) - header}{'+' if len(data) - header > expected else ''} bytes; "
                       "fetch it again")
    import torch  # here, so that listing datasets (the CLI's help) does not load torch

    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def parse_idx(data: bytes, source: str = "IDX data", ndim: int | None = None) -> torch.Tensor:
    """Parse IDX bytes already in memory into a uint8 tensor, checking magic, dimensions and length."""
    dims = _check_head(data[:4], source, ndim)
    header = 4 + 4 * dims
    if len(data) < header:
        raise DamagedFile(f"{source} is truncated inside its header")
    return _array(data, struct.unpack(f">{dims}I", data[4:header]), header, source)


def read_payload(path: Path) -> bytes:
    """The whole file's bytes, decompressed when it is gzip (for small files and tests)."""
    with _open(path) as stream:
        return _read_exactly(stream, -1, str(path))


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as IDX (gzip when the name ends in .gz); used by tests and caches."""
    payload = idx_bytes(array)
    if compress if compress is not None else str(path).endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1)
    Path(path).write_bytes(payload)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, uncompressed (what the official checksums are taken of)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
