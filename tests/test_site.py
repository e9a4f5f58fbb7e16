"""The results site (`dlclassics report`): escaping, run states, incremental and atomic rebuilds.

Most tests build sites from hand-written run folders (fast); one makes real --quick runs to check that
`dlclassics run` refreshes the site. The browser checks are in test_site_browser.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_quick
from markupsafe import escape

from dlclassics import site
from dlclassics.cli import main
from dlclassics.files import atomic_write_json, atomic_write_text

HOSTILE = "<script>window.pwned = 1</script>"


def fake_run(root: Path, name: str, experiment: str = "mnist-mlp", config: dict | None = None,
             metrics: dict | None = None, report: dict | None = None, finished: bool = True,
             ended: str | None = None) -> Path:
    """A run folder as `dlclassics run` writes one (config.json first; the rest only once it finished).
    `ended`: how its last part ended (interrupted, failed), as config.json records it."""
    folder = root / experiment / name
    atomic_write_json(folder / "config.json", {"experiment": experiment, "config": config or {"dataset": "mnist"},
                                               "git_commit": "0123456789abcdef", "started": f"2026-01-01T{name[-8:]}",
                                               "parts": [{"ended": ended}] if ended else []})
    (folder / "figures").mkdir()
    (folder / "figures" / "loss.png").write_bytes(b"\x89PNG not decoded by these tests")
    atomic_write_text(folder / "figures" / "loss.csv", "epoch,loss\n1,0.5\n")
    atomic_write_text(folder / "history.csv", "epoch,train_loss,test_accuracy\n1,2.0,0.5\n2,1.0,\n3,0.5,0.9\n")
    if finished:
        atomic_write_json(folder / "metrics.json", metrics or {"test_accuracy": 0.9, "wall_time_s": 3.0})
        atomic_write_json(folder / "references.json", [
            {"what": "test accuracy", "metric": "test_accuracy", "source": 0.97, "ours": 0.9, "verdict": "not met"}])
        atomic_write_json(folder / "report.json", report or {"notes": ["a note"], "sections": [], "figures": [
            {"path": "figures/loss.png", "caption": "Loss per epoch"}]})
    return folder


def page(index: Path, run_folder: Path) -> str:
    return (index.parent / "runs" / run_folder.parent.name / run_folder.name / "index.html").read_text()


def test_hostile_values_are_shown_as_text_never_as_markup(tmp_path):
    runs = tmp_path / "runs"
    folder = fake_run(runs, "20260101-000001-aaaaaa", config={"dataset": HOSTILE},
                      metrics={HOSTILE: 1.0, "test_accuracy": 0.9},
                      report={"notes": [HOSTILE],
                              "sections": [{"title": HOSTILE, "markdown": f"| a |\n|---|\n| {HOSTILE} |"}],
                              "figures": [{"path": "figures/loss.png", "caption": f'x" onerror="{HOSTILE}'}]})
    index = site.build(runs)
    escaped = "&lt;script&gt;window.pwned = 1&lt;/script&gt;"
    run_page = page(index, folder)
    assert run_page.count(escaped) >= 5  # config value, metric name, note, section title, table cell
    assert 'alt="x&#34; onerror=&#34;&lt;script&gt;' in run_page  # the caption stays inside its attribute
    assert escaped in index.read_text()  # the dataset column
    for html in index.parent.rglob("*.html"):
        text = html.read_text()
        assert "<script>" not in text and "onerror=\"" not in text, html
        assert text.count("<script") == 1 and 'assets/site.js"></script>' in text  # only the site's own script


def test_the_index_lists_the_experiments_once_and_its_title_is_plain(tmp_path):
    fake_run(tmp_path / "runs", "20260101-000001-aaaaaa")
    text = site.build(tmp_path / "runs").read_text()
    assert "<title>All runs · dlclassics results</title>" in text
    assert text.count('id="experiments-heading"') == 1


def test_incomplete_and_failed_runs_are_never_shown_as_finished(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "20260101-000001-aaaaaa")
    incomplete = fake_run(runs, "20260101-000002-bbbbbb.incomplete", finished=False)
    interrupted = fake_run(runs, "20260101-000003-cccccc.incomplete", finished=False, ended="interrupted")
    failed = fake_run(runs, "20260101-000004-dddddd.incomplete", finished=False, ended="failed")
    damaged = fake_run(runs, "20260101-000005-eeeeee", finished=False)
    index = site.build(runs)
    rows = {line.split('href="runs/mnist-mlp/')[1].split("/")[0]: line
            for line in index.read_text().split("<tr ")[1:] if 'href="runs/mnist-mlp/' in line}
    statuses = {"20260101-000001-aaaaaa": "finished", incomplete.name: "incomplete", interrupted.name: "incomplete",
                failed.name: "failed", damaged.name: "failed"}
    for name, status in statuses.items():
        assert f">{status}<" in rows[name] and (status == "finished") == (">finished<" in rows[name]), name
    assert "Incomplete run:" in page(index, incomplete) and "still running, or it was killed" in page(index, incomplete)
    assert "It was interrupted; continue it with: dlclassics run mnist-mlp --resume" in page(index, interrupted)
    assert "Failed run:" in page(index, failed) and "stopped on an error" in page(index, failed)
    assert "no readable metrics.json" in page(index, damaged)
    assert "Loss per epoch" not in page(index, incomplete)  # no report.json yet: captions from file names
    assert 'alt="loss"' in page(index, incomplete)
    experiment_page = (index.parent / "experiments" / "mnist-mlp.html").read_text()
    recipes = experiment_page.split("Seed against tuned")[1].split("</table>")[0]
    assert '<th scope="row">unrecorded</th><td class="num">1</td>' in recipes  # one finished run, not five


def test_rebuild_renders_only_changed_runs_and_drops_removed_ones(tmp_path):
    runs = tmp_path / "runs"
    kept = fake_run(runs, "20260101-000001-aaaaaa")
    changed = fake_run(runs, "20260101-000002-bbbbbb")
    removed = fake_run(runs, "20260101-000003-cccccc", experiment="least-squares")
    index = site.build(runs)
    inode = {folder.name: os.stat(index.parent / "runs" / "mnist-mlp" / folder.name / "index.html").st_ino
             for folder in (kept, changed)}

    atomic_write_json(changed / "metrics.json", {"test_accuracy": 0.123456, "wall_time_s": 3.0})
    os.utime(changed / "metrics.json", ns=(1, 1))  # a different time, even on a coarse-grained file system
    shutil.rmtree(removed)
    added = fake_run(runs, "20260101-000004-dddddd")
    index = site.build(runs)

    site_runs = index.parent / "runs" / "mnist-mlp"
    assert os.stat(site_runs / kept.name / "index.html").st_ino == inode[kept.name]  # reused, not rendered
    assert os.stat(site_runs / changed.name / "index.html").st_ino != inode[changed.name]
    assert "0.1235" in (site_runs / changed.name / "index.html").read_text()
    assert "0.1235" in index.read_text() and added.name in index.read_text()
    assert removed.name not in index.read_text() and not (index.parent / "runs" / "least-squares").exists()
    assert not (index.parent / "experiments" / "least-squares.html").exists()
    assert [p.name for p in runs.iterdir() if p.name.startswith(".")] == [".site.lock"]  # no temporary folders


def test_changed_templates_render_every_page_again(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    folder = fake_run(runs, "20260101-000001-aaaaaa")
    run_page = site.build(runs).parent / "runs" / "mnist-mlp" / folder.name / "index.html"
    before = run_page.stat().st_ino
    site.build(runs)
    assert run_page.stat().st_ino == before
    monkeypatch.setattr(site, "code_fingerprint", lambda: "another version")
    site.build(runs)
    assert run_page.stat().st_ino != before


def test_a_failed_rebuild_leaves_the_old_site_whole(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    fake_run(runs, "20260101-000001-aaaaaa")
    index = site.build(runs)
    old_files = {path: path.read_bytes() for path in index.parent.rglob("*") if path.is_file()}
    fake_run(runs, "20260101-000002-bbbbbb")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(site, "write_run_page", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        site.build(runs)
    assert {path: path.read_bytes() for path in index.parent.rglob("*") if path.is_file()} == old_files
    assert not [p for p in runs.iterdir() if p.name.startswith(".site.") and p.name != ".site.lock"]


def test_out_folder_that_is_not_a_site_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "20260101-000001-aaaaaa")
    precious = tmp_path / "mine" / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("years of work")
    assert main(["report", "--runs", str(runs), "--out", str(precious.parent)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is not a dlclassics site" in line and precious.read_text() == "years of work"
    assert main(["report", "--runs", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_report_builds_the_site_and_opens_it(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    fake_run(runs, "20260101-000001-aaaaaa")
    opened = []
    monkeypatch.setattr(site.webbrowser, "open", opened.append)
    assert main(["report", "--runs", str(runs), "--out", str(tmp_path / "shared" / "site"), "--open"]) == 0
    index = tmp_path / "shared" / "site" / "index.html"
    assert capsys.readouterr().out.strip() == str(index)
    assert opened == [index.resolve().as_uri()]
    assert (index.parent / "assets" / "site.js").is_file() and (index.parent / "assets" / "style.css").is_file()


def test_recipe_is_read_from_config_json_without_importing_experiments(toy, tmp_path):
    for extra in ((), ("--recipe", "seed"), ("--seed", "3"), ("--set", "lr=0.25")):
        assert main(["run", "toy", "--out", str(tmp_path / "runs"), "--no-site", *extra]) == 0
    records = [json.loads(path.read_text()) for path in sorted((tmp_path / "runs" / "toy").glob("*/config.json"))]
    assert sorted(site.recipe_of(record) for record in records) == ["custom", "seed", "tuned", "tuned"]
    assert [record["changed_options"] for record in records if record["changed_options"]] == [["lr"]]
    assert site.recipe_of({"config": {}}) == "unrecorded"
    source = Path(site.__file__).read_text()
    assert "registry.load" not in source and "dlclassics.experiments" not in source


def test_report_sections_become_tables_code_and_paragraphs():
    text = "Two\nlines.\n\n| a | b |\n|---|---:|\n| 1 | x |\n\n```\nSequential(\n\n)\n```\nend"
    assert site.markdown_blocks(text) == [
        {"kind": "paragraph", "text": "Two lines."},
        {"kind": "table", "header": ["a", "b"], "rows": [["1", "x"]]},
        {"kind": "code", "text": "Sequential(\n\n)"},
        {"kind": "paragraph", "text": "end"}]


def test_history_plots_one_chart_per_column_and_skip_missing_values(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_loss,test_accuracy,empty\n1,2.0,0.5,\n2,1.0,,\n3,0.5,0.9,\n")
    loss, accuracy = site.history_charts(path)
    assert (loss["title"], loss["x_name"], loss["low"], loss["high"]) == ("train_loss", "epoch", 0.5, 2.0)
    assert len(loss["points"]) == 3 and len(accuracy["points"]) == 2
    top, bottom = site.CHART_PAD, site.CHART_HEIGHT - site.CHART_PAD
    assert loss["points"][0][:2] == (site.CHART_PAD, top) and loss["points"][-1][:2] == (site.CHART_WIDTH - top, bottom)
    assert site.history_charts(tmp_path / "missing.csv") == []


def test_run_refreshes_the_site_unless_no_site(image_data_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    run_quick("least-squares", image_data_dir, out, "--no-site")
    assert not (out / "site").exists()
    capsys.readouterr()
    folder = run_quick("mnist-mlp", image_data_dir, out)
    report, index = capsys.readouterr().out.strip().splitlines()[-2:]
    assert report == str(folder / "report.md") and index == str(out / "site" / "index.html")
    text = Path(index).read_text()
    assert "least-squares" in text and folder.name in text
    captions = json.loads((folder / "report.json").read_text())["figures"]
    run_page = page(Path(index), folder)
    assert captions and all(f'alt="{escape(figure["caption"])}"' in run_page for figure in captions)
