"""The GPU benchmark runs anywhere: without CUDA it says in one line why it skipped, and succeeds."""

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_without_cuda_the_gpu_benchmark_skips_with_its_reason_and_exit_code_0():
    hidden = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a machine that has one
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], env=hidden, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["bench_gpu: skipped: no CUDA device is available "
                                        "(torch.cuda.is_available() is False); it measures a GPU"]
