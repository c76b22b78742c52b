"""Helpers shared by the tests: seeded data and seeded network pairs."""

from __future__ import annotations

import numpy as np
from nn_parity import scratch
from nn_parity.torch_ref import TorchMLP


def make_data(n: int, d: int, seed: int = 0, dtype="float64") -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal features and labels from a random linear rule with 10% noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = ((X @ w + 0.3 * rng.standard_normal(n)) > 0).astype(np.float64)
    if n >= 2:  # both classes present
        y[0], y[1] = 0.0, 1.0
    return X.astype(dtype), y.astype(dtype)


def make_pair(sizes, activations, *, bias=True, dtype="float64", seed=0, init="xavier_uniform"):
    """A seeded scratch network and its torch mirror with identical weights."""
    net = scratch.MLP(sizes, activations, bias=bias, dtype=dtype, init=init, rng=seed)
    return net, TorchMLP.from_scratch(net)


def ulps_away(x, k: int, dtype) -> np.generic:
    """`x` moved `k` representable numbers away from zero: k ulps, at x's own spacing.

    Adding k to the bit pattern of a float steps through consecutive floats of its sign, so
    `ulps_away(1.0, 1, "float64") == np.nextafter(1.0, 2.0)` exactly, on every machine.
    """
    a = np.array(x, dtype=dtype)
    bits = a.view({8: np.int64, 4: np.int32}[a.itemsize])
    bits += k
    return a[()]


def nudge_torch_param(ref: TorchMLP, name: str, index: tuple[int, ...], ulps: int) -> None:
    """Move one element of torch's copy of a parameter `ulps` ulps away from zero, in place.

    The lockstep compares torch's values against scratch's, so this is a difference of known
    size on the torch side, where rounding would otherwise make one of unknown size.
    """
    p = dict(ref.named_parameters())[name]
    view = p.detach().numpy()  # shares p's storage: the edit is torch's parameter itself
    view[index] = ulps_away(view[index], ulps, view.dtype)
