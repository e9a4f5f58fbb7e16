"""CIFAR-10 in the data layer, on generated files in both official layouts: reading, verification, the restricted
unpickler, `data status`, `data fetch` of the official archive (verified before extraction, extracted safely,
hostile members refused) and the padded grey stand-in."""

import dataclasses
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import (
    BATCHES,
    binary_batch,
    generated_spec,
    make_colour_images,
    official_archive,
    python_batch,
    tar_gz,
    use_spec,
    write_layouts,
)

from dlclassics.cli import main
from dlclassics.data import cifar, fetch, registry
from dlclassics.data.images import ImageData
from dlclassics.data.registry import DamagedFile, UnofficialFile
from dlclassics.errors import RunError

NO_NETWORK = "http://127.0.0.1:9"


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """No system folders, an empty user cache, no $DLCLASSICS_DATA; cifar10 without official sizes or md5s."""
    monkeypatch.setattr(registry, "SYSTEM_DIRS", ())
    monkeypatch.setattr(registry, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("DLCLASSICS_DATA", raising=False)
    monkeypatch.delenv("DLCLASSICS_MIRROR", raising=False)
    use_spec(monkeypatch, generated_spec())
    return tmp_path


@pytest.fixture
def both_layouts(isolated, monkeypatch) -> Path:
    """`root/cifar-10-batches-bin/` and `root/cifar-10-batches-py/`, the python md5s those of the generated files."""
    root = write_layouts(isolated / "root")
    use_spec(monkeypatch, generated_spec(root))
    return root


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- reading both layouts

def test_both_layouts_hold_the_same_images(both_layouts):
    spec = registry.dataset("cifar10")
    binary = spec.load(both_layouts / cifar.BINARY_DIR)
    python = spec.load(both_layouts / cifar.PYTHON_DIR)
    assert binary.train_x.shape == (300, 3, 32, 32) and binary.train_x.dtype == torch.uint8
    assert binary.test_x.shape == (60, 3, 32, 32) and binary.channels == 3 and binary.image_size == 32
    assert torch.equal(binary.train_x, python.train_x) and torch.equal(binary.test_y, python.test_y)
    pixels, labels = make_colour_images(60, seed=0)  # data_batch_1: channel planes in order, rows in order
    assert torch.equal(binary.train_x[:60], torch.from_numpy(pixels.reshape(60, 3, 32, 32)))
    assert binary.train_y[:60].tolist() == labels.tolist()


def test_search_order_finds_either_archive_folder(both_layouts, tmp_path):
    spec = registry.dataset("cifar10")
    # the folder the archives were extracted into (binary preferred), or one archive folder itself
    assert registry.find_folder(spec, both_layouts) == both_layouts / cifar.BINARY_DIR
    assert registry.find_folder(spec, both_layouts / cifar.PYTHON_DIR) == both_layouts / cifar.PYTHON_DIR
    assert spec.files_in(both_layouts / cifar.PYTHON_DIR) == spec.python_files
    python_only = write_layouts(tmp_path / "torchvision-data", layouts=("py",))  # torchvision's ./data
    assert registry.find_folder(spec, python_only) == python_only / cifar.PYTHON_DIR
    (tmp_path / "cache").mkdir()
    (write_layouts(tmp_path / "flat", layouts=("bin",)) / cifar.BINARY_DIR).rename(tmp_path / "cache" / "cifar10")
    assert registry.find_folder(spec, None) == tmp_path / "cache" / "cifar10"  # `data fetch` writes it flat


def test_status_shows_cifar10_per_split(both_layouts, capsys):
    assert main(["data", "status", "cifar10", "--data-dir", str(both_layouts)]) == 0
    out = capsys.readouterr().out
    assert f"cifar10        train  ok         {both_layouts / cifar.BINARY_DIR}" in out
    assert "cifar10        test   ok" in out
    assert main(["data", "status", "cifar10"]) == 0  # nowhere: missing, not an error
    assert "cifar10        train  missing" in capsys.readouterr().out


# ---------------------------------------------------------------- bad files: damaged vs not official

def test_truncated_binary_batch_is_damaged(both_layouts, capsys):
    batch = both_layouts / cifar.BINARY_DIR / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    assert main(["data", "status", "cifar10", "--data-dir", str(both_layouts)]) == 1
    assert "damaged" in capsys.readouterr().out
    with pytest.raises(DamagedFile, match="truncated or padded"):
        registry.dataset("cifar10").load(both_layouts / cifar.BINARY_DIR, unverified=True)


def test_labels_beyond_the_classes_are_damaged(both_layouts):
    pixels, labels = make_colour_images(10, seed=0)
    labels[3] = 57  # a CIFAR-100 fine label
    (both_layouts / cifar.BINARY_DIR / "test_batch.bin").write_bytes(binary_batch(pixels, labels))
    with pytest.raises(DamagedFile, match="CIFAR-100"):
        registry.dataset("cifar10").load(both_layouts / cifar.BINARY_DIR)


def test_python_batch_with_another_md5_is_not_official(both_layouts, capsys):
    pixels, labels = make_colour_images(60, seed=99)  # readable, but not the file the md5 names
    (both_layouts / cifar.PYTHON_DIR / "data_batch_2").write_bytes(python_batch(pixels, labels))
    python_dir = both_layouts / cifar.PYTHON_DIR
    assert main(["data", "status", "cifar10", "--data-dir", str(python_dir)]) == 1
    assert "unofficial" in capsys.readouterr().out
    with pytest.raises(UnofficialFile, match="md5 differs.*--unverified"):
        registry.dataset("cifar10").load(python_dir)
    data = registry.dataset("cifar10").load(python_dir, unverified=True)
    assert not data.comparable and "unverified" in data.note


def test_official_sizes_are_required_unless_unverified(isolated, tmp_path):
    folder = write_layouts(tmp_path / "own", layouts=("bin",)) / cifar.BINARY_DIR  # 60 images, not 10,000
    spec = cifar.CIFAR10  # the official spec: sizes checked
    with pytest.raises(UnofficialFile, match="60 images, the official one 10,000"):
        spec.load(folder)
    assert len(spec.load(folder, unverified=True).train_x) == 300


# ---------------------------------------------------------------- the restricted unpickler

class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os
        return os.system, (self.command,)


def test_crafted_pickle_is_refused_without_running(both_layouts, tmp_path, capsys):
    marker = tmp_path / "pwned"
    crafted = pickle.dumps({"data": _RunsCommand(f"touch {marker}"), "labels": []}, protocol=2)
    (both_layouts / cifar.PYTHON_DIR / "test_batch").write_bytes(crafted)
    with pytest.raises(DamagedFile, match=r"refused unread: it asks for (posix|os)\.system"):
        registry.dataset("cifar10").load(both_layouts / cifar.PYTHON_DIR, unverified=True)
    assert not marker.exists()
    code = main(["data", "status", "cifar10", "--data-dir", str(both_layouts / cifar.PYTHON_DIR)])
    assert code == 1 and "damaged" in capsys.readouterr().out and not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(eval, protocol=2),  # a bare global: builtins.eval
    b"\x80\x02cnumpy\nndarray\nJ\x00\xca\x9a;\x85R.",  # numpy.ndarray((10**9,)): allocation without data
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a;\x85U\x01b\x87R.",
])
def test_only_numpy_array_reconstruction_is_admitted(payload):
    with pytest.raises(DamagedFile):
        cifar._unpickle_batch(payload, "crafted")


