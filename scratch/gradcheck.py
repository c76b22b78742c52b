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

__all__ = ["loss_fn", "numerical_gradient"]


def loss_fn(net: MLP, loss: Loss, X: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    """The loss at the network's current parameters, as a function of nothing."""

    def f() -> float:
        out, _ = net.forward(X)
        return loss.forward(out, y)[0]

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
