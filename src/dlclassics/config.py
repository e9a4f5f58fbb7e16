"""Experiment configs: dataclasses whose fields carry a help line and their valid range.

Every experiment's `Config` subclasses `BaseConfig`. Values arrive as defaults, a recipe preset,
a TOML file and `--set key=value` strings; all of them go through `resolve`, which coerces to the
field's type and validates in one place, without side effects. `environment` sets environment
variables (the settings a process hands to the processes it starts) for a block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dlclassics.errors import UsageError

# numpy's legacy seeding takes 32 bits, and runs derive seeds by adding small offsets (seed + trial number)
MAX_SEED = 2**31 - 1
# A training length beyond this is a typo (days of CPU time for any experiment here), not a plan. It bounds
# every option named `epochs` or `*_epochs`, so `--epochs 30000000` is refused before a run starts.
MAX_EPOCHS = 10_000
# Every whole-number option without a bound of its own stops here: a count above ten million (a width of
# 10^11, a batch of 10^20) is a typo that would only end in an out-of-memory error, not a plan.
MAX_COUNT = 10_000_000
# A layer wider than this does not fit the experiments' memory (a 784 x 65,536 layer is 200 MB of weights).
MAX_WIDTH = 65_536


def option(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           choices: tuple | None = None, low_open: bool = False) -> Any:
    """A config field with a one-line description and its valid range.

    `low`/`high` bound numbers (inclusive unless `low_open`), `choices` lists the allowed values, or is
    a function returning them when they come from a registry (the datasets).
    """
    meta = {"help": help, "low": low, "high": high, "choices": choices, "low_open": low_open}
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------- option groups every experiment shares

def dataset_option(default: str, choices: Any, help: str = "image dataset") -> Any:
    """The data an experiment reads: `choices` is a registry's list of names (a function, read lazily)."""
    return option(default, help, choices=choices)


def limit_option(what: str = "training images") -> Any:
    """Train on a prefix of the data: for quick runs and scaling studies."""
    return option(0, f"use only the first N {what} (0 = all)", low=0)


def batch_size_option(default: int, help: str = "minibatch size") -> Any:
    return option(default, help, low=1)


def lr_option(default: float, help: str = "Adam learning rate") -> Any:
    """A learning rate: a positive number (0 would train nothing, a negative one ascends the loss)."""
    return option(default, help, low=0.0, low_open=True)


def width_option(default: Any, help: str) -> Any:
    """A layer width, or comma-separated widths: at least 1, at most MAX_WIDTH."""
    return option(default, help, low=1, high=MAX_WIDTH)


