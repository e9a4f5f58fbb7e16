"""The from-scratch optimisers follow torch.optim when fed the same gradients."""

import pytest
import torch

from dlclassics.methods import optim


@pytest.mark.parametrize("name, reference", [
    ("sgd", lambda params, lr: torch.optim.SGD(params, lr=lr)),
    ("adam", lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)),
    ("adagrad", lambda params, lr: torch.optim.Adagrad(params, lr=lr, eps=1e-10)),
])
def test_optimizer_follows_torch_optim(name, reference):
    generator = torch.Generator().manual_seed(0)
    start = torch.rand(4, 3, 10, generator=generator, dtype=torch.float64)
    # Gradients of very different scales, including near-zero ones (where eps matters).
    gradients = torch.randn(200, 4, 3, 10, generator=generator, dtype=torch.float64)
    gradients *= torch.logspace(-6, 2, 10, dtype=torch.float64)
    ours, theirs = start.clone(), torch.nn.Parameter(start.clone())
    mine, torch_optimizer = optim.make(name, 0.01), reference([theirs], 0.01)
    for gradient in gradients:
        mine.step(ours, gradient)
        theirs.grad = gradient.clone()
        torch_optimizer.step()
        torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=0)
    assert not torch.equal(ours, start)


def test_optimizer_updates_a_view_in_place():
    """The study updates per-method slices of one tensor: a step must write through the view."""
    theta = torch.zeros(2, 3)
    optim.make("adam", 0.1).step(theta[1], torch.ones(3))
    assert torch.all(theta[0] == 0) and torch.all(theta[1] < 0)
