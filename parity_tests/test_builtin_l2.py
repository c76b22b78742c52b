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


# --- the built-in network trains on the declared objective ----------------------------------

L2_CASES = [
    {"l2": 0.01},
    {"l2": 0.01, "l2_form": "full"},
    {"l2": 0.5, "l2_n": 16},
    {"l2": 0.1, "l2_on": "all"},
    {"l2": 0.1, "l2_on": ["layers.0.bias", "layers.1.weight"]},
    {"l2": 0.05, "l2_form": "full", "l2_n": 4, "l2_on": "all"},
]


@pytest.mark.parametrize("opts", L2_CASES, ids=[str(o) for o in L2_CASES])
def test_the_built_in_network_trains_on_its_l2_term(opts):
    X, y = make_data(16, 3, seed=0)
    net = scratch.MLP([3, 5, 1], ["tanh", "sigmoid"], rng=0)
    plain = scratch.MLP([3, 5, 1], ["tanh", "sigmoid"], rng=0)
    result = lockstep(net, None, X, y, steps=20, lr=0.5, loss=get_loss("bce", **opts))
    assert result.passed, str(result.first_divergence)
    assert np.nanmax(result.max_abs) < 1e-14  # float64, every quantity, every step
    assert not result.drift_steps and not result.kink_steps
    without = lockstep(plain, None, X, y, steps=20, lr=0.5, loss="bce")
    assert not np.allclose(result.loss_torch, without.loss_torch)  # the term is in both


def _scaled_penalty(monkeypatch, factor):
    """scratch's L2 gradient times `factor` (its value left as it is)."""
    penalty = scratch.Loss.penalty

    def wrong(self, params):
        value, grads = penalty(self, params)
        return value, {n: g * g.dtype.type(factor) for n, g in grads.items()}

    monkeypatch.setattr(scratch.Loss, "penalty", wrong)


def test_an_l2_gradient_off_by_two_is_caught_and_its_declaration_named(monkeypatch):
    _scaled_penalty(monkeypatch, 2.0)  # l2 * W where the half form's gradient is (l2 / 2) * 2 W
    X, y = make_data(16, 3, seed=0)
    net = scratch.MLP([3, 5, 1], ["tanh", "sigmoid"], rng=0)
    div = lockstep(net, None, X, y, steps=5, lr=0.5, loss=get_loss("bce", l2=0.01)).first_divergence
    assert div is not None and div.step == 0 and div.quantity == "grad", str(div)
    assert div.param == "weight" and div.fd_agrees_with == "torch", str(div)
    assert div.diagnosis["cause"] == "convention", div.diagnosis
    assert "with l2=0.02, l2_n=1: declare it" in div.diagnosis["explanation"], div.diagnosis


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_the_recheck_refuses_an_l2_difference(monkeypatch, activation):
    # 1e-8 of the L2 gradient: past the gradients' tolerance, and no rounding of the stages;
    # relu draws the kink check into the re-check as well
    _scaled_penalty(monkeypatch, 1 + 1e-8)
    X, y = make_data(16, 3, seed=0)
    net = scratch.MLP([3, 5, 1], [activation, "sigmoid"], rng=0)
    result = lockstep(net, None, X, y, steps=5, lr=0.5, loss=get_loss("bce", l2=0.3))
    div = result.first_divergence
    assert div is not None and div.step == 0 and div.quantity == "grad", str(div)
    assert not result.drift_steps and not result.kink_steps
