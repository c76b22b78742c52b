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
