"""Small generated ratings in MovieLens-100k's file layout, for the ratings experiments' tests.

`mku_splits` is GroupLens's `mku.sh` in Python: u1..u5 test the consecutive fifths of `u.data`, ua/ub
hold each user's 1st-10th and 11th-20th ratings (in `u.data` order) out, and every file is sorted by
user, then item. Applied to the real `u.data` it gives the published fold files byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import unchecked

from dlclassics.data import registry


def mku_splits(lines: list[str]) -> dict[str, list[str]]:
    """File name -> lines of the fold files derived from the lines of `u.data`."""
    table = np.array([line.split("\t")[:2] for line in lines], dtype=np.int64)  # [N, (user, item)]
    text = np.array(lines, dtype=object)

    def ordered(chosen: np.ndarray) -> list[str]:  # chosen: indices of lines
        return list(text[chosen[np.lexsort((table[chosen, 1], table[chosen, 0]))]])

    everything, fifth = np.arange(len(lines)), len(lines) // 5
    files = {}
    for k in range(1, 6):
        test = (everything >= (k - 1) * fifth) & (everything < k * fifth)
        files[f"u{k}.test"], files[f"u{k}.base"] = ordered(everything[test]), ordered(everything[~test])
    # The rank of each line among its user's lines, in u.data order.
    by_user = np.argsort(table[:, 0], kind="stable")
    starts = np.searchsorted(table[by_user, 0], table[by_user, 0])
    rank = np.empty(len(lines), dtype=np.int64)
    rank[by_user] = np.arange(len(lines)) - starts + 1
    for name, first, last in (("ua", 1, 10), ("ub", 11, 20)):
        test = (rank >= first) & (rank <= last)
        files[f"{name}.test"], files[f"{name}.base"] = ordered(everything[test]), ordered(everything[~test])
    return files


def movielens_lines(n_users: int = 30, n_items: int = 40, per_user: int = 25, seed: int = 0) -> list[str]:
    """`u.data` lines (user, item, rating 1-5, timestamp; tab separated; random order) of a rank-2 taste
    model: every user rates `per_user` distinct items (at least 20, as MovieLens's users)."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    lines = []
    for user in range(n_users):
        for item in rng.choice(n_items, per_user, replace=False):
            rating = int(np.clip(np.rint(3 + users[user] @ items[item] + rng.normal(scale=0.3)), 1, 5))
            lines.append(f"{user + 1}\t{item + 1}\t{rating}\t{881250949 + len(lines)}\n")
    return [lines[i] for i in rng.permutation(len(lines))]


def write_movielens(folder: Path, lines: list[str] | None = None) -> Path:
    """`u.data` and its fold files in `folder`."""
    lines = movielens_lines() if lines is None else lines
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(lines))
    for name, chosen in mku_splits(lines).items():
        (folder / name).write_text("".join(chosen))
    return folder


@pytest.fixture
def ratings_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir with a generated `movielens-100k/` folder; its spec's checksums and sizes switched off
    (generated files cannot match the real ones), no system or cache folders."""
    monkeypatch.setitem(registry.DATASETS, "movielens-100k", unchecked("movielens-100k"))
    monkeypatch.setattr(registry, "SYSTEM_DIRS", ())
    monkeypatch.setattr(registry, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("DLCLASSICS_DATA", raising=False)
    root = tmp_path / "data"
    write_movielens(root / "movielens-100k")
    return root
