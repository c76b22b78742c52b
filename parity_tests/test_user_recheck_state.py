"""The coarse re-check of `adapt`'s user code with a stateful optimizer: the step must repeat
itself from the state it started from (Adam's moments before the step), not from the state it
left; rerun from the state it left, a correct step never repeats, and a carried-in ulp that
crosses a kink is reported as if it were the user's bug."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nn_parity.torch_ref import adapt, check
from nn_parity.torch_ref.engine.torch_side import TorchSide


def _on_the_kink(relu_at_zero_passes: bool):
    """A dict-style 3-2-1 net whose hidden unit 0 sits exactly on relu's kink for every sample:
    x = (t, t, s), W1[:, 0] = (0.5, -0.5, 0), b1[0] = 0, so z0 = 0 exactly (t a power of two)."""
    X = np.array([[1, 1, 0.3], [2, 2, -0.7], [0.5, 0.5, 1.1], [4, 4, 0.2]])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    P = {"W1": np.array([[0.5, 0.3], [-0.5, -0.2], [0.0, 0.4]]), "b1": np.zeros(2),
         "W2": np.array([[0.3], [-0.2]]), "b2": np.zeros(1)}  # fmt: skip

    def grads(X, y):
        z1 = X @ P["W1"] + P["b1"]
        a1 = np.maximum(z1, 0)
        p = 1 / (1 + np.exp(-(a1 @ P["W2"] + P["b2"])))
        dz2 = (p - y[:, None]) / len(X)
        dz1 = dz2 @ P["W2"].T * ((z1 >= 0) if relu_at_zero_passes else (z1 > 0))
        return {"W1": X.T @ dz1, "b1": dz1.sum(0), "W2": a1.T @ dz2, "b2": dz2.sum(0)}

    net = adapt(P, activations=["relu", "sigmoid"], loss="bce", grads=grads)
    return net, X, y


def _nudge_torch_before_step(monkeypatch, step: int):
    """torch's first-layer weight [0, 0] one ulp up before `step`: within the parameters'
    tolerance, it lifts torch's z0 off the kink while the user's stays on it."""
    original = TorchSide.step

    def step_nudged(self, Xt, Yt):
        if self.stepped == step:
            w = self.params[self.order.index(next(k for k in self.order if "0.weight" in k))]
            with torch.no_grad():
                w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(2.0, dtype=w.dtype))
        return original(self, Xt, Yt)

    monkeypatch.setattr(TorchSide, "step", step_nudged)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam", "rmsprop"])
def test_a_carried_in_kink_is_excused_whatever_the_optimizer_state(opt, monkeypatch):
    _nudge_torch_before_step(monkeypatch, 1)
    net, X, y = _on_the_kink(False)
    spec = {"name": "sgd", "momentum": 0.9} if opt == "momentum" else opt
    r = check(net, X, y, steps=4, lr=0.1, optimizer=spec)
    assert r.passed, r.first_divergence
    assert r.kink_steps + r.drift_steps == [1]


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_the_same_re_check_refuses_relu_prime_of_0_as_1(opt):
    net, X, y = _on_the_kink(True)
    r = check(net, X, y, steps=4, lr=0.1, optimizer=opt)
    d = r.first_divergence
    assert d is not None and (d.step, d.label) == (0, "grad W1"), d
