"""The documentation builds: `mkdocs build --strict` (a broken link, a missing page or a docstring
reference that no longer resolves fails), and the README's links into docs/ lead to pages that exist."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_with_the_api_reference(tmp_path):
    for package in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(package, reason="the docs extra is not installed")
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    reference = (site / "reference" / "index.html").read_text()
    assert "dlclassics.api.run" in reference and "dlclassics.runs.trackers.MLflow" in reference
    assert "a one-line string literal" in (site / "layout" / "index.html").read_text()  # CONTRIBUTING.md, included


def test_the_readme_links_into_docs_resolve():
    links = re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text())
    assert links and [link for link in links if not (ROOT / link).is_file()] == []
