"""The one training loop every gradient-trained experiment shares, and what it needs around it.

Data stays in memory as tensors; each epoch draws one permutation from an explicit generator,
gathers the shuffled copy once and then takes batches by slicing (no DataLoader, no per-sample
Python). A `step(model, batch) -> {"loss": ..., ...}` function says what one batch computes, so
classifiers, autoencoders and VAEs all use the same `fit`. Experiments whose loop *is* the idea
(MCMC, ALS, attacks, the optimiser study) write their own short loops instead.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclassics.distributed import DataParallel, Step
from dlclassics.errors import RunError
from dlclassics.files import atomic_torch_save, load_tensor_file


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for shuffling, seeded from the same value."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; an explicit device must be present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RunError("--device mps was asked for but Apple MPS is not available; use --device auto or cpu")
    return torch.device(name)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with L2 on weight matrices and kernels only, never on biases or norm scales."""
    decayed = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


# at::internal::GRAIN_SIZE: torch's elementwise CPU ops split tensors at least this large across threads.
PARALLEL_GRAIN = 32768


def can_fuse(model: nn.Module) -> bool:
    """Whether to use torch's fused optimizer kernels: floating parameters, dense gradients, and on the CPU
    either one thread or at least one tensor of PARALLEL_GRAIN elements.

    A fused step makes one pass over each parameter; the default makes one pass per arithmetic operation
    (weight decay, momentum, Nesterov, update) with temporaries, which for a 784-1024-1024-10 MLP costs
    4-6x the time (a quarter of a training step). But the fused CPU kernel splits even small tensors
    across threads, where the unfused ops stay on one: on a machine whose cores are busy, each split waits
    for a descheduled thread (tens of ms per step, measured on a 2-core machine under load), so a model
    of only small tensors keeps the unfused loop unless torch runs one thread.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    sparse = any(getattr(module, "sparse", False) for module in model.modules()
                 if isinstance(module, (nn.Embedding, nn.EmbeddingBag)))
    if not params or sparse or not all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        return False
    on_cpu = any(p.device.type == "cpu" for p in params)
    return (not on_cpu or torch.get_num_threads() == 1
            or max(p.numel() for p in params) >= PARALLEL_GRAIN)


def sgd(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float) -> torch.optim.SGD:
    """SGD with plain or Nesterov momentum (Nesterov only when momentum > 0), L2 on weights only, fused
    where that is faster."""
    return torch.optim.SGD(weight_decay_groups(model, weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov and momentum > 0, fused=can_fuse(model) or None)


def make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.0) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0), Adam or AdamW with L2 on weights only, fused where possible
    (same updates as the unfused loop up to float rounding)."""
    if name == "sgd":
        return sgd(model, lr, momentum, nesterov=True, weight_decay=weight_decay)
    groups = weight_decay_groups(model, weight_decay)
    fused = can_fuse(model) or None  # None lets torch choose
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    raise RunError(f"unknown optimizer '{name}'; use sgd, adam or adamw")


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All trainable parameters as one detached CPU vector (the order of `model.parameters()`)."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters() if p.requires_grad])


