"""Ratings datasets (user, item, rating[, timestamp] per line): MovieLens-100k with its published
folds, any CSV or tab-separated ratings file, and a synthetic generator for measuring scale.

Where files are looked for and how they are verified is the registry's (`data/registry.py`); this
module says what a ratings file is and how it becomes tensors. A file is parsed once by numpy (no
per-line Python), users and items are re-indexed once to 0..n-1 (`np.unique`), and the ratings live
as three parallel tensors; `methods/mf.py` builds the sparse matrices it needs from them.

Rules for bad input (each one clear line, never a traceback or a NaN):
- a line that is not `user<sep>item<sep>rating[<sep>...]` names its line number;
- a rating outside the declared scale names its line number and the option that declares the scale;
- a fold with no test or no training ratings is refused;
- users and items seen only in a test fold are kept (the index covers every file read), and the
  models predict them by their baseline (see `methods/mf.py`).

MovieLens-100k's checksums: `u.data` and `u1.base` are the values vouched for beside the shared data;
the other fold files are the ones GroupLens's `mku.sh` derives from `u.data` (first/last 20,000-line
blocks for u1..u5, each user's 1st-10th and 11th-20th ratings for ua/ub, sorted by user and item):
re-deriving them from the verified `u.data` gives byte-identical files, whose sha256 are listed.
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlclassics.data.idx import _open, _read_exactly
from dlclassics.data.registry import (
    Archive,
    DamagedFile,
    DataFile,
    DatasetSpec,
    UnofficialFile,
    dataset,
    file_path,
    names,
    read_verified,
    register,
    require_folder,
)
from dlclassics.errors import RunError, UsageError

if TYPE_CHECKING:  # torch is imported where data is loaded, so that listing the datasets stays cheap
    import torch

# An official rating line is at most ~30 bytes: reading an official file stops after this many bytes
# per declared rating (so a gzip bomb is refused early). Other files may be up to MAX_FILE_BYTES
# (MovieLens-25M's ratings.csv is 0.7 GB).
MAX_LINE_BYTES = 64
MAX_FILE_BYTES = 4 << 30
# Config values of the `separator` option and the text they stand for ("auto": looked at per file).
SEPARATORS = {"auto": "", "tab": "\t", "comma": ",", "semicolon": ";", "colons": "::", "whitespace": " "}


@dataclasses.dataclass(frozen=True)
class RawRatings:
    """A file's ratings before re-indexing: its own user and item ids and the ratings (numpy, [N] each)."""

    users: np.ndarray  # int64 ids, or str ids when the file's ids are not integers
    items: np.ndarray
    values: np.ndarray  # float64
    source: str
    text: str = dataclasses.field(repr=False, default="")  # kept to name the line of a bad rating
    header: bool = False


@dataclasses.dataclass(frozen=True)
class Ratings:
    """Ratings as three parallel tensors over a shared index: user [N] and item [N] (int64, in
    0..n_users-1 and 0..n_items-1) and value [N]. Cheap to subset; never a dict of dicts."""

    users: torch.Tensor
    items: torch.Tensor
    values: torch.Tensor
    n_users: int
    n_items: int

    def __len__(self) -> int:
        return len(self.values)

    def subset(self, index: torch.Tensor) -> Ratings:
        return dataclasses.replace(self, users=self.users[index], items=self.items[index], values=self.values[index])

    def to(self, dtype: torch.dtype) -> Ratings:
        """The same ratings with values of another float type (the source's linear algebra is float64)."""
        return dataclasses.replace(self, values=self.values.to(dtype))


@dataclasses.dataclass
class RatingsData:
    """A ratings dataset in memory: every rating, the evaluation folds (name -> (train, test)), the
    rating scale and the files' ids of the indices 0..n-1."""

    name: str
    ratings: Ratings
    folds: dict[str, tuple[Ratings, Ratings]]
    scale: tuple[float, float]
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: str
    comparable: bool = True
    note: str = ""

    @property
    def summary(self) -> str:
        """One line for a run's report: which ratings, from where, how many, which folds."""
        folds = f"; folds {', '.join(self.folds)}" if self.folds else ""
        return (f"data: {self.name} from {self.source} ({len(self.ratings):,} ratings by {self.ratings.n_users:,} "
                f"users on {self.ratings.n_items:,} items{folds})")


