"""Two runs side by side: their slowdown against one run alone, with our thread setting and torch's default.

A job is `dlclassics run fashion-mlp --quick` on Fashion-MNIST (a 2-trial search, 2 retraining epochs,
figures) in a process of its own; its time is the run's own wall time (`wall_time_s` in metrics.json:
interpreter start and imports excluded, the same for every setting). Three settings:

  alone    one job with the threads one process gets (`distributed.threads_per_process(1)`, torch's default)
  ours     two jobs at once, each with `--threads` = `distributed.threads_per_process(2)`: the cores shared out
  default  two jobs at once, each with torch's default threads (as many as the cores, in each job)

A setting's slowdown is its mean job time over the alone time. With the cores shared out, two jobs on
2 cores should take at most about twice as long as one (target <= 2.2x); with torch's default threads
they spin against each other. Each setting runs `--repeats` times, interleaved; the medians are reported.
Run it alone on the machine:

    flock /tmp/dlclassics-timing.lock python benchmarks/bench_contention.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from dlclassics import distributed

PACKAGE_ROOT = Path(distributed.__file__).resolve().parents[1]


def start_job(out: Path, threads: int, data_dir: Path | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "dlclassics", "run", "fashion-mlp", "--quick", "--quiet", "--device", "cpu",
               "--threads", str(threads), "--out", str(out)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def job_times(threads: list[int], root: Path, data_dir: Path | None) -> list[float]:
    """Start one job per entry of `threads` at once; their runs' wall times in seconds."""
    outs = [Path(tempfile.mkdtemp(dir=root)) for _ in threads]
    jobs = [start_job(out, count, data_dir) for out, count in zip(outs, threads)]
    for job in jobs:
        _, errors = job.communicate()
        if job.returncode != 0:
            sys.exit(f"a job failed (exit {job.returncode}): {errors.strip().splitlines()[-1:]}")
    return [json.loads(next(out.glob("fashion-mlp/*/metrics.json")).read_text())["wall_time_s"] for out in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="folder holding fashion-mnist (default: where dlclassics looks)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    settings = {"alone": [distributed.threads_per_process(1)],
                "ours": [distributed.threads_per_process(2)] * 2,
                "default": [distributed.TORCH_DEFAULT_THREADS] * 2}
    times: dict[str, list[float]] = {name: [] for name in settings}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as root:
        for _ in range(args.repeats):
            for name, threads in settings.items():
                times[name].append(statistics.mean(job_times(threads, Path(root), args.data_dir)))
    load_after = os.getloadavg()

    alone = statistics.median(times["alone"])
    result = {"cores": distributed.available_cores(), "torch_default_threads": distributed.TORCH_DEFAULT_THREADS,
              "threads": {name: threads[0] for name, threads in settings.items()},
              "median_job_s": {name: statistics.median(values) for name, values in times.items()},
              "slowdown": {name: statistics.median(values) / alone for name, values in times.items() if name != "alone"},
              "job_s": times, "load_average_before_after": [load_before[0], load_after[0]]}
    print(f"{result['cores']} cores, torch's default {result['torch_default_threads']} threads per process; "
          f"median of {args.repeats} repeats; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    rows = [(f"one job alone, {settings['alone'][0]} thread(s)", alone, "")]
    rows += [(f"two jobs, {settings[name][0]} thread(s) each ({label})", result["median_job_s"][name],
              f" = {result['slowdown'][name]:.2f}x alone")
             for name, label in (("ours", "cores shared out"), ("default", "torch's default"))]
    for label, seconds, slowdown in rows:
        print(f"  {label:<48} {seconds:6.2f} s{slowdown}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
