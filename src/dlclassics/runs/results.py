"""The finished runs under a folder: listed with their key metrics, and as the README's results table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from dlclassics.errors import UsageError
from dlclassics.runs.contract import is_finite_number
from dlclassics.runs.folder import CONFIG, INCOMPLETE, METRICS, REFERENCES
from dlclassics.runs.report import format_number


@dataclasses.dataclass
class FinishedRuns:
    """Finished runs newest first (experiment, path, metrics), and the damaged folders skipped, with why."""

    rows: list[dict[str, Any]]
    skipped: list[str]


def list_runs(root: Path, experiment: str | None = None) -> FinishedRuns:
    """Finished runs under `root`, newest first, with their metrics. A folder whose metrics.json is missing,
    not JSON, not UTF-8 or not an object is skipped and named: one damaged folder never hides the others."""
    root = Path(root)
    if experiment and not (root / experiment).is_dir():
        raise UsageError(f"no runs of '{experiment}' under {root}")
    folders = [p for p in root.glob(f"{experiment or '*'}/*") if p.is_dir() and not p.name.endswith(INCOMPLETE)
               and not p.name.startswith(".") and p.parent.name != "site"]
    found = FinishedRuns([], [])
    for folder in sorted(folders, key=lambda p: p.name, reverse=True):
        metrics = read_object(folder / METRICS)
        if isinstance(metrics, str):
            found.skipped.append(f"{folder}: {metrics}")
            continue
        found.rows.append({"experiment": folder.parent.name, "path": str(folder), "metrics": metrics})
    return found


def read_object(path: Path) -> dict[str, Any] | str:
    """The JSON object in `path`, or why there is none (a short reason)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {path.name}"
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror})"
    except UnicodeDecodeError:
        return f"{path.name} is not UTF-8 text"
    except json.JSONDecodeError:
        return f"{path.name} is not valid JSON"
    return data if isinstance(data, dict) else f"{path.name} holds {type(data).__name__}, not a JSON object"


def results_table(rows: list[dict[str, Any]]) -> str:
    """One Markdown row per reference of the newest run of each experiment on each kind of data (rows are
    newest first): a run on carved MNIST and one on Fashion-MNIST both get their rows, each naming its data.
    A run whose config.json or references.json cannot be read is left out; a missing value shows as '?'."""
    lines = ["| experiment | data | what | source | ours | verdict | wall time | machine |",
             "|---|---|---|---|---|---|---|---|"]
    seen = set()
    for row in rows:
        folder = Path(row["path"])
        record = read_object(folder / CONFIG)
        try:
            references = json.loads((folder / REFERENCES).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, str) or not isinstance(references, list):
            continue
        data = data_label(record)
        if (row["experiment"], data) in seen:
            continue
        seen.add((row["experiment"], data))
        machine = record.get("machine") if isinstance(record.get("machine"), dict) else {}
        where = f"{machine.get('processor', '?')}, {machine.get('cpu_count', '?')} cores, {record.get('device', '?')}"
        wall = row["metrics"].get("wall_time_s")
        wall = f"{wall:.0f} s" if is_finite_number(wall) else "?"
        for ref in (ref for ref in references if isinstance(ref, dict)):
            lines.append(f"| {row['experiment']} | {data} | {ref.get('what', '?')} | "
                         f"{format_number(ref.get('source', '?'))} | {format_number(ref.get('ours'))} | "
                         f"{ref.get('verdict', '?')} | {wall} | {where} |")
    return "\n".join(lines)


def data_label(record: dict[str, Any]) -> str:
    """The data a run measured on, from its config.json: the data it loaded (an attack loads its victim's
    dataset, whatever its own option says), else its dataset option, and how it differs from the official one."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    used = record.get("data") if isinstance(record.get("data"), list) else []
    names = list(dict.fromkeys(str(item["name"]) for item in used if isinstance(item, dict) and "name" in item))
    label = " + ".join(names) or str(config.get("dataset") or "generated")
    if record.get("carve_test"):
        label += f", train/test carved from one split ({record['carve_test']} test)"
    if str(record.get("data_checks", "")).startswith("unverified"):
        label += ", unverified files"
    if config.get("quick"):
        label += ", --quick size"
    return label
