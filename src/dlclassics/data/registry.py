"""Every dataset the project reads, as one registry of specs: which files, their checksums, where
they are looked for, how they are verified, reported, fetched and loaded.

A spec is data (a frozen dataclass); one module per file format subclasses `DatasetSpec` with its
reader and registers its datasets (`data/images.py`: the IDX image sets; `data/cifar.py`: CIFAR-10).
Adding a dataset of a known format means writing its spec and calling `register`; the CLI's `data
status`/`data fetch` and every config's dataset choices read this registry. A spec may name the one
archive its files are published in (`archive`: fetched whole, verified before extraction), and a
format with several official layouts says per folder which one it holds (`files_in`).

Search order (the first folder holding any of the dataset's files wins):
1. an explicit root: `--data-dir DIR`, else `$DLCLASSICS_DATA`; `ROOT/<name>/` (or an alias) or ROOT
   itself. An explicit root is the only place looked at: one that does not exist, or holds none of
   the dataset's files, is an error, never a silent fall-back to another copy;
2. the user cache `~/.cache/dlclassics/<name>/` (where `dlclassics data fetch` writes);
3. system folders `/usr/share/datasets/<name>/` (Debian's `dataset-fashion-mnist` installs there).

Verification first reads the file as its format says (a file that cannot be read that way is
*damaged*), then compares the sha256 of its decompressed content with the official one (a readable
file with another hash is *not the official file*: one's own data, usable with `--unverified`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from pathlib import Path
from typing import Any

from dlclassics.errors import RunError, UsageError

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlclassics"
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
# The modules that declare datasets, imported on first use of the registry (one per file format).
FORMAT_MODULES = ("dlclassics.data.images", "dlclassics.data.cifar", "dlclassics.data.text",
                  "dlclassics.data.ratings")
DATASETS: dict[str, DatasetSpec] = {}


class DamagedFile(RunError):
    """A file that cannot be read as its format says (truncated, bad gzip, wrong header)."""


class UnofficialFile(RunError):
    """A readable file whose content is not the official one's (own data, or another version)."""


@dataclasses.dataclass(frozen=True)
class DataFile:
    """One file of a dataset as published. `name` is without `.gz`: both forms are accepted."""

    name: str
    split: str  # the split it belongs to ("train", "test", ...)
    role: str  # what it holds ("images", "labels", ...)
    sha256: str | None = None  # of the decompressed content; None for generated test specs
    shape: tuple[int, ...] | None = None  # the official array shape, checked before reading the payload


