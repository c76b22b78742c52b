"""The rounding the stage-wise re-check allows (torch_ref/engine/rounding.py), made by
construction: each event below is a known number of ulps, placed where a correct library's
other order of operations puts it, so it is the same on every machine. Each excuse is shown
excusing that event and refusing a difference no correct order can make.

- backward: tanh's 1 - a a at a saturated unit rounds at an ulp of 1, not of the result, and a
  weight gradient summing such terms over the batch cancels (found by the sweep: an 8-16-1 tanh
  net on mse with scale 2 and a summed reduction, grad layers.0.weight at step 2);
- forward: a layer's rounding carried into the next one through a cancelling z. Each layer is
  re-checked from torch's input to it, so no earlier layer's rounding is carried.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nn_parity import scratch
from nn_parity.torch_ref import TorchMLP, lockstep
from torch import nn

from .helpers import ulps_away

# --- backward: a saturated tanh ---------------------------------------------------------------


class _TanhRoundingAtOne(torch.autograd.Function):
    """torch's tanh, whose derivative 1 - a a at an output of exactly 1 comes out as `ulps`
    ulps of 1 instead of 0: what another correct order (a fused multiply-subtract on an a just
    below 1) gives, at the size of the terms 1 and a a."""

    ulps = 1

    @staticmethod
    def forward(ctx, z):
        a = torch.tanh(z)
        ctx.save_for_backward(a)
        return a

    @staticmethod
    def backward(ctx, da):
        (a,) = ctx.saved_tensors
        eps = torch.finfo(a.dtype).eps
        return da * ((1 - a * a) + _TanhRoundingAtOne.ulps * eps * (a == 1))


class TanhRoundingAtOne(nn.Module):
    def forward(self, z):
        return _TanhRoundingAtOne.apply(z)


def saturated_tanh_run(ulps: int):
    """z = 30..60 on the hidden tanh unit: a = 1 exactly, so scratch's tanh' is 0 and torch's
    is `ulps` ulps of 1. The first weight's gradient is 0 in scratch and ulps * eps * sum_n
    dL/da_n x_n (about 1e4 eps) in torch: past the table's atol (2^10 eps), and within the
    terms' rounding when ulps is small."""
    X = np.array([[30.0], [40.0], [50.0], [60.0]])
    y = np.array([[-40.0], [-38.0], [-41.0], [-39.0]])
    net = scratch.MLP([1, 1, 1], ["tanh", "identity"])
    net.load_state_dict(
        {
            "layers.0.weight": np.array([[1.0]]),
            "layers.0.bias": np.zeros(1),
            "layers.1.weight": np.array([[10.0]]),
            "layers.1.bias": np.zeros(1),
        }
    )
    ref = TorchMLP.from_scratch(net)
    ref.acts[0] = TanhRoundingAtOne()
    _TanhRoundingAtOne.ulps = ulps
    try:
        return lockstep(net, ref, X, y, steps=3, lr=1e-6, loss="mse")
    finally:
        _TanhRoundingAtOne.ulps = 1


def test_a_saturated_tanh_s_rounding_in_the_backward_is_excused():
    result = saturated_tanh_run(ulps=1)
    assert result.passed, str(result.first_divergence)
    assert 0 in result.drift_steps  # the event happened and needed the excuse
    assert not result.within[0].all()


def test_a_difference_no_rounding_of_the_terms_makes_is_refused():
    # 4096 ulps of 1 in tanh': more than the bound (32 ulps per layer crossed) allows
    div = saturated_tanh_run(ulps=2**12).first_divergence
    assert div is not None and div.label == "grad layers.0.weight" and div.step == 0, str(div)


def test_a_wrong_derivative_at_a_saturated_unit_is_refused(monkeypatch):
    # 1 - a where 1 - a a is meant: at a = 1 both are 0, so a sample off saturation shows it
    monkeypatch.setattr(scratch.activations.Tanh, "backward", lambda self, da, z, a: da * (1 - a))
    X = np.array([[30.0], [0.5], [50.0], [60.0]])
    y = np.array([[-40.0], [-38.0], [-41.0], [-39.0]])
    net = scratch.MLP([1, 1, 1], ["tanh", "identity"], rng=0)
    div = lockstep(net, TorchMLP.from_scratch(net), X, y, steps=3, lr=1e-6, loss="mse")
    div = div.first_divergence
    assert div is not None and div.label.startswith("grad layers.0"), str(div)


