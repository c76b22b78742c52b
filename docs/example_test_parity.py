"""Parity tests for a hand-derived network: copy this file into your repository's tests.

nn-parity's pytest plugin gives every test a `parity` fixture. `parity.lockstep` trains your
scratch network and its PyTorch mirror side by side and fails the test at the first step where
they part, naming the step, the quantity, the parameter and element, both values, what finite
differences say and the likely cause.

    pytest                                   # float64, as each test asks
    pytest --parity-dtype float32            # the same suite in float32
    pytest --parity-report parity-reports    # a report folder for every failing check
"""

import numpy as np
import pytest
from nn_parity import scratch
from nn_parity.torch_ref import TorchMLP


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 4))  # (N, D)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.float64)  # (N,)
    return X, y


def test_tanh_network_matches_torch(parity, data):
    X, y = data
    # dtype=parity.dtype lets --parity-dtype run this test in float32 too
    net = scratch.MLP([4, 8, 1], ["tanh", "sigmoid"], dtype=parity.dtype, rng=0)
    parity.lockstep(net, TorchMLP.from_scratch(net), X, y, steps=50, lr=0.5)
