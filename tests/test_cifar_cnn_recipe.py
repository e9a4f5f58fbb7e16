"""The tuned cifar-cnn recipe's fast-training pieces on tiny generated data: the moving average of the weights
used for evaluation, the batch-norm biases' own learning rate, and multi-crop test-time augmentation."""

import dataclasses

import pytest
import torch
from torch import nn

from dlclassics.engine import WeightAverage, fit, sgd, weight_decay_groups
from dlclassics.experiments import cifar_cnn
from dlclassics.models.flip_average import CropAverage, FlipAverage, translate


def _scalar_net() -> nn.Sequential:
    """One weight and a batch norm: enough to see how parameters and running statistics are averaged."""
    return nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))


# ---------------------------------------------------------------- the moving average of the weights

def test_the_average_is_the_running_mean_then_the_exponential_average():
    """decay 0.75: weights 1, 1/2, 1/3, 1/4 (the mean of the first four), then 1/4 for every later update."""
    averaged = WeightAverage(_scalar_net(), decay=0.75)
    weight, average = averaged.model[0].weight, averaged.average[0].weight
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        with torch.no_grad():
            weight.fill_(value)
        averaged.update()
        if value == 4.0:
            assert average.item() == pytest.approx(2.5)
    closed_form = 2.5 * 0.75 ** 2 + 0.25 * (0.75 * 5.0 + 6.0)
    assert average.item() == pytest.approx(closed_form) and closed_form == pytest.approx(3.84375)


def test_batch_norm_statistics_are_averaged_and_its_step_count_copied():
    averaged = WeightAverage(_scalar_net(), decay=0.5)
    norm, average_norm = averaged.model[1], averaged.average[1]
    for mean in (2.0, 4.0, 8.0):
        norm.running_mean.fill_(mean)
        norm.num_batches_tracked += 1
        averaged.update()
    assert average_norm.running_mean.item() == pytest.approx(0.5 * 3.0 + 0.5 * 8.0)  # mean of 2, 4; then halves
    assert average_norm.num_batches_tracked.item() == 3


def test_recomputed_batch_norm_statistics_are_those_of_the_averaged_weights():
    """After a few steps the lerped statistics are not the averaged weights' own; recomputed over batches of 8
    they are the mean of the batch means and variances of the average's pre-norm activations, measured with
    dropout off. The modes and the momentum are restored, and the trained model's statistics left alone."""
    torch.manual_seed(0)
    averaged = WeightAverage(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4), nn.ReLU(),
                                           nn.Linear(4, 2)), decay=0.5)
    optimizer = sgd(averaged, lr=0.5, momentum=0.9, nesterov=False, weight_decay=0.0)
    averaged.follow(optimizer)
    inputs, targets = torch.randn(32, 3) * 3 + 1, torch.randint(0, 2, (32,))
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(averaged(inputs), targets).backward()
        optimizer.step()
    norm, trained_norm = averaged.average[2], averaged.model[2]
    with torch.no_grad():
        pre_norm = averaged.average[0](inputs).split(8)
    batch_means = torch.stack([batch.mean(0) for batch in pre_norm]).mean(0)
    batch_variances = torch.stack([batch.var(0) for batch in pre_norm]).mean(0)
    assert not torch.allclose(norm.running_mean, batch_means, atol=1e-3)
    trained_statistics = trained_norm.running_mean.clone()

    averaged.recompute_batch_norm(inputs, batch_size=8)
    assert torch.allclose(norm.running_mean, batch_means, atol=1e-5)
    assert torch.allclose(norm.running_var, batch_variances, atol=1e-5)
    assert norm.momentum == 0.1 and all(module.training for module in averaged.modules())
    assert torch.equal(trained_norm.running_mean, trained_statistics)


def test_training_runs_the_model_and_evaluation_the_average_and_only_the_model_trains():
    torch.manual_seed(0)
    averaged = WeightAverage(nn.Linear(3, 2), decay=0.9)
    optimizer = sgd(averaged, lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.0)
    averaged.follow(optimizer)
    inputs = torch.randn(8, 3)
    for _ in range(3):
        optimizer.zero_grad()
        averaged(inputs).square().mean().backward()
        optimizer.step()
    assert averaged.updates == 3  # one update per optimizer step
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in averaged.model.parameters()}
    assert not torch.equal(averaged.model.weight, averaged.average.weight)
    assert torch.equal(averaged(inputs), averaged.model(inputs))
    averaged.eval()
    assert torch.equal(averaged(inputs), averaged.average(inputs))


