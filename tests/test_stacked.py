"""Trials trained at once are the trials trained alone: a stacked network computes each copy's outputs and
gradients, the per-copy SGD makes torch's SGD update for each copy, a stacked search trial ends where its
own training ends, and a batched search fills exactly its slots, failing only the trial that diverged."""

import functools

import optuna
import pytest
import sweep_toy
import torch

from dlclassics import sweep
from dlclassics.engine import classification_step, cosine_schedule, make_optimizer, seed_everything
from dlclassics.errors import RunError
from dlclassics.models.mlp import mlp
from dlclassics.models.stacked import StackedLinear, stack, unstack, weight_matrices
from dlclassics.training import mlp_search
from dlclassics.training.stacked import CopySGD, cosine_factor, fit_copies

STATES = optuna.trial.TrialState


def _networks(copies, **options):
    networks = []
    for seed in range(copies):
        torch.manual_seed(seed)
        networks.append(mlp(6, [5, 4], 3, **options))
    return networks


@pytest.mark.parametrize("options", [{}, {"batchnorm": True, "activation": "prelu"}, {"activation": "elu"}])
def test_a_stacked_network_computes_each_copy_and_its_gradient(options):
    networks = _networks(3, **options)
    stacked = stack(networks)
    x = torch.randn(3, 8, 6)
    out = stacked(x)
    out.pow(2).sum().backward()
    for k, network in enumerate(networks):
        alone = network(x[k])
        assert torch.allclose(out[k], alone, atol=1e-6)
        alone.pow(2).sum().backward()
        first = network[0].weight.grad.t()
        assert torch.allclose(stacked[0].weight.grad[k], first, atol=1e-5)
    stacked.eval()  # running statistics (batch norm) per copy, too
    for k, network in enumerate(networks):
        network.eval()
        assert torch.allclose(stacked(x)[k], network(x[k]), atol=1e-6)


def test_unstack_gives_back_each_copys_weights():
    networks = _networks(2, batchnorm=True, activation="prelu")
    stacked = stack(networks)
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(torch.randn_like(p))
    fresh = unstack(stacked, 1, _networks(1, batchnorm=True, activation="prelu")[0])
    x = torch.randn(4, 6)
    fresh.eval()
    stacked.eval()
    assert torch.allclose(fresh(x), stacked(x.expand(2, -1, -1))[1], atol=1e-6)


def test_only_one_architecture_stacks():
    torch.manual_seed(0)
    with pytest.raises(TypeError, match="different layers"):
        stack([mlp(6, [5], 3), mlp(6, [5], 3, batchnorm=True)])
    assert [tuple(w.shape) for w in weight_matrices(stack(_networks(2)))] == [(2, 6, 5), (2, 5, 4), (2, 4, 3)]
    assert isinstance(stack(_networks(2))[0], StackedLinear)


def test_copy_sgd_is_torch_sgd_for_each_copy():
    """Nesterov momentum, L2 on weight matrices only, a learning rate and L2 per copy, scaled per epoch."""
    lrs, l2s = [0.1, 0.02], [1e-3, 0.0]
    networks = _networks(2, batchnorm=True)
    stacked = stack(networks)
    optimizer = CopySGD(stacked, lrs, l2s, momentum=0.9, nesterov=True)
    references = [make_optimizer("sgd", n, lr, l2, 0.9) for n, lr, l2 in zip(networks, lrs, l2s)]
    x = torch.randn(2, 8, 6)
    for factor in (1.0, 1.0, 0.5):
        optimizer.zero_grad()
        stacked(x).sum().backward()
        optimizer.step(factor)
        for k, (network, reference) in enumerate(zip(networks, references)):
            for group in reference.param_groups:
                group["lr"] = lrs[k] * factor
            reference.zero_grad()
            network(x[k]).sum().backward()
            reference.step()
    for k, network in enumerate(networks):
        back = unstack(stacked, k, _networks(1, batchnorm=True)[0])
        for mine, theirs in zip(back.parameters(), network.parameters()):
            assert torch.allclose(mine, theirs, atol=5e-5)  # float rounding; a wrong rate or decay is ~1e-2


def test_cosine_factor_is_the_per_epoch_cosine_schedule():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = cosine_schedule(optimizer, 4)
    for epoch in range(1, 5):
        assert cosine_factor(epoch, 4) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        schedule.step()


def _tiny_data(rows=96):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(rows, 784, generator=generator) - 0.5, torch.randint(0, 10, (rows,), generator=generator)


