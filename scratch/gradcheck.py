"""Central finite differences: the third oracle when scratch and torch disagree.

    dL/dtheta_i  ~  (L(theta + eps e_i) - L(theta - eps e_i)) / (2 eps)

with truncation error O(eps^2 L''') and rounding error O(u L / eps), u the unit roundoff; both
are near 1e-10 relative in float64 with eps = 1e-6, which is why the check always runs in
float64, whatever dtype the network trains in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .losses import Loss
from .network import MLP

__all__ = ["loss_fn", "network_gradient", "numerical_gradient"]


def loss_fn(net: MLP, loss: Loss, X: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    """The loss (with its declared L2 term) at the network's current parameters, as a function
    of nothing."""

    def f() -> float:
        out, _ = net.forward(X)
        return loss.forward(out, y)[0] + loss.penalty(net.params)[0]  # a declared L2 term

    return f


def numerical_gradient(
    f: Callable[[], float],
    param: np.ndarray,
    indices: Iterable[tuple[int, ...]] | None = None,
    eps: float = 1e-6,
) -> np.ndarray:
    """Central differences of f() with respect to entries of `param`, perturbed in place.

    Returns an array shaped like param, NaN where an index was not asked for. Each entry is
    restored exactly after its two evaluations. Run it on a float64 network: in float32 the
    rounding error of eps = 1e-6 swamps the derivative.
    """
    grad = np.full(param.shape, np.nan)
    for idx in np.ndindex(param.shape) if indices is None else indices:
        idx = tuple(idx)
        old = param[idx]
        param[idx] = old + eps
        up = f()
        param[idx] = old - eps
        down = f()
        param[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


def _kink_signs(net: MLP, X: np.ndarray) -> list[np.ndarray]:
    """For every relu-family layer, which side of 0 each pre-activation lies on."""
    signs = []
    _, cache = net.forward(X)
    for layer, (_, z, _) in zip(net.layers, cache):
        if layer.activation.name.partition(":")[0] in ("relu", "leaky_relu"):
            signs.append(z > 0)
    return signs


def network_gradient(
    net: MLP,
    loss: Loss,
    X: np.ndarray,
    Y: np.ndarray,
    name: str,
    indices: Iterable[tuple[int, ...]] | None = None,
    eps: float = 1e-6,
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Finite-difference gradient of one parameter, aware of relu kinks.

    Central differences average the slopes on both sides of a kink, which is neither side's
    derivative. Where the probe theta + eps (or - eps) moves some relu pre-activation across 0,
    the one-sided difference on the other side is used; where both probes cross, the entry is
    NaN and its index is reported as a kink. Entries not in `indices` (default: all) are NaN.
    """
    param = net.params[name]
    f = loss_fn(net, loss, X, Y)
    grad = np.full(param.shape, np.nan)
    kinks = []
    base_signs = _kink_signs(net, X)
    L0 = f()
    for idx in np.ndindex(param.shape) if indices is None else indices:
        idx = tuple(idx)
        old = param[idx]
        param[idx] = old + eps
        up, up_same = f(), _same(base_signs, _kink_signs(net, X))
        param[idx] = old - eps
        down, down_same = f(), _same(base_signs, _kink_signs(net, X))
        param[idx] = old
        if up_same and down_same:
            grad[idx] = (up - down) / (2 * eps)
        elif down_same:
            grad[idx] = (L0 - down) / eps
        elif up_same:
            grad[idx] = (up - L0) / eps
        else:
            kinks.append(idx)
    return grad, kinks


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))
