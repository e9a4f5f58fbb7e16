"""The engine's speed-related pieces behave like the plain versions, and the engine benchmark runs.

No timings are asserted here (the machine is shared); `benchmarks/bench_engine.py` measures them.
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch
from torch import nn

from dlclassics.engine import (
    can_fuse,
    epoch_batches,
    make_optimizer,
    weight_decay_groups,
)
from dlclassics.models.mlp import mlp

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_engine.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_epoch_batches_are_one_permutation_in_order():
    x = torch.arange(10.0).unsqueeze(1)
    y = torch.arange(10)
    batches = list(epoch_batches((x, y), 4, torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(torch.cat([b[0] for b in batches]).squeeze(1), seen.float())  # rows stay paired
    assert torch.equal(seen, torch.randperm(10, generator=torch.Generator().manual_seed(0)))


def test_fused_optimizers_match_the_unfused_loop():
    for name, momentum in (("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0), ("adamw", 0.0)):
        torch.manual_seed(0)
        fused_model = mlp(200, [200], 3)  # a 40000-element weight: fused whatever the thread count
        plain_model = mlp(200, [200], 3)
        plain_model.load_state_dict(fused_model.state_dict())
        fused = make_optimizer(name, fused_model, 0.05, 1e-3, momentum)
        assert fused.param_groups[0]["fused"]
        options = {"lr": 0.05, "fused": False}
        if name == "sgd":
            options.update(momentum=momentum, nesterov=momentum > 0)
        plain = type(fused)(weight_decay_groups(plain_model, 1e-3), **options)
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            for a, b in zip(fused_model.parameters(), plain_model.parameters()):
                a.grad = torch.randn(a.shape, generator=generator)
                b.grad = a.grad.clone()
            fused.step()
            plain.step()
        for a, b in zip(fused_model.parameters(), plain_model.parameters()):
            assert torch.allclose(a, b, atol=1e-6), name


def test_fusing_skips_sparse_embeddings_and_small_models_on_several_threads():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert can_fuse(mlp(4, [3], 2))
        assert not can_fuse(nn.Sequential(nn.Embedding(5, 3, sparse=True), nn.Linear(3, 1)))
        assert can_fuse(nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 1)))
        torch.set_num_threads(2)
        assert not can_fuse(mlp(4, [3], 2))  # all tensors small: the unfused ops stay on one thread
        assert can_fuse(mlp(784, [1024], 10))
    finally:
        torch.set_num_threads(threads)


def test_training_flops_counts_forward_weight_and_input_gradients():
    bench = _load_bench()
    # One layer: forward + weight gradient only (the data needs no gradient).
    assert bench.training_flops([5, 3], 2) == 2 * (2 * 2 * 5 * 3)
    # Two layers: the second layer's input gradient as well.
    assert bench.training_flops([5, 3, 4], 2) == 2 * (2 * 2 * 5 * 3 + 2 * 2 * 3 * 4) + 2 * 2 * 3 * 4


def test_benchmark_quick_run_writes_every_number(tmp_path):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    results = bench.main(["--quick", "--synthetic", "--threads", "1", "--batch-sizes", "16", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["real_data"] is False and "b" not in saved  # (b) needs the real data
    row = saved["a"]["batches"]["16"]
    assert row["ratio"] > 0 and set(row["ours_breakdown_us"]) == {"data", "forward", "backward", "optimizer",
                                                                   "other", "total", "best_total"}
    assert 0 < saved["c"]["fraction_of_peak"] and saved["c"]["flops_per_step"] == bench.training_flops(
        [784, 1024, 1024, 10], 256)
    assert results["threads"] == saved["threads"]
