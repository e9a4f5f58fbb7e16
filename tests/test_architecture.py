"""The structure the README and CONTRIBUTING describe, checked: the import layers hold (import-linter's
contracts in pyproject.toml), experiments never import each other, and each leaf package stays a leaf."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_a_back_edge_would_be_caught(tmp_path):
    """The contract bites: a copy of the package where data/ imports the run session breaks it."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "dlclassics", copy / "dlclassics", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "dlclassics" / "data" / "back_edge.py").write_text("from dlclassics.runs import Run\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "dlclassics.data is not allowed to import dlclassics.runs" in result.stdout
