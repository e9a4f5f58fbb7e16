"""The results site: `dlclassics report` turns the run folders into static HTML pages.

People compare runs by looking: an index of every run (sortable, filterable by experiment), one page
per run (config, metrics, the verdicts against the source, figures with their data, notes, history)
and one page per experiment (its runs side by side, seed against tuned). Everything comes from the
run folders' own files -- config.json, metrics.json, references.json, report.json, history.csv and
figures/ -- never from report.md. Pages are Jinja2 templates with autoescaping, so a value from a run
folder is always shown as text; links are relative and the only script is a few lines of plain
JavaScript, so the site works from file:// with nothing fetched from a network.

Rebuilding is atomic and incremental: the new site is written to a temporary folder beside the old
one and swapped in (under a lock, so two runs finishing together take turns), and the page of a run
whose files did not change is hard-linked from the old site instead of being rendered again.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
import time
import webbrowser
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup, escape

from dlclassics import __version__, registry
from dlclassics.errors import UsageError
from dlclassics.files import atomic_write_bytes, atomic_write_text, make_dirs
from dlclassics.runs import CONFIG, HISTORY, METRICS
from dlclassics.runs.contract import is_finite_number
from dlclassics.runs.folder import INCOMPLETE, REPORT, REPORT_PARTS
from dlclassics.runs.report import format_number
from dlclassics.runs.request import resume_command
from dlclassics.runs.results import data_label

SITE = "site"  # the site's folder under the runs root, by default
MANIFEST = "manifest.json"  # what each run page was built from, so a rebuild renders only what changed
GENERATOR = "dlclassics results site"  # the manifest's mark: only a folder holding it is ever replaced
VERDICTS = "references.json"
RUN_FILES = (CONFIG, METRICS, VERDICTS, REPORT_PARTS, HISTORY, REPORT)  # linked beside each run's page
ASSETS = ("style.css", "site.js")
COMPARED_RUNS = 12  # the newest runs an experiment page puts side by side
HISTORY_CHARTS = 8  # small plots of history.csv columns on a run page
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 320, 120, 8  # SVG units


# ---------------------------------------------------------------- one run, as the site shows it

@dataclasses.dataclass
class RunInfo:
    """A run folder's JSON files, read once per build; a file that is missing or unreadable reads as empty."""

    experiment: str
    folder: Path
    record: dict[str, Any]  # config.json
    metrics: dict[str, Any] | None  # metrics.json; None when the run never wrote it
    references: list[dict[str, Any]]  # references.json: the verdicts against the source
    report: dict[str, Any]  # report.json: notes, extra sections and figure captions
    signature: list[Any]  # what its page is built from (`run_signature`)
    recipe: str = ""
    unchanged: bool = False  # same files as when the previous site was built: its page is reused

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def short_id(self) -> str:
        """The folder name's random part (`<date>-<time>-<id>`): the index shows the date in its own column."""
        return self.name.removesuffix(INCOMPLETE).rsplit("-", 1)[-1]

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.name}"

    @property
    def href(self) -> str:
        """The run's page, relative to the site's root."""
        return f"runs/{self.key}/index.html"

    @property
    def status(self) -> str:
        """finished; failed (stopped on an error and kept to be resumed, or no readable metrics.json); or
        incomplete (running, interrupted or killed). Only a finished run's numbers are final."""
        if self.name.endswith(INCOMPLETE):
            return "failed" if self.ended == "failed" else "incomplete"
        return "failed" if self.metrics is None else "finished"

    @property
    def ended(self) -> str | None:
        """How the run's last part ended, as config.json records it: interrupted, failed, finished, or
        nothing yet (running, or killed)."""
        parts = self.record.get("parts")
        last = parts[-1] if isinstance(parts, list) and parts else None
        return last.get("ended") if isinstance(last, dict) else None

    @property
    def status_note(self) -> str:
        """Why a run is not finished, for the banner on its page."""
        command = self.record.get("command")
        command = [str(word) for word in command] if isinstance(command, list) else []
        resume = resume_command(command, self.experiment, self.folder)
        if not self.name.endswith(INCOMPLETE):
            return "Its folder has no readable metrics.json: the file is missing or damaged."
        if self.ended == "failed":
            return f"It stopped on an error (see the message it printed); after fixing the cause: {resume}"
        if self.ended == "interrupted":
            return f"It was interrupted; continue it with: {resume}"
        return f"It is still running, or it was killed; a killed run continues with: {resume}"

    @property
    def config(self) -> dict[str, Any]:
        config = self.record.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def dataset(self) -> str:
        """The data the run used, marked when it is not the official set (carved, unverified, --quick size)."""
        return data_label(self.record)

    @property
    def numbers(self) -> dict[str, Any]:
        return self.metrics or {}

    @property
    def key_metric(self) -> tuple[str, float] | None:
        """The run's headline metric (its experiment's HEADLINE, recorded in config.json), else the metric the
        source reported first (references.json), else the first test/val/best metric."""
        headline = self.record.get("headline")
        names = [headline] if isinstance(headline, str) else []
        names += [str(ref.get("metric")) for ref in self.references]
        names += [name for name in self.numbers if name.startswith(("test_", "val_", "best_"))]
        for name in names:
            if is_finite_number(self.numbers.get(name)):
                return name, self.numbers[name]
        return None

    @property
    def verdicts(self) -> dict[str, int]:
        kinds = [verdict_kind(ref.get("verdict")) for ref in self.references]
        return {kind: kinds.count(kind) for kind in ("met", "not-met", "not-comparable")}

    @property
    def wall_time(self) -> float | None:
        value = self.numbers.get("wall_time_s")
        return value if is_finite_number(value) else None

    @property
    def started(self) -> str:
        return str(self.record.get("started", ""))


