"""The one training loop every gradient-trained experiment shares, and what it needs around it.

Data stays in memory as tensors; each epoch draws one permutation from an explicit generator,
gathers the shuffled copy once and then takes batches by slicing (no DataLoader, no per-sample
Python). A `step(model, batch) -> {"loss": ..., ...}` function says what one batch computes, so
classifiers, autoencoders and VAEs all use the same `fit`. Experiments whose loop *is* the idea
(MCMC, ALS, attacks, the optimiser study) write their own short loops instead.

The loop never waits for the device within a window of steps: step outputs are read every
`READ_EVERY` steps (`StepOutputs`). On CUDA it also captures the step as CUDA graphs and trains conv
nets in bf16 and channels_last (`choose_acceleration`); on the CPU the step is the plain eager one.

`WeightAverage` wraps a model in a moving average of its weights, updated after every optimizer step
and used in eval mode; it lives in the model's state dict, so `fit`'s checkpoints keep it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlclassics.config import environment
from dlclassics.data.augment import flip_and_translate
from dlclassics.distributed import DataParallel, Step, world_size
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


NORMALISATIONS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
                  nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


def norm_biases(model: nn.Module) -> list[nn.Parameter]:
    """The trainable shifts (biases) of the model's batch, instance, group and layer normalisations."""
    return [module.bias for module in model.modules() if isinstance(module, NORMALISATIONS)
            and isinstance(module.bias, nn.Parameter) and module.bias.requires_grad]


def weight_decay_groups(model: nn.Module, weight_decay: float,
                        norm_bias_lr: float | None = None) -> list[dict[str, Any]]:
    """Parameter groups with L2 on weight matrices and kernels only, never on biases or norm scales.

    With `norm_bias_lr`, the normalisation layers' biases form a third group with that learning rate (and
    no decay either): a bias after a normalisation only shifts a unit-variance activation, and the fast
    CIFAR recipes train these shifts with a learning rate tens of times the weights'.
    """
    separate = {id(p) for p in norm_biases(model)} if norm_bias_lr is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in separate]
    groups = [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]
    if separate:
        groups.append({"params": norm_biases(model), "weight_decay": 0.0, "lr": norm_bias_lr})
    return groups


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


def sgd(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float,
        norm_bias_lr_scale: float = 1.0) -> torch.optim.SGD:
    """SGD with plain or Nesterov momentum (Nesterov only when momentum > 0), L2 on weights only, fused
    where that is faster; the normalisation layers' biases learn at `norm_bias_lr_scale` times `lr`
    (`weight_decay_groups`; a schedule scales every group's rate alike)."""
    norm_bias_lr = lr * norm_bias_lr_scale if norm_bias_lr_scale != 1.0 else None
    return torch.optim.SGD(weight_decay_groups(model, weight_decay, norm_bias_lr), lr=lr, momentum=momentum,
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


def classification_step(model: nn.Module, batch: Sequence[torch.Tensor], label_smoothing: float = 0.0,
                        flip: bool = False, shift: int = 0) -> dict[str, torch.Tensor]:
    """Cross-entropy on logits, plus the batch accuracy for the progress bar and history.

    The options (bind them with functools.partial) are the tuned recipes' regularisers: label smoothing,
    and images [B, C, H, W] freshly flipped and translated by up to `shift` pixels (`data.augment`).
    """
    inputs, targets = batch
    if flip or shift:
        inputs = flip_and_translate(inputs, flip, shift)
    logits = model(inputs)
    loss = nn.functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)
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


