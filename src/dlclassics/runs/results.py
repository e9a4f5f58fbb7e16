"""The finished runs under a folder: listed with their key metrics, and as the README's results table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlclassics.errors import UsageError
from dlclassics.runs.folder import CONFIG, INCOMPLETE, METRICS, REFERENCES
from dlclassics.runs.report import format_number


def list_runs(root: Path, experiment: str | None = None) -> list[dict[str, Any]]:
    """Finished runs, newest first, with their key metrics."""
    root = Path(root)
    if experiment and not (root / experiment).is_dir():
        raise UsageError(f"no runs of '{experiment}' under {root}")
    folders = [p for p in root.glob(f"{experiment or '*'}/*") if p.is_dir() and not p.name.endswith(INCOMPLETE)]
    result = []
    for folder in sorted(folders, key=lambda p: p.name, reverse=True):
        try:
            metrics = json.loads((folder / METRICS).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        result.append({"experiment": folder.parent.name, "path": str(folder), "metrics": metrics})
    return result


def results_table(rows: list[dict[str, Any]]) -> str:
    """One Markdown row per reference of the newest run of each experiment on each kind of data (rows are
    newest first): a run on carved MNIST and one on Fashion-MNIST both get their rows, each naming its data."""
    lines = ["| experiment | data | what | source | ours | verdict | wall time | machine |",
             "|---|---|---|---|---|---|---|---|"]
    seen = set()
    for row in rows:
        folder = Path(row["path"])
        if not (folder / REFERENCES).is_file():
            continue
        record = json.loads((folder / CONFIG).read_text())
        data = data_label(record)
        if (row["experiment"], data) in seen:
            continue
        seen.add((row["experiment"], data))
        machine = f"{record['machine']['processor']}, {record['machine']['cpu_count']} cores, {record['device']}"
        for ref in json.loads((folder / REFERENCES).read_text()):
            lines.append(f"| {row['experiment']} | {data} | {ref['what']} | {format_number(ref['source'])} | "
                         f"{format_number(ref['ours'])} | {ref['verdict']} | "
                         f"{row['metrics']['wall_time_s']:.0f} s | {machine} |")
    return "\n".join(lines)


def data_label(record: dict[str, Any]) -> str:
    """The data a run measured on, from its config.json: the dataset, and how it differs from the official one."""
    label = record["config"].get("dataset") or "generated"
    if record.get("carve_test"):
        label += f", train/test carved from one split ({record['carve_test']} test)"
    if record.get("data_checks", "").startswith("unverified"):
        label += ", unverified files"
    if record["config"].get("quick"):
        label += ", --quick size"
    return label
