"""The run session: what an experiment's `run(cfg, run)` receives, in the spirit of Lightning Fabric.

The session owns everything around the experiment's own work, so an experiment module holds only its
idea. Before `run` is called the config is resolved from the recipe, the device resolved once, the
process seeded and the folder created (or an interrupted one taken back) and locked (`runs.request`,
`runs.lifecycle`). Through the `Run` the experiment loads data (`run.load_images`, `run.use_data`: the
data's source goes into the report and config.json), trains (`run.fit`: checkpoint, resume, progress,
generator and trackers passed for it), times (`run.timer`) and saves figures, history and model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from dlclassics.engine import FitResult, fit
from dlclassics.errors import RunError
from dlclassics.files import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    make_dirs,
)
from dlclassics.runs.contract import FinishedRun
from dlclassics.runs.folder import (
    HISTORY,
    MODEL,
    run_id,
)
from dlclassics.runs.trackers import Trackers, Trial

D = TypeVar("D")
MIN_SPLIT_IMAGES = 20  # fewer images in a split leave an empty validation set or a figure without examples


# ---------------------------------------------------------------- what the experiment receives

@dataclasses.dataclass
class Run:
    """What an experiment's `run` function receives besides its config: where to write, and how."""

    experiment: str
    dir: Path
    config: Any
    device: torch.device  # resolved once from config.device ("auto" -> cuda, mps or cpu)
    recipe: str = "tuned"
    changed_options: list[str] = dataclasses.field(default_factory=list)  # set beyond the recipe
    command: list[str] = dataclasses.field(default_factory=list)  # the `dlclassics` arguments that started it
    headline: str | None = None  # the metric that sums the run up (the experiment's HEADLINE), for listings
    data_used: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # what `use_data` recorded
    data_dir: Path | None = None
    carve_test: float = 0.0
    unverified: bool = False  # data files accepted without matching the official checksums
    quiet: bool = False
    resume: bool = False
    workers: int = 1  # local processes for searches
    storage: str | None = None  # Optuna database URL for searches shared across machines
    study: str | None = None  # the search's Optuna study (searching experiments only): its own, or one joined
    from_run: FinishedRun | None = None  # an earlier run this one builds on (`--from-run`), checked
    log: str | None = None  # `--log tensorboard`
    mlflow: str | None = None  # `--mlflow URI`
    notebook: bool = False  # progress as tqdm.auto bars (`dlclassics.run` in a Jupyter kernel)
    trackers: Trackers = dataclasses.field(default_factory=Trackers)  # opened when the run starts (rank 0 only)
    epochs_started: int = 0  # epochs of the run's trainings so far: the trackers' steps of the next one follow
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)  # intra-op threads per process
    world_size: int = 1  # processes training together (DistributedDataParallel)
    accelerations: dict[str, str] = dataclasses.field(default_factory=dict)  # --capture, --precision, --channels-last
    generator: torch.Generator = dataclasses.field(default_factory=torch.Generator)  # seeded with the run
    notes: list[str] = dataclasses.field(default_factory=list)
    figures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    sections: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # `run.timer` results, into the metrics
    comparable: bool = True
    started: float = dataclasses.field(default_factory=time.time)  # when this part of the run started
    parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one per start or resume, this one last
    lock: int | None = None  # the descriptor holding the folder's lock while the run is going
    clock: float = 0.0  # time.perf_counter() when the experiment's own work started

    @property
    def run_id(self) -> str:
        return run_id(self.dir)

    @property
    def figures_dir(self) -> Path:
        path = self.dir / "figures"
        make_dirs(path)
        return path

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    # ------------------------------------------------------------ data, training, time

    def load_images(self, name: str, loader: Callable[..., D] | None = None) -> D:
        """The image dataset `name` as this run's options say (data folder, carved test split, checksums),
        its source noted in the report. `loader` defaults to `data.images.load_images` (CIFAR passes its own)."""
        if loader is None:
            from dlclassics.data.images import load_images as loader
        data = loader(name, self.data_dir, self.carve_test, self.unverified)
        sizes = {"training": len(data.train_x), "test": len(data.test_x)}
        if min(sizes.values()) < MIN_SPLIT_IMAGES:
            raise RunError(f"data: {name} from {data.source} has {sizes['training']:,} training and {sizes['test']:,} "
                           f"test images; the experiments need at least {MIN_SPLIT_IMAGES} in each to train, hold "
                           "out and draw their figures")
        return self.use_data(data)

    def use_data(self, data: D) -> D:
        """Record loaded data: its summary (`data.summary`) in the report's notes, its name and source in
        config.json (the data the run really used, whatever its options say), and the run marked not
        comparable with its reason (`data.note`) when the data is not the official set."""
        self.note(data.summary)
        self.data_used.append({"name": data.name, "source": str(data.source), "comparable": bool(data.comparable)})
        if not data.comparable:
            self.mark_not_comparable(data.note)
        return data

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensor.to(self.device) for tensor in tensors)

    def fit(self, model: torch.nn.Module, data: Sequence[torch.Tensor], **options: Any) -> FitResult:
        """`engine.fit` with this run's checkpoint, resume flag, quietness, progress label and generator
        (each can be given to override it).

        Each epoch's history row also goes to the run's trackers, at the epochs of the run's earlier
        trainings plus its epoch: the settings of a sweep, or a training of one epoch per call, follow
        each other. In a notebook the progress is a tqdm.auto bar per training instead of the engine's,
        which draws a bar on a terminal only and would print a line per epoch there.
        """
        options = {"checkpoint": self.checkpoint_path, "resume": self.resume, "quiet": self.quiet,
                   "desc": self.experiment, "generator": self.generator, **options}
        first_step, caller = self.epochs_started, options.get("on_epoch_end")
        self.epochs_started += options["epochs"]
        with epoch_bar(options["desc"], options["epochs"], shown=self.notebook and not options["quiet"]) as bar:
            def on_epoch_end(model: torch.nn.Module, epoch: int, row: dict[str, float]) -> None:
                if caller is not None:
                    caller(model, epoch, row)
                self.trackers.epoch(first_step + epoch, row)
                bar(epoch, row)

            return fit(model, data, **{**options, "on_epoch_end": on_epoch_end,
                                       "quiet": options["quiet"] or self.notebook})

    def log_trials(self, search: str, trials: Sequence[Trial]) -> None:
        """A search's finished trials, for the run's trackers (`search` names it among the run's searches)."""
        self.trackers.trials(search, trials)

    @contextlib.contextmanager
    def timer(self, metric: str) -> Iterator[None]:
        """Time the block; its seconds become the metric `metric` (rounded to 0.01 s)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[metric] = round(time.perf_counter() - started, 2)

    # ------------------------------------------------------------ the report's parts

    def note(self, text: str) -> None:
        """A line for the report's notes section (data caveats, diagnoses, what was used)."""
        self.notes.append(text)

    def announce(self, text: str) -> None:
        """A note that the user also sees now, as one line on stderr: what the run is about to do, and why."""
        print(f"dlclassics: {text}", file=sys.stderr)
        self.note(text)

    def add_section(self, title: str, markdown: str) -> None:
        """An extra report section (a search table, a diagnosis), placed before the figures."""
        self.sections.append((title, markdown))

    def mark_not_comparable(self, reason: str) -> None:
        self.comparable = False
        self.note(reason)

    def save_figure(self, figure: Any, name: str, caption: str, data: Mapping[str, Any] | None = None,
                    rows: Sequence[Mapping[str, Any]] | None = None) -> Path:
        """Save a matplotlib figure as PNG with its data beside it (`rows` -> CSV, `data` -> npz)."""
        import matplotlib.pyplot as plt
        import numpy as np

        path = self.figures_dir / f"{name}.png"
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        atomic_write_bytes(path, buffer.getvalue())
        if rows is not None:
            atomic_write_csv(self.figures_dir / f"{name}.csv", rows)
        if data is not None:
            arrays = io.BytesIO()
            np.savez_compressed(arrays, **{k: np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v)
                                           for k, v in data.items()})
            atomic_write_bytes(self.figures_dir / f"{name}.npz", arrays.getvalue())
        self.figures.append((f"figures/{name}.png", caption))
        return path

    def save_history(self, rows: Sequence[Mapping[str, Any]], name: str = HISTORY) -> None:
        atomic_write_csv(self.dir / name, rows)

    def save_model(self, model: torch.nn.Module, name: str = MODEL) -> Path:
        path = self.dir / name
        atomic_torch_save(path, model.state_dict())
        return path


@contextlib.contextmanager
def epoch_bar(desc: str, epochs: int, shown: bool) -> Iterator[Callable[[int, Mapping[str, float]], None]]:
    """A tqdm.auto bar over a training's epochs, the last epoch's metrics beside it (in Jupyter a widget);
    yields what advances it to an epoch. Nothing is drawn unless `shown`."""
    if not shown:
        yield lambda epoch, row: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs, desc=desc, unit="epoch")

    def advance(epoch: int, row: Mapping[str, float]) -> None:
        bar.update(epoch - bar.n)  # a resumed training starts after its checkpoint's epoch
        bar.set_postfix({key: f"{value:.4g}" for key, value in row.items() if key != "epoch"})

    try:
        yield advance
    finally:
        bar.close()