def classification_step(model: nn.Module, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cross-entropy on logits, plus the batch accuracy for the progress bar and history."""
    inputs, targets = batch
    logits = model(inputs)
    loss = nn.functional.cross_entropy(logits, targets)
    accuracy = (logits.argmax(1) == targets).float().mean()
    return {"loss": loss, "accuracy": accuracy}


@torch.no_grad()
def batched_outputs(model: nn.Module, inputs: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """model(inputs) without gradients, in eval mode (no dropout, batch norm's running statistics) and
    batch by batch (a whole test set at once can exceed memory); each batch is moved to the model's
    device, so `inputs` may stay on the CPU. The model's training mode is restored afterwards."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(chunk.to(device)) for chunk in inputs.split(batch_size)])
    finally:
        model.train(was_training)


def evaluate_classifier(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                        batch_size: int = 4096) -> dict[str, Any]:
    """Mean cross-entropy, accuracy and the predicted probabilities, in eval mode, batched."""
    logits = batched_outputs(model, inputs, batch_size)
    loss = nn.functional.cross_entropy(logits, targets).item()
    return {"loss": loss, "accuracy": (logits.argmax(1) == targets).float().mean().item(),
            "probabilities": logits.softmax(1)}


def epoch_batches(data: Sequence[torch.Tensor], batch_size: int,
                  generator: torch.Generator) -> Iterator[list[torch.Tensor]]:
    """One epoch of shuffled minibatches: one permutation, one gather of each tensor, then slices.

    The gather costs one copy of the data per epoch; every batch after it is a view (no per-sample
    indexing or collation, which is where a DataLoader over a TensorDataset spends its time).
    """
    order = torch.randperm(len(data[0]), generator=generator).to(data[0].device)
    shuffled = [tensor[order] for tensor in data]
    for start in range(0, len(order), batch_size):
        yield [tensor[start:start + batch_size] for tensor in shuffled]


def held_out(inputs: torch.Tensor, targets: torch.Tensor, prefix: str,
             batch_size: int = 4096) -> Callable[[nn.Module, int], dict[str, float]]:
    """An `evaluate` callback for `fit`: loss and accuracy on a held-out set, as `<prefix>_loss/_accuracy`."""
    def evaluate(model: nn.Module, epoch: int) -> dict[str, float]:
        result = evaluate_classifier(model, inputs, targets, batch_size)
        return {f"{prefix}_loss": result["loss"], f"{prefix}_accuracy": result["accuracy"]}
    return evaluate


def cosine_schedule(optimizer: torch.optim.Optimizer, epochs: int,
                    enabled: bool = True) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Learning rate decayed to 0 along a half cosine over `epochs` (stepped once per epoch), or none."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs) if enabled else None


# Cross-entropy this many times above chance (log of the class count) is a diverged classifier, even when finite.
DIVERGED_LOSS_FACTOR = 10.0


def check_classifier_loss(loss: float, classes: int) -> None:
    """A RunError when a classifier's final training loss is far above the loss of guessing uniformly.

    The engine stops a loss that becomes NaN; a learning rate far too large can instead leave a finite
    loss of 1e28 and a model that still gets some answers right, which must not finish as if fine.
    """
    chance = math.log(classes)
    if loss > DIVERGED_LOSS_FACTOR * chance:
        raise RunError(f"the final training loss is {loss:.3g}, far above the {chance:.2f} of guessing uniformly: the "
                       "run diverged. Lower the learning rate (--set lr=...)")


@dataclasses.dataclass
class FitResult:
    history: list[dict[str, float]]  # one row per epoch: epoch, train means, evaluation metrics
    iterations: list[float]  # training loss per step, when asked for
    snapshots: list[torch.Tensor]  # flattened parameters after each epoch, when asked for


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": list(random.getstate()[1])}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def fit(model: nn.Module, data: Sequence[torch.Tensor], *, optimizer: torch.optim.Optimizer, epochs: int,
        batch_size: int, generator: torch.Generator, step: Step = classification_step,
        evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
        on_epoch_end: Callable[[nn.Module, int, dict[str, float]], None] | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        checkpoint: Path | None = None, resume: bool = False, record_iterations: bool = False,
        snapshot_parameters: bool = False, quiet: bool = False, desc: str = "train") -> FitResult:
    """Train `model` on in-memory tensors `data` (already on the model's device).

    Each epoch: shuffle with `generator`, step through batches of `batch_size`, average the step's
    outputs, call `evaluate(model, epoch)` for held-out metrics and `on_epoch_end(model, epoch, row)`
    (to save a snapshot, say), then write an atomic checkpoint. With `resume` and an existing
    checkpoint, training continues after the last saved epoch and ends with the same numbers as an
    uninterrupted run (on the CPU).

    In a torch.distributed process group (`dlclassics run --nproc N`, or torchrun), every process takes
    its shard of each batch of `batch_size` under DistributedDataParallel (see `distributed`); the
    history holds the means over the whole batch, and only rank 0 prints and writes the checkpoint.
    """
    n = len(data[0])
    history: list[dict[str, float]] = []
    iterations: list[float] = []
    snapshots: list[torch.Tensor] = []
    first_epoch = 1
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_tensor_file(checkpoint, "a training checkpoint written by dlclassics")
        try:
            if not isinstance(state, dict):
                raise TypeError(f"it holds a {type(state).__name__}, not a dict")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            _set_rng_state(state["rng"])
            history, iterations, snapshots = state["history"], state["iterations"], state["snapshots"]
            first_epoch = int(state["epoch"]) + 1
        except (KeyError, TypeError, IndexError, ValueError, RuntimeError, AttributeError) as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise RunError(f"{checkpoint} is not a training checkpoint of this run ({reason}); delete that run "
                           "folder and start a new run") from None
    parallel = DataParallel(model, step)
    main_process = parallel.rank == 0
    progress = Progress(desc, epochs, first_epoch, math.ceil(n / batch_size), quiet or not main_process)
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        parallel.seed_shard_randomness(generator, epoch)
        sums: dict[str, float] = {}
        losses: list[float] = []  # this process's part of each step's loss
        for batch in epoch_batches(data, batch_size, generator):
            shard, share = parallel.shard(batch)
            outputs = parallel.step(shard)
            optimizer.zero_grad(set_to_none=True)
            parallel.backward(outputs["loss"], share)
            optimizer.step()
            values = {key: value.item() for key, value in outputs.items()}
            if not math.isfinite(values["loss"]):
                progress.close()
                raise RunError(f"the training loss became {values['loss']} at epoch {epoch}; the run diverged. "
                               "Lower the learning rate (--set lr=...) or check the inputs")
            weight = len(batch[0]) * share
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value * weight
            if record_iterations:
                losses.append(values["loss"] * share)
            progress.step(values)
        totals = parallel.total([*sums.values(), *losses])  # over the processes: the whole batches' numbers
        sums = dict(zip(sums, totals))
        iterations += totals[len(sums):]
        if scheduler is not None:
            scheduler.step()
        row = {"epoch": epoch, **{f"train_{k}": v / n for k, v in sums.items()}}
        if evaluate is not None:
            row.update(evaluate(model, epoch))
        history.append(row)
        if snapshot_parameters:
            snapshots.append(flat_parameters(model))
        if on_epoch_end is not None:
            on_epoch_end(model, epoch, row)
        if checkpoint is not None and main_process:
            atomic_torch_save(checkpoint, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "generator": generator.get_state(), "rng": _rng_state(), "epoch": epoch,
                "history": history, "iterations": iterations, "snapshots": snapshots})
        progress.epoch_end(row)
    progress.close()
    return FitResult(history, iterations, snapshots)