# ---------------------------------------------------------------- parsing

def detect_separator(line: str) -> str:
    """The separator of a ratings line: tab (MovieLens-100k), '::' (1M/10M), comma (20M/25M, CSV),
    semicolon, else runs of whitespace."""
    return next((sep for sep in ("\t", "::", ",", ";") if sep in line), " ")


def _fields(line: str, separator: str) -> list[str]:
    return line.split() if separator == " " else line.split(separator)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_ratings(text: str, source: str, separator: str = "") -> RawRatings:
    """`user<sep>item<sep>rating[<sep>timestamp...]` lines (an optional header line) -> RawRatings.

    numpy parses the whole text at once; ids that are not integers are kept as strings. A line that
    cannot be read is a DamagedFile naming its number.
    """
    lines = (line for line in text.splitlines() if line.strip())
    first = next(lines, None)
    if first is None:
        raise DamagedFile(f"{source} holds no ratings; it should have lines user<sep>item<sep>rating[<sep>timestamp]")
    separator = separator or detect_separator(first)
    fields = _fields(first, separator)
    # A header ("userId,movieId,rating,timestamp") has neither a number as user nor as rating.
    header = len(fields) >= 3 and not _is_number(fields[0]) and not _is_number(fields[2])
    # numpy's reader takes one-character delimiters: '::' (MovieLens 1M/10M) becomes ':' first.
    body = text.replace("::", ":") if separator == "::" else text
    options: dict[str, Any] = {"delimiter": {" ": None, "::": ":"}.get(separator, separator),
                               "skiprows": int(header), "comments": None, "ndmin": 2}
    try:
        users, items, values = _columns(body, options)
    except ValueError:
        raise DamagedFile(_first_bad_line(text, source, separator, header)) from None
    if len(values) == 0:
        raise DamagedFile(f"{source} holds a header but no ratings")
    return RawRatings(users, items, values, source, text, header)


def _columns(body: str, options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, values) read by numpy: integer ids as int64 (read as integers, never through a
    float, which would merge ids above 2^53), ids written as whole floats ("12.0") as int64 too, other
    ids as strings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": a header alone, refused later
        values = np.loadtxt(io.StringIO(body), dtype=np.float64, usecols=(2,), **options)[:, 0]
        try:
            ids = np.loadtxt(io.StringIO(body), dtype=np.int64, usecols=(0, 1), **options)
            return ids[:, 0], ids[:, 1], values
        except (ValueError, OverflowError):  # ids that are not integers, or beyond int64
            pass
        try:
            ids = np.loadtxt(io.StringIO(body), dtype=np.float64, usecols=(0, 1), **options)
            if np.array_equal(ids, np.round(ids)) and np.abs(ids).max(initial=0) < 2 ** 53:
                return ids[:, 0].astype(np.int64), ids[:, 1].astype(np.int64), values
        except ValueError:
            pass
        ids = np.loadtxt(io.StringIO(body), dtype=str, usecols=(0, 1), **options)
        return ids[:, 0], ids[:, 1], values


def _first_bad_line(text: str, source: str, separator: str, header: bool) -> str:
    """The message for the first line that is not user<sep>item<sep>rating (error path only)."""
    shown = {"\t": "<tab>", " ": " "}.get(separator, separator)
    for number, line in enumerate(text.splitlines(), start=1):
        fields = _fields(line, separator)
        if not line or (separator == " " and not line.strip()) or (header and number == 1):
            continue  # the lines numpy skips
        if len(fields) < 3 or not _is_number(fields[2]) or not fields[0].strip() or not fields[1].strip():
            return (f"{source} line {number}: {line[:60]!r} is not user{shown}item{shown}rating[{shown}timestamp]; "
                    "fix or delete that line (or pass the right --set separator=...)")
    return f"{source} cannot be read as ratings (user{shown}item{shown}rating lines)"