def test_stacked_search_trials_end_where_their_own_trainings_end():
    cfg = mlp_search.FashionMlpConfig()
    x, y = _tiny_data()
    points = [{"layers": 2, "units": 16, "lr": lr, "batch_size": 32, "l2": l2, "epochs": 2}
              for lr, l2 in ((0.1, 1e-4), (0.02, 0.0), (0.05, 5e-4))]
    together, diverged = mlp_search.train_stacked(cfg, points, x, y, seeds=[3, 4, 5])
    assert diverged == [None, None, None]
    for seed, params, model in zip((3, 4, 5), points, together):
        alone, _ = mlp_search.train(cfg, params, x, y, seed, quiet=True)
        for mine, theirs in zip(model.parameters(), alone.parameters()):
            assert torch.allclose(mine, theirs, atol=1e-5)


def test_a_diverging_copy_is_reported_and_the_others_train_on():
    x, y = _tiny_data()
    networks = []
    generators = []
    for seed in range(2):
        generators.append(seed_everything(seed))
        networks.append(mlp(784, [16], 10))
    stacked = stack(networks)
    optimizer = CopySGD(stacked, [1e6, 0.05], [0.0, 0.0], momentum=0.9, nesterov=True)
    diverged = fit_copies(stacked, x * 1e3, y, optimizer=optimizer, epochs=3, batch_size=32, generators=generators,
                          read_every=2)
    assert diverged[0] is not None and "epoch" in diverged[0] and "step" in diverged[0]
    assert diverged[1] is None
    assert all(torch.isfinite(p[1]).all() for p in stacked.parameters())


# ---------------------------------------------------------------- the batched search

def _batched(tmp_path, size, fail_lr=None, interrupt_after=None):
    """A toy batched objective over a grid of (width, lr): records each batch's slots."""
    batches = []

    def suggest(trial):
        return {"width": trial.suggest_categorical("width", [1, 2, 3]), "lr": trial.suggest_categorical("lr", [1, 2])}

    def train(batch):
        if interrupt_after is not None and len(batches) == interrupt_after:
            raise KeyboardInterrupt
        batches.append(sorted(sweep.trial_index(t) for t, _ in batch))
        assert len({params["width"] for _, params in batch}) == 1  # one group per batch
        return [RunError("diverged") if p["lr"] == fail_lr else float(p["width"] * 10 + p["lr"]) for _, p in batch]

    objective = sweep.BatchedObjective(suggest, lambda p: f"width={p['width']}", train, size)
    search = sweep.Search(6, {"toy": "batched"}, grid={"width": (1, 2, 3), "lr": (1, 2)})
    return objective, search, sweep.StudyPlace("batched", tmp_path), batches


def test_trials_of_one_group_train_together_and_every_slot_fills_once(tmp_path):
    objective, search, place, batches = _batched(tmp_path, size=4)
    study = sweep.optimize(objective, search, place, quiet=True)
    assert sorted(len(b) for b in batches) == [2, 2, 2]  # three widths, two learning rates each
    assert sorted(i for b in batches for i in b) == list(range(6))
    complete = sweep.completed_trials(study)
    assert [sweep.trial_index(t) for t in complete] == list(range(6))
    assert all(t.value == t.params["width"] * 10 + t.params["lr"] for t in complete)


def test_a_batch_never_exceeds_its_size_and_size_one_is_the_plain_objective(tmp_path):
    objective, search, place, batches = _batched(tmp_path / "a", size=1)
    sweep.optimize(objective, search, place, quiet=True)
    assert all(len(b) == 1 for b in batches) and len(batches) == 6


def test_a_diverged_trial_fails_alone_in_its_batch(tmp_path):
    objective, search, place, _ = _batched(tmp_path, size=4, fail_lr=2)
    study = sweep.optimize(objective, search, place, quiet=True)
    failed = [t for t in study.get_trials() if t.state == STATES.FAIL]
    assert len(failed) == 3 and all(t.user_attrs[sweep.ERROR] == "diverged" for t in failed)
    assert len(sweep.completed_trials(study)) == 3


def test_an_interrupted_batch_runs_again_on_resume(tmp_path):
    objective, search, place, batches = _batched(tmp_path, size=4, interrupt_after=1)
    with pytest.raises(KeyboardInterrupt):
        sweep.optimize(objective, search, place, quiet=True)
    assert len(batches) == 1
    objective, search, place, again = _batched(tmp_path, size=4)
    study = sweep.optimize(objective, search, place, quiet=True)
    assert sorted(i for b in batches + again for i in b) == list(range(6))  # nothing lost, nothing twice
    assert [sweep.trial_index(t) for t in sweep.completed_trials(study)] == list(range(6))


