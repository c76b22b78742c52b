"""The L2 term on the built-in network, and the L2 fit that names an undeclared one.

An L2 term leaves g_s - g_t = k W on a weight's gradient; the diagnosis names it only when that
fit is over-determined (two or more nonzero elements for its one unknown k): on a 1x1 weight one
number always fits, so any difference would read as an L2 term (found by the sweep: a 1-1-2-1
mse net, grad layers.0.weight, reported as "an L2 term").
"""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import scratch
from nn_parity.scratch import get_loss
from nn_parity.torch_ref import TorchMLP, lockstep

from .helpers import make_data


def _add_to_first_weight_gradient(net, extra):
    """Make net.backward add extra(W) to layers.0.weight's gradient, every step."""
    backward = net.backward

    def wrapped(dout, cache):
        grads = backward(dout, cache)
        grads["layers.0.weight"] += extra(net.params["layers.0.weight"])
        return grads

    net.backward = wrapped


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_difference_on_a_1x1_weight_is_not_named_an_l2_term(sign):
    X, y = make_data(8, 1, seed=3)
    net = scratch.MLP([1, 1, 2, 1], ["tanh", "tanh", "identity"], rng=1)
    ref = TorchMLP.from_scratch(net)
    _add_to_first_weight_gradient(net, lambda W: sign * 0.25 * np.ones_like(W))
    div = lockstep(net, ref, X, y[:, None], steps=3, lr=0.1, loss="mse").first_divergence
    assert div is not None and div.label == "grad layers.0.weight" and div.step == 0, str(div)
    assert "L2" not in (div.diagnosis or {}).get("explanation", ""), div.diagnosis


def test_an_l2_term_on_a_weight_of_several_elements_is_still_named():
    X, y = make_data(8, 3, seed=3)
    net = scratch.MLP([3, 4, 1], ["tanh", "sigmoid"], rng=1)
    ref = TorchMLP.from_scratch(net)
    _add_to_first_weight_gradient(net, lambda W: 0.0625 * W)  # the gradient of 0.03125 ||W||^2
    div = lockstep(net, ref, X, y, steps=3, lr=0.1, loss=get_loss("bce")).first_divergence
    assert div is not None and div.label == "grad layers.0.weight", str(div)
    assert div.diagnosis["cause"] == "convention", div.diagnosis
    assert "an L2 term" in div.diagnosis["explanation"], div.diagnosis