def check_scale(raw: RawRatings, scale: tuple[float, float], option: str) -> None:
    """Every rating within [low, high], or a RunError naming the first line that is not (NaN included)."""
    low, high = scale
    outside = np.flatnonzero(~((raw.values >= low) & (raw.values <= high)))
    if len(outside) == 0:
        return
    data_lines = [number for number, line in enumerate(raw.text.splitlines(), start=1) if line.strip()]
    line = data_lines[outside[0] + int(raw.header)] if raw.text else int(outside[0]) + 1
    raise RunError(f"{raw.source} line {line}: rating {raw.values[outside[0]]:g} is outside the declared scale "
                   f"{low:g}..{high:g} ({len(outside):,} such ratings); {option}")


def read_text(path: Path, limit: int) -> tuple[str, bytes]:
    """(text, the decompressed bytes) of a plain or gzip file, reading at most `limit` bytes."""
    with _open(path) as stream:
        data = _read_exactly(stream, limit + 1, str(path))
    if len(data) > limit:
        raise UnofficialFile(f"{path} holds more than {limit:,} bytes, more than a ratings file of its kind; "
                             "is it the right file?")
    try:
        return data.decode("utf-8"), data
    except UnicodeDecodeError:
        return data.decode("latin-1"), data  # ids and ratings are ASCII; stray bytes stay readable


# ---------------------------------------------------------------- indexing

def index_together(raws: list[RawRatings]) -> tuple[list[Ratings], np.ndarray, np.ndarray]:
    """Re-index users and items once over several files (a fold's train and test share one index):
    (the files as Ratings, user ids, item ids), index k standing for the k-th smallest id."""
    import torch

    user_ids, user_index = np.unique(np.concatenate([raw.users for raw in raws]), return_inverse=True)
    item_ids, item_index = np.unique(np.concatenate([raw.items for raw in raws]), return_inverse=True)
    bounds = np.cumsum([0] + [len(raw.values) for raw in raws])
    result = []
    for raw, start, stop in zip(raws, bounds, bounds[1:]):
        result.append(Ratings(torch.from_numpy(user_index[start:stop].astype(np.int64)),
                              torch.from_numpy(item_index[start:stop].astype(np.int64)),
                              torch.from_numpy(raw.values.astype(np.float32)), len(user_ids), len(item_ids)))
    return result, user_ids, item_ids


def check_fold(name: str, train: Ratings, test: Ratings) -> None:
    for part, ratings in (("training", train), ("test", test)):
        if len(ratings) == 0:
            raise RunError(f"fold {name} has no {part} ratings; every fold needs both (drop it from --set folds=...)")


# ---------------------------------------------------------------- the registered datasets

@dataclasses.dataclass(frozen=True)
class RatingsDatasetSpec(DatasetSpec):
    """Ratings files: `all` (every rating, role `ratings`) and per fold a `train` and a `test` file."""

    scale: tuple[float, float] = (1.0, 5.0)
    separator: str = "\t"

    def read_file(self, path: Path, entry: DataFile, unverified: bool) -> tuple[RawRatings, bytes]:
        limit = entry.shape[0] * MAX_LINE_BYTES if entry.shape and not unverified else MAX_FILE_BYTES
        text, data = read_text(path, limit)
        return parse_ratings(text, str(path), self.separator), data

    @property
    def fold_names(self) -> tuple[str, ...]:
        return tuple(split for split in self.splits if split != "all")

    def load(self, folder: Path, folds: tuple[str, ...] = (), unverified: bool = False) -> RatingsData:
        unknown = [fold for fold in folds if fold not in self.fold_names]
        if unknown:
            raise UsageError(f"'{self.name}' has no fold {', '.join(unknown)}; its folds are {', '.join(self.fold_names)}")
        entries = [entry for entry in self.files if entry.split in ("all", *folds)]
        indexed, user_ids, item_ids = index_together([self._read(folder, entry, unverified) for entry in entries])
        parts = {(entry.split, entry.role): ratings for entry, ratings in zip(entries, indexed)}
        fold_data = {}
        for fold in folds:
            fold_data[fold] = (parts[fold, "train"], parts[fold, "test"])
            check_fold(fold, *fold_data[fold])
        note = (f"data: unverified, not comparable (files in {folder} were not checked against the official "
                f"'{self.name}' checksums)") if unverified else ""
        return RatingsData(self.name, parts["all", "ratings"], fold_data, self.scale, user_ids, item_ids, str(folder),
                           comparable=not unverified, note=note)

    def _read(self, folder: Path, entry: DataFile, unverified: bool) -> RawRatings:
        path = file_path(folder, entry)
        if path is None:
            raise RunError(f"{folder} lacks {entry.name} of '{self.name}'; {self.install_hint}")
        raw = read_verified(self, path, entry, unverified)
        check_scale(raw, self.scale, f"the '{self.name}' ratings are {self.scale[0]:g}..{self.scale[1]:g}")
        return raw


