"""Inputs that once ended in a Python traceback (or finished as if fine): each must now give one line
naming the problem, exit 1 or 2, leave no run folder behind and change no file anywhere.

One table, one test: a row builds its input files under `tmp` and returns the `dlclassics run`
arguments (`--out` is added); the test runs the CLI in-process and checks the outcome.
"""

import dataclasses
import errno
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import file_digests

from dlclassics.cli import main
from dlclassics.models.energy import EnergyRegressor


class Payload:
    """Pickled into a file, it would write a marker when unpickled; it never may be."""

    def __reduce__(self):
        return (Path.touch, (Path("/tmp/dlclassics-pwned"),))


@dataclasses.dataclass
class Inputs:
    tmp: Path  # where a row writes its input files
    data: Path  # generated image datasets
    toy: ModuleType  # the test-only experiment, for failures from inside a run

    def file(self, name: str, content=b"") -> Path:
        """`content` as the file `name`: bytes or text as they are, anything else with torch.save."""
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (bytes, str)):
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        else:
            torch.save(content, path)
        return path

    def finished(self, experiment: str, config=None, record=None, **files) -> Path:
        """A folder that looks like a finished run of `experiment`: its config.json (`record` adds keys to
        it) plus `files`."""
        folder = self.tmp / f"{experiment}-run"
        self.file(f"{experiment}-run/config.json",
                  json.dumps({"experiment": experiment, "config": config or {}, **(record or {})}))
        for name, content in files.items():
            self.file(f"{experiment}-run/{name}", content)
        return folder

    def energy_run(self, **files) -> list[str]:
        """mcmc-sampling on an energy-regressor folder whose weights are never reached (they are read last)."""
        folder = self.finished("energy-regressor", **{"model.pt": b"", **files})
        return ["mcmc-sampling", "--quick", "--from-run", str(folder), *self.data_options()]

    def victim(self, config=None, record=None) -> list[str]:
        """fgsm on a mnist-classifier folder whose config.json `config` / `record` describe (its model is
        never reached: the config is checked first)."""
        folder = self.finished("mnist-classifier", config, record, **{"model.pt": b"x",
                                                                      "metrics.json": '{"test_accuracy": 0.9}'})
        return ["fgsm", "--quick", "--from-run", str(folder), *self.data_options()]

    def tiny_images(self, images: int) -> list[str]:
        """mnist-mlp on own IDX files holding `images` test images and no training split."""
        import numpy as np

        from dlclassics.data.idx import write_idx

        write_idx(self.file("tiny/t10k-images-idx3-ubyte"), np.zeros((images, 28, 28), np.uint8))
        write_idx(self.file("tiny/t10k-labels-idx1-ubyte"), np.zeros(images, np.uint8))
        return ["mnist-mlp", "--quick", "--quiet", "--device", "cpu", "--data-dir", str(self.tmp / "tiny"),
                "--unverified"]

    def fifo(self, name: str) -> Path:
        import os

        self.tmp.mkdir(parents=True, exist_ok=True)
        os.mkfifo(self.tmp / name)
        return self.tmp / name

    def data_options(self) -> list[str]:
        return ["--data-dir", str(self.data), "--device", "cpu", "--quiet"]

    def resume_with_pickled_checkpoint(self) -> list[str]:
        """An interrupted toy run (under its own --out) whose checkpoint was replaced by a pickle."""
        self.toy.INTERRUPT_AT = 2
        assert main(["run", "toy", "--out", str(self.tmp / "earlier")]) == 1
        self.toy.INTERRUPT_AT = None
        (folder,) = (self.tmp / "earlier" / "toy").iterdir()
        torch.save({"epoch": Payload()}, folder / "checkpoint.pt")
        return ["toy", "--resume", str(folder)]

    def raising(self, error: BaseException) -> list[str]:
        """A toy run that meets `error` inside its run."""
        def fail():
            raise error
        self.toy.FAIL = fail
        return ["toy"]


