"""Activation functions, forward and backward side by side.

Each activation maps the pre-activation z to a = f(z) and, going back, turns dL/da into
dL/dz = dL/da * f'(z). The backward formulas are written the way torch's autograd writes them
(in terms of the cached output where it does), so the two sides round alike.

    sigmoid     a = 1 / (1 + e^-z)          f'(z) = a (1 - a)
    tanh        a = tanh z                  f'(z) = 1 - a^2
    relu        a = max(z, 0)               f'(z) = 1 if a > 0 else 0  (0 at z = 0, like torch)
    leaky_relu  a = z if z > 0 else s z     f'(z) = 1 if z > 0 else s  (s at z = 0, like torch)
    identity    a = z                       f'(z) = 1

Two output activations act on a whole row (the last axis, C classes) rather than elementwise, so
their backward is a Jacobian-vector product, not da * f'(z). With m = max_c z_c and
s = sum_c e^(z_c - m) (the max shift keeps every exponent <= 0, so nothing overflows):

    softmax      a_c = e^(z_c - m) * (1 / s)      dz = a * (da - sum_c da_c a_c)
    log_softmax  a_c = (z_c - m) - ln s           dz = da - e^a * sum_c da_c

(the Jacobians are da_i/dz_j = a_i (delta_ij - a_j) and delta_ij - softmax_j). Both are written
as torch's CPU kernels write them: the softmax multiplies by the reciprocal of the sum, the
log-softmax subtracts m and ln s one after the other (in this order, so a large m cannot swallow
ln s), and the log-softmax backward uses e^a, torch's saved output, for softmax(z).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Identity",
    "LeakyReLU",
    "LogSoftmax",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "get_activation",
    "log_softmax",
    "sigmoid",
    "softmax",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z), computed without overflow for any z.

    exp(-|z|) lies in (0, 1], so neither branch can overflow; for z < 0 the algebraically equal
    e^z / (1 + e^z) is used. NaN stays NaN.
    """
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def softmax(z: np.ndarray) -> np.ndarray:
    """e^z / sum e^z over the last axis, shifted by the row's max so no exponent overflows."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # (N, C), each in (0, 1]
    return e * (1 / e.sum(axis=-1, keepdims=True))  # torch multiplies by the reciprocal


def log_softmax(z: np.ndarray) -> np.ndarray:
    """z - ln sum e^z over the last axis, as (z - m) - ln sum e^(z - m) with m the row's max."""
    shifted = z - z.max(axis=-1, keepdims=True)  # (N, C), each <= 0
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # (N, C)


class Activation:
    """Base class: `forward(z) -> a` and `backward(da, z, a) -> dz`."""

    name = "activation"

    def forward(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, da: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


class Sigmoid(Activation):
    name = "sigmoid"

    def forward(self, z):
        return sigmoid(z)

    def backward(self, da, z, a):
        return da * (1 - a) * a  # torch: grad * (1 - out) * out


class Tanh(Activation):
    name = "tanh"

    def forward(self, z):
        return np.tanh(z)

    def backward(self, da, z, a):
        return da * (1 - a * a)  # torch: grad * (1 - out * out)


class ReLU(Activation):
    name = "relu"

    def forward(self, z):
        return np.maximum(z, 0)

    def backward(self, da, z, a):
        return np.where(a > 0, da, 0)  # torch masks on the output: derivative 0 at z = 0


class LeakyReLU(Activation):
    def __init__(self, slope: float = 0.01):
        slope = float(slope)
        if not np.isfinite(slope) or slope < 0:
            raise ValueError(f"leaky_relu slope must be a finite number >= 0, got {slope!r}")
        self.slope = slope

    @property
    def name(self) -> str:  # type: ignore[override]
        return "leaky_relu" if self.slope == 0.01 else f"leaky_relu:{self.slope:g}"

    def forward(self, z):
        return np.where(z > 0, z, z * self.slope)

    def backward(self, da, z, a):
        return np.where(z > 0, da, da * self.slope)  # slope at z = 0, like torch


class Identity(Activation):
    name = "identity"

    def forward(self, z):
        return z

    def backward(self, da, z, a):
        return da


class Softmax(Activation):
    """Over the last axis: an output activation for class probabilities."""

    name = "softmax"

    def forward(self, z):
        return softmax(z)

    def backward(self, da, z, a):
        # torch: (grad - sum(grad * out)) * out, one sum per row
        return (da - (da * a).sum(axis=-1, keepdims=True)) * a  # (N, C)


class LogSoftmax(Activation):
    """Over the last axis: the log-probabilities NLLLoss takes."""

    name = "log_softmax"

    def forward(self, z):
        return log_softmax(z)

    def backward(self, da, z, a):
        # torch: grad - exp(out) * sum(grad); e^a is softmax(z) recovered from the output
        return da - np.exp(a) * da.sum(axis=-1, keepdims=True)  # (N, C)


ACTIVATIONS: dict[str, type[Activation]] = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "identity": Identity,
    "softmax": Softmax,
    "log_softmax": LogSoftmax,
}


def get_activation(spec: str | Activation) -> Activation:
    """An activation from its name; `leaky_relu:0.2` sets the negative slope."""
    if isinstance(spec, Activation):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"activation must be a name or an Activation, got {type(spec).__name__}")
    name, _, arg = spec.strip().partition(":")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {spec!r}; expected one of {', '.join(ACTIVATIONS)}")
    if not arg:
        return ACTIVATIONS[name]()
    if name != "leaky_relu":
        raise ValueError(f"activation {name!r} takes no parameter, got {spec!r}")
    try:
        slope = float(arg)
    except ValueError:
        raise ValueError(f"leaky_relu slope must be a number, got {arg!r} in {spec!r}") from None
    return LeakyReLU(slope)