def test_a_resumed_fit_averages_as_the_uninterrupted_one(tmp_path):
    """The average and its update count are in the model's state dict, which `fit` checkpoints: stopped
    during epoch 3 of 4 and resumed from the checkpoint, the averaged weights and the batch-norm statistics
    recomputed at each epoch's end are those of a fit straight through, to the last bit."""
    data = [torch.randn(24, 3), torch.randint(0, 2, (24,))]

    def train(checkpoint, stop_at: int | None = None) -> WeightAverage:
        torch.manual_seed(0)
        averaged = WeightAverage(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), decay=0.8)
        optimizer = sgd(averaged, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        averaged.follow(optimizer)

        def recompute(model: WeightAverage, epoch: int) -> dict:
            model.recompute_batch_norm(data[0], batch_size=8)
            return {}

        def stop(model: nn.Module, epoch: int, row: dict) -> None:
            if epoch == stop_at:
                raise KeyboardInterrupt

        fit(averaged, data, optimizer=optimizer, epochs=4, batch_size=8, generator=torch.Generator().manual_seed(1),
            evaluate=recompute, on_epoch_end=stop, checkpoint=checkpoint, resume=True, quiet=True)
        return averaged

    straight = train(tmp_path / "straight.pt")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed.pt", stop_at=3)
    resumed = train(tmp_path / "resumed.pt")
    assert resumed.updates == straight.updates == 12
    assert not torch.equal(straight.average[0].weight, straight.model[0].weight)
    for name, tensor in straight.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(resumed.state_dict()[name], tensor), name


# ---------------------------------------------------------------- the batch-norm biases' learning rate

def test_batch_norm_biases_get_the_scaled_rate_and_no_decay_and_keep_it_through_the_schedule():
    network = cifar_cnn.fast_cnn((4, 8, 8), classes=10)
    optimizer = sgd(network, lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4, norm_bias_lr_scale=64.0)
    weights, plain, biases = optimizer.param_groups
    norm_biases = [m.bias for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [id(p) for p in biases["params"]] == [id(p) for p in norm_biases] and len(norm_biases) == 6
    assert biases["lr"] == pytest.approx(64 * 0.2) and biases["weight_decay"] == 0.0
    assert weights["lr"] == plain["lr"] == 0.2 and weights["weight_decay"] == 5e-4 and plain["weight_decay"] == 0
    assert not {id(p) for p in norm_biases} & {id(p) for p in weights["params"] + plain["params"]}
    scheduler = cifar_cnn.warmup_decay(optimizer, epochs=4, warmup=1)
    optimizer.step()
    scheduler.step()
    assert biases["lr"] / weights["lr"] == pytest.approx(64.0)


def test_without_a_scale_the_groups_are_the_plain_two():
    network = cifar_cnn.fast_cnn((4, 8, 8), classes=10)
    assert len(sgd(network, 0.2, 0.9, True, 5e-4).param_groups) == 2
    assert len(weight_decay_groups(network, 5e-4, norm_bias_lr=1.0)) == 3


# ---------------------------------------------------------------- multi-crop test-time augmentation

def test_translate_moves_the_image_and_fills_with_zeros():
    images = torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4)
    down = translate(images, 1, 0)
    assert torch.equal(down[..., 1:, :], images[..., :-1, :]) and not down[..., 0, :].any()
    left = translate(images, 0, -1)
    assert torch.equal(left[..., :, :-1], images[..., :, 1:]) and not left[..., :, -1].any()


def test_crop_average_is_mirror_invariant_and_averages_ten_views_with_the_centre_weighted_half():
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    seen = []
    linear.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    crops = CropAverage(linear)
    images = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        logits = crops(images)
        assert torch.allclose(logits, crops(images.flip(-1)), atol=1e-5)
        views = seen[:10]
        assert len(views) == 10 and all(view.shape == images.shape for view in views)
        expected = [images, *(translate(images, d, r) for d, r in ((-1, 0), (1, 0), (0, -1), (0, 1)))]
        for view in expected:  # each view and its mirror, once
            assert sum(torch.equal(seen_view, view) for seen_view in views) == 1
            assert sum(torch.equal(seen_view, view.flip(-1)) for seen_view in views) == 1
        # A linear model's mean logits are its logits of the weighted mean view: the weights are 1/2 and 1/8s.
        mean_view = 0.5 * images + sum(translate(images, d, r) for d, r in ((-1, 0), (1, 0), (0, -1), (0, 1))) / 8
        assert torch.allclose(logits, FlipAverage(linear)(mean_view), atol=1e-5)


# ---------------------------------------------------------------- the recipe's options

def test_the_tuned_recipe_uses_the_pieces_and_the_seed_recipe_none():
    tuned = cifar_cnn.Config()
    seed = dataclasses.replace(tuned, **cifar_cnn.RECIPES["seed"])
    assert tuned.ema_epochs > 0 and tuned.norm_bias_lr_scale > 1 and tuned.tta != "none"
    assert seed.ema_epochs == 0 and seed.norm_bias_lr_scale == 1 and seed.tta == "none"
    network = nn.Linear(2, 2)
    assert cifar_cnn.averaged(network, seed, 1000) is network
    averaged = cifar_cnn.averaged(network, dataclasses.replace(tuned, ema_epochs=2.0, batch_size=100), 1000)
    assert isinstance(averaged, WeightAverage) and averaged.decay == pytest.approx(1 - 1 / 20)
