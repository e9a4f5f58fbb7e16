"""Searches that don't lie: exactly the requested trials, on the default journal storage and on a real
PostgreSQL server started on loopback for the test; killed workers and Ctrl-C leave nothing lost or
doubled; studies are the run's own unless joined on purpose; no database password is shown."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import sweep_toy
from conftest import run_quick

from dlclassics import sweep
from dlclassics.cli import main
from dlclassics.errors import RunError, UsageError
from dlclassics.sweep import masked_url

STATES = optuna.trial.TrialState


def _check_exact(study, n_trials):
    """Exactly slots 0..n-1 finished, once each, on distinct points; nothing left running."""
    trials = study.get_trials(deepcopy=False)
    complete = sweep.completed_trials(study)
    assert [sweep.trial_index(t) for t in complete] == list(range(n_trials))
    assert len({t.params["x"] for t in complete}) == n_trials  # no duplicated work
    assert not [t for t in trials if t.state in (STATES.RUNNING, STATES.WAITING)]
    # anything pruned is a surplus trial, pruned before doing any work
    assert all(t.user_attrs.get(sweep.SURPLUS) for t in trials if t.state == STATES.PRUNED)
    return complete


def _rows(study):
    return [{k: v for k, v in row.items() if k not in ("seconds", "pid")} for row in sweep.trial_rows(study)]


def test_workers_share_a_journal_study_and_resume(tmp_path):
    # Trials long enough (0.8 s) that one worker cannot take all 12 before the others have started,
    # even when a busy machine makes their start (importing torch) take seconds.
    study = sweep_toy.search(tmp_path, 12, 3, {"sleep": 0.8}, quiet=True)
    complete = _check_exact(study, 12)
    assert len({t.user_attrs["pid"] for t in complete}) >= 2  # the work really was shared
    again = sweep_toy.search(tmp_path, 15, 1, {}, quiet=True)
    _check_exact(again, 15)  # resumed: the first 12 are kept
    assert sweep.trial_rows(again)[0]["trial"] == 0 and "seconds" in sweep.trial_rows(again)[0]


def test_one_worker_runs_the_in_memory_objective(tmp_path):
    seen = []  # a closure over local state: it cannot be imported by name nor pickled, and need not be

    def objective(trial):
        seen.append(sweep.trial_index(trial))
        return trial.suggest_categorical("a", [1, 2, 3]) * 1.0

    study = sweep.optimize(objective, sweep.Search(3, {}, grid={"a": (1, 2, 3)}), sweep.StudyPlace("s", tmp_path),
                           quiet=True)
    assert sorted(seen) == [0, 1, 2] and sweep.best_trial(study).params == {"a": 3}


def test_distinct_grid_points():
    grid = {"a": (1, 2, 3), "b": ("x", "y")}
    assert len({tuple(p.values()) for p in sweep.distinct_points(grid, 6, seed=0)}) == 6
    assert len(sweep.distinct_points(grid, 10, seed=0)) == 6  # never more than the grid holds


def test_killed_worker_on_the_journal_is_replaced_in_the_same_run(tmp_path, capsys):
    payload = {"sleep": 0.2, "die_at": 1, "marker": str(tmp_path / "killed")}
    study = sweep_toy.search(tmp_path / "study", 6, 2, payload, quiet=True)
    assert (tmp_path / "killed").exists()  # a worker really died by SIGKILL in slot 1
    _check_exact(study, 6)
    failed = [t for t in study.get_trials() if t.state == STATES.FAIL]
    assert [sweep.trial_index(t) for t in failed] == [1]  # its trial: failed, not "running" forever
    assert "exit codes [-9]" in capsys.readouterr().err
    # Wherever a trial ran, the dead worker's included, it ran on a worker's thread count, so it scores the same.
    assert {t.user_attrs["threads"] for t in sweep.completed_trials(study)} == {sweep.worker_threads(2)}


def test_ctrl_c_then_resume_equals_the_uninterrupted_search(tmp_path, capsys):
    grid = {"a": tuple(range(10)), "b": (0.5, 1.5)}
    interrupt = {"at": 2}

    def objective(trial):
        point = {name: trial.suggest_categorical(name, list(choices)) for name, choices in grid.items()}
        if sweep.trial_index(trial) == interrupt["at"]:
            interrupt["at"] = None
            raise KeyboardInterrupt
        return point["a"] * point["b"] + sweep.trial_index(trial)  # the index is the trial's seed offset

    def search(folder):
        return sweep.optimize(objective, sweep.Search(5, {"grid": grid}, grid=grid, seed=3, metric="score"),
                              sweep.StudyPlace("s", folder))

    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "interrupted")
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.startswith("trial 0: a=") and "-> score" in err  # one line per trial
    resumed = search(tmp_path / "interrupted")
    err = capsys.readouterr().err
    assert err.startswith("resuming at trial 2 (2 of 5 trials finished; interrupted, run again after the waiting "
                          "ones: 2)\n") and "Traceback" not in err
    assert _rows(resumed) == _rows(search(tmp_path / "uninterrupted"))  # the same points, seeds and numbers
    assert [row["trial"] for row in sweep.trial_rows(resumed)] == [0, 1, 2, 3, 4]


def test_ctrl_c_on_workers_is_one_line_and_resumes(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the script's own line, nothing else."""
    folder = tmp_path / "study"
    toy = Path(sweep_toy.__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy.parent), *sys.path])}
    process = subprocess.Popen([sys.executable, str(toy), str(folder), "8", "2", "1.0"], stderr=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)
    lines = []
    while len(lines) < 1:  # the first finished trial: both workers are inside a trial now
        line = process.stderr.readline()
        assert line, "the search ended before any trial finished"
        lines.append(line)
    os.killpg(process.pid, signal.SIGINT)
    rest = process.communicate(timeout=60)[1]
    assert process.returncode == 130
    assert "Traceback" not in rest and "Trial" not in rest and "Warning" not in rest, rest
    assert rest.strip().splitlines()[-1] == "interrupted" and all(ln.startswith("trial ") for ln in
                                                                  rest.strip().splitlines()[:-1])
    study = sweep_toy.search(folder, 8, 1, {}, quiet=True)
    _check_exact(study, 8)