def read_run(experiment: str, folder: Path, previous: Mapping[str, Any]) -> RunInfo:
    """The run folder's files; `previous` (the old site's manifest entries) tells whether its page can be
    kept from the last build."""
    record = read_json(folder / CONFIG, dict) or {}
    references = [ref for ref in read_json(folder / VERDICTS, list) or [] if isinstance(ref, dict)]
    run = RunInfo(experiment, folder, record, read_json(folder / METRICS, dict), references,
                  read_json(folder / REPORT_PARTS, dict) or {}, run_signature(folder))
    known = previous.get(run.key)
    run.unchanged = isinstance(known, dict) and known.get("signature") == run.signature
    run.recipe = recipe_of(record)
    return run


def read_json(path: Path, kind: type) -> Any:
    """The file's JSON if it holds a `kind`, else None (missing, unreadable or damaged: the site shows it as such)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, kind) else None


def run_folders(root: Path, skip: Path) -> Iterator[tuple[str, Path]]:
    """(experiment, folder) for every `root/<experiment>/<run>/` holding a config.json, or still incomplete.
    Hidden folders (a site being built) and the site itself are not runs."""
    skip = skip.resolve()
    for experiment_dir in sorted(root.iterdir()):
        if experiment_dir.name.startswith(".") or not experiment_dir.is_dir() or experiment_dir.resolve() == skip:
            continue
        for folder in sorted(experiment_dir.iterdir()):
            if (folder.is_dir() and not folder.name.startswith(".")
                    and ((folder / CONFIG).is_file() or folder.name.endswith(INCOMPLETE))):
                yield experiment_dir.name, folder


def recipe_of(record: Mapping[str, Any]) -> str:
    """Which recipe a run used, from its config.json: seed or tuned, "custom" when options were set beyond
    it (another seed or device aside), "unrecorded" for a run from a version that did not record it."""
    recipe = record.get("recipe")
    if recipe not in ("seed", "tuned"):
        return "unrecorded"
    return "custom" if record.get("changed_options") else recipe


def listed(value: Any) -> list[Any]:
    """`value` if it is a list, else nothing: a damaged report.json (`"notes": 5`) shows no notes, never fails."""
    return value if isinstance(value, list) else []


def verdict_kind(verdict: Any) -> str:
    """The verdict as a CSS class: met, not-met, not-comparable or other (not measured, see report)."""
    verdict = str(verdict)
    if verdict in ("met", "not met"):
        return verdict.replace(" ", "-")
    return "not-comparable" if verdict.startswith("not comparable") else "other"


# ---------------------------------------------------------------- what a run page shows besides the JSON

def figures(run: RunInfo) -> list[dict[str, Any]]:
    """Each PNG in figures/ with its caption (report.json; the file's name for a run that has none yet)
    and the data files saved beside it."""
    captions = {Path(str(figure.get("path"))).name: str(figure.get("caption"))
                for figure in listed(run.report.get("figures")) if isinstance(figure, dict)}
    pngs = sorted((run.folder / "figures").glob("*.png"), key=lambda p: (p.name not in captions, p.name))
    return [{"src": f"figures/{png.name}", "caption": captions.get(png.name, png.stem.replace("_", " ")),
             "data": [f"figures/{data.name}" for data in (png.with_suffix(".csv"), png.with_suffix(".npz"))
                      if data.is_file()]}
            for png in pngs]


def history_charts(path: Path) -> list[dict[str, Any]]:
    """One small line plot per column of history.csv, against its epoch (or step) column."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    if not rows:
        return []
    columns = list(rows[0])
    x_name = next((name for name in ("epoch", "step", "iteration", "trial") if name in columns), None)
    xs = [to_float(row.get(x_name)) for row in rows] if x_name else []
    if not xs or not all(math.isfinite(x) for x in xs):
        x_name, xs = "row", list(range(1, len(rows) + 1))
    charts = [chart(column, xs, [to_float(row.get(column)) for row in rows], x_name)
              for column in columns if column != x_name]
    return [c for c in charts if c is not None][:HISTORY_CHARTS]


def to_float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def chart(title: str, xs: Sequence[float], ys: Sequence[float], x_name: str,
          labels: Sequence[str] | None = None) -> dict[str, Any] | None:
    """A line plot as SVG coordinates (the template draws it); None when no value is finite.
    Each point keeps a label for its tooltip."""
    labels = labels or [f"{x_name} {format_number(x)}" for x in xs]
    points = [(x, y, label) for x, y, label in zip(xs, ys, labels) if math.isfinite(y)]
    if not points:
        return None
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    coordinates = [(_scale(x, x_low, x_high, CHART_WIDTH), CHART_HEIGHT - _scale(y, y_low, y_high, CHART_HEIGHT),
                    f"{label}: {format_number(y)}") for x, y, label in points]
    return {"title": title, "x_name": x_name, "points": coordinates, "low": y_low, "high": y_high,
            "first": x_low, "last": x_high, "polyline": " ".join(f"{x},{y}" for x, y, _ in coordinates),
            "width": CHART_WIDTH, "height": CHART_HEIGHT}


def _scale(value: float, low: float, high: float, size: int) -> float:
    share = (value - low) / (high - low) if high > low else 0.5
    return round(CHART_PAD + share * (size - 2 * CHART_PAD), 1)


def markdown_blocks(text: str) -> list[dict[str, Any]]:
    """A report section's Markdown as blocks the template renders: pipe tables, fenced code and paragraphs
    (the sections hold only these; inline markup is shown as written)."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
        elif lines[i].startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            blocks.append({"kind": "code", "text": "\n".join(lines[i + 1:end])})
            i = end + 1
        else:
            end = next((j for j in range(i, len(lines)) if not lines[j].strip() or lines[j].startswith("```")),
                       len(lines))
            blocks.append(_text_block(lines[i:end]))
            i = end
    return blocks


def _text_block(lines: list[str]) -> dict[str, Any]:
    if not lines[0].startswith("|"):
        return {"kind": "paragraph", "text": " ".join(lines)}
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    rows = [row for row in cells[1:] if not all(cell and set(cell) <= set(":-") for cell in row)]
    return {"kind": "table", "header": cells[0], "rows": rows}


# ---------------------------------------------------------------- building the site

def build(runs_root: Path, out: Path | None = None) -> Path:
    """Build (or rebuild) the site over every run under `runs_root` and return its index.html.

    `out` defaults to `runs_root/site`. It is written as a whole to a temporary folder beside `out`,
    then swapped in, so a reader never sees half a site and a failed build leaves the old one as it was.
    """
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise UsageError(f"--runs {runs_root}: no such folder; run an experiment first "
                         "('dlclassics run ID') or pass the folder your runs are in")
    out = Path(out) if out is not None else runs_root / SITE
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_our_site(out))):
        raise UsageError(f"--out {out} exists and is not a dlclassics site (no manifest.json written by dlclassics); "
                         "building there would replace what it holds: pass a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        previous = reusable_entries(out)
        runs = sorted((read_run(experiment, folder, previous) for experiment, folder in run_folders(runs_root, out)),
                      key=lambda run: (run.started, run.name), reverse=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; a site is for others to read
            write_site(runs, runs_root, staging, previous=out)
            _swap(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out / "index.html"


def is_our_site(folder: Path) -> bool:
    """Whether `folder` is a site this project built: its manifest.json is ours (our generator mark, a
    code fingerprint and the runs' entries), not any file of that common name."""
    manifest = read_json(folder / MANIFEST, dict) or {}
    return (manifest.get("generator") == GENERATOR and isinstance(manifest.get("fingerprint"), str)
            and isinstance(manifest.get("runs"), dict))


def reusable_entries(out: Path) -> dict[str, Any]:
    """The previous build's manifest entries (run key -> signature and recipe), when that build was made by
    this same code and templates; otherwise nothing is reused."""
    manifest = read_json(out / MANIFEST, dict) or {}
    entries = manifest.get("runs")
    return entries if manifest.get("fingerprint") == code_fingerprint() and isinstance(entries, dict) else {}


def refresh(runs_root: Path) -> str:
    """The line `dlclassics run` prints after its report: the refreshed site's index, or why the site
    could not be refreshed (the run itself has finished either way)."""
    try:
        return str(build(runs_root))
    except (OSError, UsageError) as exc:
        return f"site not refreshed: {exc}"
    except Exception as exc:  # a damaged run folder the site cannot show must not fail the run that just finished
        return f"site not refreshed: {type(exc).__name__}: {exc}; 'dlclassics report' rebuilds it"


def open_in_browser(index: Path) -> None:
    webbrowser.open(index.resolve().as_uri())


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold a lock beside the site while it is built; leftovers of a build that was killed are removed."""
    with open(out.with_name(f".{out.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for leftover in (*out.parent.glob(f".{out.name}.new-*"), *out.parent.glob(f".{out.name}.old-*")):
            shutil.rmtree(leftover, ignore_errors=True)
        yield


def _swap(new: Path, out: Path) -> None:
    """Put the new site where the old one was. Two renames: between them (an instant) there is no
    folder, never a mixed one."""
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(3)}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def write_site(runs: Sequence[RunInfo], runs_root: Path, staging: Path, previous: Path) -> None:
    """Every page into `staging`. The page of an unchanged run (same files, same code and templates as
    when `previous` was built) is hard-linked from there instead of rendered."""
    env = environment()
    common = {"version": __version__, "runs_root": str(runs_root.resolve()),
              "built": time.strftime("%Y-%m-%d %H:%M")}
    for run in runs:
        old_page = previous / "runs" / run.key
        if run.unchanged and (old_page / "index.html").is_file():
            _link_tree(old_page, staging / "runs" / run.key)
        else:
            write_run_page(env, run, staging / "runs" / run.key, common)
    by_experiment: dict[str, list[RunInfo]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, []).append(run)
    for experiment, its_runs in by_experiment.items():
        _render(env, "experiment.html", staging / "experiments" / f"{experiment}.html", root="../",
                **experiment_context(experiment, its_runs), **common)
    experiments = [{"id": experiment, "title": title_of(experiment), "runs": len(its_runs)}
                   for experiment, its_runs in sorted(by_experiment.items())]
    _render(env, "index.html", staging / "index.html", root="", runs=runs, experiments=experiments, **common)
    for asset in ASSETS:
        atomic_write_bytes(staging / "assets" / asset, template_file(asset).read_bytes())
    manifest = {"generator": GENERATOR, "fingerprint": code_fingerprint(),
                "runs": {run.key: {"signature": run.signature, "recipe": run.recipe} for run in runs}}
    atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def write_run_page(env: jinja2.Environment, run: RunInfo, page_dir: Path, common: Mapping[str, Any]) -> None:
    """The run's page, with its files linked beside it so that every link on the page resolves."""
    make_dirs(page_dir)
    shown_files = [name for name in RUN_FILES if (run.folder / name).is_file()]
    for name in shown_files:
        _link_or_copy(run.folder / name, page_dir / name)
    run_figures = figures(run)
    for figure in run_figures:
        for name in (figure["src"], *figure["data"]):
            make_dirs(page_dir / "figures")
            _link_or_copy(run.folder / name, page_dir / name)
    _render(env, "run.html", page_dir / "index.html", root="../../../", run=run, title=title_of(run.experiment),
            figures=run_figures, history=history_charts(run.folder / HISTORY), files=shown_files,
            sections=[{"title": str(s.get("title")), "blocks": markdown_blocks(str(s.get("markdown", "")))}
                      for s in listed(run.report.get("sections")) if isinstance(s, dict)],
            notes=[str(note) for note in listed(run.report.get("notes"))], **common)


def experiment_context(experiment: str, runs: Sequence[RunInfo]) -> dict[str, Any]:
    """An experiment page: its newest runs side by side, the key metric over its runs, seed against tuned."""
    compared = list(runs[:COMPARED_RUNS])
    metric_names = list(dict.fromkeys(name for run in compared for name, value in run.numbers.items()
                                      if not isinstance(value, (dict, list))))
    finished = [run for run in runs if run.status == "finished" and run.key_metric]
    key_name = finished[0].key_metric[0] if finished else None
    over_runs = [run for run in reversed(finished) if is_finite_number(run.numbers.get(key_name))]
    key_chart = chart(key_name, list(range(1, len(over_runs) + 1)), [run.numbers[key_name] for run in over_runs],
                      "run", [f"{run.name} ({run.recipe})" for run in over_runs]) if key_name else None
    return {"experiment": experiment, "title": title_of(experiment), "runs": runs, "compared": compared,
            "metric_names": metric_names, "key_name": key_name, "key_chart": key_chart,
            "recipes": recipe_comparison(runs)}


def recipe_comparison(runs: Sequence[RunInfo]) -> list[dict[str, Any]]:
    """Per recipe, its newest finished run (a full-size one when there is one) and how many runs it has."""
    rows = []
    for recipe in dict.fromkeys(run.recipe for run in runs):
        finished = [run for run in runs if run.recipe == recipe and run.status == "finished"]
        full_size = [run for run in finished if not run.config.get("quick")]
        rows.append({"recipe": recipe, "count": len(finished), "run": (full_size or finished or [None])[0]})
    return rows


def run_signature(folder: Path) -> list[Any]:
    """What a run page is built from: the folder's path and each file's name, size and modification time."""
    files = [folder / name for name in RUN_FILES] + sorted((folder / "figures").glob("*"))
    return [str(folder.resolve())] + [[str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns]
                                      for path in files if path.is_file() for stat in [path.stat()]]


def code_fingerprint() -> str:
    """A hash of this module and the templates: after an upgrade every page is rendered again."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for item in sorted(resources.files("dlclassics").joinpath("templates").iterdir(), key=lambda p: p.name):
        digest.update(item.name.encode() + item.read_bytes())
    return digest.hexdigest()[:16]


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy, and cheap), or a copy where the file system cannot link (another disk)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _link_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_dir():
            continue
        make_dirs((target / path.relative_to(source)).parent)
        _link_or_copy(path, target / path.relative_to(source))


# ---------------------------------------------------------------- templates

def template_file(name: str) -> Any:
    return resources.files("dlclassics").joinpath("templates", name)


@functools.cache
def environment() -> jinja2.Environment:
    """Jinja2 with autoescaping on for every template: a value from a run folder can never become markup."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("dlclassics", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(number=format_number, href=lambda path: quote(str(path)), duration=duration,
                       verdict_kind=verdict_kind, shown=shown, short_commit=short_commit, breakable=breakable,
                       when=lambda started: str(started).replace("T", " ")[:16])
    return env


def _render(env: jinja2.Environment, template: str, path: Path, **context: Any) -> None:
    atomic_write_text(path, env.get_template(template).render(**context))


@functools.cache
def title_of(experiment: str) -> str:
    try:
        return registry.title(experiment)
    except UsageError:
        return "(an experiment this version of dlclassics does not have)"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def breakable(name: Any) -> Markup:
    """A metric name that may wrap after its underscores (`test_accuracy` -> `test_<wbr>accuracy`), escaped."""
    return Markup("_<wbr>").join(escape(part) for part in str(name).split("_"))


def shown(value: Any) -> str:
    """A config or metric value as text: numbers formatted, lists and tables as compact JSON."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return format_number(value)


def short_commit(commit: Any) -> str:
    commit = str(commit or "unknown")
    return commit[:7] + ("+dirty" if commit.endswith("+dirty") else "") if len(commit) > 12 else commit