class Progress:
    """What a training prints on stderr: on a terminal a live bar (kept at the end) with each finished
    epoch's line above it; into a file or pipe one line per epoch; nothing when quiet."""

    def __init__(self, desc: str, epochs: int, first_epoch: int, steps_per_epoch: int, quiet: bool) -> None:
        self.desc, self.epochs, self.quiet = desc, epochs, quiet
        self.started = time.perf_counter()
        self.bar = None
        if quiet:
            return
        if first_epoch > 1:
            resumed = (f"resuming at epoch {first_epoch} of {epochs}" if first_epoch <= epochs
                       else f"all {epochs} epochs were done before the interruption")
            print(f"{desc}: {resumed}", file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps_per_epoch * max(0, epochs - first_epoch + 1), desc=desc, leave=True,
                            mininterval=0.5, dynamic_ncols=True, file=sys.stderr)

    def step(self, values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)

    def epoch_end(self, row: dict[str, float]) -> None:
        """One line: the epoch, its training means and held-out metrics, and the seconds it took."""
        if self.quiet:
            return
        metrics = ", ".join(f"{key} {value:.5g}" for key, value in row.items() if key != "epoch")
        line = f"{self.desc} epoch {row['epoch']}/{self.epochs}: {metrics} ({time.perf_counter() - self.started:.1f} s)"
        self.started = time.perf_counter()
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