def row(name: str, build: Callable[[Inputs], list[str]], code: int, needle: str, **marks):
    return pytest.param(build, code, needle, id=name, **marks)


def nan_weights() -> dict[str, torch.Tensor]:
    """An EnergyRegressor state dict with NaN in its last layer: every energy it gives is NaN."""
    state = EnergyRegressor().state_dict()
    state["net.24.bias"] = torch.full_like(state["net.24.bias"], float("nan"))
    return state


PIXELS = json.dumps({"pixel_mean": 0.2, "pixel_std": 0.3})
ROWS = [
    # ---- options and config files
    row("lr-nan", lambda i: ["mnist-mlp", "--set", "lr=nan"], 2, "option 'lr' must be a finite number"),
    row("lr-inf-toml", lambda i: ["mnist-mlp", "--config", str(i.file("c.toml", "lr = inf"))], 2,
        "option 'lr' must be a finite number"),
    row("lr-table-toml", lambda i: ["mnist-mlp", "--config", str(i.file("c.toml", "lr = {a = 1}"))], 2,
        "option 'lr' expects float"),
    row("huge-seed", lambda i: ["mnist-mlp", "--seed", "99999999999999999999"], 2,
        "option 'seed' must be <= 2147483647"),
    row("empty-sizes", lambda i: ["dense-autoencoder", "--set", "sizes="], 2,
        "option 'sizes' needs at least one value"),
    row("config-is-a-folder", lambda i: ["mnist-mlp", "--config", str(i.data)], 2, "is a folder; pass a TOML file"),
    row("epochs-typo", lambda i: ["mnist-mlp", "--epochs", "30000000"], 2, "option 'epochs' must be <= 10,000"),
    row("workers-0", lambda i: ["fashion-mlp", "--workers", "0"], 2, "--workers: expects an integer from 1 to 64"),
    row("workers-typo", lambda i: ["fashion-mlp", "--workers", "100000"], 2, "expects an integer from 1 to 64"),
    row("nproc-typo", lambda i: ["mnist-mlp", "--nproc", "100000"], 2, "--nproc: expects an integer from 1 to 1024"),
    row("hidden-1e11", lambda i: ["mnist-mlp", "--set", "hidden=100000000000"], 2, "option 'hidden' must be <= 65536"),
    row("hidden-1e23", lambda i: ["mnist-mlp", "--set", "hidden=99999999999999999999999"], 2,
        "option 'hidden' must be <= 65536"),
    row("count-typo", lambda i: ["mnist-mlp", "--set", "batch_size=99999999999"], 2,
        "option 'batch_size' must be <= 10,000,000"),
    row("narrow-units-negative", lambda i: ["fashion-mlp", "--set", "narrow=units=-5/7"], 2,
        "option 'narrow=units' must be >= 1"),
    row("narrow-units-0", lambda i: ["fashion-mlp", "--set", "narrow=units=0"], 2, "option 'narrow=units' must be >= 1"),
    row("narrow-units-huge", lambda i: ["fashion-mlp", "--set", "narrow=units=99999999999999999999"], 2,
        "option 'narrow=units' must be <= 65536"),
    row("narrow-lr-negative", lambda i: ["fashion-mlp", "--set", "narrow=lr=-1"], 2, "option 'narrow=lr' must be > 0"),
    row("narrow-batch-0", lambda i: ["fashion-mlp", "--set", "narrow=batch_size=0"], 2,
        "option 'narrow=batch_size' must be >= 1"),
    row("narrow-l2-negative", lambda i: ["fashion-mlp", "--set", "narrow=l2=-0.5"], 2, "option 'narrow=l2' must be >= 0"),
    row("narrow-epochs-typo", lambda i: ["fashion-mlp", "--set", "narrow=epochs=100000"], 2,
        "option 'narrow=epochs' must be <= 10,000"),
    row("storage-unreachable", lambda i: ["fashion-mlp", "--quick", "--storage",  # not --quiet: no "join it" advice
                                          "postgresql+psycopg2://user:secret@127.0.0.1:1/optuna",
                                          "--data-dir", str(i.data), "--device", "cpu"],
        1, "cannot open the study storage postgresql+psycopg2://user:***@127.0.0.1:1/optuna"),
    row("config-fifo", lambda i: ["mnist-mlp", "--config", str(i.fifo("c.toml"))], 2, "is not a regular file"),
    # ---- a producer's config.json that was edited
    row("victim-hidden-1e12", lambda i: i.victim({"hidden": 10 ** 12, "dataset": "mnist"}), 2,
        "option 'hidden' must be <= 65536"),
    row("victim-config-list", lambda i: i.victim([1, 2]), 2, "not a table of options"),
    row("victim-carve-abc", lambda i: i.victim({"dataset": "mnist"}, {"carve_test": "abc"}), 2,
        "carve_test = 'abc', not a fraction"),
    row("precision-fp16", lambda i: ["toy", "--precision", "fp16"], 2,
        "argument --precision: invalid choice: 'fp16'"),
    row("capture-yes", lambda i: ["toy", "--capture", "yes"], 2, "argument --capture: invalid choice: 'yes'"),
    row("stack-trials-negative", lambda i: ["fashion-mlp", "--quick", "--set", "stack_trials=-1"], 2,
        "option 'stack_trials' must be >= 0"),
    # ---- own data too small to train on
    row("own-3-images-carved-1e-9", lambda i: [*i.tiny_images(3), "--carve-test", "1e-9"], 1,
        "leaves an empty test split"),
    row("own-1-image", lambda i: [*i.tiny_images(1), "--carve-test", "0.5"], 1, "leaves an empty"),
    row("own-0-images", lambda i: [*i.tiny_images(0), "--carve-test", "0.2"], 1, "holds no images"),
    row("own-30-images", lambda i: [*i.tiny_images(30), "--carve-test", "0.2"], 1, "need at least 20 in each"),
    # ---- where runs are written, and the operating system's refusals inside a run
    row("out-is-a-file", lambda i: ["he-init", "--quick", "--out", str(i.file("not-a-folder"))], 2,
        "cannot create a run folder there (Not a directory); pass --out a writable folder"),
    row("out-read-only", lambda i: ["he-init", "--quick", "--out", "/sys/dlclassics-runs"], 2,
        "cannot create a run folder there", marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(),
                                                                     reason="needs Linux's read-only /sys")),
    row("unreadable-file-in-a-run", lambda i: i.raising(PermissionError(errno.EACCES, "Permission denied",
                                                                         "/data/train-images-idx3-ubyte")), 1,
        "Permission denied (/data/train-images-idx3-ubyte); check that path"),
    row("disk-full", lambda i: i.raising(OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.pt")), 1,
        "No space left on device (/runs/x/model.pt)"),
    # ---- energy data files
    row("energy-empty-pt", lambda i: ["energy-regressor", "--set", f"data_file={i.file('e.pt')}"], 1, "e.pt is empty"),
    row("energy-0-rows", lambda i: ["energy-regressor", "--set", "data_file=" + str(i.file(
        "e.pt", {"x": torch.zeros(0, 784), "energy": torch.zeros(0, 1)}))], 1, "holds no examples"),
    row("energy-1-row", lambda i: ["energy-regressor", "--set", "data_file=" + str(i.file(
        "e.pt", {"x": torch.zeros(1, 784), "energy": torch.zeros(1, 1)}))], 1, "holds 1 example(s)"),
    row("energy-sparse-x", lambda i: ["energy-regressor", "--set", "data_file=" + str(i.file(
        "e.pt", {"x": torch.zeros(20, 784).to_sparse(), "energy": torch.zeros(20, 1)}))], 1, "must be dense tensors"),
    row("energy-nan-x", lambda i: ["energy-regressor", "--set", "data_file=" + str(i.file(
        "e.pt", {"x": torch.full((20, 784), float("nan")), "energy": torch.zeros(20, 1)}))], 1,
        "must hold finite numbers"),
    # ---- --from-run folders and --resume checkpoints
    row("from-run-not-a-folder", lambda i: ["loss-landscape", "--from-run", str(i.tmp / "nowhere")], 2,
        "is not a folder"),
    row("trajectory-empty", lambda i: ["loss-landscape", "--from-run", str(i.finished(
        "fashion-mlp", **{"trajectory.pt": b""}))], 2, "trajectory.pt is empty"),
    row("trajectory-pickle", lambda i: ["loss-landscape", "--from-run", str(i.finished(
        "fashion-mlp", **{"trajectory.pt": pickle.dumps({"parameters": Payload()})}))], 2, "trajectory.pt"),
    row("trajectory-torch-pickle", lambda i: ["loss-landscape", "--from-run", str(i.finished(
        "fashion-mlp", **{"trajectory.pt": {"parameters": Payload()}}))], 2, "holds a pickled Python object"),
    row("vae-snapshot-pickle", lambda i: ["vae-loglik", "--quick", "--from-run", str(i.finished(
        "vae", {"epochs": 1}, **{"model_epoch_1.pt": {"w": Payload()}})), *i.data_options()], 2,
        "holds a pickled Python object"),
    row("mcmc-no-metrics", lambda i: i.energy_run(), 2, "has no metrics.json"),
    row("mcmc-bad-json", lambda i: i.energy_run(**{"metrics.json": "{nan"}), 2, "metrics.json is not valid JSON"),
    row("mcmc-wrong-metrics", lambda i: i.energy_run(**{"metrics.json": json.dumps({"test_loss": 1.0})}), 2,
        "metrics.json has no pixel_mean, pixel_std"),
    row("mcmc-exact-wrong-keys", lambda i: i.energy_run(**{"metrics.json": PIXELS,
                                                           "exact_energy.pt": {"center": torch.zeros(784)}}), 2,
        "exact_energy.pt must hold the keys"),
    row("checkpoint-pickle", lambda i: i.resume_with_pickled_checkpoint(), 2, "holds a pickled Python object"),
    # ---- values that must not finish as if fine
    row("optimizers-lr-1e300", lambda i: ["optimizers-noisy", "--quick", "--set", "lr=1e300"], 1, "the run diverged"),
    row("energy-nan-weights", lambda i: ["energy-regressor", "--set", "data_file=" + str(i.file(
        "e.pt", {"x": torch.zeros(20, 784), "energy": torch.zeros(20, 1)})), "--set", "weights_file=" + str(i.file(
            "w.pt", nan_weights()))], 1, "metric file_loss came out NaN or infinite: the run diverged"),
    row("classifier-lr-1e6", lambda i: ["mnist-classifier", "--quick", "--set", "lr=1e6", *i.data_options()], 1,
        "the run diverged"),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol", "ignore:Sparse CSR tensor support")
@pytest.mark.parametrize("build, code, needle", ROWS)
def test_a_bad_input_is_one_line_and_leaves_nothing_behind(build, code, needle, image_data_dir, toy, tmp_path, capsys):
    marker = Path("/tmp/dlclassics-pwned")
    marker.unlink(missing_ok=True)
    argv = ["run", *build(Inputs(tmp_path / "inputs", image_data_dir, toy))]
    out = tmp_path / "runs"
    before = file_digests(tmp_path)
    capsys.readouterr()
    assert main(argv if "--out" in argv else [*argv, "--out", str(out)]) == code
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in captured.out + captured.err
    assert not out.exists() or not any(out.rglob("*")), "a run folder was left behind"
    assert file_digests(tmp_path) == before  # nothing else was changed either
    assert not marker.exists()  # no pickle payload ran
