"""Optimisers: full-batch gradient descent.

    SGD   theta <- theta - lr * dL/dtheta      (torch.optim.SGD with no momentum)

An optimiser updates the network's flat parameter buffer from its flat gradient buffer in one
vectorised step. `state_dict()` returns the state it carries between steps (none for plain SGD),
so that a stateful optimiser's buffers can be compared with torch's as well.
"""

from __future__ import annotations

import math

import numpy as np

from .network import MLP

__all__ = ["SGD", "check_lr"]


def check_lr(lr) -> float:
    """A learning rate must be a finite number > 0."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating, np.integer)):
        raise TypeError(f"learning rate must be a number, got {type(lr).__name__} {lr!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a finite number > 0, got {lr!r}")
    return float(lr)


class SGD:
    def __init__(self, net: MLP, lr: float):
        self.net = net
        self.lr = check_lr(lr)

    def step(self) -> None:
        """theta <- theta - lr * grad, for every parameter at once."""
        net = self.net
        net.flat_params -= self.lr * net.flat_grads

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr:g})"
