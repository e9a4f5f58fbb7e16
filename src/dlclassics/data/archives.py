"""Datasets published as one archive (a zip or a tar): downloaded whole, checked, then only the
dataset's own files are read out of it, each verified before it is kept.

The archive's paths are never used to write anything: each file the spec names is looked up by its
base name among the members and written (via `fetch.keep_verified`: temporary file, verify, rename)
as `<folder>/<name>.gz`. Still, an archive with a member that is an absolute path, goes up with `..`,
or is a link or a device is refused as a whole: the official archives hold none, so such an archive
is not the one the checksums speak of. A member is read with a size bound (a zip may lie about it).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from dlclassics.data.fetch import already_verified, download, keep_verified, mirrors_for
from dlclassics.data.registry import DatasetSpec
from dlclassics.errors import RunError

MAX_MEMBER_BYTES = 1 << 30


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


def _open_archive(body: bytes, limit: int) -> tuple[list[tuple[str, bool]], Callable[[str], bytes]]:
    """(each member's name and whether it is a plain file or folder, a reader of one member's first
    `limit` + 1 bytes) of a zip or a (compressed) tar held in memory."""
    if zipfile.is_zipfile(io.BytesIO(body)):
        archive = zipfile.ZipFile(io.BytesIO(body))
        kinds = [(info.external_attr >> 16) & 0o170000 for info in archive.infolist()]  # 0: no mode recorded
        listing = [(info.filename, kind in (0, 0o100000, 0o040000)) for info, kind in zip(archive.infolist(), kinds)]
        return listing, lambda name: archive.open(name).read(limit + 1)
    tar = tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    listing = [(member.name, member.isfile() or member.isdir()) for member in tar.getmembers()]
    return listing, lambda name: tar.extractfile(name).read(limit + 1)  # type: ignore[union-attr]


def read_members(body: bytes, archive_name: str, wanted: set[str], limit: int = MAX_MEMBER_BYTES) -> dict[str, bytes]:
    """The content of the members whose base name is in `wanted`; RunError for an unreadable archive,
    an unsafe member (absolute, '..', link, device), a member over `limit` bytes or a missing name."""
    try:
        listing, read = _open_archive(body, limit)
        for name, plain in listing:
            reason = unsafe_reason(name) or (None if plain else "a link or special file")
            if reason:
                raise RunError(f"{archive_name}: member {name!r} is {reason}; refused (not the official archive)")
        chosen = [name for name, _ in listing if PurePosixPath(name).name in wanted and not name.endswith("/")]
        bases = [PurePosixPath(name).name for name in chosen]
        if len(set(bases)) < len(bases):
            raise RunError(f"{archive_name} holds one of {', '.join(sorted(wanted))} twice; refused")
        found = {base: read(name) for base, name in zip(bases, chosen)}
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:  # RuntimeError: encrypted
        raise RunError(f"{archive_name} cannot be read as a zip or tar archive ({exc}); it may be damaged") from None
    for base, content in found.items():
        if len(content) > limit:
            raise RunError(f"{archive_name}: {base} holds more than {limit:,} bytes; refused")
    missing = sorted(wanted - set(found))
    if missing:
        raise RunError(f"{archive_name} lacks {', '.join(missing)}; not the archive the dataset is published as")
    return found


def fetch_archive(spec: DatasetSpec, folder: Path) -> Path:
    """Download `spec.zip_archive` from the first mirror that serves it, check its md5, read the files the spec
    names out of it and keep each one verified, as `<name>.gz`. Files that already verify are kept as they
    are, and nothing is downloaded when all of them do."""
    assert spec.zip_archive is not None
    archive_name, md5 = spec.zip_archive
    wanted = {entry.name for entry in spec.files if not already_verified(spec, folder, entry)}
    if not wanted:
        return folder
    failures = []
    for base in mirrors_for(spec):
        url = base.rstrip("/") + f"/{archive_name}"
        try:
            body = download(url)
            if md5 is not None and hashlib.md5(body).hexdigest() != md5:
                raise RunError(f"{url}: not the official {archive_name} (its md5 differs from {md5})")
            contents = read_members(body, url, wanted)
            break
        except RunError as exc:
            failures.append(str(exc))
    else:
        raise RunError(f"could not download {archive_name} of '{spec.name}' from any mirror ({'; '.join(failures)}); "
                       f"without network, copy its files into {folder} or pass --data-dir")
    for entry in spec.files:
        if entry.name in contents:
            keep_verified(spec, folder, entry, gzip.compress(contents[entry.name], mtime=0))
    return folder
