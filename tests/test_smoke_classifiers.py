"""Every classifier experiment runs end to end at --quick size on generated data."""

import json

from conftest import run_quick


def test_mnist_mlp_quick(image_data_dir, tmp_path):
    folder = run_quick("mnist-mlp", image_data_dir, tmp_path / "runs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.5  # the generated classes are easy: training must learn them
    for figure in ("loss", "view_classify", "confusion", "misclassified"):
        assert (folder / "figures" / f"{figure}.png").is_file()
    assert (folder / "figures" / "loss.csv").is_file()