def test_worker_processes_train_batches_and_fill_every_slot_once(tmp_path):
    payload = {"size": 4, "sleep": 0.5}
    study = sweep.optimize(sweep_toy.make_batched_objective(payload),
                           sweep.Search(12, {"toy": "batched"}, grid=sweep_toy.BATCHED_GRID),
                           sweep.StudyPlace("workers", tmp_path), workers=2,
                           worker_objective=sweep.WorkerObjective(sweep_toy.make_batched_objective, payload),
                           quiet=True)
    complete = sweep.completed_trials(study)
    assert [sweep.trial_index(t) for t in complete] == list(range(12))
    assert len({(t.params["width"], t.params["lr"]) for t in complete}) == 12  # no point trained twice
    assert all(t.value == t.params["width"] * 10 + t.params["lr"] for t in complete)
    assert max(t.user_attrs["trained_at_once"] for t in complete) > 1  # groups did train together
    assert not [t for t in study.get_trials() if t.state in (STATES.RUNNING, STATES.WAITING)]


def test_a_worker_killed_in_a_batch_leaves_its_slots_to_run_again(tmp_path, capsys):
    payload = {"size": 4, "sleep": 0.3, "die_at": 5, "marker": str(tmp_path / "killed")}
    study = sweep.optimize(sweep_toy.make_batched_objective(payload),
                           sweep.Search(12, {"toy": "batched"}, grid=sweep_toy.BATCHED_GRID),
                           sweep.StudyPlace("killed", tmp_path / "study"), workers=2,
                           worker_objective=sweep.WorkerObjective(sweep_toy.make_batched_objective, payload),
                           quiet=True)
    assert (tmp_path / "killed").exists()  # a worker really died by SIGKILL inside a batch
    complete = sweep.completed_trials(study)
    assert [sweep.trial_index(t) for t in complete] == list(range(12))  # nothing lost, nothing twice
    assert 5 in {sweep.trial_index(t) for t in study.get_trials() if t.state == STATES.FAIL}
    assert not [t for t in study.get_trials() if t.state in (STATES.RUNNING, STATES.WAITING)]
    assert "exit codes [-9]" in capsys.readouterr().err


def test_a_search_with_stacked_trials_matches_one_trial_at_a_time(tmp_path):
    """fashion-mlp's objective, stacking 4 trials or none: the same validation accuracies."""
    x, y = _tiny_data(200)
    data = {"x": x, "train_x": x[:150], "train_y": y[:150], "val_x": x[150:], "val_y": y[150:]}
    space = {"layers": (1,), "units": (8,), "lr": (0.02, 0.05), "batch_size": (32,), "l2": (0.0, 1e-4), "epochs": (2,)}
    values = {}
    for size in (1, 4):
        cfg = mlp_search.FashionMlpConfig(stack_trials=size)
        objective = mlp_search.objective(cfg, space, data)
        study = sweep.optimize(objective, sweep.Search(4, {"s": size}, grid=space),
                               sweep.StudyPlace(f"s{size}", tmp_path), quiet=True)
        values[size] = [t.value for t in sweep.completed_trials(study)]
        if size == 4:
            assert {t.user_attrs["trained_at_once"] for t in sweep.completed_trials(study)} == {4}
    assert values[1] == pytest.approx(values[4], abs=1e-6)


def test_the_search_groups_by_everything_but_lr_and_l2():
    group = mlp_search.trial_group
    base = {"layers": 2, "units": 128, "lr": 0.1, "batch_size": 64, "l2": 0.0, "epochs": 3}
    assert group(base) == group({**base, "lr": 0.02, "l2": 1e-4})
    assert group(base) != group({**base, "batch_size": 128}) != group({**base, "units": 256})
    assert mlp_search.trials_at_once(mlp_search.FashionMlpConfig(), torch.device("cpu")) == 1
    assert mlp_search.trials_at_once(mlp_search.FashionMlpConfig(stack_trials=3), torch.device("cpu")) == 3
    assert mlp_search.trials_at_once(mlp_search.FashionMlpConfig(), torch.device("cuda")) == mlp_search.GPU_STACK


def test_stacked_fit_uses_the_fit_step_mean():
    """The per-copy loss is the batch mean, as `classification_step`'s."""
    x, y = _tiny_data(32)
    torch.manual_seed(0)
    network = mlp(784, [8], 10)
    stacked = stack([network])
    logits = stacked(x.unsqueeze(0))[0]
    step = functools.partial(classification_step, label_smoothing=0.1)
    expected = step(network, (x, y))["loss"]
    got = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1, reduction="none").mean()
    assert torch.allclose(expected, got, atol=1e-6)
