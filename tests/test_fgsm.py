"""fgsm: the attacks are the textbook ones, batched; eps 0 is the clean accuracy; PGD beats FGSM; the
victim is any classifier run, rebuilt in pixel space with its own input scaling; bad inputs are one line."""

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import file_digests, make_class_images, run_quick
from torch import nn

from dlclassics import registry
from dlclassics.cli import main
from dlclassics.data.transforms import flat_float, images_4d
from dlclassics.engine import fit, make_optimizer
from dlclassics.errors import UsageError
from dlclassics.experiments import fgsm
from dlclassics.runs.contract import read_finished_run
from dlclassics.training.classifiers import (
    PRODUCERS,
    ImageShape,
    SmallCnn,
    load_classifier,
    rebuild,
)

SHAPE = ImageShape(1, 28, 10)


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained for a few steps on the generated classes, as the attacks' victim (eval mode)."""
    pictures, labels = make_class_images(700, seed=3)
    x, y = images_4d(torch.from_numpy(pictures), 1, 28), torch.from_numpy(labels).long()
    torch.manual_seed(0)
    model = rebuild("mnist-classifier", _cnn_config(), {}, SHAPE)
    fit(model, (x[:500], y[:500]), optimizer=make_optimizer("adam", model, 5e-3), epochs=8, batch_size=32,
        generator=torch.Generator().manual_seed(0), quiet=True)
    return model.eval().requires_grad_(False), x[500:], y[500:]


def _cnn_config():
    return SmallCnn(channels=(4, 8), hidden=16)


def test_fgsm_matches_a_direct_autograd_computation_image_by_image(trained):
    model, x, y = trained
    batched = fgsm.fgsm(model, x[:20], y[:20], 0.1)
    for i in range(20):
        image = x[i:i + 1].clone().requires_grad_(True)
        nn.functional.cross_entropy(model(image), y[i:i + 1]).backward()
        expected = (image + 0.1 * image.grad.sign()).clamp(0, 1).detach()
        assert torch.equal(batched[i:i + 1], expected)


def test_fgsm_at_epsilon_0_equals_the_clean_accuracy_exactly(trained):
    model, x, y = trained
    correct = fgsm.fgsm_curve(model, x, y, [0.0, 0.05, 0.2], batch_size=64)
    clean = (model(x).argmax(1) == y).float().mean().item()
    assert correct[0].float().mean().item() == clean
    assert clean > 0.8  # the victim learned something, or the comparison says little


def test_pgd_is_at_least_as_strong_as_fgsm_at_every_epsilon(trained):
    model, x, y = trained
    epsilons = [0.0, 0.05, 0.1, 0.2, 0.3]
    by_fgsm = fgsm.fgsm_curve(model, x, y, epsilons, 64).float().mean(1)
    by_pgd = fgsm.pgd_curve(model, x, y, epsilons, steps=10, step_factor=2.5, batch_size=64, seed=0).float().mean(1)
    assert by_pgd[0] == by_fgsm[0]
    assert (by_pgd <= by_fgsm).all(), (by_pgd, by_fgsm)
    assert by_pgd[-1] < by_fgsm[0]  # and it does damage
    assert (by_pgd[1:] <= by_pgd[:-1]).all()  # fooled in a small ball is fooled in every larger one


def test_fgsm_curve_is_predict_of_fgsm_image_by_image(trained):
    """Each entry of the batched curve is the prediction on that image's own attacked copy, clamp included
    (a curve without the clamp to [0, 1] differs at the larger epsilons)."""
    model, x, y = trained
    epsilons = [0.0, 0.05, 0.2, 0.3]
    curve = fgsm.fgsm_curve(model, x, y, epsilons, batch_size=64)
    clean = fgsm.predict(model, x) == y
    for row, eps in zip(curve, epsilons):
        expected = clean & (fgsm.predict(model, fgsm.fgsm(model, x, y, eps)) == y)
        assert torch.equal(row, expected), eps


def test_fgsm_curve_does_not_depend_on_the_batch_size(trained):
    """The batch size (256 by default, chosen for speed) is only how the work is cut: every image's entries
    are the same in batches of 7, of the default and of all images at once."""
    model, x, y = trained
    epsilons = [0.0, 0.05, 0.1, 0.3]
    curves = [fgsm.fgsm_curve(model, x, y, epsilons, size) for size in (7, fgsm.Config().batch_size, len(x))]
    assert all(torch.equal(curve, curves[0]) for curve in curves[1:])


