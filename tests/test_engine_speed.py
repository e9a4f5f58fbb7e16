"""The engine's speed-related pieces behave like the plain versions, and the engine benchmark runs.

No timings are asserted here (the machine is shared); `benchmarks/bench_engine.py` measures them. The GPU
accelerations are checked as far as a CPU allows: which are chosen where, the captured step's logic
(through torch.compile's "aot_eager" backend, which traces the step as the real capture does but
compiles nothing), its eager fallback, and that the CPU path stays the plain one.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dlclassics import engine
from dlclassics.engine import (
    Acceleration,
    can_fuse,
    choose_acceleration,
    epoch_batches,
    fit,
    flat_parameters,
    make_optimizer,
    seed_everything,
    use_channels_last,
    weight_decay_groups,
)
from dlclassics.errors import RunError
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


def _conv_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_accelerations_are_chosen_for_cuda_and_left_off_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cpu, cuda, net, long = torch.device("cpu"), torch.device("cuda"), mlp(4, [3], 2), engine.CAPTURE_MIN_STEPS

    def chosen(model, device, steps=long, **options):
        return choose_acceleration(model, device, steps=steps, **options)

    assert chosen(_conv_net(), cpu) == Acceleration(capture=False, autocast=None, channels_last=False)
    assert chosen(_conv_net(), cpu, precision="bf16", channels_last=True) == Acceleration(False, None, False)
    assert chosen(net, cpu, capture=True).capture  # compiled on the CPU too, when asked for
    assert chosen(_conv_net(), cuda) == Acceleration(True, torch.bfloat16, True)
    assert chosen(net, cuda) == Acceleration(True, None, False)  # an MLP keeps float32
    assert chosen(net, cuda, steps=long - 1) == Acceleration(False, None, False)  # too short to repay compiling
    assert chosen(net, cuda, steps=10, capture=True).capture
    assert chosen(net, cuda, precision="bf16", channels_last=True) == Acceleration(True, torch.bfloat16, True)
    assert chosen(_conv_net(), cuda, capture=False, precision="fp32",
                  channels_last=False) == Acceleration(False, None, False)
    assert not chosen(net, cuda, capture=True, processes=2).capture  # never under DDP
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert chosen(_conv_net(), cuda).autocast is None  # no native bf16: float32
    with pytest.raises(RunError, match="unknown precision 'fp16'"):
        chosen(net, cpu, precision="fp16")


def test_the_runs_choices_decide_what_a_fit_leaves_to_auto_and_end_with_the_run(monkeypatch):
    """`dlclassics run --capture off --precision fp32 --channels-last off` is engine.accelerations: every
    fit of the run (and of the processes it starts, through the environment) takes them where its caller
    left "auto"; an explicit setting of the caller still wins; afterwards the previous choices are back."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.delenv(engine.ACCELERATION_ENV["capture"], raising=False)
    cuda, long = torch.device("cuda"), engine.CAPTURE_MIN_STEPS
    with engine.accelerations(capture="off", precision="fp32", channels_last="off"):
        assert os.environ[engine.ACCELERATION_ENV["capture"]] == "off"  # what spawned workers inherit
        assert choose_acceleration(_conv_net(), cuda, steps=long) == Acceleration(False, None, False)
        assert choose_acceleration(_conv_net(), cuda, steps=long, capture=True, precision="bf16",
                                   channels_last=True) == Acceleration(True, torch.bfloat16, True)
    assert engine.ACCELERATION_ENV["capture"] not in os.environ
    assert choose_acceleration(_conv_net(), cuda, steps=long) == Acceleration(True, torch.bfloat16, True)
    with engine.accelerations(capture="on"):
        assert choose_acceleration(mlp(4, [3], 2), cuda, steps=10).capture  # even a short fit
    monkeypatch.setenv(engine.ACCELERATION_ENV["precision"], "fp16")
    with pytest.raises(RunError, match="DLCLASSICS_PRECISION='fp16' is not a choice of --precision"):
        choose_acceleration(mlp(4, [3], 2), cuda, steps=10)