def _movielens_files() -> tuple[DataFile, ...]:
    hashes = {
        "u1": ("ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a",
               "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950"),
        "u2": ("6c06f0b5df4b256da1a994f3ac66edc8da4d3f09bc9282df6b14d893366d703e",
               "4de658d1e04ed9104629509a2e2528fce833ac8e048280183f1df167632038c3"),
        "u3": ("afdc155c291c6edc41c0407e39d7462eb98d341e064f0b0a12175b80b3c4af5d",
               "0f548b51c78327de4c156461d3e430b7e5579fe2b5681586a59416e48fd35f6d"),
        "u4": ("219f0f4d40dfe9c5141d425f53fa91ee23ed275f14e280bbf1b50117afb064ca",
               "7c02ad0a1e7ab1083c8b9d4b627203a051dd7b5eab46d99fa44de33470de8db9"),
        "u5": ("a9574e59ce961eec2121627760b6e9b0974ce1637b3fe69ac32cb14a4bfab485",
               "351cc52e0d15b6c721466276fc24671d40936899e3d01fadeaf312915b8c5634"),
        "ua": ("67b5bcdb380c29f85d56a012ecd88612ae020f30a6730d117a334ee8203b91f2",
               "d0497e202417720f57a184ec8c66be2d1afa4ff41bb53787c57b28d6bf79bc42"),
        "ub": ("237254d253b6ad7de84f919d041055428646254f34ed8f562703c899430cd881",
               "d54a72d05730d5892062734b2bec73e976f9b713d18c828a18b968d6cce442da"),
    }
    sizes = {"train": 80_000, "test": 20_000}
    files = [DataFile("u.data", "all", "ratings", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                      (100_000,))]
    for fold, (train_hash, test_hash) in hashes.items():
        train_size, test_size = (90_570, 9_430) if fold in ("ua", "ub") else (sizes["train"], sizes["test"])
        files += [DataFile(f"{fold}.base", fold, "train", train_hash, (train_size,)),
                  DataFile(f"{fold}.test", fold, "test", test_hash, (test_size,))]
    return tuple(files)


