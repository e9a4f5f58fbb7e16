"""Training on several processes with PyTorch's own DistributedDataParallel, and how processes share cores.

Launch. `dlclassics run ID --nproc N` starts N copies of the same command on this machine with the
variables `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
under `torchrun` the same variables come from torchrun, across as many machines as it was given. Either
way the processes meet in one torch.distributed process group: gloo on CPUs, NCCL on CUDA GPUs.

Training. `engine.fit` runs the step function inside DistributedDataParallel. Every process draws the
same permutation each epoch (the same seeded generator) and takes its shard of every global batch; DDP
averages the gradients, so the processes take the steps one process takes with the same batch size.

Files. Rank 0 alone writes the run folder and the checkpoints. Every other rank runs the same experiment
in a private scratch copy of rank 0's folder (deleted at the end): the parts of an experiment around
training (evaluation, figures) run on every rank harmlessly, and experiments need no rank checks.

Threads. Torch starts as many intra-op threads as there are cores, in every process; several processes
on one machine then spin against each other and slow down far more than their share of the cores
explains. Each process uses the cores divided by the processes this command runs on the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dlclassics.errors import LostResource, RunError, UsageError

# Torch's own choice (the physical cores, or OMP_NUM_THREADS, which torchrun sets to 1), read before we change it.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


# ---------------------------------------------------------------- threads

def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_process(local_processes: int, override: int | None = None) -> int:
    """Intra-op threads for each of `local_processes` processes of one command on this machine:
    the available cores divided among them, never more than torch's default (so one process alone
    keeps torch's choice, and its numbers); `override` (`--threads`) wins."""
    if override is not None:
        if override < 1:
            raise UsageError(f"--threads must be at least 1; got {override}")
        return override
    return max(1, min(TORCH_DEFAULT_THREADS, available_cores() // local_processes))


def busy_machine_hint(threads: int, override: int | None = None) -> str | None:
    """A line for the user when other work already keeps the cores busy and we chose several threads.

    Each torch op is split across the threads and waits for the slowest; when another process holds a
    core, that thread waits a scheduler slice, and small batches then run many times slower (measured
    here: a --quick mnist-classifier trained in 25.8 s on 2 threads beside another job, 5.0 s on 1).
    The thread count is not changed behind the user's back: it can change results in the last digits.
    """
    if override is not None or threads <= 1:
        return None
    others, cores = other_runnable(), available_cores()
    if others < cores / 2:
        return None
    return (f"other work keeps this machine busy ({others:g} other thread{'' if others == 1 else 's'} running "
            f"on {cores} cores): with {threads} threads small batches can run many times slower; --threads 1 "
            "avoids that (results may then differ in the last digits)")


def other_runnable(samples: int = 5) -> float:
    """Threads of other processes that want a core now: on Linux the fewest of a few samples of the
    running count in /proc/loadavg, less this thread (the load average would still count a job that
    just ended for a minute); elsewhere the 1-minute load average."""
    try:
        counts = []
        for _ in range(samples):
            counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
            time.sleep(0.02)
        return float(min(counts))
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def use_threads(local_processes: int, override: int | None = None) -> int:
    """Set torch's intra-op threads for this process (see `threads_per_process`); returns the count."""
    threads = threads_per_process(local_processes, override)
    torch.set_num_threads(threads)
    return threads


# ---------------------------------------------------------------- where this process sits

@dataclasses.dataclass(frozen=True)
class Placement:
    """This process's place in a launched group, as torchrun (or `--nproc`) describes it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def placement() -> Placement | None:
    """The group this process was launched into (from torchrun's variables), or None when it runs alone."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        return Placement(rank, world_size, int(env.get("LOCAL_RANK", rank)),
                         int(env.get("LOCAL_WORLD_SIZE", world_size)))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (as torchrun sets "
                         "them)") from None


def rank() -> int:
    """This process's rank in the process group (0 when there is none)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# ---------------------------------------------------------------- launching N local processes

def launch(argv: Sequence[str], nproc: int) -> int:
    """Run `dlclassics ARGV` as `nproc` processes of one group on this machine, as torchrun would.

    Returns 0, or the exit code of the first process that failed; the others are then stopped
    (they would otherwise wait for it in the next collective until the group's timeout).
    """
    package_root = str(Path(__file__).resolve().parents[1])  # the children run this very copy of the package
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    common = {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(free_port()), "PYTHONPATH": path}
    processes = [subprocess.Popen([sys.executable, "-m", "dlclassics", *argv],
                                  env={**os.environ, **common, "RANK": str(r), "LOCAL_RANK": str(r)})
                 for r in range(nproc)]
    try:
        return _wait(processes)
    except KeyboardInterrupt:  # Ctrl-C reached the children too: let rank 0 say how to resume
        return _wait(processes, patience=10.0)


LOST_PATIENCE = 15.0  # seconds the others get to stop by themselves once one process of the group has failed


def free_port() -> int:
    """A TCP port that is free on this machine now, for the group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(processes: list[subprocess.Popen], patience: float | None = None) -> int:
    """Wait until all succeed or one fails (or `patience` seconds pass), then stop the rest. After a
    failure the others get LOST_PATIENCE seconds to notice in their next collective and stop by
    themselves: rank 0 then keeps its run folder resumable and says so in one line."""
    deadline = None if patience is None else time.monotonic() + patience
    failed: int | None = None
    while any(p.poll() is None for p in processes):
        if deadline is not None and time.monotonic() > deadline:
            break
        if failed is None:
            failed = next((p.returncode for p in processes if p.poll() not in (None, 0)), None)
            if failed is not None:
                deadline = min(deadline or math.inf, time.monotonic() + LOST_PATIENCE)
        time.sleep(0.05)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    codes = [process.wait() for process in processes]
    if failed is None:
        failed = next((code for code in codes if code != 0), 0)
    return failed if failed >= 0 else 1  # killed by a signal


# ---------------------------------------------------------------- the process group and the run folder

@contextlib.contextmanager
def process_group(place: Placement, device: torch.device) -> Iterator[torch.device]:
    """Join the launched group for the duration (gloo on the CPU, NCCL on CUDA); yields this rank's device."""
    if device.type == "mps":
        raise UsageError("several processes run on CPUs (gloo) or CUDA GPUs (NCCL), not on Apple MPS; "
                         "pass --device cpu")
    if device.type == "cuda":
        if place.local_rank >= torch.cuda.device_count():
            raise RunError(f"local rank {place.local_rank} needs GPU {place.local_rank}, but this machine has "
                           f"{torch.cuda.device_count()}; start at most that many processes per machine")
        device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=place.rank,
                                world_size=place.world_size)
    except (RuntimeError, ValueError) as exc:  # MASTER_ADDR unreachable, port taken, variables missing
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RunError(f"rank {place.rank} could not join the process group at "
                       f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: {first_line}") from None
    try:
        yield device
        # Leave together: a rank tearing gloo down while its peer's last messages are still in flight can
        # abort in C++ ("terminate called without an active exception"; seen once on a busy 2-core machine).
        dist.barrier()
    except Exception as exc:
        raise lost_group(exc) or exc
    finally:
        dist.destroy_process_group()


# How gloo and NCCL say that a peer went away, in the errors their collectives raise.
LOST_PEER = ("connection closed by peer", "connection reset by peer", "broken pipe", "gloo", "nccl",
             "socket timeout", "timed out")


def lost_group(exc: BaseException) -> LostResource | None:
    """The LostResource an error in a process group means, or None: a collective that failed because
    another process died or was stopped (torch's DistError, or gloo's RuntimeError saying so)."""
    if isinstance(exc, LostResource) or world_size() <= 1:
        return None
    text = str(exc).lower()
    if not isinstance(exc, dist.DistError) and not (isinstance(exc, RuntimeError)
                                                   and any(sign in text for sign in LOST_PEER)):
        return None
    first = (str(exc).strip().splitlines() or ["no detail"])[0][:200]
    return LostResource(f"rank {rank()} lost the other processes of the group ({first})")


def send_run_folder(folder: Path, resume: bool) -> None:
    """Rank 0: give every other rank the run folder's files (checkpoints, snapshots, a search journal)
    and whether this run resumes, so that all ranks start from the same state."""
    if world_size() > 1:
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(folder, arcname=".")
        _broadcast_bytes(archive.getvalue(), resume)


@contextlib.contextmanager
def scratch_run_folder() -> Iterator[tuple[Path, bool]]:
    """Ranks other than 0: a private copy of rank 0's run folder for this run, and whether it resumes;
    removed afterwards (only rank 0's folder is kept)."""
    data, resume = _broadcast_bytes(None, False)
    scratch = Path(tempfile.mkdtemp(prefix=f"dlclassics-rank{rank()}-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(scratch, filter="data")
        yield scratch, resume
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast_bytes(data: bytes | None, flag: bool) -> tuple[bytes, bool]:
    """Rank 0's bytes and flag, on every rank (rank 0 passes them, the others None)."""
    device = _collective_device()
    header = torch.tensor([len(data) if data is not None else 0, int(flag)], dtype=torch.int64, device=device)
    dist.broadcast(header, src=0)
    size, flag = int(header[0]), bool(header[1])
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if data is not None
              else torch.empty(size, dtype=torch.uint8, device=device))
    dist.broadcast(buffer, src=0)
    return buffer.cpu().numpy().tobytes(), flag


# ---------------------------------------------------------------- data-parallel training

Step = Callable[[nn.Module, Sequence[torch.Tensor]], dict[str, torch.Tensor]]


class _StepModule(nn.Module):
    """The model and its step function as one module, so that DDP's forward sees every use of the
    parameters (a VAE's step calls the encoder and decoder, not the model itself)."""

    def __init__(self, model: nn.Module, step: Step) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, *batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.step(self.model, batch)


class DataParallel:
    """One process's part in a training step on a global batch.

    Alone, the whole batch and the plain step. In a process group of W, DistributedDataParallel over
    this process's shard of the batch: shards of n_r of the batch's n rows, whose mean losses are
    scaled by W n_r / n before DDP averages the gradients, so the result is the gradient of the mean
    over the global batch even when n is not a multiple of W.
    """

    def __init__(self, model: nn.Module, step: Step) -> None:
        self.model, self.step_function = model, step
        self.rank, self.world_size = rank(), world_size()
        self.ddp = None
        if self.world_size > 1:
            device = next(model.parameters()).device
            self.ddp = nn.parallel.DistributedDataParallel(
                _StepModule(model, step), device_ids=[device] if device.type == "cuda" else None)

    def shard(self, batch: Sequence[torch.Tensor]) -> tuple[Sequence[torch.Tensor], float]:
        """This process's rows of a global batch, and their share of it (1 alone)."""
        if self.world_size == 1:
            return batch, 1.0
        if len(batch[0]) < self.world_size:  # too few rows to split: every process takes all of them
            return batch, 1.0 / self.world_size
        part = [tensor.tensor_split(self.world_size)[self.rank] for tensor in batch]
        return part, len(part[0]) / len(batch[0])

    def step(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.step_function(self.model, batch) if self.ddp is None else self.ddp(*batch)

    def backward(self, loss: torch.Tensor, share: float) -> None:
        scale = self.world_size * share
        (loss if scale == 1.0 else loss * scale).backward()

    def seed_shard_randomness(self, generator: torch.Generator, epoch: int) -> None:
        """Under DDP, give each process its own stream of random numbers for the epoch (dropout masks,
        a VAE's noise), derived from the shuffling seed, the epoch and the rank, so shards do not share
        masks and a resumed run draws what an uninterrupted one would."""
        if self.world_size > 1:
            seed = np.random.SeedSequence([generator.initial_seed(), epoch, self.rank]).generate_state(2)
            torch.manual_seed(int(seed[0]) << 32 | int(seed[1]))

    def total(self, values: list[float]) -> list[float]:
        """Sums over the processes (the values themselves alone)."""
        if self.world_size == 1 or not values:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()