def _fit_small(epochs=2, **options):
    """A small classifier on 200 rows in batches of 32: six full batches and a last one of 8 per epoch."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 20, generator=generator)
    y = (x[:, :3].sum(1) > 0).long()
    shuffle = seed_everything(3)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = make_optimizer("sgd", model, 0.1, 1e-3, momentum=0.9)
    result = fit(model, (x, y), optimizer=optimizer, epochs=epochs, batch_size=32, generator=shuffle, quiet=True,
                 **options)
    return result, flat_parameters(model)


def _never_compile(forward):
    raise AssertionError("the step was compiled")


def test_the_cpu_step_is_eager_and_in_float32_whatever_the_gpu_options(monkeypatch):
    monkeypatch.setattr(engine, "compile_step", _never_compile)
    plain, weights = _fit_small()
    for options in ({"capture": False}, {"precision": "bf16", "channels_last": True}):
        result, same_weights = _fit_small(**options)
        assert result.history == plain.history and torch.equal(same_weights, weights)
    model = _conv_net()
    optimizer = make_optimizer("sgd", model, 0.1, momentum=0.9)
    fit(model, (torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))), optimizer=optimizer, epochs=1, batch_size=4,
        generator=torch.Generator(), quiet=True, channels_last=True)
    assert model[0].weight.is_contiguous()  # the CPU keeps the layout it was given


def test_a_captured_step_takes_the_full_batches_and_matches_the_eager_numbers(monkeypatch):
    compiled_calls = []

    def trace_only(forward):
        compiled = torch.compile(forward, backend="aot_eager", dynamic=False)

        def call(*batch):
            compiled_calls.append(len(batch[0]))
            return compiled(*batch)
        return call

    monkeypatch.setattr(engine, "compile_step", trace_only)
    captured, captured_weights = _fit_small(capture=True, read_every=4)
    eager, eager_weights = _fit_small(capture=False)
    assert compiled_calls == [32] * 12  # six full batches an epoch; the last one, of 8 rows, ran eagerly
    for row, reference in zip(captured.history, eager.history, strict=True):
        assert row == pytest.approx(reference, rel=1e-6)
    assert torch.allclose(captured_weights, eager_weights, rtol=1e-5, atol=1e-6)


def test_a_step_that_cannot_be_captured_runs_eagerly_after_one_note(monkeypatch, capsys):
    def failing(forward):
        def call(*batch):
            raise RuntimeError("no C compiler\nmore detail")
        return call

    monkeypatch.setattr(engine, "compile_step", failing)
    engine.note_once.cache_clear()
    eager, eager_weights = _fit_small(capture=False)
    for _ in range(2):
        fallen_back, weights = _fit_small(capture=True)
        assert fallen_back.history == eager.history and torch.equal(weights, eager_weights)
    assert capsys.readouterr().err == ("dlclassics: capturing the training step failed (RuntimeError: no C compiler); "
                                       "it runs eagerly\n")  # once per process, not once per training


@pytest.mark.slow
def test_a_step_compiled_for_real_on_the_cpu_matches_the_eager_numbers():
    """torch.compile's default backend (C++ code generated and compiled: tens of seconds on 2 cores)."""
    captured, captured_weights = _fit_small(capture=True)
    eager, eager_weights = _fit_small(capture=False)
    for row, reference in zip(captured.history, eager.history, strict=True):
        assert row == pytest.approx(reference, rel=1e-5)
    assert torch.allclose(captured_weights, eager_weights, rtol=1e-4, atol=1e-5)


def test_channels_last_moves_the_weights_and_their_optimizer_state():
    model = _conv_net()
    optimizer = make_optimizer("sgd", model, 0.1, momentum=0.9)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()  # momentum buffers, in the contiguous layout
    use_channels_last(model, optimizer)
    weight = model[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert optimizer.state[weight]["momentum_buffer"].stride() == weight.stride()
    assert optimizer.param_groups[0]["params"][0] is weight  # the optimizer still holds the same parameters
