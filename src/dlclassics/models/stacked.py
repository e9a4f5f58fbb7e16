"""K independent copies of a network in one: every layer holds K sets of weights and maps [K, B, in] to
[K, B, out] with one batched product.

Why: a small network's training step is too small to fill a GPU, whose time then goes to launching
kernels; K copies that share an architecture (the trials of a search, the seeds of a study) train in
about the time of one. Copy k never sees copy j's numbers: its weights, batch statistics and loss are its
own, so its gradient is the one it would get alone (`tests/test_stacked.py` checks this).

`stack` builds the stacked network from K ordinary `nn.Sequential` networks of one architecture (each
initialised as it would be alone), and `unstack` copies one copy's weights back into such a network.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class StackedLinear(nn.Module):
    """K linear layers applied in one batched product: x [K, B, in] -> [K, B, out]. Initialised as
    `nn.Linear` (uniform in +-1/sqrt(in)), each copy with its own draw. The weight is stored [K, in, out]
    (x @ W, no transpose in the product)."""

    def __init__(self, copies: int, inputs: int, outputs: int, bias: bool = True) -> None:
        super().__init__()
        bound = inputs ** -0.5
        self.weight = nn.Parameter(torch.empty(copies, inputs, outputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(copies, 1, outputs).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias, x, self.weight)

    @classmethod
    def from_layers(cls, layers: list[nn.Linear]) -> StackedLinear:
        first = layers[0]
        stacked = cls(len(layers), first.in_features, first.out_features, bias=first.bias is not None)
        with torch.no_grad():
            stacked.weight.copy_(torch.stack([layer.weight.t() for layer in layers]))
            if stacked.bias is not None:
                stacked.bias.copy_(torch.stack([layer.bias.unsqueeze(0) for layer in layers]))
        return stacked.to(first.weight.device)

    @torch.no_grad()
    def copy_into(self, index: int, layer: nn.Linear) -> None:
        layer.weight.copy_(self.weight[index].t())
        if self.bias is not None:
            layer.bias.copy_(self.bias[index, 0])


class StackedBatchNorm(nn.Module):
    """Batch norm over the batch dimension of [K, B, F], each copy with its own statistics (running
    averages as `nn.BatchNorm1d`: momentum 0.1, unbiased running variance), with an optional learned
    `scale` (initially 1) and `shift` (initially 0): `nn.BatchNorm1d`'s affine transform is both."""

    def __init__(self, copies: int, features: int, scale: bool = False, shift: bool = False,
                 momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.scale = nn.Parameter(torch.ones(copies, 1, features)) if scale else None
        self.shift = nn.Parameter(torch.zeros(copies, 1, features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(copies, 1, features))
        self.register_buffer("running_var", torch.ones(copies, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
            with torch.no_grad():
                n = x.shape[1]
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        normalised = (x - mean) / torch.sqrt(var + self.eps)
        if self.scale is not None:
            normalised = normalised * self.scale
        return normalised if self.shift is None else normalised + self.shift

    @classmethod
    def from_layers(cls, layers: list[nn.BatchNorm1d]) -> StackedBatchNorm:
        first = layers[0]
        stacked = cls(len(layers), first.num_features, scale=first.affine, shift=first.affine,
                      momentum=first.momentum, eps=first.eps).to(first.running_mean.device)
        with torch.no_grad():
            for index, layer in enumerate(layers):
                stacked.running_mean[index, 0] = layer.running_mean
                stacked.running_var[index, 0] = layer.running_var
                if first.affine:
                    stacked.scale[index, 0] = layer.weight
                    stacked.shift[index, 0] = layer.bias
        return stacked

    @torch.no_grad()
    def copy_into(self, index: int, layer: nn.BatchNorm1d) -> None:
        layer.running_mean.copy_(self.running_mean[index, 0])
        layer.running_var.copy_(self.running_var[index, 0])
        if self.scale is not None:
            layer.weight.copy_(self.scale[index, 0])
            layer.bias.copy_(self.shift[index, 0])


class StackedPReLU(nn.Module):
    """K PReLUs of one learned slope each (`nn.PReLU()`): x if x >= 0 else slope_k x."""

    def __init__(self, copies: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((copies, 1, 1), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, self.weight * x)

    @classmethod
    def from_layers(cls, layers: list[nn.PReLU]) -> StackedPReLU:
        if any(layer.num_parameters != 1 for layer in layers):
            raise TypeError("only PReLUs with one slope (nn.PReLU()) can be stacked")
        stacked = cls(len(layers)).to(layers[0].weight.device)
        with torch.no_grad():
            stacked.weight.copy_(torch.stack([layer.weight for layer in layers]).view(-1, 1, 1))
        return stacked

    @torch.no_grad()
    def copy_into(self, index: int, layer: nn.PReLU) -> None:
        layer.weight.copy_(self.weight[index].view(1))


STACKED = {nn.Linear: StackedLinear, nn.BatchNorm1d: StackedBatchNorm, nn.PReLU: StackedPReLU}


def stack(networks: list[nn.Sequential]) -> nn.Sequential:
    """One network computing all of `networks` (one architecture) at once on [K, B, in] inputs.

    Layers with weights become their stacked kind; layers without (activations, dropout) act element by
    element and are shared as they are. Dropout then draws one mask for all copies' [K, B, F] activations,
    from the global generator, so a copy's masks differ from the ones it would draw alone.
    """
    layers = []
    for position in zip(*networks, strict=True):
        kinds = {type(layer) for layer in position}
        if len(kinds) != 1:
            raise TypeError(f"cannot stack different layers at one position: {sorted(k.__name__ for k in kinds)}")
        kind = kinds.pop()
        if kind in STACKED:
            layers.append(STACKED[kind].from_layers(list(position)))
        elif any(True for _ in position[0].parameters()) or any(True for _ in position[0].buffers()):
            raise TypeError(f"cannot stack {kind.__name__}: it has weights and no stacked kind")
        else:
            layers.append(copy.deepcopy(position[0]))
    return nn.Sequential(*layers)


def unstack(stacked: nn.Sequential, index: int, network: nn.Sequential) -> nn.Sequential:
    """Copy the weights (and batch statistics) of copy `index` of `stacked` into `network`, which has the
    architecture the copies were stacked from; returns `network`."""
    for stacked_layer, layer in zip(stacked, network, strict=True):
        if hasattr(stacked_layer, "copy_into"):
            stacked_layer.copy_into(index, layer)
    return network


def weight_matrices(stacked: nn.Module) -> list[nn.Parameter]:
    """The stacked linear layers' weights: what L2 applies to (never biases, norm scales or slopes)."""
    return [module.weight for module in stacked.modules() if isinstance(module, StackedLinear)]
