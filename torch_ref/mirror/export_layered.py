"""A network of gallery layers (scratch.sequential.Sequential) as standalone torch code: the text
of `class Net(nn.Sequential)` of the real modules, its state dict, and the probe values the
generated test checks it against. `export.export` writes them; this module only composes them.

The modules are torch's own, not the lockstep's mirror: nn.Dropout rather than the mirror's
GivenMask (dropout is the identity in evaluation mode, where the probe values are taken), and
nn.BatchNorm1d or nn.BatchNorm2d by the rank of the layer's input rather than one module for
both. Parameter and buffer names are the scratch network's (`{i}.weight`, `{i}.running_mean`),
which are the state-dict names of the nn.Sequential.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch import sequential as sq
from nn_parity.scratch.activations import LeakyReLU, get_activation
from nn_parity.torch_ref.mirror.model import torch_activation

__all__ = ["activation_code", "layered_expected", "layered_source", "layered_state", "module_code"]

LOSSES = ("ce", "bce-logits", "mse")  # losses the probe draws targets for, on a layered net


def activation_code(kind: str) -> str:
    """The constructor of the torch module the mirror uses for activation `kind`."""
    act = get_activation(kind)
    if isinstance(act, LeakyReLU):
        return f"nn.LeakyReLU(negative_slope={float(act.slope)!r})"
    module = torch_activation(act)
    dim = getattr(module, "dim", None)  # softmax, log_softmax: over the classes, said explicitly
    return f"nn.{type(module).__name__}({'' if dim is None else f'dim={dim}'})"


def module_code(layer, in_shape: tuple) -> str:
    """The constructor of the torch module computing `layer` on per-sample input `in_shape`."""
    if isinstance(layer, sq.Affine):
        return f"nn.Linear({layer.d}, {layer.h}, dtype=dtype)"
    if isinstance(layer, sq.Conv2d):
        return (
            f"nn.Conv2d({layer.c}, {layer.f}, kernel_size={layer.k}, stride={layer.stride}, "
            f"padding={layer.padding}, dtype=dtype)"
        )
    if isinstance(layer, sq.MaxPool2d):
        return f"nn.MaxPool2d(kernel_size={layer.k}, stride={layer.stride})"
    if isinstance(layer, sq.BatchNorm):
        kind = "BatchNorm1d" if len(in_shape) == 1 else "BatchNorm2d"
        return (
            f"nn.{kind}({layer.c}, eps={float(layer.eps)!r}, "
            f"momentum={float(layer.momentum)!r}, dtype=dtype)"
        )
    if isinstance(layer, sq.LayerNorm):
        return f"nn.LayerNorm({layer.d}, eps={float(layer.eps)!r}, dtype=dtype)"
    if isinstance(layer, sq.Dropout):
        return f"nn.Dropout(p={float(layer.p)!r})"
    if isinstance(layer, sq.Flatten):
        return "nn.Flatten()"
    if isinstance(layer, sq.Act):
        return activation_code(layer.kind)
    raise ValueError(f"export has no torch module for layer {layer!r}")


def _shape(shape: tuple) -> str:
    return "(N, " + ", ".join(map(str, shape)) + ")"


def layered_source(net: sq.Sequential, name: str) -> str:
    """The text of a standalone module file defining `class Net(nn.Sequential)` for `net`."""
    rows = "".join(
        f"            {module_code(layer, net.shapes[i])},"
        f"  # {i}: {_shape(net.shapes[i])} -> {_shape(net.shapes[i + 1])}\n"
        for i, layer in enumerate(net.layers)
    )
    return f'''"""A PyTorch module exported by nn-parity from a NumPy network:

    {net!r}

Parameter and buffer names are the NumPy network's: `{{i}}.weight`, `{{i}}.bias` of layer i, and
a batchnorm's `{{i}}.running_mean`, `{{i}}.running_var`, as trained. Load the exported weights with

    model = Net()
    model.load_state_dict(torch.load("{name}.pt", weights_only=True))
    model.eval()  # dropout off, batchnorm on its running statistics

`test_{name}.py` beside this file checks that the two still compute what the NumPy network did.
"""

import torch
from torch import nn


class Net(nn.Sequential):
    def __init__(self, dtype=torch.{net.dtype.name}):
        super().__init__(
{rows}        )
'''


def layered_state(net: sq.Sequential) -> dict[str, torch.Tensor]:
    """The state dict of the exported Net: parameters, running statistics, and each batchnorm's
    `num_batches_tracked` (0: it is read only when momentum is None, and the scratch batchnorm
    always has a momentum)."""
    state = {k: torch.from_numpy(v.copy()) for k, v in {**net.params, **net.buffers}.items()}
    for i, layer in enumerate(net.layers):
        if isinstance(layer, sq.BatchNorm):
            state[f"{i}.num_batches_tracked"] = torch.tensor(0)
    order = {k: n for n, k in enumerate(_state_names(net))}
    return dict(sorted(state.items(), key=lambda kv: order[kv[0]]))


def _state_names(net: sq.Sequential) -> list[str]:
    """State-dict names in nn.Sequential's order: per layer, parameters then buffers."""
    names = []
    for i, layer in enumerate(net.layers):
        names += [f"{i}.{p}" for p in layer.shapes]
        if isinstance(layer, sq.BatchNorm):
            names += [f"{i}.running_mean", f"{i}.running_var", f"{i}.num_batches_tracked"]
    return names


def layered_expected(
    net: sq.Sequential, loss: scratch.Loss, rng: np.random.Generator, rows: int
) -> dict[str, np.ndarray]:
    """A probe batch and what `net` computes on it in evaluation mode, on a copy (the network,
    its buffers, its dropout masks and generators stay untouched)."""
    probe = copy.deepcopy(net).eval()
    X = rng.standard_normal((rows, *net.input_shape)).astype(net.dtype)  # (N, ...)
    C = net.shapes[-1][0]
    if loss.name == "ce":
        y = rng.integers(0, C, rows).astype(np.int64)  # (N,) class indices
    else:
        y = rng.integers(0, 2, (rows, C)).astype(net.dtype)  # (N, C)
    out, cache = probe.forward(X)  # (N, C)
    value, loss_cache = loss.forward(out, y)
    grads = probe.backward(loss.backward(loss_cache), cache)
    record = {"X": X, "y": y, "output": out, "loss": np.asarray(value, dtype=net.dtype)}
    record.update({f"grad.{k}": g.copy() for k, g in grads.items()})
    return record
