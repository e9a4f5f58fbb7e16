"""Training on two CPU processes (gloo, DistributedDataParallel) takes the steps one process takes with the
same global batch and seed, resumes from rank 0's checkpoint, and leaves rank 0 alone writing files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import interrupted_at_evaluation, run_quick
from torch import nn

from dlclassics import distributed
from dlclassics.cli import main
from dlclassics.engine import fit, flat_parameters, make_optimizer, seed_everything

N, BATCH = 203, 32  # the last batch, 11 rows, splits 6 + 5: the two shards' losses must be weighted to match


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, 20, generator=generator)
    return x, (x[:, :3].sum(1) > 0).long()


def _train(epochs: int, checkpoint: Path | None = None, resume: bool = False) -> dict:
    generator = seed_everything(5)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 2))
    optimizer = make_optimizer("sgd", model, 0.1, 1e-3, momentum=0.9)
    result = fit(model, _problem(), optimizer=optimizer, epochs=epochs, batch_size=BATCH, generator=generator,
                 checkpoint=checkpoint, resume=resume, record_iterations=True, quiet=True)
    return {"parameters": flat_parameters(model), "history": result.history, "iterations": result.iterations}


def _process(rank: int, world_size: int, port: int, folder: Path) -> None:
    """One of the processes: one epoch with a checkpoint, then a resumed run to two epochs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.use_threads(world_size)
    outputs = {}
    with distributed.process_group(distributed.Placement(rank, world_size, rank, world_size), torch.device("cpu")):
        for epochs, resume in ((1, False), (2, True)):
            if rank == 0:
                distributed.send_run_folder(folder, resume)
                outputs[epochs] = _train(epochs, folder / "checkpoint.pt", resume)
            else:
                with distributed.scratch_run_folder() as (scratch, resumed):
                    had_checkpoint = (scratch / "checkpoint.pt").exists()
                    outputs[epochs] = _train(epochs, scratch / "checkpoint.pt", resumed)
                    outputs[epochs]["wrote_checkpoint"] = (scratch / "checkpoint.pt").exists() and not had_checkpoint
    torch.save(outputs, folder.parent / f"rank{rank}.pt")


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    mp.spawn(_process, args=(2, distributed.free_port(), folder), nprocs=2)
    alone = {epochs: _train(epochs) for epochs in (1, 2)}
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert not torch.allclose(alone[1]["parameters"], alone[2]["parameters"], atol=1e-3)  # training moved them
    for outputs in ranks:
        for epochs, expected in alone.items():
            got = outputs[epochs]
            assert torch.allclose(got["parameters"], expected["parameters"], rtol=0, atol=1e-5)
            assert got["iterations"] == pytest.approx(expected["iterations"], abs=1e-6)  # the whole batches' losses
            assert [row["epoch"] for row in got["history"]] == list(range(1, epochs + 1))
            for row, reference in zip(got["history"], expected["history"]):
                assert row["train_loss"] == pytest.approx(reference["train_loss"], abs=1e-6)
                assert row["train_accuracy"] == pytest.approx(reference["train_accuracy"], abs=1e-6)
    assert not ranks[1][1]["wrote_checkpoint"] and not ranks[1][2]["wrote_checkpoint"]


def test_a_batch_is_split_into_weighted_shards_that_cover_it():
    parallel = distributed.DataParallel(nn.Linear(2, 2), lambda model, batch: {})
    parallel.world_size = 3
    batch = [torch.arange(11), torch.arange(11) * 10]
    shards = []
    for parallel.rank in range(3):
        shard, share = parallel.shard(batch)
        assert torch.equal(shard[1], shard[0] * 10) and share == len(shard[0]) / 11
        shards.append(shard[0])
    assert torch.equal(torch.cat(shards), batch[0])
    whole, share = parallel.shard([torch.arange(2)])  # fewer rows than processes: each takes all, a third each
    assert len(whole[0]) == 2 and share == pytest.approx(1 / 3)