@dataclasses.dataclass(frozen=True)
class Archive:
    """The one file a dataset is published as (a tar or a zip): fetched whole, its checksum checked before
    anything is extracted; the dataset's `files` are its members `<member_dir>/<file name>`. Publishers give
    a sha256 or only an md5 (MovieLens); at least one is required."""

    name: str  # e.g. cifar-10-binary.tar.gz
    url: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None  # bytes, when published: a longer download is refused, another size is not official
    member_dir: str = ""  # the folder inside the archive that holds the files

    def checksum(self) -> str:
        """How to check it by hand: 'sha256 <hex>' (preferred) or 'md5 <hex>'."""
        return f"sha256 {self.sha256}" if self.sha256 else f"md5 {self.md5}"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its files and where to get them. Format modules subclass it with `read_file` and `load`."""

    name: str
    title: str
    kind: str  # what experiments choose among ("images", ...)
    files: tuple[DataFile, ...]
    mirrors: tuple[str, ...] = ()  # base URLs holding `<file name>.gz`
    folder_aliases: tuple[str, ...] = ()  # other folder names it is found under (e.g. mnist-t10k)
    system_folders: tuple[str, ...] = ()  # where a system package installs it (e.g. /usr/share/man)
    install_hint: str = ""
    archive: Archive | None = None  # when the files are published inside one archive (fetched by `data fetch`)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(entry.split for entry in self.files))

    def folder_names(self) -> tuple[str, ...]:
        return (self.name, *self.folder_aliases)

    def files_in(self, folder: Path) -> tuple[DataFile, ...]:
        """The files the dataset is stored as in `folder`: `files`, unless its format has several official
        layouts (CIFAR-10's binary and python versions) and `folder` holds another one."""
        return self.files

    def read_file(self, path: Path, entry: DataFile, unverified: bool) -> tuple[Any, bytes]:
        """(content in the format's type, the bytes its sha256 is taken of); `DamagedFile` when the file
        cannot be read as its format says. `unverified` admits another length than the official one."""
        raise NotImplementedError

    def load(self, folder: Path, **options: Any) -> Any:
        raise NotImplementedError


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def _declared() -> dict[str, DatasetSpec]:
    for module in FORMAT_MODULES:
        importlib.import_module(module)
    return DATASETS


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered dataset names (of one kind): the `choices` of every config's `dataset` option."""
    return tuple(name for name, spec in _declared().items() if kind is None or spec.kind == kind)


def dataset(name: str, kind: str | None = None) -> DatasetSpec:
    """The spec of `name`, or a UsageError listing the datasets there are."""
    spec = _declared().get(name)
    if spec is None or (kind is not None and spec.kind != kind):
        raise UsageError(f"unknown dataset '{name}'; choose one of {', '.join(names(kind))}")
    return spec


# ---------------------------------------------------------------- locating

def explicit_root(data_dir: Path | None) -> tuple[Path, str] | None:
    """The folder the user named (`--data-dir`, else `$DLCLASSICS_DATA`) and how it was named."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    if os.environ.get("DLCLASSICS_DATA"):
        return Path(os.environ["DLCLASSICS_DATA"]).expanduser(), "$DLCLASSICS_DATA"
    return None


def candidate_dirs(spec: DatasetSpec, data_dir: Path | None) -> list[Path]:
    """Folders to look in, most specific first (only the explicit root's, when there is one)."""
    explicit = explicit_root(data_dir)
    if explicit is not None:
        root = explicit[0]
        return [root / folder for folder in spec.folder_names()] + [root]
    return ([CACHE_DIR / spec.name] + [system / folder for system in SYSTEM_DIRS for folder in spec.folder_names()]
            + [Path(folder) for folder in spec.system_folders])


def file_path(folder: Path, entry: DataFile) -> Path | None:
    """`<name>.gz` or `<name>` in `folder`, whichever exists first; None when neither does."""
    for candidate in (folder / f"{entry.name}.gz", folder / entry.name):
        try:
            if candidate.is_file():
                return candidate
        except PermissionError:
            raise RunError(f"cannot read {folder}: permission denied; make it readable (chmod a+rx) "
                           "or pass --data-dir to another copy") from None
    return None


def find_folder(spec: DatasetSpec, data_dir: Path | None) -> Path | None:
    """The first candidate folder that holds any of the dataset's files (and not another dataset's).

    With an explicit root, a root that does not exist or holds none of the files is a UsageError.
    """
    for folder in candidate_dirs(spec, data_dir):
        if any(file_path(folder, entry) for entry in spec.files_in(folder)) and not _holds_other_dataset(folder, spec):
            return folder
    explicit = explicit_root(data_dir)
    if explicit is not None:
        root, flag = explicit
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise UsageError(f"{flag} {root} {what}; pass the folder that holds the '{spec.name}' files")
        wanted = ", ".join(entry.name for entry in spec.files)
        raise UsageError(f"{flag} {root} holds none of the '{spec.name}' files (looked for {wanted}[.gz] in "
                         f"{', '.join(map(str, candidate_dirs(spec, data_dir)))}); {spec.install_hint}")
    return None


def _holds_other_dataset(folder: Path, spec: DatasetSpec) -> bool:
    """MNIST and Fashion-MNIST share file names: a folder given directly is told apart by the
    checksums of the other datasets' (small) label files of the same name."""
    for other in _declared().values():
        if other.name == spec.name:
            continue
        for entry in (e for e in other.files if e.role == "labels" and e.sha256):
            path = file_path(folder, entry)
            if path is None:
                continue
            try:
                _content, hashed = other.read_file(path, entry, unverified=True)
            except RunError:
                continue
            if hashlib.sha256(hashed).hexdigest() == entry.sha256:
                return True
    return False


def require_folder(spec: DatasetSpec, data_dir: Path | None) -> Path:
    folder = find_folder(spec, data_dir)
    if folder is None:
        looked = ", ".join(map(str, candidate_dirs(spec, data_dir)))
        raise RunError(f"dataset '{spec.name}' was not found (looked in {looked}); {spec.install_hint}")
    return folder


# ---------------------------------------------------------------- verifying

def read_verified(spec: DatasetSpec, path: Path, entry: DataFile, unverified: bool = False) -> Any:
    """The file's content after its format and checksum were checked.

    A file that cannot be read is `DamagedFile`; a readable one whose hash differs is `UnofficialFile`
    unless `unverified` (the user's own data, accepted and marked not comparable by the caller).
    """
    try:
        content, hashed = spec.read_file(path, entry, unverified)
    except PermissionError:
        raise RunError(f"cannot read {path}: permission denied; make it readable (chmod a+r)") from None
    except OSError as exc:
        raise DamagedFile(f"{path} cannot be read ({exc.strerror or exc}); delete it and fetch it again") from None
    if not unverified and entry.sha256 is not None and hashlib.sha256(hashed).hexdigest() != entry.sha256:
        raise UnofficialFile(f"{path} is not the official '{spec.name}' file {entry.name} (its content's sha256 "
                             "differs); if it is a damaged download, delete it and fetch it again; to run on "
                             "your own data, pass --unverified (results are then marked not comparable)")
    return content


@dataclasses.dataclass
class SplitStatus:
    split: str
    state: str  # "ok", "missing", "damaged", "unofficial"
    detail: str


def status(name: str, data_dir: Path | None = None) -> tuple[Path | None, list[SplitStatus]]:
    """Where the dataset was found and the state of each split, for `dlclassics data status`."""
    spec = dataset(name)
    folder = find_folder(spec, data_dir)
    report = []
    for split in spec.splits:
        entries = [e for e in (spec.files_in(folder) if folder else spec.files) if e.split == split]
        if folder is None or not all(file_path(folder, e) for e in entries):
            report.append(SplitStatus(split, "missing", "not found in " + (str(folder) if folder else "any location")))
            continue
        try:
            for entry in entries:
                read_verified(spec, file_path(folder, entry), entry)
            report.append(SplitStatus(split, "ok", str(folder)))
        except UnofficialFile as exc:
            report.append(SplitStatus(split, "unofficial", str(exc)))
        except RunError as exc:  # damaged, or not readable as this format at all (a header claiming 4e9 images)
            report.append(SplitStatus(split, "damaged", str(exc)))
    return folder, report