MOVIELENS_100K = register(RatingsDatasetSpec(
    name="movielens-100k",
    title="MovieLens 100k (GroupLens): 100,000 ratings 1-5 by 943 users on 1,682 movies, folds u1..u5, ua, ub",
    kind="ratings",
    files=_movielens_files(),
    archive=Archive("ml-100k.zip", "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                    md5="0e33842e24a9c977be4e0107933c0723", member_dir="ml-100k"),  # md5 published beside it
    folder_aliases=("ml-100k",),
    install_hint="run 'dlclassics data fetch movielens-100k' (needs network), pass --data-dir to a folder holding "
                 "ml-100k/, or --set ratings_file=FILE for your own ratings",
))


def ratings_datasets() -> tuple[str, ...]:
    """The registered ratings sets: the `choices` of every ratings experiment's `dataset` option."""
    return names("ratings")


def load_ratings(name: str, data_dir: Path | None = None, folds: tuple[str, ...] = (),
                 unverified: bool = False) -> RatingsData:
    """Locate, verify and load a registered ratings set with the given folds."""
    spec: RatingsDatasetSpec = dataset(name, kind="ratings")  # type: ignore[assignment]
    return spec.load(require_folder(spec, data_dir), folds=folds, unverified=unverified)


# ---------------------------------------------------------------- any ratings file

def read_ratings_file(path: Path, separator: str = "auto", scale: tuple[float, float] = (1.0, 5.0),
                      n_folds: int = 5, seed: int = 0) -> RatingsData:
    """A CSV or tab-separated ratings file (MovieLens 1M/10M `::`, 20M/25M CSV with header included),
    split into `n_folds` folds by one seeded permutation (fold k tests the k-th fifth)."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise UsageError(f"ratings_file {path} {what}; pass a CSV or TSV of user,item,rating[,timestamp]")
    try:
        text, _ = read_text(path, MAX_FILE_BYTES)
    except PermissionError:
        raise RunError(f"cannot read {path}: permission denied; make it readable (chmod a+r)") from None
    raw = parse_ratings(text, str(path), SEPARATORS[separator])
    check_scale(raw, scale, "pass the file's scale as --set scale=LOW,HIGH")
    (ratings,), user_ids, item_ids = index_together([raw])
    if len(ratings) < n_folds:
        raise RunError(f"{path} holds {len(ratings)} ratings, fewer than the {n_folds} folds; every fold needs "
                       "test ratings (pass a larger file or fewer --set n_folds=...)")
    order = torch.randperm(len(ratings), generator=torch.Generator().manual_seed(seed))
    blocks = order.tensor_split(n_folds)
    folds = {}
    for k, block in enumerate(blocks):
        train = torch.cat([other for j, other in enumerate(blocks) if j != k])
        folds[f"fold{k + 1}"] = (ratings.subset(train.sort().values), ratings.subset(block.sort().values))
        check_fold(f"fold{k + 1}", *folds[f"fold{k + 1}"])
    return RatingsData(path.name, ratings, folds, (float(scale[0]), float(scale[1])), user_ids, item_ids, str(path),
                       comparable=False, note=f"data: {path} ({n_folds} random folds, seed {seed}); not the "
                                              "source's data, so not comparable with its numbers")


def load_ratings_or_file(dataset_name: str, folds: tuple[str, ...], ratings_file: str = "", separator: str = "auto",
                        scale: tuple[float, ...] = (1.0, 5.0), n_folds: int = 5, seed: int = 0,
                        data_dir: Path | None = None, unverified: bool = False) -> RatingsData:
    """`ratings_file` (own ratings, `n_folds` random folds from `seed`) when given, else the registered
    dataset with its published `folds`."""
    if len(scale) != 2 or not scale[0] < scale[1]:
        raise UsageError(f"option 'scale' expects LOW,HIGH with LOW < HIGH; got {','.join(map(str, scale))}")
    if ratings_file:
        return read_ratings_file(Path(ratings_file), separator, (scale[0], scale[1]), n_folds, seed)
    return load_ratings(dataset_name, data_dir, folds, unverified)


# ---------------------------------------------------------------- synthetic ratings

def synthetic_ratings(n_users: int, n_items: int, n_ratings: int, rank: int, noise: float, seed: int = 0,
                      scale: tuple[float, float] = (1.0, 5.0)) -> Ratings:
    """Ratings from a known low-rank model, for measuring scale without data: users and items drawn
    uniformly (pairs may repeat, as ratings of a large sparse matrix rarely do), value = midpoint +
    user bias + item bias + p_u . q_i + noise, clipped to `scale`. Memory: 20 bytes per rating.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    users = torch.randint(0, n_users, (n_ratings,), generator=generator)
    items = torch.randint(0, n_items, (n_ratings,), generator=generator)
    spread = (scale[1] - scale[0]) / 4
    user_factors = torch.randn(n_users, rank, generator=generator) * spread / math.sqrt(max(rank, 1))
    item_factors = torch.randn(n_items, rank, generator=generator)
    user_bias = torch.randn(n_users, generator=generator) * spread / 2
    item_bias = torch.randn(n_items, generator=generator) * spread / 2
    values = torch.empty(n_ratings)
    for chunk in torch.arange(n_ratings).split(1 << 20):  # [chunk, rank] at a time, not [n_ratings, rank]
        u, i = users[chunk], items[chunk]
        values[chunk] = (user_factors[u] * item_factors[i]).sum(1) + user_bias[u] + item_bias[i]
    values += sum(scale) / 2 + noise * torch.randn(n_ratings, generator=generator)
    return Ratings(users, items, values.clamp_(*scale), n_users, n_items)
