"""The dense (fully connected) layer followed by its activation.

Shapes: N batch; for one layer D is its fan-in and H its fan-out. W is stored (H, D), like
`nn.Linear.weight`, so parity checks need no transposes.

Forward:   z = x W^T + b            (N, H)
           a = f(z)                 (N, H)
Backward:  dz = da * f'(z)          (N, H)
           dW = dz^T x              (H, D)
           db = sum_n dz            (H,)
           dx = dz W                (N, D)

The layer owns no memory: W, b and their gradients are views into the network's flat parameter
and gradient buffers, so the optimiser updates every parameter in one vectorised step.
"""

from __future__ import annotations

import numpy as np

from .activations import Activation

__all__ = ["Dense"]


class Dense:
    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None,
        activation: Activation,
        dweight: np.ndarray,
        dbias: np.ndarray | None,
    ):
        self.weight = weight  # (H, D)
        self.bias = bias  # (H,) or None
        self.activation = activation
        self.dweight = dweight  # (H, D), written by backward
        self.dbias = dbias  # (H,) or None

    @property
    def fan_in(self) -> int:
        return self.weight.shape[1]

    @property
    def fan_out(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        """`a = f(x W^T + b)`; returns `(a, cache)` with cache `(x, z, a)`."""
        z = x @ self.weight.T  # (N, H)
        if self.bias is not None:
            z += self.bias
        a = self.activation.forward(z)  # (N, H)
        return a, (x, z, a)

    def backward(self, da: np.ndarray, cache: tuple, need_dx: bool = True) -> np.ndarray | None:
        """Writes dW and db into the gradient buffer; returns dx (None when not needed)."""
        x, z, a = cache
        dz = self.activation.backward(da, z, a)  # (N, H)
        np.matmul(dz.T, x, out=self.dweight)  # (H, D)
        if self.dbias is not None:
            dz.sum(axis=0, out=self.dbias)  # (H,)
        return dz @ self.weight if need_dx else None  # (N, D)

    def __repr__(self) -> str:
        bias = "" if self.bias is not None else ", bias=False"
        return f"Dense({self.fan_in} -> {self.fan_out}, {self.activation}{bias})"
