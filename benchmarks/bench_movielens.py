"""Ratings per second of one sweep of the source's ALS and of the biased factorisation (BiasedALS: its
epoch is one ALS sweep) and of one Gibbs sweep of BayesianMF, on synthetic ratings of MovieLens-10M's
size (10 million ratings, 70,000 users, 10,000 items), and the memory each fit takes beyond the ratings.

A sweep's time is the difference between fits of 2 and 1 sweeps (so the one-off work of a fit, the
two CSR index arrays, is timed apart as "setup"). Memory is the peak resident size during a 1-sweep
fit above the resident size before it, per rating. Each (model, threads) is measured in a fresh
process (spawned: a forked child would inherit the parent's OpenMP pool and hang) that makes the same
synthetic ratings, so one fit's memory, kept by the allocator after it is freed, does not hide the
next one's (Linux: /proc/self/status, the peak reset through /proc/self/clear_refs). Run it alone
(the timing lock), e.g.

    flock /tmp/dlclassics-timing.lock python benchmarks/bench_movielens.py [--ratings 10000000] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path
from typing import Any

import torch

from dlclassics.data.ratings import synthetic_ratings
from dlclassics.methods.mf import ALS, BayesianMF, BiasedALS

STATUS = Path("/proc/self/status")
MODELS = {  # name -> estimator with `sweeps` sweeps
    "ALS (source's, no biases)": lambda rank, sweeps: ALS(rank, reg=10.0, init="random", max_sweeps=sweeps),
    "BiasedALS epoch (one sweep)": lambda rank, sweeps: BiasedALS(rank, sweeps=sweeps),
    "BayesianMF Gibbs sweep": lambda rank, sweeps: BayesianMF(rank, sweeps=sweeps, burn_in=0),
}


def resident_kib(field: str) -> int | None:
    """VmRSS (now) or VmHWM (peak) in KiB, or None off Linux."""
    if not STATUS.exists():
        return None
    line = next(line for line in STATUS.read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(name: str, threads: int, args: dict[str, Any]) -> dict[str, float]:
    """In a fresh process: setup and one sweep's seconds, and the extra memory of a 1-sweep fit per rating."""
    torch.set_num_threads(threads)
    ratings = synthetic_ratings(args["users"], args["items"], args["ratings"], rank=args["rank"], noise=0.5, seed=0)
    make = MODELS[name]
    make(args["rank"], 1).fit(ratings.subset(torch.arange(10_000)))  # libraries load on first use: not counted
    before = resident_kib("VmRSS")
    peak_known = reset_peak()
    started = time.perf_counter()
    make(args["rank"], 1).fit(ratings)
    one = time.perf_counter() - started
    peak = resident_kib("VmHWM") if peak_known else None
    started = time.perf_counter()
    make(args["rank"], 2).fit(ratings)
    sweep = max(time.perf_counter() - started - one, 1e-9)
    extra = (peak - before) * 1024 / len(ratings) if peak is not None and before is not None else float("nan")
    return {"setup_s": one - sweep, "sweep_s": sweep, "ratings_per_s": len(ratings) / sweep, "bytes_per_rating": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=70_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = vars(parser.parse_args())
    print(f"{args['ratings']:,} synthetic ratings ({args['users']:,} users x {args['items']:,} items, rank "
          f"{args['rank']}); the ratings themselves take 20 bytes each")
    print(f"{'model':<30} {'threads':>7} {'setup s':>8} {'sweep s':>8} {'ratings/s':>12} {'bytes/rating':>13}")
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for threads in args["threads"]:
            for name in MODELS:
                row = pool.apply(measure, (name, threads, args))
                print(f"{name:<30} {threads:>7} {row['setup_s']:>8.2f} {row['sweep_s']:>8.2f} "
                      f"{row['ratings_per_s']:>12,.0f} {row['bytes_per_rating']:>13.1f}", flush=True)


if __name__ == "__main__":
    main()
