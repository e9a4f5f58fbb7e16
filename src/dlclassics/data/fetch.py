"""Download a dataset into the user cache, verifying every file before it takes a file's place.

Mirrors are tried in order, each request with a timeout; `$DLCLASSICS_MIRROR` (a base URL) is
tried first when set. urllib honours the usual proxy variables (`https_proxy`, `no_proxy`...).
A mirror that answers with an HTML page (a login or error page) is recognised and skipped.

Nothing good is ever lost: a file already present that verifies is kept as it is (and not
downloaded again); a download goes to a temporary name, is verified there, and only then renamed
over the final name; on any failure only that temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from dlclassics.data import registry
from dlclassics.data.registry import DataFile, DatasetSpec, dataset, file_path, read_verified
from dlclassics.errors import RunError

TIMEOUT_SECONDS = 30


def mirrors_for(spec: DatasetSpec) -> list[str]:
    override = os.environ.get("DLCLASSICS_MIRROR")
    return ([override] if override else []) + list(spec.mirrors)


def download(url: str) -> bytes:
    """The body at `url`; RunError for network failures and HTML error pages."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            body = response.read()
            content_type = response.headers.get("Content-Type", "") or ""
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RunError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    if "html" in content_type.lower() or body.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")):
        raise RunError(f"{url}: the server sent an HTML page, not the data file")
    return body


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
    keep_verified(spec, folder, entry, download(url))


def keep_verified(spec: DatasetSpec, folder: Path, entry: DataFile, body: bytes) -> None:
    """Write `body` to a temporary file in `folder`, verify it, then rename it to `<name>.gz`."""
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{entry.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        read_verified(spec, Path(temporary), entry)
        os.chmod(temporary, 0o644)
        os.replace(temporary, folder / f"{entry.name}.gz")
    finally:
        Path(temporary).unlink(missing_ok=True)


def fetch(name: str, target: Path | None = None) -> Path:
    """Download every missing or bad file of `name` into `target` (default: the user cache), verified."""
    spec = dataset(name)
    if not spec.mirrors and not os.environ.get("DLCLASSICS_MIRROR"):
        raise RunError(f"'{name}' has no download location; {spec.install_hint}")
    folder = Path(target) if target else registry.CACHE_DIR / spec.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create {folder} ({exc.strerror}); pass --to a writable folder") from None
    if spec.archive is not None:  # one archive holds every file: fetched whole, read safely, each file verified
        from dlclassics.data.archives import fetch_archive
        return fetch_archive(spec, folder)
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