def test_every_pgd_iterate_stays_in_the_epsilon_ball_and_the_pixel_range(trained, monkeypatch):
    model, x, y = trained
    eps, seen = 0.05, []
    real = fgsm.loss_gradient
    monkeypatch.setattr(fgsm, "loss_gradient", lambda m, xs, ys: seen.append((xs.detach().clone(), ys)) or
                        real(m, xs, ys))
    fgsm.pgd_fooled(model, x[:64], y[:64], eps, steps=6, step_size=0.03, generator=torch.Generator().manual_seed(1))
    assert len(seen) >= 3  # several steps were taken
    # Each iterate is matched to its clean image by label order: the active images shrink but keep their order.
    for batch, labels in seen:
        assert batch.min() >= 0 and batch.max() <= 1
        distances = (batch.unsqueeze(1) - x[:64].unsqueeze(0)).abs().flatten(2).amax(2)  # [active, 64]
        assert (distances.min(1).values <= eps + 1e-6).all()  # every iterate lies in some image's ball


def test_each_producers_pixel_scaling_is_the_input_its_experiment_trained_on():
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    pixels = images_4d(images, 1, 28)
    expected = {"mnist-classifier": pixels, "mnist-mlp": flat_float(images, 0.5, 0.5),
                "fashion-mlp": flat_float(images, 0.5), "fashion-mlp-enhanced": flat_float(images, 0.5)}
    assert set(expected) == set(PRODUCERS)
    for name, producer in PRODUCERS.items():
        assert torch.allclose(producer.scaling()(pixels), expected[name], atol=1e-6), name


def test_each_producers_network_options_are_declared_as_its_experiment_declares_them():
    for name, producer in PRODUCERS.items():
        theirs = {field.name: field for field in dataclasses.fields(registry.load(name).Config)}
        for field in dataclasses.fields(producer.options):
            assert (theirs[field.name].default, theirs[field.name].metadata) == (field.default, field.metadata), name


@pytest.mark.parametrize("config, needle", [
    (["mnist"], "('config' is list, not a table of options)"),
    ({"dataset": "mnist", "hidden": 0}, "option 'hidden' must be >= 1"),
    ({"channels": [4, 8, 16]}, "option 'channels' needs two values"),
])
def test_a_producer_config_that_does_not_describe_its_run_is_one_usage_error(tmp_path, config, needle):
    folder = _classifier_run(tmp_path, {}, {"experiment": "mnist-classifier", "config": config})
    finished = read_finished_run(folder, tuple(PRODUCERS), ("model.pt",))
    with pytest.raises(UsageError) as error:
        load_classifier(finished, SHAPE)
    message = str(error.value)
    assert message.startswith(f"--from-run {folder}: its config.json does not describe a 'mnist-classifier' run")
    assert needle in message and "\n" not in message


def _finished_enhanced_mlp(folder: Path) -> Path:
    """A finished fashion-mlp-enhanced run with BatchNorm and Dropout 0.5 (train mode would be random)."""
    best = {"layers": 2, "units": 16, "lr": 0.1, "batch_size": 64, "l2": 0.0, "batchnorm": True, "dropout": 0.5,
            "activation": "elu"}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"experiment": "fashion-mlp-enhanced",
                                                    "config": {"dataset": "fashion-mnist"}}))
    (folder / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5, "best_config": best}))
    model = rebuild("fashion-mlp-enhanced", None, {"best_config": best}, SHAPE)
    torch.save(model.network.state_dict(), folder / "model.pt")
    return folder


def test_a_loaded_classifier_is_in_eval_mode_so_the_attack_is_deterministic(tmp_path):
    finished = read_finished_run(_finished_enhanced_mlp(tmp_path / "run"), tuple(PRODUCERS), ("model.pt",))
    model = load_classifier(finished, SHAPE).requires_grad_(False)
    assert not model.training
    x, y = torch.rand(30, 1, 28, 28), torch.randint(0, 10, (30,))
    assert torch.equal(fgsm.fgsm(model, x, y, 0.1), fgsm.fgsm(model, x, y, 0.1))


def test_epsilon_grids_include_0_and_state_the_source_ranges():
    cfg = fgsm.Config()
    assert fgsm.epsilon_grid(cfg, 28) == [round(0.025 * i, 4) for i in range(13)]
    assert fgsm.epsilon_grid(cfg, 32)[-1] == pytest.approx(16 / 255) and len(fgsm.epsilon_grid(cfg, 32)) == 17
    assert fgsm.epsilon_grid(fgsm.Config(epsilons=(0.2, 0.1)), 28) == [0.0, 0.1, 0.2]


