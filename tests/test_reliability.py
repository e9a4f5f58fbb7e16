"""Hostile or unlucky cases of the third reliability round: nothing a user made is deleted, one damaged
run folder never breaks the others, a result never silently differs, and every failure is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import file_digests
from test_site import fake_run

from dlclassics import site
from dlclassics.cli import main
from dlclassics.files import atomic_torch_save
from dlclassics.runs.folder import INCOMPLETE


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in captured.err, err
    return err[0]


def _toy(out: Path, *extra: str) -> int:
    return main(["run", "toy", "--out", str(out), "--no-site", *extra])


# ---------------------------------------------------------------- 1. the site never deletes what is not ours

def test_report_out_refuses_a_folder_whose_manifest_is_not_ours(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "20260101-000001-aaaaaa")
    web_app = tmp_path / "web"
    (web_app / "src").mkdir(parents=True)
    (web_app / "manifest.json").write_text('{"name": "my app", "icons": []}')
    (web_app / "notes.txt").write_text("precious")
    before = file_digests(web_app)
    assert main(["report", "--runs", str(runs), "--out", str(web_app)]) == 2
    assert "is not a dlclassics site" in _one_line(capsys)
    assert file_digests(web_app) == before and (web_app / "src").is_dir()
    index = site.build(runs, tmp_path / "ours")  # a site we built is ours to rebuild
    assert site.is_our_site(index.parent) and site.build(runs, index.parent) == index


# ---------------------------------------------------------------- 5, 6. one damaged folder breaks nothing

DAMAGED_REPORTS = [{"notes": 5, "sections": [], "figures": []}, {"notes": [], "sections": 5, "figures": []},
                   {"notes": [], "sections": [], "figures": 5}]


@pytest.mark.parametrize("report", DAMAGED_REPORTS, ids=["notes", "sections", "figures"])
def test_a_damaged_report_json_is_shown_and_breaks_nothing(tmp_path, report):
    runs = tmp_path / "runs"
    fake_run(runs, "20260101-000001-aaaaaa", report=report)
    fake_run(runs, "20260101-000002-bbbbbb", metrics={"test_accuracy": 10 ** 400, "wall_time_s": 10 ** 400})
    good = fake_run(runs, "20260101-000003-cccccc")
    index = site.build(runs)
    assert good.name in index.read_text()


def test_a_run_finishing_beside_a_damaged_folder_still_exits_0(toy, tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "20260101-000001-aaaaaa", report={"notes": 5, "sections": 5, "figures": 5},
             metrics={"test_accuracy": 10 ** 400, "wall_time_s": 3.0})
    assert main(["run", "toy", "--out", str(runs)]) == 0
    assert "site not refreshed" not in capsys.readouterr().out


DAMAGED_METRICS = ["[1, 2]", "null", '"x"', b"\xff\xfe not utf-8", "{nan"]


@pytest.mark.parametrize("metrics", DAMAGED_METRICS, ids=["list", "null", "string", "not-utf8", "not-json"])
def test_runs_skips_a_damaged_folder_with_one_line_and_lists_the_others(tmp_path, capsys, metrics):
    runs = tmp_path / "runs"
    damaged = fake_run(runs, "20260101-000001-aaaaaa")
    (damaged / "metrics.json").write_bytes(metrics if isinstance(metrics, bytes) else metrics.encode())
    good = fake_run(runs, "20260101-000002-bbbbbb")
    for extra in ([], ["--markdown"]):
        assert main(["runs", "--out", str(runs), *extra]) == 0
        captured = capsys.readouterr()
        assert captured.err.count("skipped") == 1 and str(damaged) in captured.err
        assert "Traceback" not in captured.err
        assert (good.name in captured.out) if not extra else ("| mnist-mlp |" in captured.out)


def test_results_table_tolerates_missing_keys(tmp_path, capsys):
    runs = tmp_path / "runs"
    folder = fake_run(runs, "20260101-000001-aaaaaa", metrics={"test_accuracy": 0.9})  # no wall_time_s
    (folder / "references.json").write_text(json.dumps([{"what": "x", "metric": "test_accuracy"}]))  # no source
    assert main(["runs", "--out", str(runs), "--markdown"]) == 0  # config.json has no machine either
    assert "| mnist-mlp | mnist | x | ? |" in capsys.readouterr().out


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_runs_limit_must_be_positive(tmp_path, capsys, limit):
    assert main(["runs", "--out", str(tmp_path), "--limit", limit]) == 2
    assert "expects an integer from 1" in _one_line(capsys)


# ---------------------------------------------------------------- 10. what a consumer reads is checked

@pytest.mark.parametrize("value", ['"high"', "NaN", "true", "1e999"])
def test_from_run_metrics_must_be_finite_numbers(toy, tmp_path, capsys, value):
    assert _toy(tmp_path / "producer") == 0
    (producer,) = (tmp_path / "producer" / "toy").iterdir()
    metrics = producer / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"value": 1.5', f'"value": {value}'))
    capsys.readouterr()
    assert _toy(tmp_path / "consumer", "--from-run", str(producer)) == 2
    assert "not a finite number" in _one_line(capsys)
    assert not (tmp_path / "consumer").exists() or not any((tmp_path / "consumer").rglob("*.json"))


# ---------------------------------------------------------------- 11, 12, 13. resuming

def _interrupted(toy, out: Path, capsys, *extra: str) -> tuple[Path, str]:
    toy.INTERRUPT_AT = 3
    assert _toy(out, *extra) == 1
    toy.INTERRUPT_AT = None
    (folder,) = (out / "toy").iterdir()
    return folder, _one_line(capsys)


def test_a_resumed_runs_training_time_counts_every_part(toy, tmp_path, capsys):
    toy.SECONDS_PER_EPOCH = 0.3
    folder, _ = _interrupted(toy, tmp_path, capsys)  # two epochs trained: 0.6 s
    assert _toy(tmp_path, "--resume", str(folder)) == 0  # one more: 0.3 s
    (done,) = (tmp_path / "toy").iterdir()
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["train_time_s"] >= 0.85 and metrics["train_time_s"] > metrics["wall_time_this_part_s"]


def test_the_printed_resume_command_repeats_the_options_and_works(toy, tmp_path, capsys):
    folder, line = _interrupted(toy, tmp_path, capsys, "--set", "lr=0.25", "--seed", "3")
    command = line.split("continue with: ")[1]
    assert command == f"dlclassics run toy --out {tmp_path} --no-site --set lr=0.25 --seed 3 --resume {folder}"
    assert main(command.split()[1:]) == 0
    (done,) = (tmp_path / "toy").iterdir()
    assert json.loads((done / "metrics.json").read_text())["value"] == 0.75


@pytest.mark.parametrize("checkpoint", [torch.zeros(3), {"model": {"w": torch.zeros(2)}}, {"epoch": "x"}],
                         ids=["a-tensor", "a-wrong-state", "no-model"])
def test_a_checkpoint_that_is_not_a_training_state_is_one_line(tmp_path, capsys, image_data_dir, checkpoint):
    options = ["run", "mnist-mlp", "--quick", "--quiet", "--device", "cpu", "--data-dir", str(image_data_dir),
               "--out", str(tmp_path / "runs")]
    assert main(options) == 0
    (finished,) = (tmp_path / "runs" / "mnist-mlp").iterdir()
    interrupted = finished.with_name(finished.name + INCOMPLETE)
    finished.rename(interrupted)
    atomic_torch_save(interrupted / "checkpoint.pt", checkpoint)
    capsys.readouterr()
    assert main([*options, "--resume", str(interrupted)]) == 1
    assert "is not a training checkpoint of this run" in _one_line(capsys)
    assert interrupted.is_dir()  # kept: it is the user's interrupted run


@pytest.mark.parametrize("record", ["[1, 2]", '{"experiment": "toy", "config": 5}',
                                    '{"experiment": "toy", "config": {}, "parts": [{"started": "yesterday"}]}',
                                    '{"experiment": "toy", "config": {}, "parts": 7}'],
                         ids=["a-list", "config-5", "bad-start", "parts-7"])
def test_resume_of_a_damaged_config_json_is_one_line(toy, tmp_path, capsys, record):
    folder, _ = _interrupted(toy, tmp_path, capsys)
    (folder / "config.json").write_text(record)
    before = file_digests(folder)
    assert _toy(tmp_path, "--resume", str(folder)) == 2
    _one_line(capsys)
    assert file_digests(folder) == before


# ---------------------------------------------------------------- 8, 9, 15. data that silently differed

def test_carve_test_is_refused_when_both_splits_exist(image_data_dir, tmp_path, capsys):
    assert main(["run", "mnist-mlp", "--quick", "--quiet", "--data-dir", str(image_data_dir), "--carve-test", "0.2",
                 "--out", str(tmp_path / "runs")]) == 2
    assert "nothing to carve" in _one_line(capsys)
    assert not (tmp_path / "runs" / "mnist-mlp").exists()


def test_integer_ids_beyond_float_precision_stay_distinct():
    from dlclassics.data.ratings import parse_ratings

    base = 2 ** 53
    raw = parse_ratings("\n".join(f"{base + user}\t7\t{1 + user % 5}" for user in range(100)), "ratings.tsv")
    assert len(set(raw.users.tolist())) == 100 and raw.users.dtype.kind == "i"
    huge = parse_ratings("\n".join(f"{10 ** 30 + user}\t7\t3" for user in range(100)), "ratings.tsv")
    assert len(set(huge.users.tolist())) == 100  # beyond int64: kept as distinct strings
    assert parse_ratings("1.0\t2.0\t3\n2\t2\t4", "ratings.tsv").users.tolist() == [1, 2]


# ---------------------------------------------------------------- 17, 18. data commands

def test_data_status_reports_a_header_claiming_billions_as_damaged(tmp_path, capsys, monkeypatch):
    import struct

    from dlclassics.data import registry

    monkeypatch.setattr(registry, "SYSTEM_DIRS", ())
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(struct.pack(">HBBIII", 0, 8, 3, 4_000_000_000, 60000, 60000))
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, 10) + bytes(10))
    assert main(["data", "status", "mnist", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "train  damaged" in out and "[4000000000, 60000, 60000]" in out


def test_data_fetch_to_a_file_is_a_usage_error(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    assert main(["data", "fetch", "mnist", "--to", str(target / "inside")]) == 2
    assert "--to" in _one_line(capsys) and target.read_text() == "x"


def test_a_download_is_streamed_and_bounded(tmp_path, monkeypatch):
    from dlclassics.data import fetch
    from dlclassics.errors import RunError

    body = tmp_path / "big.gz"
    body.write_bytes(b"\x1f\x8b" + bytes(5 << 20))
    with pytest.raises(RunError, match="longer than the official file can be"):
        fetch.download_to(body.as_uri(), tmp_path / "copy", limit=1 << 20)
    fetch.download_to(body.as_uri(), tmp_path / "copy", limit=10 << 20)
    assert (tmp_path / "copy").read_bytes() == body.read_bytes()


# ---------------------------------------------------------------- 20, 21. promises and messages

def test_run_folders_and_the_site_are_readable_by_others_under_umask_077(toy, tmp_path):
    import os
    import stat

    previous = os.umask(0o077)
    try:
        assert main(["run", "toy", "--out", str(tmp_path / "runs")]) == 0
    finally:
        os.umask(previous)
    made = [path for path in (tmp_path / "runs").rglob("*") if not path.name.startswith(".")]
    assert any(path.name == "index.html" for path in made)
    for path in made:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_sigterm_ends_a_run_like_ctrl_c(toy, tmp_path, capsys):
    import os
    import signal

    toy.FAIL = lambda: os.kill(os.getpid(), signal.SIGTERM)
    assert _toy(tmp_path) == 1
    assert "interrupted; continue with: dlclassics run toy" in _one_line(capsys)
    (folder,) = (tmp_path / "toy").iterdir()
    assert folder.name.endswith(INCOMPLETE)
    assert signal.getsignal(signal.SIGTERM) is not None and not callable(getattr(signal.getsignal(signal.SIGTERM),
                                                                                 "__self__", None))


@pytest.mark.parametrize("flag", ["--data-dir", "ratings_file"])
def test_a_file_where_a_folder_is_expected_and_back_says_what_it_is(tmp_path, capsys, flag):
    if flag == "--data-dir":
        target = tmp_path / "file"
        target.write_text("x")
        argv = ["mnist-mlp", "--data-dir", str(target)]
        needle = "is a file, not a folder"
    else:
        argv = ["movielens", "--set", f"ratings_file={tmp_path}"]
        needle = "is not a regular file"
    assert main(["run", *argv, "--quick", "--out", str(tmp_path / "runs")]) == 2
    assert needle in _one_line(capsys)


def test_a_missing_database_driver_names_the_package(monkeypatch):
    import sys

    from dlclassics import sweep
    from dlclassics.errors import UsageError

    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(UsageError, match=r"needs a database driver .* pip install 'dlclassics\[postgres\]'"):
        sweep.open_storage("postgresql://user:secret@127.0.0.1:1/optuna", Path("."))


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import errno
    import os

    from dlclassics.files import atomic_write_text

    class FullDisk:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")  # as the kernel says it: no file named

    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(OSError) as raised:
        atomic_write_text(tmp_path / "metrics.json", "{}" * 100_000)
    assert raised.value.filename == str(tmp_path / "metrics.json")
    assert not list(tmp_path.iterdir())  # no temporary file left


# ---------------------------------------------------------------- 12b. the site says what a run really used

def test_listings_show_the_data_a_run_used_and_its_headline_metric(image_data_dir, tmp_path):
    from conftest import run_quick

    from dlclassics.runs.results import data_label

    victim = run_quick("mnist-classifier", image_data_dir, tmp_path / "runs")
    attack = run_quick("fgsm", image_data_dir, tmp_path / "runs", "--from-run", str(victim))
    record = json.loads((attack / "config.json").read_text())
    assert record["config"]["dataset"] == "fashion-mnist"  # fgsm's own option, unused with --from-run
    assert [item["name"] for item in record["data"]] == ["mnist"] and record["headline"] == "fgsm_accuracy_0.025"
    assert data_label(record) == "mnist, --quick size"
    info = site.read_run("fgsm", attack, {})
    assert info.dataset == "mnist, --quick size" and info.key_metric[0] == "fgsm_accuracy_0.025"
    unverified = {**record, "data_checks": "unverified, not comparable"}
    assert "unverified files" in data_label(unverified)


# ---------------------------------------------------------------- 2, 3, 4. lost resources keep the run

def test_a_lost_resource_after_a_checkpoint_keeps_the_run_resumable(toy, tmp_path, capsys):
    from dlclassics.errors import LostResource

    def lost():
        raise LostResource("lost the study's storage (server closed the connection)")

    toy.FAIL = lost
    assert _toy(tmp_path) == 1
    line = _one_line(capsys)
    assert "lost the study's storage" in line and "the run folder is kept: continue with: dlclassics run toy" in line
    (folder,) = (tmp_path / "toy").iterdir()
    assert folder.name.endswith(INCOMPLETE) and (folder / "checkpoint.pt").is_file()
    toy.FAIL = None
    assert _toy(tmp_path, "--resume", str(folder)) == 0


# ---------------------------------------------------------------- 26. promises kept

def test_the_same_seed_and_threads_give_bit_identical_models_in_two_processes(data_dir_for_processes, tmp_path):
    import subprocess
    import sys

    models = []
    for name in ("first", "second"):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "dlclassics", "run", "mnist-classifier", "--quick", "--quiet",
                        "--no-site", "--threads", "1", "--device", "cpu", "--data-dir", str(data_dir_for_processes),
                        "--out", str(out)], check=True, timeout=600)
        (folder,) = (out / "mnist-classifier").iterdir()
        models.append(torch.load(folder / "model.pt", weights_only=True))
    assert models[0].keys() == models[1].keys()
    for key in models[0]:
        assert models[0][key].numpy().tobytes() == models[1][key].numpy().tobytes(), key


# ---------------------------------------------------------------- 22. a busy machine changes no message

def test_on_a_busy_machine_a_usage_error_is_still_one_line_and_the_hint_comes_with_training(toy, tmp_path, capsys,
                                                                                          monkeypatch):
    from dlclassics import distributed

    monkeypatch.setattr(distributed, "other_runnable", lambda samples=5: 4.0)  # four other threads want the cores
    monkeypatch.setattr(distributed, "TORCH_DEFAULT_THREADS", 2)
    monkeypatch.setattr(distributed, "available_cores", lambda: 2)
    assert _toy(tmp_path, "--set", "lr=-1") == 2
    assert "option 'lr' must be > 0.0" in _one_line(capsys)
    assert _toy(tmp_path) == 0  # a run that starts: the hint is printed once it has started
    assert "other work keeps this machine busy" in capsys.readouterr().err


def test_a_400_digit_wall_time_shows_as_unknown_in_the_results_table(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "20260101-000001-aaaaaa", metrics={"test_accuracy": 0.9, "wall_time_s": 10 ** 400})
    assert main(["runs", "--out", str(runs), "--markdown"]) == 0
    captured = capsys.readouterr()
    assert "| not met | ? |" in captured.out and "Traceback" not in captured.err
