"""A run's folder on disk: its name, the files every run writes, its lock, and where it ran.

A run lives in `runs/<id>/<timestamp>-<short id>/`. While it runs the folder carries the suffix
`.incomplete`; only a run that finished is renamed to its final name, so a crash never leaves a
folder that looks complete (and an interrupted one can be resumed with `--resume`). A running run
holds an OS lock on a file in its folder, so a second process cannot resume it while it runs.
"""

from __future__ import annotations

import fcntl
import os
import platform
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from dlclassics.errors import UsageError
from dlclassics.files import FILE_MODE, make_dirs

INCOMPLETE = ".incomplete"
# The files every run writes (the run layer is their producer); experiments' own files are in `products`.
CONFIG = "config.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
MODEL = "model.pt"
REPORT = "report.md"
REFERENCES = "references.json"  # the verdicts beside the source's numbers, for `runs --markdown` and the site
REPORT_PARTS = "report.json"  # the report's notes, sections and figure captions, for the site (`dlclassics report`)
CHECKPOINTS = "*checkpoint*.pt"  # checkpoint.pt, vae_checkpoint.pt, checkpoint-0.pt: only needed to resume
SEARCH_JOURNAL = "study.journal"
LOCK = ".lock"  # held (flock) by the process running the run; the OS releases it when that process dies


def run_id(folder: Path) -> str:
    """The run's id: its folder's name without the `.incomplete` suffix."""
    return Path(folder).name.removesuffix(INCOMPLETE)


def new_run_dir(root: Path, experiment: str) -> Path:
    """A new `<root>/<experiment>/<timestamp>-<id>.incomplete/` folder; an unusable `--out` is a UsageError."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / experiment / f"{stamp}-{secrets.token_hex(3)}{INCOMPLETE}"
    try:
        make_dirs(path)
    except OSError as exc:
        raise UsageError(f"--out {root}: cannot create a run folder there ({exc.strerror}); "
                         "pass --out a writable folder") from None
    return path


def latest_incomplete(root: Path, experiment: str) -> Path | None:
    candidates = sorted((Path(root) / experiment).glob(f"*{INCOMPLETE}"))
    return candidates[-1] if candidates else None


def lock_run_dir(folder: Path) -> int:
    """Take the run folder's lock for this process and return its file descriptor.

    An flock on a file in the folder: the OS releases it when the process ends, however it ends
    (kill -9 included), so a lock that cannot be taken means a live process is running this run.
    """
    path = Path(folder) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fd).st_ino:  # it finished (and dropped this file) meanwhile
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        raise UsageError(f"{folder} is in use: another dlclassics process is running it; wait for that run to "
                         "finish, or start a new run without --resume") from None
    return fd


def resumable(folder: Path) -> bool:
    """An interrupted run is worth resuming once it has a checkpoint or a search journal."""
    return any(folder.glob(CHECKPOINTS)) or (folder / SEARCH_JOURNAL).exists()


# ---------------------------------------------------------------- where and on what it ran

def git_commit() -> str:
    """The commit of the checkout the package runs from ("+dirty" when modified), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__}


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages: how many threads wanted a core (None where the OS has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_summary() -> str:
    info = machine()
    return f"{info['processor']}, {info['cpu_count']} CPU cores, torch {info['torch']}"
