"""The CLI explains itself: every flag documented, experiments and examples in `run --help`, ranges in
`list ID`, and `dlclassics list` without importing torch or the experiments."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from dlclassics import registry
from dlclassics.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _subparsers(sub)


def test_every_flag_and_argument_has_help():
    undocumented = [f"{name} {action.dest}" for name, sub in _subparsers(build_parser()) for action in sub._actions
                    if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert undocumented == []


def test_run_help_lists_experiments_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert all(experiment in out for experiment in registry.EXPERIMENTS)
    assert "examples:" in out and "--unverified" in out


def test_list_id_shows_choices_and_ranges(capsys):
    assert main(["list", "mnist-mlp"]) == 0
    out = capsys.readouterr().out
    assert "one of mnist, fashion-mnist" in out and "> 0.0" in out and "true or false" in out


def test_list_does_not_import_torch_or_the_experiments():
    code = ("import sys; from dlclassics.cli import main; main(['list']); "
            "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('dlclassics.experiments.')]; "
            "sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == len(registry.EXPERIMENTS)


def test_results_table_names_the_data_of_each_row(image_data_dir, tmp_path, capsys):
    """`runs --markdown` (the README's results rows): a run per dataset, each row saying which data it measured."""
    for dataset in ("mnist", "fashion-mnist"):
        assert main(["run", "mnist-mlp", "--quick", "--quiet", "--dataset", dataset, "--data-dir", str(image_data_dir),
                     "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["runs", "--markdown", "--out", str(tmp_path / "r")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mnist-mlp |")]
    assert {row.split(" | ")[1] for row in rows} == {"mnist, --quick size", "fashion-mnist, --quick size"}


def test_the_quickstart_run_shows_progress():
    """The first command used to pass --quiet and print nothing for its whole run."""
    script = (Path(__file__).resolve().parents[1] / "scripts" / "quickstart.sh").read_text()
    (run_line,) = [line for line in script.splitlines() if "dlclassics run" in line and line.startswith("exec")]
    assert "--quiet" not in run_line