def test_official_python_pickle_structure_is_read():
    """The bytes a Python 2 cPickle wrote (SHORT_BINSTRING keys, numpy.core names): read, not refused."""
    pixels, labels = make_colour_images(7, seed=3)
    data, read_labels = cifar._unpickle_batch(python_batch(pixels, labels), "batch")
    assert np.array_equal(data, pixels) and read_labels.tolist() == labels.tolist()


# ---------------------------------------------------------------- `data fetch cifar10`: the official archive

@pytest.fixture
def mirror(both_layouts, tmp_path, monkeypatch) -> Path:
    """A local mirror holding `cifar-10-binary.tar.gz` in the official layout; the spec's archive checksum is
    that file's, and its official URL unreachable, so nothing leaves the machine."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    archive = official_archive(folder / "cifar-10-binary.tar.gz", both_layouts)
    _use_archive(monkeypatch, both_layouts, archive)
    monkeypatch.setenv("DLCLASSICS_MIRROR", folder.as_uri())
    return folder


def _unreachable(spec: cifar.CifarSpec) -> cifar.CifarSpec:
    """The spec with its archive's official URL pointing nowhere, so no test reaches the real server."""
    return dataclasses.replace(spec, archive=dataclasses.replace(spec.archive, url=f"{NO_NETWORK}/{spec.archive.name}"))