def test_signature_of_a_study_must_match(tmp_path):
    place = sweep.StudyPlace("s", tmp_path)
    toy = sweep_toy.make_objective({})
    sweep.optimize(toy, sweep.Search(2, {"space": {"x": [-5, 5]}}), place, quiet=True)
    with pytest.raises(UsageError, match=r"study 's' in .* searches something else \(its space differ"):
        sweep.optimize(toy, sweep.Search(2, {"space": {"x": [0, 1]}}), place, quiet=True)
    with pytest.raises(UsageError, match="there is no study 'other'"):
        sweep.optimize(toy, sweep.Search(2, {}), sweep.StudyPlace("other", tmp_path, join=True), quiet=True)


def test_storage_passwords_are_masked():
    assert masked_url("postgresql+psycopg2://u:s3cr@t@db:5432/optuna") == "postgresql+psycopg2://u:***@db:5432/optuna"
    assert masked_url("postgresql://u@db/optuna?password=s3cret&sslmode=require") == \
           "postgresql://u@db/optuna?password=***&sslmode=require"
    assert masked_url("sqlite:///x.db") == "sqlite:///x.db" and masked_url(None) is None
    with pytest.raises(RunError) as error:
        sweep.open_storage("postgresql+psycopg2://u:s3cret@127.0.0.1:1/optuna", Path("."))
    assert "s3cret" not in str(error.value) and "u:***@127.0.0.1:1" in str(error.value)
    with pytest.raises(UsageError) as error:
        sweep.open_storage("u:s3cret@db", Path("."))
    assert "s3cret" not in str(error.value)


