"""cifar-transfer: AlexNet with torchvision's state-dict format, weights checked before use; frozen means
frozen; the feature cache is reused and invalidated; the labels-vs-accuracy study runs on our own backbone."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import file_digests, run_quick

from dlclassics.cli import main
from dlclassics.config import resolve
from dlclassics.experiments import cifar_transfer
from dlclassics.models import alexnet
from dlclassics.training.classifiers import ImageShape, SmallCnn, rebuild

# torchvision.models.alexnet().state_dict(): names and shapes (torchvision is not a dependency of ours)
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,), "features.3.weight": (192, 64, 5, 5),
    "features.3.bias": (192,), "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,), "features.10.weight": (256, 256, 3, 3),
    "features.10.bias": (256,), "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,), "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,)}


def test_alexnet_has_torchvision_keys_shapes_and_parameter_count():
    with torch.device("meta"):
        model = alexnet.AlexNet()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == TORCHVISION_ALEXNET
    assert list(model.state_dict()) == list(TORCHVISION_ALEXNET)  # the same order too
    assert sum(p.numel() for p in model.parameters()) == 61_100_840  # the catalogue's count


def test_imagenet_input_resizes_grey_to_three_standardised_channels():
    layer = alexnet.ImageNetInput(64)
    out = layer(torch.full((2, 1, 28, 28), 0.5))
    assert out.shape == (2, 3, 64, 64)
    expected = (0.5 - torch.tensor(alexnet.IMAGENET_MEAN)) / torch.tensor(alexnet.IMAGENET_STD)
    assert torch.allclose(out[0, :, 10, 10], expected)
    assert list(alexnet.backbone(alexnet.AlexNet(), 64)[0].state_dict()) == []  # adds no keys


@pytest.fixture(scope="module")
def generated_weights(tmp_path_factory) -> Path:
    """A randomly initialised AlexNet saved exactly as torchvision saves its weights: a state dict."""
    path = tmp_path_factory.mktemp("weights") / alexnet.WEIGHTS_FILE
    torch.manual_seed(0)
    torch.save(alexnet.AlexNet().state_dict(), path)
    return path


def test_a_generated_torchvision_state_dict_loads_with_weights_only_and_transfers(image_data_dir, generated_weights,
                                                                                  tmp_path, capsys):
    folder = run_quick("cifar-transfer", image_data_dir, tmp_path / "runs", "--weights", str(generated_weights),
                       "--unverified", "--set", "modes=frozen", "--set", "labels=20", "--set", "limit=40")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["frozen_trainable_parameters"] == 4096 * 10 + 10  # Linear(4096, 10) only
    assert metrics["total_parameters"] == 61_100_840 - 4_097_000 + 40_970  # the 1000-class layer replaced
    assert metrics["backbone_unchanged"] is True
    report = (folder / "report.md").read_text()
    assert "accepted with --unverified" in report and "not comparable" in report
    assert "about" in capsys.readouterr().err  # the CPU time warning came first
    loaded = alexnet.load_alexnet(generated_weights, unverified=True)
    saved = torch.load(generated_weights, weights_only=True)
    assert torch.equal(loaded.classifier[6].weight, saved["classifier.6.weight"])


@pytest.mark.slow
def test_alexnet_fine_tunes_every_layer_through_the_cli(image_data_dir, generated_weights, tmp_path):
    folder = run_quick("cifar-transfer", image_data_dir, tmp_path / "runs", "--weights", str(generated_weights),
                       "--unverified", "--set", "modes=finetune", "--set", "labels=20", "--set", "limit=40",
                       "--set", "steps=2")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["finetune_trainable_parameters"] == metrics["total_parameters"] == 57_044_810
    assert metrics["backbone_unchanged"] is True and not list(folder.glob("features-*.pt"))


def test_frozen_mode_leaves_every_backbone_parameter_bit_identical():
    backbone, target = _small_problem()
    before = {k: v.clone() for k, v in backbone.features.state_dict().items()}
    chosen = torch.arange(60)
    model, _ = cifar_transfer.train_one("frozen", backbone, target, chosen, _config(), 0, torch.device("cpu"))
    after = model[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert cifar_transfer.trainable(model) == sum(p.numel() for p in model[1].parameters())
    assert not torch.equal(model[1].weight, _fresh_head(backbone, target))  # the new layer did learn
    # fine-tuning changes its own copy, never the backbone it started from
    tuned, _ = cifar_transfer.train_one("finetune", backbone, target, chosen, _config(), 0, torch.device("cpu"))
    assert not all(torch.equal(before[k], tuned[0].state_dict()[k]) for k in before)
    assert all(torch.equal(before[k], backbone.features.state_dict()[k]) for k in before)


def _config(**changes):
    return resolve(cifar_transfer.Config, {"steps": 20, "batch_size": 16, "lr": 1e-2, **changes})


def _fresh_head(backbone, target):
    torch.manual_seed(0)
    return torch.nn.Linear(backbone.size, target.classes).weight


def _small_problem():
    torch.manual_seed(1)
    shape = ImageShape(1, 28, 10)
    cfg = SmallCnn(channels=(4, 8), hidden=16)
    classifier = rebuild("mnist-classifier", cfg, {}, shape)
    backbone = cifar_transfer.Backbone("test CNN", "noise", classifier.backbone(), classifier.feature_size,
                                       lambda: rebuild("mnist-classifier", cfg, {}, shape).backbone(), 28)
    x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))
    target = cifar_transfer.Target(x[:60], y[:60], x[60:], y[60:], 10)
    target.train_features = cifar_transfer.compute_features(backbone.features, target.train_x, 32)
    target.test_features = cifar_transfer.compute_features(backbone.features, target.test_x, 32)
    return backbone, target


def _cache(folder, backbone, images, split="train"):
    return cifar_transfer.cached_features(folder, backbone, cifar_transfer.weights_digest(backbone), images, split, 32)


def test_feature_cache_is_reused_by_later_runs_and_invalidated_when_weights_change(tmp_path):
    backbone, target = _small_problem()
    first, second = tmp_path / "cifar-transfer" / "run-1", tmp_path / "cifar-transfer" / "run-2"
    first.mkdir(parents=True)
    second.mkdir()
    computed, how = _cache(first, backbone, target.train_x)
    assert how == "computed" and torch.equal(computed, target.train_features)
    again, how = _cache(second, backbone, target.train_x)
    assert how == "reused from run-1" and torch.equal(again, computed)
    (cache,) = second.glob("features-train-*.pt")
    assert os.stat(cache).st_ino == os.stat(next(first.glob("features-train-*.pt"))).st_ino  # linked, not copied
    assert _cache(second, backbone, target.train_x)[1] == "reused"

    with torch.no_grad():
        backbone.features[1].weight[0, 0, 0, 0] += 1.0  # one weight changes: another key, computed again
    changed, how = _cache(second, backbone, target.train_x)
    assert how == "computed" and not torch.equal(changed, computed)
    assert len(list(second.glob("features-train-*.pt"))) == 2
    other_images = _cache(second, backbone, target.train_x[:30])[1]
    assert other_images == "computed"
    backbone.resolution = 64  # a different resolution: another key as well
    assert _cache(second, backbone, target.train_x)[1] == "computed"


def test_a_damaged_cache_file_is_computed_again(tmp_path):
    backbone, target = _small_problem()
    features, _ = _cache(tmp_path, backbone, target.test_x, "test")
    (cache,) = tmp_path.glob("features-test-*.pt")
    cache.write_bytes(b"not a torch file")
    again, how = _cache(tmp_path, backbone, target.test_x, "test")
    assert how == "computed" and torch.equal(again, features)


def test_the_transfer_study_on_our_own_backbone_run(image_data_dir, tmp_path):
    runs = tmp_path / "runs"
    producer = run_quick("mnist-classifier", image_data_dir, runs, "--dataset", "fashion-mnist")
    folder = run_quick("cifar-transfer", image_data_dir, runs, "--backbone-run", str(producer))
    metrics = json.loads((folder / "metrics.json").read_text())
    for mode in cifar_transfer.MODES:
        assert 0.0 <= metrics[f"{mode}_accuracy_20"] <= 1.0 and f"{mode}_test_accuracy" in metrics
    hidden = json.loads((producer / "config.json").read_text())["config"]["hidden"]
    assert metrics["frozen_trainable_parameters"] == hidden * 10 + 10  # the CNN's hidden layer -> 10 classes
    summary = (folder / "figures" / "accuracy_vs_labels.csv").read_text().splitlines()
    assert summary[0].startswith("mode,labels,repeats,mean_accuracy") and len(summary) == 1 + 3 * 2
    assert (folder / "figures" / "accuracy_vs_labels.png").is_file()
    # a second run with the same backbone and data reuses the first one's features
    assert main(["run", "cifar-transfer", "--quick", "--quiet", "--data-dir", str(image_data_dir), "--out",
                 str(runs), "--backbone-run", str(producer)]) == 0
    (latest,) = [path for path in (runs / "cifar-transfer").iterdir() if path != folder]
    assert f"train reused from {folder.name}" in (latest / "report.md").read_text()
    assert json.loads((latest / "metrics.json").read_text())["frozen_accuracy_20"] == metrics["frozen_accuracy_20"]


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/dlclassics-pwned"),))


def _weights(tmp: Path, content) -> list[str]:
    path = tmp / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return ["--weights", str(path)]


BAD = [
    pytest.param(lambda t: [], 2, "cifar-transfer needs a pretrained backbone: download torchvision's ImageNet AlexNet "
                 f"weights from {alexnet.WEIGHTS_URL}", id="no-weights"),
    pytest.param(lambda t: ["--weights", str(t / "nowhere.pth")], 1, "nowhere.pth does not exist; download",
                 id="weights-missing"),
    pytest.param(lambda t: _weights(t, b"junk"), 1, "is not torchvision's alexnet-owt-7be5be79.pth (sha256",
                 id="wrong-hash"),
    pytest.param(lambda t: [*_weights(t, {"conv.weight": torch.zeros(1)}), "--unverified"], 1,
                 "does not have torchvision's AlexNet keys: missing features.0.weight, features.0.bias, "
                 "features.3.weight ...; unexpected conv.weight", id="wrong-keys"),
    pytest.param(lambda t: [*_weights(t, {k: torch.zeros(1) for k in TORCHVISION_ALEXNET}), "--unverified"], 1,
                 "features.0.weight has shape [1], torchvision's AlexNet has [64, 3, 11, 11]", id="wrong-shape"),
    pytest.param(lambda t: [*_weights(t, {"features.0.weight": Payload()}), "--unverified"], 1,
                 "holds a pickled Python object", id="pickled-object"),
    pytest.param(lambda t: [*_weights(t, [torch.zeros(1)]), "--unverified"], 1, "must hold a state dict",
                 id="not-a-state-dict"),
    pytest.param(lambda t: ["--set", "modes=frozen,freeze"], 2, "option 'modes' takes frozen, finetune, scratch; "
                 "got freeze", id="unknown-mode"),
    pytest.param(lambda t: ["--set", "labels=5000"], 2, "asks for 5,000 labelled examples, but the training split "
                 "has 120 images", id="too-many-labels"),
    pytest.param(lambda t: ["--set", "resolution=32"], 2, "option 'resolution' must be >= 63", id="resolution-small"),
    pytest.param(lambda t: ["--backbone-run", str(_he_init_run(t))], 2, "is a 'he-init' run; pass a mnist-classifier",
                 id="backbone-not-a-classifier"),
]


def _he_init_run(tmp: Path) -> Path:
    (tmp / "he").mkdir()
    (tmp / "he" / "config.json").write_text(json.dumps({"experiment": "he-init"}))
    (tmp / "he" / "model.pt").write_bytes(b"")
    return tmp / "he"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("build, code, needle", BAD)
def test_bad_input_is_one_line_and_leaves_nothing(build, code, needle, image_data_dir, tmp_path, capsys):
    marker = Path("/tmp/dlclassics-pwned")
    marker.unlink(missing_ok=True)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    extra = build(inputs)
    before = file_digests(tmp_path)
    out = tmp_path / "runs"
    assert main(["run", "cifar-transfer", "--quick", "--quiet", "--data-dir", str(image_data_dir), "--out", str(out),
                 *extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists() or not any(out.rglob("*"))
    assert file_digests(tmp_path) == before and not marker.exists()