def _use_archive(monkeypatch, root: Path, archive: Path) -> None:
    use_spec(monkeypatch, _unreachable(generated_spec(root, archive)))


def test_fetch_verifies_the_archive_then_extracts_the_files_flat(mirror, both_layouts, tmp_path, capsys):
    assert main(["data", "fetch", "cifar10"]) == 0
    target = tmp_path / "cache" / "cifar10"
    assert capsys.readouterr().out.strip() == f"cifar10: downloaded and verified in {target}"
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{b}.bin" for b in BATCHES)  # no temporaries
    assert all((target / f"{b}.bin").read_bytes() == (both_layouts / cifar.BINARY_DIR / f"{b}.bin").read_bytes()
               for b in BATCHES)
    assert {s.state for s in registry.status("cifar10")[1]} == {"ok"}
    before = _tree(target)
    (mirror / "cifar-10-binary.tar.gz").unlink()
    assert main(["data", "fetch", "cifar10"]) == 0 and _tree(target) == before  # verified files: no download


def test_archive_is_verified_before_it_is_opened(mirror, tmp_path, monkeypatch, capsys):
    target = tmp_path / "target"
    archive = mirror / "cifar-10-binary.tar.gz"
    data = bytearray(archive.read_bytes())
    data[-30] ^= 0xFF
    archive.write_bytes(bytes(data))  # same size, other content
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("an unverified archive was opened"))
    assert main(["data", "fetch", "cifar10", "--to", str(target)]) == 1
    line = _one_line(capsys)
    assert "is not the official cifar-10-binary.tar.gz: it has sha256" in line
    assert list(target.iterdir()) == []


def test_html_page_saved_as_the_archive_is_refused(isolated, tmp_path, monkeypatch, capsys):
    target = tmp_path / "target"
    target.mkdir()
    (target / "cifar-10-binary.tar.gz").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    use_spec(monkeypatch, cifar.CIFAR10)  # the official archive checksum
    assert main(["data", "fetch", "cifar10", "--to", str(target)]) == 1
    assert "is an HTML page" in _one_line(capsys)
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-binary.tar.gz"]  # the user's file is kept


def test_archive_put_in_the_folder_by_hand_is_used_offline(mirror, tmp_path, monkeypatch):
    target = tmp_path / "target"
    target.mkdir()
    (target / "cifar-10-binary.tar.gz").write_bytes((mirror / "cifar-10-binary.tar.gz").read_bytes())
    monkeypatch.setenv("DLCLASSICS_MIRROR", NO_NETWORK)
    assert fetch.fetch("cifar10", target) == target
    assert {s.state for s in registry.status("cifar10", target)[1]} == {"ok"}


def test_without_network_one_line_says_where_to_put_what(isolated, tmp_path, monkeypatch, capsys):
    use_spec(monkeypatch, _unreachable(cifar.CIFAR10))
    monkeypatch.setenv("DLCLASSICS_MIRROR", NO_NETWORK)
    assert main(["data", "fetch", "cifar10"]) == 1
    line = _one_line(capsys)
    assert f"sha256 {cifar.BINARY_SHA256}" in line and str(tmp_path / "cache" / "cifar10") in line
    assert "'dlclassics data fetch cifar10' again" in line
    assert list((tmp_path / "cache" / "cifar10").iterdir()) == []  # no partial download left


def test_download_longer_than_the_archive_is_cut_off(tmp_path):
    big = tmp_path / "big.tar.gz"
    big.write_bytes(b"\x1f\x8b" + bytes(5000))
    with pytest.raises(RunError, match="longer than the official file can be"):
        fetch.download_to(big.as_uri(), tmp_path / "part", limit=4096)


