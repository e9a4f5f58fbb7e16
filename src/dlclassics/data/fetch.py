"""Download a dataset into the user cache, verifying every file before it takes a file's place.

Mirrors are tried in order, each request with a timeout; `$DLCLASSICS_MIRROR` (a base URL) is
tried first when set. urllib honours the usual proxy variables (`https_proxy`, `no_proxy`...).
A mirror that answers with an HTML page (a login or error page) is recognised and skipped.

Nothing good is ever lost: a file already present that verifies is kept as it is (and not
downloaded again); a download goes to a temporary name, is verified there, and only then renamed
over the final name; on any failure only that temporary file is removed.

A dataset published as one archive (its spec's `archive`: CIFAR-10's tar, MovieLens's zip) is fetched
whole instead: the archive's size and checksum are checked before it is opened, it is extracted into a
temporary folder (a tar with tarfile's `data` filter; a zip only when none of its members is absolute,
goes up with `..`, or is a link or a device), every declared file is verified there, and only then
renamed into place. Without network, an archive the user put in the target folder under its official
name is verified and extracted the same way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dlclassics.data import registry
from dlclassics.data.registry import (
    Archive,
    DataFile,
    DatasetSpec,
    dataset,
    file_path,
    read_verified,
)
from dlclassics.errors import RunError, UsageError

TIMEOUT_SECONDS = 30
MAX_ARCHIVE_BYTES = 1 << 32  # a download without a published size, and what any archive may unpack to
CHUNK_BYTES = 1 << 20


def mirrors_for(spec: DatasetSpec) -> list[str]:
    override = os.environ.get("DLCLASSICS_MIRROR")
    return ([override] if override else []) + list(spec.mirrors)


def is_html(content_type: str, head: bytes) -> bool:
    """A login or error page instead of data: told by its content type or its first bytes."""
    return "html" in content_type.lower() or head.lstrip()[:15].lower().startswith((b"<!doctype", b"<html"))


def already_verified(spec: DatasetSpec, folder: Path, entry: DataFile) -> bool:
    path = file_path(folder, entry)
    if path is None:
        return False
    try:
        read_verified(spec, path, entry)
        return True
    except RunError:
        return False


def _download_verified(spec: DatasetSpec, folder: Path, entry: DataFile, url: str) -> None:
    """Stream `url` to a temporary file in `folder` (never the whole body in memory), verify it, then rename
    it to `<name>.gz`; on any failure only the temporary file goes."""
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{entry.name}.", suffix=".part")
    os.close(fd)
    try:
        download_to(url, Path(temporary), MAX_ARCHIVE_BYTES)
        read_verified(spec, Path(temporary), entry)
        os.chmod(temporary, 0o644)
        os.replace(temporary, folder / f"{entry.name}.gz")
    finally:
        Path(temporary).unlink(missing_ok=True)


def fetch(name: str, target: Path | None = None) -> Path:
    """Download every missing or bad file of `name` into `target` (default: the user cache), verified."""
    spec = dataset(name)
    folder = Path(target) if target else registry.CACHE_DIR / spec.name
    if spec.archive is not None:
        return fetch_archive(spec, spec.archive, _writable(folder))
    if not spec.mirrors and not os.environ.get("DLCLASSICS_MIRROR"):
        raise RunError(f"'{name}' has no download location; {spec.install_hint}")
    _writable(folder)
    for entry in spec.files:
        if already_verified(spec, folder, entry):
            continue
        failures = []
        for base in mirrors_for(spec):
            try:
                _download_verified(spec, folder, entry, base.rstrip("/") + f"/{entry.name}.gz")
                break
            except RunError as exc:
                failures.append(str(exc))
        else:
            raise RunError(f"could not download {entry.name}.gz of '{name}' from any mirror ({'; '.join(failures)}); "
                           f"without network, copy the files into {folder} or pass --data-dir")
    return folder


def _writable(folder: Path) -> Path:
    """`folder`, created if needed; one that cannot be (a file there, no permission) is a usage error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--to {folder}: cannot create a folder there ({exc.strerror}); pass --to a writable "
                         "folder") from None
    return folder


# ---------------------------------------------------------------- datasets published as one archive