# ---------------------------------------------------------------- weight averaging

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class WeightAverage(nn.Module):
    """A model and an exponential moving average of its weights, which evaluation uses.

    In training mode the forward runs the trained model; in eval mode (`evaluate_classifier`, `held_out`,
    a test) it runs the average, whose weights move less between the last steps' noisy updates. `update`
    (after each optimizer step: `follow`) moves every floating-point tensor of the average -- parameters
    and the batch-norm running statistics alike, so the statistics come from the same span of training as
    the weights they normalise -- towards the model's by a weight max(1 - decay, 1 / updates): the plain
    mean of all updates so far until that many updates make the decay take over (an early average is
    not dominated by the initial weights). Integer buffers (batch norm's step counts) are copied.

    Averaged statistics are only a stand-in for the averaged weights' own (what evaluation uses when
    nothing recomputes them): while the weights still move fast (the first epoch of a warm-up) they miss
    the activations of the averaged weights, and the average scores at chance. So before evaluating a
    model with batch norms, `recompute_batch_norm` measures the average's statistics on some training
    inputs, as SWA does (`update_bn`).

    The average is a submodule and the update count its extra state, so both are in `state_dict()`:
    `fit`'s checkpoint keeps them and a resumed run averages as an uninterrupted one. The average's
    parameters never require gradients, so an optimizer built from this module trains only the model.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1); got {decay}")
        self.model, self.decay, self.updates = model, decay, 0
        self.average = copy.deepcopy(model).requires_grad_(False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs) if self.training else self.average(*inputs)

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = max(1.0 - self.decay, 1.0 / self.updates)
        current = [*self.model.parameters(), *self.model.buffers()]
        averaged = [*self.average.parameters(), *self.average.buffers()]
        floating = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floating:
            torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating], weight)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)

    def follow(self, optimizer: torch.optim.Optimizer) -> Any:
        """Update after every step of `optimizer` (a step post-hook); returns the hook's removable handle."""
        return optimizer.register_step_post_hook(lambda *_: self.update())

    @torch.no_grad()
    def recompute_batch_norm(self, inputs: torch.Tensor, batch_size: int) -> None:
        """Set the average's batch-norm running statistics to those of its own activations on `inputs`.

        Each batch norm forgets its statistics and, in training mode with momentum None, keeps the
        cumulative mean of the batch means and variances over the batches of `batch_size`. Every other
        module stays in eval mode, so dropout draws nothing and the same inputs give the same numbers
        (a resumed run evaluates as an uninterrupted one). Nothing to do without batch norms.
        """
        norms = [module for module in self.average.modules()
                 if isinstance(module, BATCH_NORMS) and module.track_running_stats]
        if not norms:
            return
        modes = [(module, module.training) for module in self.average.modules()]
        momenta = [norm.momentum for norm in norms]
        self.average.eval()
        try:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None
                norm.train()
            for batch in inputs.split(batch_size):
                self.average(batch)
        finally:
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
            for module, training in modes:
                module.training = training

    def get_extra_state(self) -> dict[str, int]:
        return {"updates": self.updates}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.updates = int(state["updates"])


# ---------------------------------------------------------------- reading the step outputs

# Step outputs are read from the device once every this many steps (and at each epoch's end).
READ_EVERY = 50