def _hostile(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info, (b"evil" if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("member", [
    _hostile("../escaped.txt"),
    _hostile("/tmp/dlclassics-absolute-escape.txt"),
    _hostile("cifar-10-batches-bin/link", tarfile.SYMTYPE, "/etc/passwd"),
    _hostile("cifar-10-batches-bin/uplink", tarfile.SYMTYPE, "../../outside"),
    _hostile("cifar-10-batches-bin/device", tarfile.CHRTYPE),
], ids=["dotdot", "absolute", "absolute-link", "escaping-link", "device"])
def test_hostile_archive_is_refused_whole(both_layouts, tmp_path, monkeypatch, capsys, member):
    """Even an archive whose checksum matched (here the spec is made to trust it) is refused as a whole."""
    archive = official_archive(tmp_path / "cifar-10-binary.tar.gz", both_layouts, extra=[member])
    _use_archive(monkeypatch, both_layouts, archive)
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    archive.rename(target / "cifar-10-binary.tar.gz")
    assert main(["data", "fetch", "cifar10", "--to", str(target)]) == 1
    assert "cannot be extracted safely" in _one_line(capsys)
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-binary.tar.gz"]  # nothing half-extracted
    assert not (tmp_path / "deep" / "escaped.txt").exists()
    assert not Path("/tmp/dlclassics-absolute-escape.txt").exists()


def test_declared_file_as_a_link_is_refused(both_layouts, tmp_path, monkeypatch, capsys):
    """A link that stays inside passes the `data` filter; a batch must still be a regular file."""
    members = [(tarfile.TarInfo(f"{cifar.BINARY_DIR}/{b}.bin"),
                (both_layouts / cifar.BINARY_DIR / f"{b}.bin").read_bytes()) for b in BATCHES[1:]]
    members.append(_hostile(f"{cifar.BINARY_DIR}/data_batch_1.bin", tarfile.SYMTYPE, "data_batch_2.bin"))
    archive = tar_gz(tmp_path / "cifar-10-binary.tar.gz", members)
    _use_archive(monkeypatch, both_layouts, archive)
    target = tmp_path / "target"
    target.mkdir()
    archive.rename(target / archive.name)
    assert main(["data", "fetch", "cifar10", "--to", str(target)]) == 1
    assert "holds no regular file cifar-10-batches-bin/data_batch_1.bin" in _one_line(capsys)
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-binary.tar.gz"]


# ---------------------------------------------------------------- missing data, and the stand-in

def test_run_without_cifar10_names_fetch_url_and_checksum(isolated, tmp_path, capsys, monkeypatch):
    use_spec(monkeypatch, cifar.CIFAR10)
    code = main(["run", "cifar-linear", "--quick", "--quiet", "--out", str(tmp_path / "runs")])
    line = _one_line(capsys)
    assert code == 1 and "dataset 'cifar10' was not found" in line
    assert "dlclassics data fetch cifar10" in line and cifar.BINARY_URL in line and cifar.BINARY_SHA256 in line
    assert not (tmp_path / "runs" / "cifar-linear").exists()


def test_stand_in_is_padded_and_repeated_to_colour():
    grey = torch.randint(1, 256, (4, 28, 28), dtype=torch.uint8)
    data = ImageData("fashion-mnist", tuple("abcdefghij"), grey, torch.zeros(4, dtype=torch.long), grey[:2],
                     torch.zeros(2, dtype=torch.long), source="here")
    padded = cifar.as_cifar_images(data)
    assert padded.train_x.shape == (4, 3, 32, 32) and padded.test_x.shape == (2, 3, 32, 32)
    assert padded.channels == 3 and padded.image_size == 32 and padded.train_x.dtype == torch.uint8
    assert all(torch.equal(padded.train_x[:, c, 2:30, 2:30], grey) for c in range(3))
    border = padded.train_x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0


def test_stand_in_run_loads_padded_and_is_marked(image_data_dir, tmp_path):
    import torch

    from dlclassics.runs import Run

    run = Run("cifar-linear", tmp_path, None, torch.device("cpu"), data_dir=image_data_dir)
    data = run.load_images("fashion-mnist", cifar.load)
    assert data.train_x.shape == (600, 3, 32, 32) and not run.comparable
    assert any("not comparable: different data" in n for n in run.notes)
    assert run.notes[0].startswith("data: fashion-mnist from ")


def test_cifar_experiments_offer_the_stand_ins():
    assert cifar.cifar_datasets()[:1] == ("cifar10",) and {"mnist", "fashion-mnist"} <= set(cifar.cifar_datasets())
    from dlclassics.data.images import image_datasets
    assert "cifar10" not in image_datasets()  # the 28x28 experiments do not list it


def test_fetch_help_lists_cifar10(capsys):
    with pytest.raises(SystemExit):
        main(["data", "fetch", "--help"])
    assert "cifar10" in capsys.readouterr().out

