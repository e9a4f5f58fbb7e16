"""The IDX reader, checksums, the search order and `dlclassics data status` on generated files."""

import dataclasses
import gzip
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SHARED_DATASETS, write_image_dataset
from dlclassics.cli import main
from dlclassics.data import images
from dlclassics.data.idx import parse_idx, read_payload, write_idx
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


def _checked_spec(folder, name="fashion-mnist"):
    """The spec with sha256 values of the generated files, so verification is really exercised."""
    spec = images.IMAGE_DATASETS[name]
    files = tuple(dataclasses.replace(f, sha256=hashlib.sha256(read_payload(images.file_path(folder, f))).hexdigest(),
                                      gz_md5=None) for f in spec.files)
    return dataclasses.replace(spec, files=files)


def test_checksum_mismatch_is_reported_corrupt_and_refused(image_data_dir, monkeypatch, capsys):
    folder = image_data_dir / "fashion-mnist"
    monkeypatch.setitem(images.IMAGE_DATASETS, "fashion-mnist", _checked_spec(folder))
    assert main(["data", "status", "fashion-mnist", "--data-dir", str(image_data_dir)]) == 0
    raw = folder / "train-images-idx3-ubyte"
    raw.write_bytes(read_payload(folder / "train-images-idx3-ubyte.gz"))
    (folder / "train-images-idx3-ubyte.gz").unlink()
    payload = bytearray(raw.read_bytes())
    payload[100] ^= 0xFF  # one byte changed
    raw.write_bytes(bytes(payload))
    assert main(["data", "status", "fashion-mnist", "--data-dir", str(image_data_dir)]) == 1
    assert "corrupt" in capsys.readouterr().out
    with pytest.raises(RunError, match="corrupt"):
        images.load_images("fashion-mnist", image_data_dir)


def test_search_order_prefers_data_dir_then_env_then_cache(image_data_dir, tmp_path, monkeypatch):
    other = write_image_dataset(tmp_path / "env" / "mnist")
    assert images.find_folder(images.IMAGE_DATASETS["mnist"], image_data_dir) == image_data_dir / "mnist"
    monkeypatch.setenv("DLCLASSICS_DATA", str(tmp_path / "env"))
    assert images.find_folder(images.IMAGE_DATASETS["mnist"], None) == other
    # DIR may also be the dataset's own folder
    assert images.find_folder(images.IMAGE_DATASETS["mnist"], image_data_dir / "mnist") == image_data_dir / "mnist"


def test_raw_and_gzip_files_load_the_same(tmp_path, monkeypatch, image_data_dir):
    write_image_dataset(tmp_path / "raw" / "mnist", gzip=False)
    raw = images.load_images("mnist", tmp_path / "raw")
    packed = images.load_images("mnist", image_data_dir)
    assert raw.train_x.dtype.is_floating_point is False and raw.train_x.shape == (600, 28, 28)
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
    code = main(["run", "mnist-mlp", "--quick", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "not found" in err[0]
    assert not any((tmp_path / "r" / "mnist-mlp").glob("*[!e]")), "no run folder may look complete"


def test_fetch_without_network_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DLCLASSICS_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setattr(images, "IMAGE_DATASETS", {**images.IMAGE_DATASETS})
    monkeypatch.setitem(images.IMAGE_DATASETS, "mnist", dataclasses.replace(images.MNIST, mirrors=()))
    code = main(["data", "fetch", "mnist", "--to", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "could not download" in err[0]
    assert not list((tmp_path / "m").iterdir())  # nothing half-written


def test_html_error_page_is_recognised(tmp_path, monkeypatch):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<!DOCTYPE html><html>login</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from dlclassics.data import fetch

    try:
        with pytest.raises(RunError, match="HTML page"):
            fetch.download(f"http://127.0.0.1:{server.server_port}/x.gz")
    finally:
        server.shutdown()


@pytest.mark.skipif(not (SHARED_DATASETS / "mnist-t10k").is_dir(), reason="../shared/datasets is not beside the project")
def test_real_mnist_test_split_verifies():
    folder, splits = images.status("mnist", SHARED_DATASETS)
    assert {s.split: s.state for s in splits} == {"train": "missing", "test": "ok"}
    data = images.load_images("mnist", SHARED_DATASETS, carve_test=0.2)
    assert data.train_x.shape == (8000, 28, 28) and data.test_x.shape == (2000, 28, 28)
