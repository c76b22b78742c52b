"""The finite-difference verdict for a network of gallery layers: at a diverging gradient, a
central difference of the declared objective (the loss, and its L2 term when one is declared)
through the whole network says which side it agrees with.

Everything runs on copies, in float64: fresh layers of the same kinds and sizes (the class's
own forward, not one patched on the network's layer object), the parameters and batchnorm's
running statistics as the step found them, the step's mode (train or eval) and its dropout
masks. A probe that moves a relu-family input across 0, or a max-pool window to another
element, between theta + h and theta - h straddles a kink: the verdict is then "undecided".
"""

from __future__ import annotations

import copy
import math

import numpy as np
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.evidence import agreement

_H = 1e-6
_OWN = ("forward", "backward", "next_mask")  # attributes a test or a user may patch


def _fresh(layer):
    """The layer's kind and sizes with its class's own methods."""
    out = copy.copy(layer)
    for name in _OWN:
        out.__dict__.pop(name, None)
    return out


def _loss_at(sside, layers, params: dict, X, Y, loss) -> tuple[float, list]:
    """The float64 objective of the network at `params` (the loss and the declared L2 term),
    and its kink pattern (relu-family input signs and max-pool choices)."""
    net, masks = sside.net, sside.masks()
    buffers = {k: np.array(v, np.float64) for k, v in sside.buffers_before.items()}
    x, pattern = X, []
    for l, layer in enumerate(layers):
        prefix = f"{l}."
        both = {**params, **buffers}
        p = {k[len(prefix) :]: v for k, v in both.items() if k.startswith(prefix)}
        if l in masks:
            layer.next_mask = lambda shape, m=masks[l]: m
        if isinstance(layer, sq.Act) and layer.kind.partition(":")[0] in ("relu", "leaky_relu"):
            pattern.append(x > 0)
        x, cache = layer.forward(x, p, net.training)
        if isinstance(layer, sq.MaxPool2d):
            pattern.append(cache[1])
    canon = {f"layers.{k}": v for k, v in params.items()}  # the declared L2 term's, in float64
    return float(loss.forward(x, Y)[0]) + sside.l2_term(canon)[0], pattern


def layered_fd_verdict(sside, it, m) -> tuple[float, str]:
    """(the central difference at the failing element, which side agrees with it)."""
    layers = [_fresh(layer) for layer in sside.net.layers]
    params = {k.removeprefix("layers."): np.array(v, np.float64) for k, v in sside.before.items()}
    X = np.asarray(sside.X, np.float64)
    Y = sside.Y.astype(np.float64) if sside.Y.dtype.kind == "f" else sside.Y
    loss = type(sside.loss)(sside.loss.reduction, **sside.loss.options)
    theta = params[it.name.removeprefix("layers.")]
    index = tuple(m.index)
    old = theta[index]
    theta[index] = old + _H
    up, up_pattern = _loss_at(sside, layers, params, X, Y, loss)
    theta[index] = old - _H
    down, down_pattern = _loss_at(sside, layers, params, X, Y, loss)
    theta[index] = old
    if any(not np.array_equal(a, b) for a, b in zip(up_pattern, down_pattern)):
        return math.nan, "undecided: the probe straddles a relu kink or a max-pool tie"
    fd = (up - down) / (2 * _H)
    # as the MLP's verdict (findings._fd_verdict): truncation about h^2 |L'''|, rounding about
    # eps |L| / h in float64; a float32 gradient carries its own rounding of about 1e-7
    rel = 1e-7 if sside.dtype == np.float64 else 1e-4
    resolution = rel * max(abs(fd), abs(m.torch)) + 1e-9 * max(abs(up), 1.0)
    return fd, agreement(abs(m.scratch - fd) <= resolution, abs(m.torch - fd) <= resolution)


__all__ = ["layered_fd_verdict"]
