"""The GPU benchmark runs anywhere: without CUDA it says in one line why it skipped, and succeeds."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_without_cuda_the_gpu_benchmark_skips_with_its_reason_and_exit_code_0():
    hidden = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a machine that has one
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], env=hidden, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["bench_gpu: skipped: no CUDA device is available "
                                        "(torch.cuda.is_available() is False); it measures a GPU"]


@pytest.mark.slow
def test_the_gpu_targets_script_runs_every_step_at_smoke_size(tmp_path):
    """benchmarks/gpu_targets.sh is what a lent GPU machine runs; QUICK=1 on the CPU checks every step runs."""
    script = BENCH.parent / "gpu_targets.sh"
    environment = {**os.environ, "QUICK": "1", "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(script)], env=environment, capture_output=True, text=True, timeout=600,
                          cwd=BENCH.parents[1])
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "summary.txt").read_text()
    steps = [line.split()[:2] for line in summary.splitlines() if " rc=" in line]
    assert steps == [[name, "rc=0"] for name in ("bench_gpu", "bench_trials", "fashion-mlp", "cifar-cnn",
                                                  "mnist-classifier")]
    assert "fashion-mlp: {'best_val_accuracy'" in summary and (tmp_path / "results.tgz").stat().st_size > 0
