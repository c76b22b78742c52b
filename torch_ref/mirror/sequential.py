"""The torch mirror of `scratch.sequential.Sequential`: an `nn.Sequential` of the matching modules,
and the weights (parameters and running statistics) copied both ways, bit for bit.

Dropout is mirrored by `GivenMask`, which multiplies by the mask the scratch side drew this step
(`x * mask / (1 - p)`): torch's own nn.Dropout draws from torch's generator, so the two sides
would never drop the same units.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from nn_parity.scratch import sequential as sq
from nn_parity.scratch.activations import get_activation
from nn_parity.torch_ref.mirror.model import torch_activation, torch_dtype
from torch import nn

__all__ = ["GivenMask", "TorchSequential", "scratch_to_torch", "torch_to_scratch"]


class GivenMask(nn.Module):
    """Dropout with a given keep-mask: `x * mask / (1 - p)` in training, x in eval. The mask is
    set before each forward (`self.mask`, a bool tensor of x's shape)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.mask is None or self.mask.shape != x.shape:
            got = None if self.mask is None else tuple(self.mask.shape)
            raise ValueError(f"GivenMask needs a mask of shape {tuple(x.shape)}, got {got}")
        # as the gallery: the mask in x's dtype, divided by (1 - p), then multiplied
        return x * (self.mask.to(x.dtype) / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _BatchNormAnyRank(nn.BatchNorm2d):
    """BatchNorm1d for (N, C) input, BatchNorm2d for (N, C, H, W): one module, one state dict."""

    def _check_input_dim(self, x):
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2-D or 4-D input, got {x.dim()}-D")


def _module_of(layer, dt: torch.dtype) -> nn.Module:
    if isinstance(layer, sq.Affine):
        return nn.Linear(layer.d, layer.h, dtype=dt)
    if isinstance(layer, sq.Conv2d):
        return nn.Conv2d(layer.c, layer.f, layer.k, layer.stride, layer.padding, dtype=dt)
    if isinstance(layer, sq.MaxPool2d):
        return nn.MaxPool2d(layer.k, layer.stride)
    if isinstance(layer, sq.BatchNorm):
        return _BatchNormAnyRank(layer.c, layer.eps, layer.momentum, dtype=dt)
    if isinstance(layer, sq.LayerNorm):
        return nn.LayerNorm(layer.d, layer.eps, dtype=dt)
    if isinstance(layer, sq.Dropout):
        return GivenMask(layer.p)
    if isinstance(layer, sq.Flatten):
        return nn.Flatten()
    if isinstance(layer, sq.Act):
        return torch_activation(get_activation(layer.kind))
    raise ValueError(f"no torch mirror for layer {layer!r}")


def TorchSequential(net: sq.Sequential) -> nn.Sequential:
    """The `nn.Sequential` of the modules matching `net`'s layers, at `net`'s weights and mode."""
    dt = torch_dtype(net.dtype)
    module = nn.Sequential(*(_module_of(layer, dt) for layer in net.layers))
    scratch_to_torch(net, module)
    return module.train(net.training)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and running statistics by state-dict name (num_batches_tracked left out: the
    scratch side has no use for it, momentum being set)."""
    named: dict[str, torch.Tensor] = dict(module.named_parameters())
    named.update((k, v) for k, v in module.named_buffers() if not k.endswith("num_batches_tracked"))
    return named


def _check_fit(ours: Mapping[str, np.ndarray], theirs: Mapping[str, torch.Tensor]) -> None:
    if set(ours) != set(theirs):
        raise ValueError(
            f"the networks do not match: scratch has {sorted(set(ours) - set(theirs))} that torch "
            f"has not, torch {sorted(set(theirs) - set(ours))} that scratch has not"
        )
    for k, v in ours.items():
        t = theirs[k]
        if tuple(t.shape) != v.shape or t.detach().numpy().dtype != v.dtype:
            raise ValueError(
                f"{k}: scratch {v.shape} {v.dtype}, torch {tuple(t.shape)} "
                f"{t.detach().numpy().dtype}"
            )


def scratch_to_torch(net: sq.Sequential, module: nn.Module) -> None:
    """Copy every parameter and running statistic of `net` into `module`, bit for bit."""
    ours, theirs = {**net.params, **net.buffers}, _tensors(module)
    _check_fit(ours, theirs)
    with torch.no_grad():
        for k, v in ours.items():
            theirs[k].copy_(torch.from_numpy(np.ascontiguousarray(v)))


def torch_to_scratch(module: nn.Module, net: sq.Sequential) -> sq.Sequential:
    """Copy every parameter and running statistic of `module` into `net`, bit for bit."""
    ours, theirs = {**net.params, **net.buffers}, _tensors(module)
    _check_fit(ours, theirs)
    for k, v in ours.items():
        np.copyto(v, theirs[k].detach().numpy())
    return net