def fetch_archive(spec: DatasetSpec, archive: Archive, folder: Path) -> Path:
    """The dataset's files in `folder`, from the official archive: the copy already there under its official
    name, else a download (`$DLCLASSICS_MIRROR/<name>` first when set, then the official URL)."""
    if all(already_verified(spec, folder, entry) for entry in spec.files):
        return folder
    local = folder / archive.name
    if local.is_file():
        verify_archive(local, archive)
        extract_archive(spec, archive, local, folder)
        return folder
    override = os.environ.get("DLCLASSICS_MIRROR")
    urls = ([override.rstrip("/") + f"/{archive.name}"] if override else []) + [archive.url]
    limit = archive.size or MAX_ARCHIVE_BYTES
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{archive.name}.", suffix=".part")
    os.close(fd)
    try:
        failures = []
        for url in urls:
            try:
                download_to(url, Path(temporary), limit)
                verify_archive(Path(temporary), archive, shown=url)
                break
            except RunError as exc:
                failures.append(str(exc))
        else:
            raise RunError(f"could not download {archive.name} ({'; '.join(failures)}); without network, download "
                           f"{archive.url} ({archive.checksum()}) by other means into {folder} and run "
                           f"'dlclassics data fetch {spec.name}' again")
        extract_archive(spec, archive, Path(temporary), folder)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return folder


def download_to(url: str, path: Path, limit: int) -> None:
    """Stream `url` into `path`, refusing HTML pages and bodies longer than `limit` bytes."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, open(path, "wb") as handle:
            chunk = response.read(CHUNK_BYTES)
            if is_html(response.headers.get("Content-Type", "") or "", chunk):
                raise RunError(f"{url}: the server sent an HTML page, not the data file")
            written = 0
            while chunk:
                written += len(chunk)
                if written > limit:
                    raise RunError(f"{url}: longer than the official file can be ({limit:,} bytes)")
                handle.write(chunk)
                chunk = response.read(CHUNK_BYTES)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RunError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def verify_archive(path: Path, archive: Archive, shown: str | None = None) -> None:
    """The archive's size and checksum against the official ones, before it is opened."""
    where = shown or str(path)
    kind, official = ("sha256", archive.sha256) if archive.sha256 else ("md5", archive.md5)
    with open(path, "rb") as handle:
        head = handle.read(64)
        handle.seek(0)
        digest = hashlib.file_digest(handle, kind).hexdigest()
    size = path.stat().st_size
    if is_html("", head):
        problem = "is an HTML page (a login or error page saved under the archive's name)"
    elif archive.size is not None and size != archive.size:
        problem = f"has {size:,} bytes, the official archive {archive.size:,}"
    elif digest != official:
        problem = f"has {kind} {digest}, the official archive {official}"
    else:
        return
    raise RunError(f"{where} is not the official {archive.name}: it {problem}; delete it and download "
                   f"{archive.url} again")


def unsafe_reason(name: str) -> str | None:
    """Why a member name could write outside the extraction folder, or None when it cannot."""
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if "\\" in name:
        return "a Windows path"
    if ".." in path.parts:
        return "a path going up with '..'"
    return None


def _extract_zip(path: Path, staging: Path) -> None:
    """Every member of the zip into `staging`, once all are known safe: zipfile itself would quietly rewrite
    an absolute or `..` name (the official archive holds none: such a zip is not it) and does not refuse
    links; the declared sizes are bounded too (zipfile reads no more than a member declares)."""
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        for info in members:
            kind = (info.external_attr >> 16) & 0o170000  # 0: no mode recorded
            reason = unsafe_reason(info.filename) or (None if kind in (0, 0o100000, 0o040000)
                                                       else "a link or special file")
            if reason:
                raise RunError(f"{path}: member {info.filename!r} is {reason}; refused (not the official archive)")
        if sum(info.file_size for info in members) > MAX_ARCHIVE_BYTES:
            raise RunError(f"{path} would unpack to more than {MAX_ARCHIVE_BYTES:,} bytes; refused")
        archive.extractall(staging)


def _data_filter(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
    """tarfile's `data` filter, refusing also the absolute names it would only strip of their leading '/'."""
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, destination)


def extract_archive(spec: DatasetSpec, archive: Archive, path: Path, folder: Path) -> None:
    """Extract into a temporary folder with the `data` filter, verify each declared file, then rename them into
    `folder`. A member escaping the folder, a link or a device refuses the whole archive; nothing is left behind."""
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{spec.name}-extract-"))
    try:
        try:
            if zipfile.is_zipfile(path):
                _extract_zip(path, staging)
            else:
                with tarfile.open(path, "r:*") as tar:
                    tar.extractall(staging, filter=_data_filter)
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise RunError(f"{path} cannot be extracted safely ({exc}); delete it and fetch it again") from None
        extracted = {entry: staging / archive.member_dir / entry.name for entry in spec.files}
        for entry, member in extracted.items():
            if member.is_symlink() or not member.is_file():
                raise RunError(f"{path} holds no regular file {archive.member_dir}/{entry.name}; it is not the "
                               f"official '{spec.name}' archive")
            read_verified(spec, member, entry)
        for entry, member in extracted.items():
            os.chmod(member, 0o644)
            os.replace(member, folder / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
