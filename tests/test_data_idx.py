"""The IDX reader on generated files: round trips, damaged files, and bounded reads of hostile ones."""

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATASETS
from hypothesis import given, settings
from hypothesis import strategies as st

from dlclassics.data import images, registry
from dlclassics.data.idx import idx_bytes, parse_idx, read_idx, read_payload, write_idx
from dlclassics.data.registry import DamagedFile
from dlclassics.errors import RunError


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.booleans(), st.integers(0, 2**32 - 1))
def test_idx_round_trip(shape, compress, seed):
    array = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("a.idx.gz" if compress else "a.idx")
        write_idx(path, array)
        assert np.array_equal(parse_idx(read_payload(path)).numpy(), array)


def test_wrong_magic_is_refused():
    with pytest.raises(RunError, match="wrong magic"):
        parse_idx(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")


def test_truncated_payload_is_refused():
    data = bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(7)
    with pytest.raises(RunError, match="truncated"):
        parse_idx(data)


def test_wrong_dimensions_are_refused():
    data = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes(3)
    with pytest.raises(RunError, match="expected 3"):
        parse_idx(data, ndim=3)


def test_damaged_gzip_is_refused(tmp_path):
    path = tmp_path / "x.gz"
    noise = np.random.default_rng(0).integers(0, 256, 4000).astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + noise)[:2000])
    with pytest.raises(RunError, match="damaged gzip"):
        read_payload(path)


def test_gzip_bomb_is_refused_after_its_header(tmp_path, monkeypatch):
    """A small .gz whose header claims the official shape but that inflates to far more: at most the
    declared payload plus one byte is decompressed, then it is refused as padded."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    declared = idx_bytes(np.zeros((60000, 28, 28), np.uint8))
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(declared)
        for _ in range(50):  # + 200 MB of zeros
            handle.write(bytes(4 << 20))
    assert path.stat().st_size < 1 << 20
    read = []
    original = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, size=-1: read.append(size) or original(self, size))
    with pytest.raises(DamagedFile, match="padded"):
        registry.read_verified(images.MNIST, path, images.MNIST.files[0])
    assert -1 not in read and sum(read) <= len(declared) + 1


def test_header_claiming_too_much_is_refused_before_reading(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 8, 3]) + (10**9).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
    with pytest.raises(RunError, match="official 'mnist' file"):
        registry.read_verified(images.MNIST, path, images.MNIST.files[0])
    with pytest.raises(RunError, match="more than"):
        registry.read_verified(images.MNIST, path, images.MNIST.files[0], unverified=True)


def test_read_idx_returns_the_bytes_it_parsed(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    tensor, data = read_idx(tmp_path / "a.gz", ndim=3)
    assert data == idx_bytes(array) and np.array_equal(tensor.numpy(), array)


@pytest.mark.skipif(not (SHARED_DATASETS / "mnist-t10k").is_dir(), reason="../shared/datasets is not beside the project")
def test_real_mnist_test_split_verifies():
    folder, splits = registry.status("mnist", SHARED_DATASETS)
    assert {s.split: s.state for s in splits} == {"train": "missing", "test": "ok"}
    data = images.load_images("mnist", SHARED_DATASETS, carve_test=0.2)
    assert data.train_x.shape == (8000, 28, 28) and data.test_x.shape == (2000, 28, 28)
