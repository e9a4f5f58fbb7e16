"""--resume continues only an interrupted run of the same experiment with the same settings, never one
that is finished or still going; Ctrl-C is one line; a resumed run keeps its first start time and
reports both wall times."""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import file_digests

from dlclassics.cli import main
from dlclassics.errors import RunError
from dlclassics.runs.folder import INCOMPLETE, LOCK


def _toy(out, *extra):
    return main(["run", "toy", "--out", str(out), *extra])


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def _folders(out):
    return sorted(p for p in (out / "toy").iterdir() if p.is_dir()) if (out / "toy").is_dir() else []


def _interrupted(toy, out, capsys, at=3):
    """A toy run stopped by Ctrl-C at the start of epoch `at` (so `at - 1` epochs are checkpointed)."""
    toy.INTERRUPT_AT = at
    assert _toy(out) == 1
    (folder,) = _folders(out)
    assert folder.name.endswith(INCOMPLETE) and f"--resume {folder}" in _error_line(capsys)
    toy.INTERRUPT_AT = None
    return folder


def test_ctrl_c_before_the_first_checkpoint_says_nothing_to_resume_yet(toy, tmp_path, capsys):
    toy.INTERRUPT_AT = 1
    assert _toy(tmp_path) == 1
    assert "interrupted before the first checkpoint: nothing to resume yet" in _error_line(capsys)
    assert _folders(tmp_path) == []


def test_resumed_run_keeps_its_first_start_and_reports_both_wall_times(toy, tmp_path, capsys):
    folder = _interrupted(toy, tmp_path, capsys)
    first = json.loads((folder / "config.json").read_text())
    assert first["parts"][0]["ended"] == "interrupted" and first["parts"][0]["wall_time_s"] >= 0

    assert _toy(tmp_path, "--resume") == 0
    (done,) = _folders(tmp_path)
    record = json.loads((done / "config.json").read_text())
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["value"] == 1.5 and metrics["first_epoch_here"] == 3  # continued after epoch 2
    assert record["started"] == first["started"] == record["parts"][0]["started"]
    assert [part["ended"] for part in record["parts"]] == ["interrupted", "finished"]
    assert metrics["wall_time_s"] == pytest.approx(sum(part["wall_time_s"] for part in record["parts"]), abs=0.02)
    assert metrics["wall_time_this_part_s"] == record["parts"][1]["wall_time_s"]
    assert "Resumed after 1 interruption(s): this last part took" in (done / "report.md").read_text()


def test_a_killed_part_counts_up_to_its_last_saved_file(toy, tmp_path, capsys):
    folder = _interrupted(toy, tmp_path, capsys)
    record = json.loads((folder / "config.json").read_text())
    del record["parts"][0]["wall_time_s"], record["parts"][0]["ended"]  # what kill -9 leaves: no time recorded
    (folder / "config.json").write_text(json.dumps(record))
    assert _toy(tmp_path, "--resume", str(folder)) == 0
    (done,) = _folders(tmp_path)
    part = json.loads((done / "config.json").read_text())["parts"][0]
    assert part["ended"] == "killed" and part["wall_time_s"] >= 0


@pytest.mark.parametrize("extra, needle", [
    (["--seed", "7"], "seed was 0, now 7"),
    (["--set", "lr=0.25"], "lr was 0.5, now 0.25"),
    (["--epochs", "4"], "epochs was 3, now 4"),
    (["--carve-test", "0.2"], "carve_test was 0.0, now 0.2"),
    (["--workers", "2"], "workers was 1, now 2"),
])
def test_resume_with_other_settings_is_refused_before_anything_is_written(toy, tmp_path, capsys, extra, needle):
    folder = _interrupted(toy, tmp_path, capsys)
    before = file_digests(tmp_path)
    assert _toy(tmp_path, "--resume", str(folder), *extra) == 2
    assert needle in _error_line(capsys)
    assert file_digests(tmp_path) == before


def test_a_finished_run_is_never_resumed(toy, tmp_path, capsys):
    assert _toy(tmp_path) == 0
    (finished,) = _folders(tmp_path)
    before = file_digests(tmp_path)
    assert _toy(tmp_path, "--resume", str(finished)) == 2
    assert "is a finished run" in _error_line(capsys)
    assert file_digests(tmp_path) == before


def test_a_run_of_another_experiment_is_not_resumed(toy, tmp_path, capsys):
    folder = _interrupted(toy, tmp_path, capsys)
    before = file_digests(tmp_path)
    assert main(["run", "he-init", "--quick", "--out", str(tmp_path), "--resume", str(folder)]) == 2
    assert "is a 'toy' run; continue it with 'dlclassics run toy --resume" in _error_line(capsys)
    assert file_digests(tmp_path) == before


def test_a_run_still_going_is_not_resumed_and_its_lock_dies_with_its_process(toy, tmp_path, capsys):
    folder = _interrupted(toy, tmp_path, capsys)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(folder / LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = file_digests(tmp_path)
        assert _toy(tmp_path, "--resume", str(folder)) == 2
        assert "is in use: another dlclassics process is running it" in _error_line(capsys)
        assert file_digests(tmp_path) == before
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert _toy(tmp_path, "--resume", str(folder)) == 0  # the OS released the lock when the holder died
    (done,) = _folders(tmp_path)
    assert not (done / LOCK).exists()


def test_errors_inside_a_run_leave_no_folder_for_a_later_resume(toy, tmp_path, capsys):
    def fail():
        raise RunError("the data went away")

    toy.FAIL = fail
    assert _toy(tmp_path) == 1
    assert _error_line(capsys) == "dlclassics: error: the data went away"
    assert _folders(tmp_path) == []
    assert _toy(tmp_path, "--resume") == 2
    assert "no interrupted run of 'toy'" in _error_line(capsys)


def test_a_resumed_run_that_fails_keeps_the_earlier_work(toy, tmp_path, capsys):
    folder = _interrupted(toy, tmp_path, capsys)

    def fail():
        raise RunError("the data went away")

    toy.FAIL = fail
    assert _toy(tmp_path, "--resume", str(folder)) == 1
    assert f"the data went away; the interrupted run {folder} is kept" in _error_line(capsys)
    assert [part["ended"] for part in json.loads((folder / "config.json").read_text())["parts"]] == \
           ["interrupted", "failed"]
    toy.FAIL = None
    assert _toy(tmp_path, "--resume", str(folder)) == 0
    (done,) = _folders(tmp_path)
    assert json.loads((done / "metrics.json").read_text())["value"] == 1.5


def test_a_bug_keeps_its_traceback_but_not_its_folder(toy, tmp_path):
    def bug():
        raise ZeroDivisionError("a bug")

    toy.FAIL = bug
    with pytest.raises(ZeroDivisionError):
        _toy(tmp_path)
    assert _folders(tmp_path) == []