def test_threads_divide_the_cores_among_the_local_processes(monkeypatch):
    monkeypatch.setattr(distributed, "available_cores", lambda: 8)
    monkeypatch.setattr(distributed, "TORCH_DEFAULT_THREADS", 8)
    assert [distributed.threads_per_process(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    assert distributed.threads_per_process(2, override=3) == 3
    monkeypatch.setattr(distributed, "TORCH_DEFAULT_THREADS", 1)  # e.g. torchrun's OMP_NUM_THREADS=1
    assert distributed.threads_per_process(1) == 1


def test_a_busy_machine_gets_a_hint_to_use_one_thread(image_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "available_cores", lambda: 2)
    monkeypatch.setattr(distributed, "other_runnable", lambda: 0.0)
    assert distributed.busy_machine_hint(2) is None  # idle
    monkeypatch.setattr(distributed, "other_runnable", lambda: 2.0)
    assert "2 other threads running on 2 cores" in distributed.busy_machine_hint(2)
    assert distributed.busy_machine_hint(1) is None and distributed.busy_machine_hint(2, override=2) is None
    monkeypatch.setattr(distributed, "TORCH_DEFAULT_THREADS", 2)
    run_quick("mnist-mlp", image_data_dir, tmp_path / "runs", "--threads", "2")
    assert "--threads 1 avoids" not in capsys.readouterr().err  # the user chose
    run_quick("mnist-mlp", image_data_dir, tmp_path / "again")
    assert capsys.readouterr().err.count("--threads 1 avoids that") == 1


def test_other_runnable_threads_are_counted_without_this_one():
    assert 0 <= distributed.other_runnable(samples=2) < 10_000


def test_threads_are_set_and_recorded_in_config_json(image_data_dir, tmp_path, monkeypatch):
    seen = []
    from dlclassics.experiments import mnist_mlp

    real = mnist_mlp.run
    monkeypatch.setattr(mnist_mlp, "run", lambda cfg, run: seen.append(torch.get_num_threads()) or real(cfg, run))
    folder = run_quick("mnist-mlp", image_data_dir, tmp_path / "runs", "--threads", "1")
    record = json.loads((folder / "config.json").read_text())
    assert seen == [1] and record["threads"] == 1 and record["world_size"] == 1
    folder = run_quick("mnist-mlp", image_data_dir, tmp_path / "again")
    assert json.loads((folder / "config.json").read_text())["threads"] == distributed.threads_per_process(1)
    assert torch.get_num_threads() == distributed.threads_per_process(1)


@pytest.mark.parametrize("argv, needle", [
    (["--nproc", "0"], "--nproc: expects an integer from 1 to 1024"),
    (["--nproc", "100000"], "--nproc: expects an integer from 1 to 1024"),
    (["--nproc", "2", "--workers", "2"], "leave them out"),
    (["--threads", "0"], "--threads: expects an integer from 1 to 1024"),
])
def test_process_options_are_checked(argv, needle, image_data_dir, tmp_path, capsys):
    code = main(["run", "mnist-mlp", "--quick", "--quiet", "--data-dir", str(image_data_dir),
                 "--out", str(tmp_path), *argv])
    assert code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "mnist-mlp").exists()


def test_nproc_2_resumes_a_classifier_through_the_cli_with_rank_0_alone_writing(data_dir_for_processes,
                                                                               tmp_path, monkeypatch):
    data = data_dir_for_processes
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where rank 1 keeps its copy of the run folder
    alone = json.loads((run_quick("mnist-mlp", data, tmp_path / "one", "--epochs", "3") / "metrics.json").read_text())
    argv = ["run", "mnist-mlp", "--quick", "--quiet", "--epochs", "3", "--device", "cpu", "--data-dir", str(data),
            "--out", str(tmp_path / "two")]
    with interrupted_at_evaluation(3):  # one process, stopped in epoch 3
        assert main(argv) == 1
    folder = run_quick("mnist-mlp", data, tmp_path / "two", "--epochs", "3", "--resume", "--nproc", "2")
    record = json.loads((folder / "config.json").read_text())
    assert record["world_size"] == 2 and record["threads"] == distributed.threads_per_process(2)
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert metrics[key] == pytest.approx(alone[key], abs=1e-4)
    assert list(scratch.iterdir()) == []  # rank 1's copy of the run folder is gone


def test_a_lost_process_is_one_line_and_the_run_stays_resumable(data_dir_for_processes, tmp_path):
    """Rank 1 killed (-9) once a checkpoint exists: rank 0 says so in one line and keeps its folder."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "dlclassics", "run", "mnist-mlp", "--quick", "--quiet", "--epochs", "2000",
            "--device", "cpu", "--data-dir", str(data_dir_for_processes), "--out", str(out), "--no-site"]
    group = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(distributed.free_port())}
    ranks = [subprocess.Popen(argv, env={**os.environ, **group, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("mnist-mlp/*/checkpoint.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        ranks[1].send_signal(signal.SIGKILL)
        _, err = ranks[0].communicate(timeout=120)
    finally:
        for process in ranks:
            process.kill()
    lines = err.strip().splitlines()
    assert ranks[0].returncode == 1 and len(lines) == 1, lines
    assert "lost the other processes of the group" in lines[0] and "the run folder is kept" in lines[0]
    (folder,) = (out / "mnist-mlp").iterdir()
    assert folder.name.endswith(".incomplete") and (folder / "checkpoint.pt").is_file()
    assert json.loads((folder / "config.json").read_text())["parts"][-1]["ended"] == "failed"
