"""Several worker processes on one study finish exactly the requested trials, on the default journal
storage and on a real PostgreSQL server started on loopback for the test."""

import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from dlclassics import sweep

TOY = "sweep_toy.make_objective"


def _check_exact(study, n_trials):
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == n_trials
    assert len({t.number for t in complete}) == n_trials
    assert len({t.params["x"] for t in complete}) == n_trials  # no duplicated work
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    # anything else is a surplus trial pruned before doing any work
    assert all(t.user_attrs.get(sweep.SURPLUS) for t in trials if t.state == optuna.trial.TrialState.PRUNED)
    return complete


def test_workers_share_a_journal_study_and_resume(tmp_path):
    study = sweep.optimize(TOY, {}, study_dir=tmp_path, study_name="s", n_trials=12, workers=3)
    complete = _check_exact(study, 12)
    assert len({t.user_attrs["pid"] for t in complete}) >= 2  # the work really was shared
    again = sweep.optimize(TOY, {}, study_dir=tmp_path, study_name="s", n_trials=15, workers=2)
    _check_exact(again, 15)  # resumed: the first 12 are kept
    assert sweep.trial_rows(again)[0]["trial"] == 0 and "seconds" in sweep.trial_rows(again)[0]


def test_distinct_grid_points(tmp_path):
    grid = {"a": (1, 2, 3), "b": ("x", "y")}
    study = optuna.create_study(storage=sweep.open_storage(None, tmp_path), study_name="g")
    sweep.enqueue_distinct(study, grid, 6, seed=0)
    points = {tuple(t.system_attrs["fixed_params"].values()) for t in study.get_trials(deepcopy=False)}
    assert len(points) == 6


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
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        run(binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_workers_share_a_postgres_study(postgres_url, tmp_path):
    study = sweep.optimize(TOY, {}, study_dir=tmp_path, study_name="pg", n_trials=10, workers=3,
                           storage_url=postgres_url)
    complete = _check_exact(study, 10)
    assert len({t.user_attrs["pid"] for t in complete}) >= 2


def test_killed_worker_trial_is_failed_and_replaced(postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DLCLASSICS_SWEEP_HEARTBEAT", "1")
    monkeypatch.setenv("DLCLASSICS_SWEEP_GRACE", "2")
    monkeypatch.setattr(sweep, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(sweep, "GRACE_SECONDS", 2)
    optuna.create_study(study_name="kill", storage=sweep.open_storage(postgres_url, tmp_path), direction="maximize")
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=sweep._worker, args=(TOY, {"sleep": 60}, postgres_url, str(tmp_path), "kill",
                                                         "random", 0, 3, 1))
    worker.start()
    study = optuna.load_study(study_name="kill", storage=sweep.open_storage(postgres_url, tmp_path))
    deadline = time.time() + 120
    while not [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]:
        assert time.time() < deadline, "the worker never started a trial"
        time.sleep(0.2)
    worker.kill()
    worker.join()
    time.sleep(3.5)  # past the grace period without a heartbeat
    study = sweep.optimize(TOY, {}, study_dir=tmp_path, study_name="kill", n_trials=3, storage_url=postgres_url)
    _check_exact(study, 3)
    failed = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1  # the killed worker's trial: failed, not "running" forever
