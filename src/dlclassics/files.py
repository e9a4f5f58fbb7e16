"""Files written whole or not at all, and tensor files read without unpickling.

Every file the project writes goes to a temporary name in the same folder and is renamed into place,
so a crash, a full disk or Ctrl-C never leaves half a file under the real name. Files are readable by
others (0644) and folders 0755, whatever the umask, as the README promises. Tensor files are read with
`weights_only=True`: a pickled Python object in them is refused, never run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dlclassics.errors import RunError

FILE_MODE, DIR_MODE = 0o644, 0o755


def make_dirs(path: Path) -> None:
    """`mkdir -p` whose new folders are 0755 whatever the umask (a 077 umask would hide runs from others)."""
    path = Path(path)
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        folder.chmod(DIR_MODE)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600: run files are for others to read too
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a full disk says so without naming the file it was writing
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    """Strict JSON (a NaN or infinity is refused, not written as the non-standard `NaN`)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=jsonable, allow_nan=False) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of dicts as CSV; the header is the union of keys in first-seen order."""
    header: list[str] = []
    for row in rows:
        header += [key for key in row if key not in header]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def jsonable(value: Any) -> Any:
    """`json.dumps(default=...)`: tensors and arrays as lists, paths as strings."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def load_tensor_file(path: Path, expected: str) -> Any:
    """A torch.save file of plain tensors, read with weights_only=True: nothing in it is unpickled.

    Anything else -- a missing, empty or damaged file, a pickled Python object -- is a RunError naming the
    file and `expected` (what it should hold). Refusing a pickle matters: unpickling can run any code.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist or is not a file; expected {expected}")
    if path.stat().st_size == 0:
        raise RunError(f"{path} is empty; expected {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise RunError(f"{path} holds a pickled Python object ({found.group(1)}), not plain tensors: refused, "
                           f"because unpickling can run arbitrary code; expected {expected}") from None
        raise RunError(f"{path} is not a torch.save file of tensors; expected {expected}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path} is not a readable torch.save file ({reason}); expected {expected}") from None