def epochs_option(default: int, help: str = "training epochs") -> Any:
    """The main training length, so `--epochs` works (bounded by MAX_EPOCHS as every `*epochs` option)."""
    return option(default, help, low=1)


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Fields every experiment has."""

    seed: int = option(0, "seed for torch, numpy and python; the same seed gives the same numbers", low=0,
                       high=MAX_SEED)
    device: str = option("auto", "where to compute", choices=("auto", "cpu", "cuda", "mps"))
    quick: bool = option(False, "tiny smoke-test size: a few hundred examples, one or two epochs")


def field_types(cls: type) -> dict[str, type]:
    """The resolved type of each config field (annotations are strings under `from __future__`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(name: str, kind: type, value: Any) -> Any:
    """Turn a TOML value or a `--set` string into the field's type, or say why not."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise UsageError(f"option '{name}' must be a finite number; got {value!r}")
            return number
        if kind is str:
            return str(value)
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parts = value if isinstance(value, (list, tuple)) else [p for p in str(value).split(",") if p.strip()]
            if not parts:
                raise UsageError(f"option '{name}' needs at least one value (comma separated); got {value!r}")
            return tuple(coerce(name, item, part) for part in parts)
    except (ValueError, TypeError, OverflowError):  # TypeError: a TOML table where a number was expected
        pass
    else:
        raise UsageError(f"option '{name}' has an unsupported type {kind!r}")
    raise UsageError(f"option '{name}' expects {getattr(kind, '__name__', kind)}, got {value!r}")


def check_range(name: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """A UsageError unless `value` (or each value of a tuple) lies in the range `meta` declares (`low`,
    `high`, `low_open`, `choices`); whole numbers are at most MAX_COUNT unless `high` says otherwise."""
    choices, low, high = meta.get("choices"), meta.get("low"), meta.get("high")
    if callable(choices):
        choices = choices()
    if choices is not None and value not in choices:
        raise UsageError(f"option '{name}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    values = value if isinstance(value, tuple) else (value,)
    if low is not None and any(v < low or (meta.get("low_open") and v == low) for v in values):
        relation = ">" if meta.get("low_open") else ">="
        raise UsageError(f"option '{name}' must be {relation} {low}; got {value!r}")
    if high is not None and any(v > high for v in values):
        raise UsageError(f"option '{name}' must be <= {high}; got {value!r}")
    if (name.removeprefix("narrow=") == "epochs" or name.endswith("_epochs")) and max(values) > MAX_EPOCHS:
        raise UsageError(f"option '{name}' must be <= {MAX_EPOCHS:,} (a longer run is almost surely a typo); "
                         f"got {value!r}")
    if high is None and any(isinstance(v, int) and not isinstance(v, bool) and v > MAX_COUNT for v in values):
        raise UsageError(f"option '{name}' must be <= {MAX_COUNT:,} (a larger number is almost surely a typo); "
                         f"got {value!r}")


def resolve(cls: type, *layers: typing.Mapping[str, Any], searched: typing.Mapping[str, str] | None = None) -> Any:
    """Build a config of `cls` from defaults plus override layers (later layers win).

    Unknown keys are refused with the list of valid ones, or, for a search dimension of the
    experiment (`searched`: name -> how to fix or narrow it), with that hint; every value is
    coerced and range-checked.
    """
    kinds, searched = field_types(cls), searched or {}
    values: dict[str, Any] = {}
    for layer in layers:
        for name, raw in layer.items():
            if name not in kinds and name in searched:
                raise UsageError(f"'{name}' is a search dimension of this experiment, not an option: {searched[name]}")
            if name not in kinds:
                raise UsageError(f"unknown option '{name}'; valid options: {', '.join(sorted(kinds))}")
            values[name] = coerce(name, kinds[name], raw)
    config = cls(**values)
    for f in dataclasses.fields(cls):
        check_range(f.name, getattr(config, f.name), f.metadata)
    return config


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """`["lr=0.1", "epochs=3"]` -> `{"lr": "0.1", "epochs": "3"}`."""
    result = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set expects key=value, got {pair!r}")
        result[name.strip()] = value.strip()
    return result


def load_toml(path: Path) -> dict[str, Any]:
    """A flat TOML table of option values (a `[config]` table is accepted too)."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO or device would block the read
        raise UsageError(f"config file {path} is not a regular file; pass a TOML file of option values")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a folder; pass a TOML file of option values") from None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("config", data)
    if not isinstance(table, dict):
        raise UsageError(f"config file {path}: 'config' must be a table of option values")
    return table


def valid_values(meta: typing.Mapping[str, Any]) -> str:
    """A field's valid range in words ("one of a, b", ">= 1", "> 0 and <= 0.5"), for `dlclassics list ID`."""
    choices = meta.get("choices")
    if choices is not None:
        return "one of " + ", ".join(map(str, choices() if callable(choices) else choices))
    bounds = []
    if meta.get("low") is not None:
        bounds.append(f"{'>' if meta.get('low_open') else '>='} {meta['low']}")
    if meta.get("high") is not None:
        bounds.append(f"<= {meta['high']}")
    return " and ".join(bounds) or "any"


def describe(cls: type) -> list[tuple[str, str, Any, str, str]]:
    """(name, type, default, valid values, help) for each field, for `dlclassics list ID` and docs."""
    kinds = field_types(cls)
    return [(f.name, getattr(kinds[f.name], "__name__", str(kinds[f.name])), f.default,
             "true or false" if kinds[f.name] is bool else valid_values(f.metadata), f.metadata.get("help", ""))
            for f in dataclasses.fields(cls)]


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Within: the environment variables `values` set; afterwards each as it was (or unset again)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
