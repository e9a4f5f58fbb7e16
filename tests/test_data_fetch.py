"""`dlclassics data fetch`: verified before kept, and never at the cost of a good file (local mirrors only)."""

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
from conftest import write_image_dataset

from dlclassics.cli import main
from dlclassics.data import fetch, registry
from dlclassics.data.idx import read_payload
from dlclassics.errors import RunError

NO_NETWORK = "http://127.0.0.1:9/"


@pytest.fixture
def checked_mnist(tmp_path, monkeypatch) -> Path:
    """A generated MNIST-format set in `official/`, registered (without mirrors) with its own checksums."""
    official = write_image_dataset(tmp_path / "official")
    spec = registry.dataset("mnist")
    files = tuple(dataclasses.replace(f, sha256=hashlib.sha256(read_payload(official / f"{f.name}.gz")).hexdigest(),
                                      shape=None) for f in spec.files)
    monkeypatch.setitem(registry.DATASETS, "mnist", dataclasses.replace(spec, files=files, mirrors=()))
    monkeypatch.setattr(registry, "CACHE_DIR", tmp_path / "cache")
    return official


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_fetch_without_network_keeps_good_files(checked_mnist, tmp_path, monkeypatch, capsys):
    target = tmp_path / "target"
    write_image_dataset(target)
    (target / "train-images-idx3-ubyte.gz").unlink()  # one file missing, three good ones
    before = _snapshot(target)
    monkeypatch.setenv("DLCLASSICS_MIRROR", NO_NETWORK)
    assert main(["data", "fetch", "mnist", "--to", str(target)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download train-images-idx3-ubyte.gz" in err[0]
    assert _snapshot(target) == before  # nothing deleted, nothing half-written


def test_fetch_over_verified_files_downloads_nothing(checked_mnist, tmp_path, monkeypatch, capsys):
    target = write_image_dataset(tmp_path / "target")
    before = _snapshot(target)
    monkeypatch.setenv("DLCLASSICS_MIRROR", NO_NETWORK)
    assert main(["data", "fetch", "mnist", "--to", str(target)]) == 0
    assert _snapshot(target) == before


def test_a_bad_download_never_replaces_a_file(checked_mnist, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_image_dataset(mirror, n_train=7)  # readable IDX files, but not the ones the checksums name
    target = write_image_dataset(tmp_path / "target")
    damaged = target / "train-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:50])
    before = _snapshot(target)
    monkeypatch.setenv("DLCLASSICS_MIRROR", mirror.as_uri())
    with pytest.raises(RunError, match="not the official"):
        fetch.fetch("mnist", target)
    assert _snapshot(target) == before  # the damaged file is as it was; no temporary file is left


def test_fetch_downloads_verifies_and_renames(checked_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("DLCLASSICS_MIRROR", checked_mnist.as_uri())
    folder = fetch.fetch("mnist")
    assert folder == tmp_path / "cache" / "mnist"
    assert _snapshot(folder) == _snapshot(checked_mnist)
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in folder.iterdir())
    assert registry.status("mnist")[1][0].state == "ok"


def test_html_error_page_is_recognised(tmp_path):
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
    try:
        with pytest.raises(RunError, match="HTML page"):
            fetch.download_to(f"http://127.0.0.1:{server.server_port}/x.gz", tmp_path / "x.gz", 1 << 20)
    finally:
        server.shutdown()


def test_fetch_help_names_the_datasets(capsys):
    with pytest.raises(SystemExit):
        main(["data", "fetch", "--help"])
    out = capsys.readouterr().out
    assert "mnist" in out and "fashion-mnist" in out
