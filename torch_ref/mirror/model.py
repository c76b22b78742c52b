"""The PyTorch mirror: an `nn.Module` built from a scratch network's architecture.

`TorchMLP` is `nn.Linear` layers with the same activations, parameter names equal to the scratch
network's (`layers.0.weight`, ...), and a `forward_cache` that also returns every layer's
pre-activation z and activation a, so the lockstep can compare them layer by layer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch.activations import (
    Activation,
    Identity,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    get_activation,
)
from nn_parity.scratch.conventions import l2_coefficient, l2_names
from torch import nn

__all__ = [
    "DeclaredLoss",
    "TorchMLP",
    "torch_activation",
    "torch_dtype",
    "torch_loss",
    "torch_probabilities",
]

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def torch_dtype(dtype) -> torch.dtype:
    """The torch dtype matching a NumPy dtype or name (float64 or float32)."""
    return TORCH_DTYPES[scratch.resolve_dtype(dtype).name]


def torch_loss(
    loss: scratch.Loss, reduction: str | None = None, *, dtype=None, params=None
) -> nn.Module:
    """The torch loss module with the scratch loss's semantics: its reduction (unless another is
    given), class weights and label smoothing, and its declared conventions (scratch/
    conventions.py): the scale, the "samples" reduction, the clip, and, given the torch
    parameters by canonical name (`params`), the L2 term computed from them, so that autograd's
    gradient includes it.

    Class weights become a tensor of `dtype` (the network's; float64 when not given), since torch
    refuses weights of another dtype than the input's. With `reduction` given, the plain module.
    """
    base = _plain_loss(loss, reduction or loss._r, dtype)
    if reduction is not None or not (loss.declared or (params and loss.l2)):
        return base
    return DeclaredLoss(loss, base, params or {})


class DeclaredLoss(nn.Module):
    """torch's loss as the user declared it:

    scale * base(clip(out), y) [/ N for "samples"]  +  c * sum_{p in l2_on} (p * p).sum()
    """

    def __init__(self, loss: scratch.Loss, base: nn.Module, params: dict):
        super().__init__()
        self.loss, self.base = loss, base
        names = l2_names(loss.l2_on, list(params)) if loss.l2 else []
        self.l2_params = [params[n] for n in names]
        self.c = l2_coefficient(loss.l2, loss.l2_form, loss.l2_n) if loss.l2 else 0.0

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = getattr(self.loss, "clip", None)
        if eps is not None:  # the value clipped, the gradient passed through, as the code does
            out = out + (out.clamp(eps, 1 - eps) - out).detach()
        value = self.base(out, y)
        f = self.loss.factor(out.shape[0])
        if f != 1:
            value = value * f
        for p in self.l2_params:
            value = value + self.c * (p * p).sum()
        return value


def _plain_loss(loss: scratch.Loss, reduction: str, dtype) -> nn.Module:
    weight = getattr(loss, "weight", None)
    w = None if weight is None else torch.tensor(weight, dtype=torch_dtype(dtype or "float64"))
    if isinstance(loss, scratch.CrossEntropyLoss):
        return nn.CrossEntropyLoss(
            weight=w, reduction=reduction, label_smoothing=loss.label_smoothing
        )
    if isinstance(loss, scratch.NLLLoss):
        return nn.NLLLoss(weight=w, reduction=reduction)
    for cls, module in (
        (scratch.BCELoss, nn.BCELoss),
        (scratch.BCEWithLogitsLoss, nn.BCEWithLogitsLoss),
        (scratch.MSELoss, nn.MSELoss),
    ):
        if isinstance(loss, cls):
            return module(reduction=reduction)
    raise ValueError(f"no torch mirror for loss {loss!r}")


# What the network's output stands for, per loss: the torch twin of `Loss.probabilities`.
_PROBABILITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bce": lambda out: out,
    "bce-logits": torch.sigmoid,
    "ce": lambda out: torch.softmax(out, dim=1),
    "nll": torch.exp,
    "mse": lambda out: out,
}


def torch_probabilities(loss: scratch.Loss, out: torch.Tensor) -> torch.Tensor:
    """The probabilities (or, for regression, the predictions) the output stands for."""
    return _PROBABILITIES[loss.name](out)


def torch_activation(act: Activation) -> nn.Module:
    """The torch module computing the same function as a scratch activation."""
    if isinstance(act, LeakyReLU):
        return nn.LeakyReLU(act.slope)
    for cls, module in (
        (Sigmoid, nn.Sigmoid),
        (Tanh, nn.Tanh),
        (ReLU, nn.ReLU),
        (Identity, nn.Identity),
        # over the last axis, like the scratch side: the classes, dim 1 of the (N, C) output
        (Softmax, lambda: nn.Softmax(dim=-1)),
        (LogSoftmax, lambda: nn.LogSoftmax(dim=-1)),
    ):
        if isinstance(act, cls):
            return module()
    raise ValueError(f"no torch mirror for activation {act!r}")


class TorchMLP(nn.Module):
    def __init__(
        self,
        sizes: Sequence[int],
        activations: Sequence[str | Activation],
        *,
        bias: bool = True,
        dtype="float64",
    ):
        super().__init__()
        dt = torch_dtype(dtype)
        self.sizes = list(sizes)
        self.layers = nn.ModuleList(
            nn.Linear(d, h, bias=bias, dtype=dt) for d, h in itertools.pairwise(sizes)
        )
        self.acts = nn.ModuleList(torch_activation(get_activation(a)) for a in activations)
        if len(self.acts) != len(self.layers):
            raise ValueError(
                f"{len(self.layers)} layers need as many activations, got {activations}"
            )

    @classmethod
    def from_scratch(cls, net: scratch.MLP) -> TorchMLP:
        """A mirror of `net`: same architecture, dtype and bit-identical weights."""
        ref = cls(net.sizes, net.activations, bias=net.bias, dtype=net.dtype)
        # the same names by construction; torch checks them and the shapes, and copies exactly
        ref.load_state_dict({k: torch.from_numpy(p) for k, p in net.params.items()})
        return ref

    def to_scratch(self) -> scratch.MLP:
        """A scratch network with this module's architecture and weights."""
        return to_scratch(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear, act in zip(self.layers, self.acts):
            x = act(linear(x))
        return x

    def forward_cache(
        self, x: torch.Tensor, masks: Mapping[int, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The output and every layer's `(z, a)`, in one pass. `masks`: dropout as the user's
        code draws it, a mask by layer index multiplying that layer's activation (a is then
        the masked activation; autograd carries the mask into the backward)."""
        cache = []
        for l, (linear, act) in enumerate(zip(self.layers, self.acts)):
            z = linear(x)  # (N, H_l)
            x = act(z)  # (N, H_l)
            if masks and l in masks:
                x = x * masks[l]
            cache.append((z, x))
        return x, cache


def _scratch_activation(module: nn.Module) -> Activation:
    if isinstance(module, nn.LeakyReLU):
        return get_activation(f"leaky_relu:{module.negative_slope}")
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        # the scratch form runs over the last axis; on (N, C) that is dim 1 or -1, nothing else
        if module.dim not in (1, -1):
            raise ValueError(
                f"no scratch activation for {module!r}: the scratch {type(module).__name__} "
                "runs over the classes, the last axis (dim=1 or dim=-1 on (N, C) outputs)"
            )
        return get_activation("softmax" if isinstance(module, nn.Softmax) else "log_softmax")
    names = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu", nn.Identity: "identity"}
    if type(module) not in names:
        raise ValueError(f"no scratch activation for torch module {module!r}")
    return get_activation(names[type(module)])


_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}


def sequential_layers(module: nn.Module) -> list[tuple[nn.Linear, Activation]]:
    """Each `nn.Linear` of a `TorchMLP` or an `nn.Sequential`, with its activation.

    In a Sequential an activation module follows its Linear; a Linear followed by another Linear
    (or ending the Sequential) has the identity. Anything else is refused, naming its index.
    """
    if isinstance(module, TorchMLP):
        pairs = zip(module.layers, module.acts)  # layers holds nn.Linear only, by construction
        return [(cast(nn.Linear, lin), _scratch_activation(act)) for lin, act in pairs]
    if not isinstance(module, nn.Sequential):
        raise TypeError(
            f"expected a TorchMLP or an nn.Sequential of nn.Linear and activations, "
            f"got {type(module).__name__}"
        )
    layers: list[list] = []  # [index, Linear, Activation | None]
    for i, m in enumerate(module):
        what = f"nn.Sequential layer {i} ({type(m).__name__})"
        if isinstance(m, nn.Linear):
            layers.append([i, m, None])
            continue
        try:
            act = _scratch_activation(m)
        except ValueError as err:
            raise ValueError(
                f"{what} is not supported; expected nn.Linear or an activation with a scratch "
                f"twin: {err}"
            ) from None
        if not layers:
            raise ValueError(f"{what} comes before any nn.Linear; expected nn.Linear first")
        if layers[-1][2] is not None:
            raise ValueError(
                f"{what} is a second activation after the nn.Linear at {layers[-1][0]}; "
                "expected one activation per nn.Linear"
            )
        layers[-1][2] = act
    if not layers:
        raise ValueError("the nn.Sequential holds no nn.Linear; expected at least one")
    first = layers[0][1]
    for (i, prev, _), (j, lin, _) in itertools.pairwise(layers):
        if lin.in_features != prev.out_features:
            raise ValueError(
                f"nn.Sequential layer {j} (Linear) takes {lin.in_features} inputs, but layer "
                f"{i} gives {prev.out_features}"
            )
    for j, lin, _ in layers:
        if (lin.bias is None) != (first.bias is None):
            raise ValueError(
                f"nn.Sequential layer {j} (Linear) has bias={lin.bias is not None} unlike layer "
                f"{layers[0][0]}; expected a bias on every Linear or on none"
            )
        if lin.weight.dtype not in _NUMPY_DTYPES:
            raise TypeError(
                f"nn.Sequential layer {j} (Linear) holds {lin.weight.dtype}; "
                "expected torch.float64 or torch.float32"
            )
        if lin.weight.dtype != first.weight.dtype:
            raise TypeError(
                f"nn.Sequential layer {j} (Linear) holds {lin.weight.dtype} unlike layer "
                f"{layers[0][0]} ({first.weight.dtype}); expected one dtype throughout"
            )
    return [(lin, act or get_activation("identity")) for _, lin, act in layers]


@torch.no_grad()
def to_scratch(module: nn.Module) -> scratch.MLP:
    """A scratch network with the architecture, dtype and bit-identical weights of a `TorchMLP`
    or of any `nn.Sequential` of `nn.Linear` and Sigmoid, Tanh, ReLU, LeakyReLU or Identity."""
    layers = sequential_layers(module)
    first = layers[0][0]
    sizes = [first.in_features] + [lin.out_features for lin, _ in layers]
    net = scratch.MLP(
        sizes,
        [act for _, act in layers],
        bias=first.bias is not None,
        dtype=_NUMPY_DTYPES[first.weight.dtype],
    )
    state = {}
    for l, (lin, _) in enumerate(layers):
        state[f"layers.{l}.weight"] = lin.weight.detach().cpu().numpy()
        if lin.bias is not None:
            state[f"layers.{l}.bias"] = lin.bias.detach().cpu().numpy()
    net.load_state_dict(state)  # checks every name and shape as it copies
    return net
