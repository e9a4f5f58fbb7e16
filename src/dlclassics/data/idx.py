"""The IDX format of MNIST and Fashion-MNIST, read without torchvision.

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions, then
one 32-bit size per dimension) followed by the payload. Files may be gzip-compressed. We only
need unsigned bytes (type 0x08): images are [N, 28, 28] and labels [N].
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from dlclassics.errors import RunError

UBYTE = 0x08


def read_payload(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip (recognised by its magic, not its name)."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise RunError(f"{path} is a damaged gzip file ({exc}); delete it and fetch it again") from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_idx(data: bytes, source: str = "IDX data", ndim: int | None = None) -> torch.Tensor:
    """Parse IDX bytes into a uint8 tensor, checking magic, dimensions and length."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise RunError(f"{source} is not an IDX file (wrong magic number); it may be corrupt or another format")
    type_code, dims = data[2], data[3]
    if type_code != UBYTE:
        raise RunError(f"{source} holds IDX type 0x{type_code:02x}; only unsigned bytes (0x08) are supported")
    if ndim is not None and dims != ndim:
        raise RunError(f"{source} has {dims} dimensions, expected {ndim}; is it the right file?")
    header = 4 + 4 * dims
    if len(data) < header:
        raise RunError(f"{source} is truncated inside its header")
    shape = struct.unpack(f">{dims}I", data[4:header])
    expected = int(np.prod(shape)) if dims else 0
    if len(data) - header != expected:
        raise RunError(f"{source} is truncated or padded: header says {shape} ({expected} bytes), "
                       f"payload has {len(data) - header} bytes; fetch it again")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as IDX (gzip when the name ends in .gz); used by tests and caches."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress if compress is not None else str(path).endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1)
    Path(path).write_bytes(payload)