def test_fgsm_from_a_finished_classifier_run_writes_both_figures_and_the_csv(image_data_dir, tmp_path):
    producer = run_quick("mnist-classifier", image_data_dir, tmp_path / "runs", "--dataset", "fashion-mnist")
    folder = run_quick("fgsm", image_data_dir, tmp_path / "runs", "--from-run", str(producer))
    metrics = json.loads((folder / "metrics.json").read_text())
    produced = json.loads((producer / "metrics.json").read_text())
    # the victim rebuilt in pixel space classifies exactly as the producer measured it
    assert metrics["fgsm_accuracy_0"] == metrics["clean_accuracy"] == produced["test_accuracy"]
    assert metrics["eps0_gap"] == 0.0
    assert metrics["pgd_accuracy_0.3"] <= metrics["fgsm_accuracy_0.3"] < metrics["clean_accuracy"]
    for name in ("fgsm_examples.png", "most_damaged.png", "accuracy_vs_epsilon.png", "accuracy_vs_epsilon.csv"):
        assert (folder / "figures" / name).is_file()
    rows = (folder / "figures" / "accuracy_vs_epsilon.csv").read_text().splitlines()
    assert rows[0] == "epsilon,epsilon_255,fgsm_accuracy,pgd_accuracy" and len(rows) == 1 + 13
    report = (folder / "report.md").read_text()
    assert "Accuracy against epsilon" in report and "0.3 (76.5/255): FGSM" in report
    assert json.loads((folder / "config.json").read_text())["config"]["dataset"] == "fashion-mnist"  # default
    assert "fashion-mnist" in report


def test_fgsm_without_from_run_trains_the_cnn_first_and_says_so(image_data_dir, tmp_path, capsys):
    folder = run_quick("fgsm", image_data_dir, tmp_path / "runs", "--dataset", "mnist")
    assert "no --from-run: training mnist-classifier's CNN on mnist" in capsys.readouterr().err
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["fgsm_accuracy_0"] == metrics["clean_accuracy"] == metrics["producer_test_accuracy"]
    # the victim is fgsm's input, not its product: only fgsm's own files land in its folder
    assert sorted(path.name for path in (folder / "figures").glob("*.png")) == [
        "accuracy_vs_epsilon.png", "fgsm_examples.png", "most_damaged.png"]
    assert not (folder / "model.pt").exists()


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/dlclassics-pwned"),))


def _classifier_run(tmp: Path, model_pt, record=None) -> Path:
    folder = tmp / "mnist-classifier-run"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(record or {"experiment": "mnist-classifier",
                                                               "config": {"dataset": "mnist"}}))
    (folder / "metrics.json").write_text(json.dumps({"test_accuracy": 0.9}))
    torch.save(model_pt, folder / "model.pt")
    return folder


BAD = [
    pytest.param(["--set", "epsilons=0.1,1.5"], None, 2, "option 'epsilons' must be <= 1.0", id="epsilon-above-1"),
    pytest.param(["--set", "epsilons=-0.1"], None, 2, "option 'epsilons' must be >= 0.0", id="epsilon-negative"),
    pytest.param(["--set", "figure_epsilon=0"], None, 2, "option 'figure_epsilon' must be > 0.0", id="figure-eps-0"),
    pytest.param([], {"w": Payload()}, 2, "holds a pickled Python object", id="model-pickle"),
    pytest.param([], {"0.weight": torch.zeros(3)}, 2, "does not fit the model of a 'mnist-classifier' run",
                 id="model-wrong-keys"),
    pytest.param(["--carve-test", "0.2"], {}, 2, "was run with --carve-test 0, this run with 0.2",
                 id="carve-test-differs"),
    pytest.param(["--from-run", "HE_INIT"], None, 2, "is a 'he-init' run; pass a mnist-classifier or",
                 id="not-a-classifier"),
]


@pytest.mark.parametrize("extra, model_pt, code, needle", BAD)
def test_bad_input_is_one_line_and_leaves_nothing(extra, model_pt, code, needle, image_data_dir, tmp_path, capsys):
    marker = Path("/tmp/dlclassics-pwned")
    marker.unlink(missing_ok=True)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    if model_pt is not None:
        extra = [*extra, "--from-run", str(_classifier_run(inputs, model_pt))]
    if "HE_INIT" in extra:
        extra[extra.index("HE_INIT")] = str(_classifier_run(inputs, {}, {"experiment": "he-init"}))
    before = file_digests(tmp_path)
    out = tmp_path / "runs"
    assert main(["run", "fgsm", "--quick", "--quiet", "--data-dir", str(image_data_dir), "--out", str(out),
                 *extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists() or not any(out.rglob("*"))
    assert file_digests(tmp_path) == before and not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_model_payload_never_runs(tmp_path):
    """The pickle refusal comes from torch.load(weights_only=True), not from a later check."""
    folder = _classifier_run(tmp_path, {})
    (folder / "model.pt").write_bytes(pickle.dumps({"w": Payload()}))
    finished = read_finished_run(folder, tuple(PRODUCERS), ("model.pt",))
    with pytest.raises(Exception, match="model.pt"):
        load_classifier(finished, SHAPE)
    assert not Path("/tmp/dlclassics-pwned").exists()
