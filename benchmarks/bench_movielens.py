"""Ratings per second of one sweep of the source's ALS and of the biased factorisation (BiasedALS: its
epoch is one ALS sweep) and of one Gibbs sweep of BayesianMF, on synthetic ratings of MovieLens-10M's
size (10 million ratings, 70,000 users, 10,000 items), and the memory each fit takes beyond the ratings.

A sweep's time is the difference between fits of 2 and 1 sweeps (so the one-off work of a fit, the
two CSR index arrays, is timed apart as "setup"). Memory is the peak resident size during a 1-sweep
fit above the resident size before it, per rating; each model is measured in a forked process, so
that memory freed by one fit and kept by the allocator does not hide the next one's (Linux:
/proc/self/status, the peak reset through /proc/self/clear_refs). Run it alone (the timing lock), e.g.

    flock /tmp/dlclassics-timing.lock python benchmarks/bench_movielens.py [--ratings 10000000] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dlclassics.data.ratings import Ratings, synthetic_ratings
from dlclassics.methods.mf import ALS, BayesianMF, BiasedALS

STATUS = Path("/proc/self/status")


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


def measure(make: Callable[[int], object], ratings: Ratings) -> dict[str, float]:
    """Setup and one sweep's seconds, and the extra memory of a 1-sweep fit in bytes per rating."""
    before = resident_kib("VmRSS")
    peak_known = reset_peak()
    started = time.perf_counter()
    make(1).fit(ratings)  # type: ignore[attr-defined]
    one = time.perf_counter() - started
    peak = resident_kib("VmHWM") if peak_known else None
    started = time.perf_counter()
    make(2).fit(ratings)  # type: ignore[attr-defined]
    two = time.perf_counter() - started
    sweep = max(two - one, 1e-9)
    extra = (peak - before) * 1024 / len(ratings) if peak is not None and before is not None else float("nan")
    return {"setup_s": one - sweep, "sweep_s": sweep, "ratings_per_s": len(ratings) / sweep, "bytes_per_rating": extra}


def in_child(work: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`work()` run in a forked process (its memory peak is its own), its result sent back."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=lambda: results.put(work()))
    process.start()
    result = results.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=70_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    started = time.perf_counter()
    ratings = synthetic_ratings(args.users, args.items, args.ratings, rank=args.rank, noise=0.5, seed=0)
    print(f"{len(ratings):,} synthetic ratings ({args.users:,} users x {args.items:,} items, rank {args.rank}) "
          f"made in {time.perf_counter() - started:.1f} s; the ratings take 20 bytes each")
    models = {
        "ALS (source's, no biases)": lambda sweeps: ALS(args.rank, reg=10.0, init="random", max_sweeps=sweeps),
        "BiasedALS epoch (one sweep)": lambda sweeps: BiasedALS(args.rank, sweeps=sweeps),
        "BayesianMF Gibbs sweep": lambda sweeps: BayesianMF(args.rank, sweeps=sweeps, burn_in=0),
    }
    for make in models.values():  # libraries load on first use: not in the children's memory
        make(1).fit(ratings.subset(torch.arange(10_000)))  # type: ignore[attr-defined]
    print(f"{'model':<30} {'threads':>7} {'setup s':>8} {'sweep s':>8} {'ratings/s':>12} {'bytes/rating':>13}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, make in models.items():
            row = in_child(lambda: measure(make, ratings))
            print(f"{name:<30} {threads:>7} {row['setup_s']:>8.2f} {row['sweep_s']:>8.2f} "
                  f"{row['ratings_per_s']:>12,.0f} {row['bytes_per_rating']:>13.1f}", flush=True)


if __name__ == "__main__":
    main()
