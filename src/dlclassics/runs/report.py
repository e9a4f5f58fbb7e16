"""The report: each metric beside the number the source reported, with a verdict, and the run's story.

`report.md` is for people (what ran, the numbers beside the source's, notes, figures, wall time and
machine); `references.json` and `report.json` hold the same verdicts and parts for `runs --markdown`
and the results site.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from dlclassics import __version__
from dlclassics.files import atomic_write_json, atomic_write_text
from dlclassics.runs.folder import REFERENCES, REPORT, REPORT_PARTS, git_commit, machine_summary


class ReportedRun(Protocol):
    """What the report reads of a run (the session's `Run` is one): where it is, what it found, how it ran."""

    experiment: str
    dir: Path
    config: Any
    device: torch.device
    comparable: bool
    notes: list[str]
    sections: list[tuple[str, str]]
    figures: list[tuple[str, str]]
    parts: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Reference:
    """A number the source reported, and how our measured metric is judged against it.

    `rule`: "at_least" (ours >= target), "at_most" (ours <= target), "near" (|ours - target| <= tolerance),
    "higher" (ours >= source - tolerance), "lower" (ours <= source + tolerance), or "info" (shown, not judged).
    """

    metric: str
    source_value: float | str
    description: str
    rule: str = "higher"
    tolerance: float = 0.0
    target: float | None = None
    dataset: str | None = None  # the dataset the source measured on; another one -> not comparable
    own_data: bool = False  # a project goal on the run's own data: judged even when the run is not comparable

    def verdict(self, measured: Any, dataset: str | None, comparable: bool) -> str:
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            return "not measured"
        if not (comparable or self.own_data) or (self.dataset is not None and dataset is not None
                                                  and dataset != self.dataset):
            return "not comparable (different data)"
        goal = self.target if self.target is not None else self.source_value
        if self.rule == "info" or isinstance(goal, str):
            return "see report"
        met = {"at_least": measured >= goal, "at_most": measured <= goal,
               "near": abs(measured - goal) <= self.tolerance,
               "higher": measured >= goal - self.tolerance, "lower": measured <= goal + self.tolerance}[self.rule]
        return "met" if met else "not met"


def format_number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.1f}"
    return str(value)


def reference_rows(references: Iterable[Reference], metrics: Mapping[str, Any], dataset: str | None,
                   comparable: bool) -> list[dict[str, Any]]:
    return [{"what": ref.description, "metric": ref.metric, "source": ref.source_value,
             "ours": metrics.get(ref.metric), "verdict": ref.verdict(metrics.get(ref.metric), dataset, comparable)}
            for ref in references]


def write_report(run: ReportedRun, title: str, metrics: Mapping[str, Any], references: Iterable[Reference]) -> None:
    """report.md: what ran, the numbers beside the source's, figures, notes, wall time and machine."""
    dataset = getattr(run.config, "dataset", None)
    rows = reference_rows(references, metrics, dataset, run.comparable)
    atomic_write_json(run.dir / REFERENCES, rows)  # the verdicts, for `dlclassics runs --markdown`
    atomic_write_json(run.dir / REPORT_PARTS, {
        "notes": run.notes, "sections": [{"title": t, "markdown": m} for t, m in run.sections],
        "figures": [{"path": path, "caption": caption} for path, caption in run.figures]})
    lines = [f"# {run.experiment}: {title}", "",
             f"Wall time {metrics.get('wall_time_s', 0):.1f} s on {machine_summary()} (device {run.device}); "
             f"dlclassics {__version__}, commit {git_commit()}.", ""]
    lines += [f"{sentence}\n" for sentence in (resume_sentence(run.parts), load_sentence(run.parts),
                                                best_configuration_sentence(metrics)) if sentence]
    if rows:
        lines += ["## Against the source", "", "| what | source | ours | verdict |", "|---|---|---|---|"]
        lines += [f"| {r['what']} | {format_number(r['source'])} | {format_number(r['ours'])} | {r['verdict']} |"
                  for r in rows]
        lines.append("")
    lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {format_number(v)} |" for k, v in metrics.items() if not isinstance(v, (list, dict))]
    lines.append("")
    if run.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in run.notes] + [""]
    for section_title, markdown in run.sections:
        lines += [f"## {section_title}", "", markdown, ""]
    if run.figures:
        lines += ["## Figures", ""]
        for path, caption in run.figures:
            lines += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    lines += ["## Config", "", "| option | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in dataclasses.asdict(run.config).items()]
    atomic_write_text(run.dir / REPORT, "\n".join(lines) + "\n")


def resume_sentence(parts: Sequence[Mapping[str, Any]]) -> str | None:
    """For a resumed run: how often, this part's wall time and the total."""
    if len(parts) < 2:
        return None
    total = sum(part["wall_time_s"] for part in parts)
    return (f"Resumed after {len(parts) - 1} interruption(s): this last part took {parts[-1]['wall_time_s']:.1f} s "
            f"of {total:.1f} s in all (the wall time above; a killed part counts up to its last saved file).")


# Other work on more than this share of the cores makes a wall time incomparable with an idle machine's.
LOADED_SHARE = 0.5


def load_sentence(parts: Sequence[Mapping[str, Any]]) -> str | None:
    """A warning when other work competed for the cores while the run was timed.

    The 1-minute load average at a part's start is other work (the run has just begun); at its end it
    includes the run's own torch threads, which are subtracted.
    """
    cores, own = os.cpu_count() or 1, torch.get_num_threads()
    starts = [part["load_average_start"][0] for part in parts if part.get("load_average_start")]
    ends = [part["load_average_end"][0] for part in parts if part.get("load_average_end")]
    others = max([*starts, *(end - own for end in ends)], default=0.0)
    if others <= LOADED_SHARE * cores:
        return None
    return (f"**Wall time measured on a loaded machine**: the 1-minute load average was {', '.join(map(str, starts))} "
            f"at the start and {', '.join(map(str, ends))} at the end on {cores} CPU cores, so other work competed "
            "for them; the times are not comparable with an idle machine's.")


def best_configuration_sentence(metrics: Mapping[str, Any]) -> str | None:
    """'The best configuration found: ...' for runs that searched (their metrics carry `best_config`)."""
    best = metrics.get("best_config")
    if not isinstance(best, Mapping) or not best:
        return None
    described = ", ".join(f"{key} = {format_number(value)}" for key, value in best.items())
    score = next(((k, v) for k, v in metrics.items() if k.startswith("best_val_") and isinstance(v, (int, float))),
                 None)
    scored = f", with {score[0].removeprefix('best_').replace('_', ' ')} {format_number(score[1])}" if score else ""
    return f"The best configuration found was {described}{scored}."


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts as a Markdown table (header from the first row)."""
    if not rows:
        return "(none)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_number(row.get(k)) for k in header) + " |" for row in rows]
    return "\n".join(lines)