# --- forward: rounding carried through a cancelling layer ------------------------------------


class LinearRoundingAtZero(nn.Linear):
    """nn.Linear, except that an output of exactly 0 comes out as `ulps` ulps of the terms'
    size (1 here): what another correct summation may return."""

    ulps = 1

    def forward(self, x):
        z = super().forward(x)
        return z + (z == 0) * self.ulps * torch.finfo(z.dtype).eps


def carried_run(ulps: int):
    """Layer 0 (identity) gives z = 1 - 1 = 0 exactly on sample 0, which torch rounds to
    `ulps` ulps of 1. Layer 1 multiplies it by 1e6 and cancels it again (z1 = 1e6 a0 - 1e6 a0'
    ... with a0' = 0 exactly), so torch's z[1] carries 1e6 ulps while its own terms are 0:
    only layer 0's rounding, carried, explains it."""
    X = np.array([[1.0, -1.0], [2.0, 1.0], [-1.0, 3.0]])
    y = np.array([0.0, 1.0, 1.0])
    net = scratch.MLP([2, 2, 1, 1], ["identity", "tanh", "sigmoid"])
    net.load_state_dict(
        {
            "layers.0.weight": np.array([[1.0, 1.0], [0.0, 0.0]]),
            "layers.0.bias": np.zeros(2),
            "layers.1.weight": np.array([[1e6, 0.0]]),
            "layers.1.bias": np.zeros(1),
            "layers.2.weight": np.array([[0.5]]),
            "layers.2.bias": np.zeros(1),
        }
    )
    ref = TorchMLP.from_scratch(net)
    rounding = LinearRoundingAtZero(2, 2, dtype=torch.float64)
    rounding.load_state_dict(ref.layers[0].state_dict())
    rounding.ulps = ulps
    ref.layers[0] = rounding
    return lockstep(net, ref, X, y, steps=2, lr=1e-9)


def test_rounding_carried_from_an_earlier_layer_is_excused():
    result = carried_run(ulps=1)
    assert result.passed, str(result.first_divergence)
    assert not result.within[0].all() and 0 in result.drift_steps


@pytest.mark.parametrize("ulps", [2**12])
def test_more_than_a_layer_s_own_rounding_is_refused_where_it_is_made(ulps):
    div = carried_run(ulps).first_divergence
    assert div is not None and div.label == "z[0]" and div.step == 0, str(div)


# --- update: theta + step, the step as large as theta -----------------------------------------


def cancelling_update_run(monkeypatch, ulps: int):
    """b = 1e5 and lr g = 99999.25 (x = 0, y = 1.5 - 1e5, lr 0.25, mse): the update brings b
    to 0.75 exactly. Scratch's lr g is taken `ulps` ulps away (another rounding of the product,
    as an unfused multiply-subtract against torch's fused add_), so b differs by ulps ulps of
    1e5: past the parameter tolerance at 0.75, and within the terms' rounding when ulps is
    small. Found by the sweep: a 1-1-2-1 net on a summed, doubled mse whose gradient reached
    4e11, a bias brought back to -0.76 (test_no_false_alarms.FOUND)."""

    def step(self, grads=None):
        self.net.flat_params -= ulps_away(self.lr * self.net.flat_grads, ulps, "float64")

    monkeypatch.setattr(scratch.SGD, "step", step)
    X = np.zeros((4, 1))
    y = np.full((4, 1), 1.5 - 1e5)
    net = scratch.MLP([1, 1], ["identity"])
    net.load_state_dict({"layers.0.weight": np.array([[1.0]]), "layers.0.bias": np.array([1e5])})
    return lockstep(net, TorchMLP.from_scratch(net), X, y, steps=2, lr=0.25, loss="mse")


def test_an_update_s_rounding_at_the_size_of_its_terms_is_excused(monkeypatch):
    result = cancelling_update_run(monkeypatch, ulps=1)
    assert result.passed, str(result.first_divergence)
    assert not result.within[0].all() and 0 in result.drift_steps


def test_an_update_off_by_more_than_its_terms_rounding_is_refused(monkeypatch):
    div = cancelling_update_run(monkeypatch, ulps=2**12).first_divergence
    assert div is not None and div.label == "param layers.0.bias" and div.step == 0, str(div)