class StepOutputs:
    """One epoch's step outputs: kept on the device, read in windows, summed on the host in step order.

    Reading a tensor's value (`.item()`) makes the host wait until the device has finished all the work
    queued so far; once per step, that leaves a GPU idle while the host prepares the next step. So each
    step only keeps a detached reference to its outputs (no copy, no kernel), and every `read_every`
    steps, and at the epoch's end, the window is read with one transfer per output. Reading is also
    when a non-finite loss is found, so a diverged run stops at most `read_every` steps late.

    The values are then added to float64 sums on the host one step after another, exactly as a
    per-step `.item()` loop adds them: the history's means are the same numbers to the last bit.
    """

    def __init__(self, epoch: int, read_every: int, record_iterations: bool) -> None:
        if read_every < 1:
            raise ValueError(f"read_every must be at least 1; got {read_every}")
        self.epoch, self.read_every, self.record_iterations = epoch, read_every, record_iterations
        self.sums: dict[str, float] = {}  # output name -> sum over steps of value x batch rows
        self.losses: list[float] = []  # this process's part of each step's loss, when recorded
        self.window: list[tuple[dict[str, torch.Tensor], float, float]] = []  # outputs, weight, share
        self.steps = 0

    def add(self, outputs: dict[str, torch.Tensor], weight: float, share: float) -> dict[str, float] | None:
        """Keep one step's outputs (`weight`: the rows they average over); the latest values when this
        step completed a window and it was read, else None."""
        self.window.append(({key: value.detach() for key, value in outputs.items()}, weight, share))
        self.steps += 1
        return self.read() if len(self.window) >= self.read_every else None

    def read(self) -> dict[str, float] | None:
        """Read the window's outputs (one transfer each), stop on a non-finite loss, add them to the sums;
        returns the last step's values (None for an empty window)."""
        if not self.window:
            return None
        steps = len(self.window)  # each output holds one number, as `.item()` requires
        columns = {key: torch.stack([outputs[key] for outputs, _, _ in self.window]).reshape(steps).tolist()
                   for key in self.window[0][0]}
        first_step = self.steps - steps + 1
        values: dict[str, float] = {}
        for index, (_, weight, share) in enumerate(self.window):
            values = {key: column[index] for key, column in columns.items()}
            self._check_finite(values["loss"], first_step + index)
            for key, value in values.items():
                self.sums[key] = self.sums.get(key, 0.0) + value * weight
            if self.record_iterations:
                self.losses.append(values["loss"] * share)
        self.window.clear()
        return values

    def _check_finite(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            raise RunError(f"the training loss became {loss} at epoch {self.epoch}, step {step} (read at step "
                           f"{self.steps}); the run diverged. Lower the learning rate (--set lr=...) or check "
                           "the inputs")


# ---------------------------------------------------------------- using a GPU well

@dataclasses.dataclass(frozen=True)
class Acceleration:
    """What `fit` does beyond the plain eager float32 step, chosen by `choose_acceleration`."""

    capture: bool  # compile the step and replay it as CUDA graphs (see CapturedForward)
    autocast: torch.dtype | None  # run the step's forward under autocast to this dtype
    channels_last: bool  # keep the model's 4-D weights in NHWC layout


PRECISIONS = ("auto", "bf16", "fp32")
# Capturing costs seconds of compiling at the start of a fit and saves about a millisecond per step of a
# launch-bound network (the measure on an H200: 1.2-1.6 ms per eager MLP step), so by default only
# a fit of at least this many full-batch steps captures (fashion-mlp's retraining: 18,750; a trial of its
# search: at most 2,250). A first guess, to be measured on a GPU.
CAPTURE_MIN_STEPS = 5000


# The run's choices (`dlclassics run --capture/--precision/--channels-last`), which every fit of the process
# takes where its caller left a setting to "auto". They live in environment variables so that the processes
# a run starts (search workers, --nproc ranks) inherit them with the rest of its environment.
ACCELERATION_ENV = {"capture": "DLCLASSICS_CAPTURE", "precision": "DLCLASSICS_PRECISION",
                    "channels_last": "DLCLASSICS_CHANNELS_LAST"}
ACCELERATION_CHOICES = {"capture": ("auto", "on", "off"), "precision": PRECISIONS,
                        "channels_last": ("auto", "on", "off")}
SWITCHES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def run_accelerations() -> dict[str, str]:
    """The run's choices of capture, precision and channels_last ("auto" where it made none)."""
    choices = {}
    for name, variable in ACCELERATION_ENV.items():
        choices[name] = os.environ.get(variable, "auto")
        if choices[name] not in ACCELERATION_CHOICES[name]:
            raise RunError(f"{variable}={choices[name]!r} is not a choice of --{name.replace('_', '-')}; use "
                           f"{', '.join(ACCELERATION_CHOICES[name])}")
    return choices


@contextlib.contextmanager
def accelerations(**choices: str) -> Iterator[None]:
    """Within: every fit in this process (and in the processes it starts) uses `choices` (capture, precision,
    channels_last: see ACCELERATION_CHOICES) where its caller says "auto"; afterwards the previous ones."""
    with environment({ACCELERATION_ENV[name]: choice for name, choice in choices.items()}):
        run_accelerations()  # a bad choice is refused here, before any fit
        yield


def is_conv_net(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def choose_acceleration(model: nn.Module, device: torch.device, *, steps: int, capture: bool | None = None,
                        precision: str = "auto", channels_last: bool | None = None,
                        processes: int = 1) -> Acceleration:
    """The accelerations `fit` uses for `model` on `device` for `steps` full-batch steps (all its epochs,
    so that a resumed fit chooses what the uninterrupted one chose); on anything but CUDA the plain step.
    A setting left to None or "auto" is the run's choice (`accelerations`), and where that is "auto" too:

    - capture: None means on for CUDA in a single process and a fit of at least CAPTURE_MIN_STEPS steps
      (a small network's GPU step is launch-bound: one CUDA-graph replay instead of dozens of kernel
      launches); False is the eager step; True also compiles on the CPU (no CUDA graphs there, but the
      same code path, which is how the CPU tests check it). Never under DistributedDataParallel, whose
      gradient hooks the capture would have to trace.
    - precision: "auto" is bf16 autocast for conv nets on a GPU with native bf16 (tensor-core
      convolutions; an MLP of a few small layers is launch-bound and keeps float32), "bf16" asks for it
      on any CUDA device, "fp32" turns it off. bf16 keeps float32's exponent range: no loss scaling.
    - channels_last: None means on for conv nets on CUDA (cuDNN's tensor-core kernels are NHWC);
      False turns it off. On the CPU the model keeps the layout it was given.
    """
    if precision not in PRECISIONS:
        raise RunError(f"unknown precision '{precision}'; use {', '.join(PRECISIONS)}")
    chosen = run_accelerations()
    capture = capture if capture is not None else SWITCHES[chosen["capture"]]
    precision = precision if precision != "auto" else chosen["precision"]
    channels_last = channels_last if channels_last is not None else SWITCHES[chosen["channels_last"]]
    on_cuda, conv = device.type == "cuda", is_conv_net(model)
    wants_capture = capture if capture is not None else on_cuda and steps >= CAPTURE_MIN_STEPS
    bf16 = on_cuda and (precision == "bf16" or (precision == "auto" and conv and
                                                torch.cuda.is_bf16_supported(including_emulation=False)))
    return Acceleration(capture=wants_capture and processes == 1,
                        autocast=torch.bfloat16 if bf16 else None,
                        channels_last=on_cuda and (channels_last if channels_last is not None else conv))


def use_channels_last(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Move the model's 4-D weights to channels_last, and any optimizer state of theirs with them.

    The parameters stay the same objects (the optimizer keeps them); their state (momentum, a state
    loaded from a checkpoint) is copied into the new layout, because the fused optimizer kernels need a
    parameter, its gradient and its state in one layout.
    """
    model.to(memory_format=torch.channels_last)
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape and value.stride() != parameter.stride():
                state[key] = torch.empty_like(parameter).copy_(value)


def compile_step(forward: Callable[..., dict[str, torch.Tensor]]) -> Callable[..., dict[str, torch.Tensor]]:
    """torch.compile with CUDA graphs ("reduce-overhead": the compiled forward and backward are each
    recorded once per shape and replayed), for shapes fixed at their first call."""
    return torch.compile(forward, mode="reduce-overhead", dynamic=False)


@functools.cache
def note_once(text: str) -> None:
    """A line on stderr, once per process (a search would otherwise repeat it for every trial)."""
    print(f"dlclassics: {text}", file=sys.stderr, flush=True)


class CapturedForward:
    """The step's forward (its backward follows, through AOTAutograd), compiled and replayed.

    Only full batches go through it: an epoch's smaller last batch would be a second shape to compile
    and capture for one step, and runs eagerly. If the first compiled call fails (an operation the
    compiler cannot trace, no C compiler), the step runs eagerly from then on, after a one-line note;
    an error that is the step's own then shows itself again in the eager step. A CUDA graph's outputs
    are overwritten by its next replay, so the outputs are copied out of it.
    """

    def __init__(self, forward: Callable[..., dict[str, torch.Tensor]], batch_size: int) -> None:
        self.eager, self.batch_size = forward, batch_size
        self.compiled: Callable[..., dict[str, torch.Tensor]] | None = compile_step(forward)
        self.proven = False  # a compiled call has succeeded

    def __call__(self, *batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.compiled is None or len(batch[0]) != self.batch_size:
            return self.eager(*batch)
        if self.proven:
            return self._run_compiled(batch)
        try:
            outputs = self._run_compiled(batch)
        except Exception as exc:  # whatever the compiler raised; the eager step tells a real error apart
            self.compiled = None
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            note_once(f"capturing the training step failed ({type(exc).__name__}: {first_line}); it runs eagerly")
            return self.eager(*batch)
        self.proven = True
        return outputs

    def _run_compiled(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        torch.compiler.cudagraph_mark_step_begin()
        return {key: value.clone() for key, value in self.compiled(*batch).items()}


def step_forward(parallel: DataParallel, acceleration: Acceleration,
                 batch_size: int) -> Callable[..., dict[str, torch.Tensor]]:
    """The forward half of a training step on a shard: the step function (under DDP when in a group),
    under bf16 autocast and captured when `acceleration` says so. The backward stays outside autocast,
    as PyTorch recommends: its gradients come out in the parameters' float32."""
    def forward(*shard: torch.Tensor) -> dict[str, torch.Tensor]:
        if acceleration.autocast is None:
            return parallel.step(shard)
        with torch.autocast("cuda", dtype=acceleration.autocast):
            return parallel.step(shard)
    return CapturedForward(forward, batch_size) if acceleration.capture else forward


# ---------------------------------------------------------------- the loop

def _restore(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler | None, generator: torch.Generator
             ) -> tuple[list[dict[str, float]], list[float], list[torch.Tensor], int]:
    """Load a checkpoint written by `fit` into the model, optimizer, scheduler and random states; returns
    its history, iterations, snapshots and the first epoch still to train."""
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
        return state["history"], state["iterations"], state["snapshots"], int(state["epoch"]) + 1
    except (KeyError, TypeError, IndexError, ValueError, RuntimeError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise RunError(f"{checkpoint} is not a training checkpoint of this run ({reason}); delete that run "
                       "folder and start a new run") from None


def fit(model: nn.Module, data: Sequence[torch.Tensor], *, optimizer: torch.optim.Optimizer, epochs: int,
        batch_size: int, generator: torch.Generator, step: Step = classification_step,
        evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
        on_epoch_end: Callable[[nn.Module, int, dict[str, float]], None] | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, schedule_per_step: bool = False,
        checkpoint: Path | None = None, resume: bool = False, record_iterations: bool = False,
        snapshot_parameters: bool = False, quiet: bool = False, desc: str = "train",
        read_every: int = READ_EVERY, capture: bool | None = None, precision: str = "auto",
        channels_last: bool | None = None) -> FitResult:
    """Train `model` on in-memory tensors `data` (already on the model's device).

    Each epoch: shuffle with `generator`, step through batches of `batch_size`, average the step's
    outputs, call `evaluate(model, epoch)` for held-out metrics and `on_epoch_end(model, epoch, row)`
    (to save a snapshot, say), then write an atomic checkpoint. `scheduler` steps once per epoch, or
    after every optimizer step with `schedule_per_step` (a schedule within a training of one epoch). With
    `resume` and an existing checkpoint, training continues after the last saved epoch and ends with the
    same numbers as an uninterrupted run (on the CPU).

    The step outputs stay on the device and are read every `read_every` steps (see `StepOutputs`): a
    non-finite loss stops the run at most that many steps after it appeared. On CUDA a long fit's step
    is captured, and conv nets train under bf16 autocast in channels_last; `capture`, `precision` and
    `channels_last` turn these off or on (see `choose_acceleration`); on the CPU the step is the plain
    eager one unless `capture=True`. The history's numbers are those of a loop reading every step.

    In a torch.distributed process group (`dlclassics run --nproc N`, or torchrun), every process takes
    its shard of each batch of `batch_size` under DistributedDataParallel (see `distributed`); the
    history holds the means over the whole batch, and only rank 0 prints and writes the checkpoint.
    """
    n = len(data[0])
    acceleration = choose_acceleration(model, next(model.parameters()).device, steps=n // batch_size * epochs,
                                       capture=capture, precision=precision, channels_last=channels_last,
                                       processes=world_size())
    history: list[dict[str, float]] = []
    iterations: list[float] = []
    snapshots: list[torch.Tensor] = []
    first_epoch = 1
    if resume and checkpoint is not None and checkpoint.exists():
        history, iterations, snapshots, first_epoch = _restore(checkpoint, model, optimizer, scheduler, generator)
    if acceleration.channels_last:
        use_channels_last(model, optimizer)
    parallel = DataParallel(model, step)
    forward = step_forward(parallel, acceleration, batch_size)
    main_process = parallel.rank == 0
    progress = Progress(desc, epochs, first_epoch, math.ceil(n / batch_size), quiet or not main_process)
    try:
        for epoch in range(first_epoch, epochs + 1):
            model.train()
            parallel.seed_shard_randomness(generator, epoch)
            outputs = StepOutputs(epoch, read_every, record_iterations)
            for batch in epoch_batches(data, batch_size, generator):
                shard, share = parallel.shard(batch)
                step_outputs = forward(*shard)
                optimizer.zero_grad(set_to_none=True)
                parallel.backward(step_outputs["loss"], share)
                optimizer.step()
                if schedule_per_step and scheduler is not None:
                    scheduler.step()
                progress.step(outputs.add(step_outputs, len(batch[0]) * share, share))
            outputs.read()
            totals = parallel.total([*outputs.sums.values(), *outputs.losses])  # the whole batches' numbers
            sums = dict(zip(outputs.sums, totals))
            iterations += totals[len(sums):]
            if scheduler is not None and not schedule_per_step:
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
    finally:
        progress.close()
    return FitResult(history, iterations, snapshots)


class Progress:
    """What a training prints on stderr: on a terminal a live bar (kept at the end) with each finished
    epoch's line above it; into a file or pipe one line per epoch; nothing when quiet. The bar moves
    every step; its numbers change when the step outputs are read (every `read_every` steps)."""

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

    def step(self, values: dict[str, float] | None) -> None:
        """One step done; `values` are the latest step outputs read, when this step read them."""
        if self.bar is not None:
            self.bar.update(1)
            if values:
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
