"""Download a dataset into the user cache, verifying every file before it is kept.

Mirrors are tried in order, each request with a timeout; `$DLCLASSICS_MIRROR` (a base URL) is
tried first when set. urllib honours the usual proxy variables (`https_proxy`, `no_proxy`...).
A mirror that answers with an HTML page (a login or error page) is recognised and skipped.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from dlclassics.data.images import CACHE_DIR, image_spec, verify_file
from dlclassics.errors import RunError
from dlclassics.runs import atomic_write_bytes

TIMEOUT_SECONDS = 30


def mirrors_for(name: str) -> list[str]:
    override = os.environ.get("DLCLASSICS_MIRROR")
    return ([override] if override else []) + list(image_spec(name).mirrors)


def download(url: str) -> bytes:
    """The body at `url`; RunError for network failures and HTML error pages."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            body = response.read()
            content_type = response.headers.get("Content-Type", "")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RunError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    if "html" in content_type.lower() or body.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")):
        raise RunError(f"{url}: the server sent an HTML page, not the data file")
    return body


def fetch(name: str, target: Path | None = None) -> Path:
    """Download every file of `name` into `target` (default: the user cache) and verify it."""
    spec = image_spec(name)
    folder = Path(target) if target else CACHE_DIR / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    for entry in spec.files:
        path = folder / f"{entry.name}.gz"
        failures = []
        for base in mirrors_for(name):
            try:
                body = download(base.rstrip("/") + "/" + path.name)
                atomic_write_bytes(path, body)
                verify_file(path, entry)
                break
            except RunError as exc:
                path.unlink(missing_ok=True)
                failures.append(str(exc))
        else:
            raise RunError(f"could not download {path.name} of '{name}' from any mirror ({'; '.join(failures)}); "
                           f"without network, copy the files into {folder} or pass --data-dir")
    return folder