def test_set_on_a_search_dimension_says_how_to_fix_it(capsys):
    assert main(["run", "fashion-mlp", "--set", "lr=0.05", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'lr' is a search dimension" in err and "--set narrow=lr=" in err and err.count("\n") == 1
    assert main(["run", "fashion-mlp", "--set", "narrow=lr=0.05", "--epochs", "3", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["epochs"] == 3
    assert main(["run", "fashion-mlp", "--set", "narrow=depth=3", "--dry-run"]) == 2
    assert "'depth' is not a dimension" in capsys.readouterr().err
    assert main(["run", "he-init", "--study", "x", "--storage", "sqlite://"]) == 2
    assert main(["run", "fashion-mlp", "--study", "x"]) == 2
    assert "give its --storage URL" in capsys.readouterr().err


# ---------------------------------------------------------------- PostgreSQL

def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install '.[postgres]')")
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp folder: its parents are private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="dlclassics-pg-"))
    os.chmod(folder, 0o777)
    data = folder / "data"
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True, timeout=60,
                                      cwd=folder)
    run(binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust")
    run(binaries / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
    try:
        run(binaries / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "optuna")
        # The server trusts loopback, so any password works: it stands for a real one that must never be shown.
        yield f"postgresql+psycopg2://postgres:s3cret@127.0.0.1:{port}/optuna"
    finally:
        run(binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _toy_on(url, folder, name, n_trials, workers, payload):
    return sweep.optimize(sweep_toy.make_objective(payload), sweep.Search(n_trials, {"toy": 1}),
                          sweep.StudyPlace(name, folder, url), workers=workers,
                          worker_objective=sweep.WorkerObjective(sweep_toy.make_objective, payload), quiet=True)


def test_workers_share_a_postgres_study(postgres_url, tmp_path):
    study = _toy_on(postgres_url, tmp_path, "pg", 10, 3, {"sleep": 0.8})  # long enough for every worker to start
    complete = _check_exact(study, 10)
    assert len({t.user_attrs["pid"] for t in complete}) >= 2


def test_killed_worker_trial_is_failed_and_replaced(postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DLCLASSICS_SWEEP_HEARTBEAT", "1")  # for the spawned workers
    monkeypatch.setenv("DLCLASSICS_SWEEP_GRACE", "2")
    monkeypatch.setattr(sweep, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(sweep, "GRACE_SECONDS", 2)
    payload = {"sleep": 0.3, "die_at": 1, "marker": str(tmp_path / "killed")}
    study = _toy_on(postgres_url, tmp_path, "kill", 6, 2, payload)
    assert (tmp_path / "killed").exists()
    _check_exact(study, 6)  # the surviving worker failed the dead one's trial after its grace and ran it again
    failed = [t for t in study.get_trials() if t.state == STATES.FAIL]
    assert [sweep.trial_index(t) for t in failed] == [1]


def test_runs_get_their_own_studies_and_join_on_purpose(postgres_url, image_data_dir, tmp_path, capsys):
    storage = ["--storage", postgres_url]
    first = run_quick("fashion-mlp", image_data_dir, tmp_path / "a", *storage)
    record = json.loads((first / "config.json").read_text())
    assert record["study"] == f"fashion-mlp-{first.name}"
    assert record["storage"] == postgres_url.replace("s3cret", "***")
    assert "s3cret" not in "".join(p.read_text() for p in first.glob("*.md")) + capsys.readouterr().err

    # Another run with another space: its own study, its own trials (all at lr 0.05), not the first run's.
    other = run_quick("fashion-mlp", image_data_dir, tmp_path / "b", *storage, "--set", "narrow=lr=0.05")
    assert {row["lr"] for row in _csv(other / "search.csv")} == {"0.05"}

    # Joining the first run's study on purpose: its trials are this run's; with another space, refused.
    joined = run_quick("fashion-mlp", image_data_dir, tmp_path / "c", *storage, "--study", record["study"])
    assert _csv(joined / "search.csv") == _csv(first / "search.csv")
    assert json.loads((joined / "config.json").read_text())["study"] == record["study"]
    code = main(["run", "fashion-mlp", "--quick", "--quiet", "--device", "cpu", "--data-dir", str(image_data_dir),
                 "--out", str(tmp_path / "d"), *storage, "--study", record["study"], "--set", "narrow=lr=0.05"])
    err = capsys.readouterr().err
    assert code == 2 and "searches something else (its space differ" in err and err.count("\n") == 1
    assert "s3cret" not in err


def _csv(path):
    import csv

    with path.open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_a_stopped_run_whose_study_finished_trials_in_the_database_has_work(postgres_url, tmp_path):
    """Ctrl-C on a --storage search leaves no journal in the folder; the database's finished trials are
    what makes it resumable (its folder is kept)."""
    import torch

    from dlclassics.runs import Run
    from dlclassics.runs.request import has_work

    _toy_on(postgres_url, tmp_path / "search", "stopped", 1, 1, {})
    run = Run("toy", tmp_path / "folder", None, torch.device("cpu"), storage=postgres_url, study="stopped")
    (tmp_path / "folder").mkdir()
    assert has_work(run)
    assert not has_work(Run("toy", tmp_path / "folder", None, torch.device("cpu"), storage=postgres_url,
                            study="no-such-study"))


def test_a_storage_that_went_away_is_a_lost_resource_and_other_errors_stay_themselves():
    from dlclassics.errors import LostResource

    class Gone:
        def get_trials(self, deepcopy=False):
            raise ConnectionError("server closed the connection unexpectedly")

    class Reachable:
        def get_trials(self, deepcopy=False):
            return []

    with pytest.raises(LostResource, match="lost the study's storage .*finished trials are kept"):
        with sweep._storage_guard(Gone()):
            raise UnboundLocalError("cannot access local variable 'trial_id'")  # what Optuna raised
    with pytest.raises(ZeroDivisionError):  # a bug in the objective is not blamed on the storage
        with sweep._storage_guard(Reachable()):
            raise ZeroDivisionError


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux's /proc")
def test_a_killed_resource_tracker_leaves_no_traceback(tmp_path):
    """The workers share no multiprocessing semaphore with the main process, so killing multiprocessing's
    resource tracker mid-search costs nothing: the search finishes, and stderr holds only trial lines."""
    toy = Path(sweep_toy.__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy.parent), *sys.path])}
    process = subprocess.Popen([sys.executable, str(toy), str(tmp_path / "study"), "6", "2", "0.5"],
                               stderr=subprocess.PIPE, text=True, env=env)
    first = process.stderr.readline()  # a trial finished: the workers (and the tracker) are running
    assert first.startswith("trial "), first
    trackers = [child for child in _children(process.pid)
                if "resource_tracker" in Path(f"/proc/{child}/cmdline").read_text()]
    for tracker in trackers:
        os.kill(tracker, signal.SIGKILL)
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 0
    assert "Traceback" not in rest and "KeyError" not in rest, rest
    assert all(line.startswith("trial ") for line in rest.strip().splitlines()), rest
