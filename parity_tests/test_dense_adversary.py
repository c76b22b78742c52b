"""An adversary against the built-in network's stage-wise re-check and user code's coarse one
(engine/recheck.py, engine/rounding.py): bugs planted where an excuse (kink, saturation, drift)
could cover them. Each attack that once ended in PASS is asserted refused; each excuse is also
shown still excusing the rounding event it is for, made by construction (known ulps).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nn_parity import scratch
from nn_parity.scratch import layers, losses
from nn_parity.torch_ref import TorchMLP, adapt, check, lockstep
from nn_parity.torch_ref.engine.torch_side import TorchSide
from torch import nn

# --- the forward allowance on a short sum of large terms -------------------------------------


def _dropped_bias(self, x):
    """Dense.forward without its bias: z = x W^T."""
    z = x @ self.weight.T
    a = self.activation.forward(z)
    return a, (x, z, a)


class LinearOffByUlps(nn.Linear):
    """nn.Linear whose output is moved by `ulps` ulps of its terms' magnitude |x| |W|^T + |b|:
    what another correct summation may return when ulps is small."""

    ulps = 0

    def forward(self, x):
        z = super().forward(x)
        with torch.no_grad():
            m = x.abs() @ self.weight.abs().T + self.bias.abs()
        return z + self.ulps * torch.finfo(z.dtype).eps * m


def large_cancelling_run(ulps=0, steps=3):
    """A 2-1 identity net in float32 on x = (t, t), t up to 4e6, W = (1, -1), b = 4: z = 4
    exactly on both sides (the products are exact and cancel). The terms' magnitude is 2t + 4,
    so the flat 32-ulp allowance was 32 eps (2e6 + 4) = 7.6 at t = 1e6: a bias of 4 dropped
    from z fitted in it, at every step, and the run passed with every step 'drift'."""
    big = 1e6
    X = np.array([[big, big], [2 * big, 2 * big], [big, big], [4 * big, 4 * big]], np.float32)
    y = np.array([[1.0], [2.0], [0.5], [3.0]], np.float32)
    net = scratch.MLP([2, 1], ["identity"], dtype="float32")
    w = {"layers.0.weight": np.array([[1.0, -1.0]]), "layers.0.bias": np.array([4.0])}
    net.load_state_dict(w)
    ref = TorchMLP.from_scratch(net)
    if ulps:
        off = LinearOffByUlps(2, 1, dtype=torch.float32)
        off.load_state_dict(ref.layers[0].state_dict())
        off.ulps = ulps
        ref.layers[0] = off
    return lockstep(net, ref, X, y, steps=steps, lr=1e-14, loss="mse")


def test_a_dropped_bias_within_a_flat_allowance_of_large_terms_is_refused(monkeypatch):
    monkeypatch.setattr(layers.Dense, "forward", _dropped_bias)
    r = large_cancelling_run()
    d = r.first_divergence
    assert not r.passed, (r.drift_steps, r.kink_steps)
    assert (d.step, d.quantity, d.layer) == (0, "z", 0), d


def test_a_short_sum_s_own_rounding_is_still_excused():
    # 2 ulps of the terms (a 2-term sum plus a bias rounds by at most 3 eps / 2 per side)
    r = large_cancelling_run(ulps=2, steps=1)
    assert not r.within[0].all() and r.drift_steps == [0]
    assert r.passed, r.first_divergence


def test_more_than_a_short_sum_can_round_is_refused():
    # 16 ulps: within the flat 32 that held for every sum, more than 2 terms can make
    d = large_cancelling_run(ulps=16, steps=1).first_divergence
    assert d is not None and (d.step, d.quantity) == (0, "z"), d


# --- user code with hidden state: the call that matches excused the calls that did not --------


def counting_user_net(buggy_calls):
    """A dict-style 3-2-1 tanh/sigmoid net whose grads function doubles the output layer's dz on
    the calls `buggy_calls(n)` picks (n counts its calls): hidden state. With a bug on calls
    0, 1 of every 3, the step (call 0) and its repeat from its own start (call 1) agreed bit
    for bit and the rerun from torch's start (call 2, correct) reproduced torch: every step
    was excused as drift and the run passed, with the gradient twice torch's at every step."""
    X = np.array([[1, 2, 0.3], [2, -1, -0.7], [0.5, 0.25, 1.1], [4, 1, 0.2]])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    P = {"W1": np.array([[0.5, 0.3], [-0.5, -0.2], [0.1, 0.4]]), "b1": np.zeros(2),
         "W2": np.array([[0.3], [-0.2]]), "b2": np.zeros(1)}  # fmt: skip
    calls = [0]

    def grads(X, y):
        n, calls[0] = calls[0], calls[0] + 1
        a1 = np.tanh(X @ P["W1"] + P["b1"])
        p = 1 / (1 + np.exp(-(a1 @ P["W2"] + P["b2"])))
        dz2 = (p - y[:, None]) / len(X) * (2 if buggy_calls(n) else 1)
        dz1 = dz2 @ P["W2"].T * (1 - a1 * a1)
        return {"W1": X.T @ dz1, "b1": dz1.sum(0), "W2": a1.T @ dz2, "b2": dz2.sum(0)}

    return adapt(P, activations=["tanh", "sigmoid"], loss="bce", grads=grads), X, y


def test_hidden_state_that_is_right_on_the_rerun_is_not_excused():
    net, X, y = counting_user_net(lambda n: n % 3 in (0, 1))
    r = check(net, X, y, steps=5, lr=0.1)
    d = r.first_divergence
    assert not r.passed, r.drift_steps
    assert (d.step, d.quantity) == (0, "grad") and r.drift_steps == [], d


def test_hidden_state_is_not_excused_where_drift_parted_the_starts():
    # correct for 3 calls, then the same pattern: the first buggy step (3) starts an ulp or so
    # from torch's (steps 0-2 parted within tolerance), so the rerun from torch's start is no
    # longer the step's own start; the user's gradients from its own start are held to the
    # claimed network's there (once excused as drift, then refused after the resync)
    net, X, y = counting_user_net(lambda n: n >= 3 and n % 3 in (0, 1))
    r = check(net, X, y, steps=8, lr=0.1)
    d = r.first_divergence
    assert not r.passed and r.drift_steps == [], r.drift_steps
    assert (d.step, d.quantity) == (3, "grad"), d


# --- a saturated sigmoid output: its allowance was its z's, at slope 1 ------------------------


def _clipped_sigmoid(self, z):
    """The overflow guard sigmoid(clip(z, -15, 15)): 1 - 3.1e-7 at z = 20, not 1 - 2.1e-9."""
    return 1 / (1 + np.exp(-np.clip(z, -15, 15)))


def saturated_large_terms_run(ulps=0, steps=3):
    """A 2-1 sigmoid net on bce, x = (t, t) with t = 5e8, W = (1, -1), b = 20: z = 20 exactly,
    p = sigmoid(20), from terms of magnitude 1e9. The output's allowance was z's, 32 eps 1e9
    = 7e-6, at sigmoid's slope taken as 1: a clipped sigmoid's 3e-7 fitted in it, and the loss
    and backward stages run on torch's output, so every step passed as 'saturation'. A z
    rounded by a few ulps of the terms moves p by sigmoid'(20) = 2e-9 times that."""
    big = 5e8
    X = np.array([[big, big], [big, big], [2 * big, 2 * big], [big, big]])
    y = np.ones(4)
    net = scratch.MLP([2, 1], ["sigmoid"])
    net.load_state_dict(
        {"layers.0.weight": np.array([[1.0, -1.0]]), "layers.0.bias": np.array([20.0])}
    )
    ref = TorchMLP.from_scratch(net)
    if ulps:
        off = LinearOffByUlps(2, 1, dtype=torch.float64)
        off.load_state_dict(ref.layers[0].state_dict())
        off.ulps = ulps
        ref.layers[0] = off
    return lockstep(net, ref, X, y, steps=steps, lr=1e-3, loss="bce")


def test_a_clipped_sigmoid_at_a_saturated_output_is_refused(monkeypatch):
    monkeypatch.setattr(scratch.activations.Sigmoid, "forward", _clipped_sigmoid)
    r = saturated_large_terms_run()
    d = r.first_divergence
    assert not r.passed, (r.saturation_steps, r.drift_steps)
    assert (d.step, d.quantity) == (0, "prob") and r.saturation_steps == [], d


def test_a_saturated_output_s_z_rounded_by_its_terms_is_still_excused():
    r = saturated_large_terms_run(ulps=2, steps=1)
    assert not r.within[0].all() and r.saturation_steps == [0]
    assert r.passed, r.first_divergence


def test_a_clipped_probability_of_a_saturated_logit_is_refused(monkeypatch):
    # bce-logits reports p = sigmoid(out); a clipped one is 3e-7 off at out = 20, and p was
    # allowed out's own allowance (7e-6 at terms of 1e9): every step passed as drift
    clipped = lambda self, out: 1 / (1 + np.exp(-np.clip(out, -15, 15)))  # noqa: E731
    monkeypatch.setattr(losses.BCEWithLogitsLoss, "probabilities", clipped)
    big = 5e8
    X = np.array([[big, big], [big, big], [2 * big, 2 * big], [big, big]])
    net = scratch.MLP([2, 1], ["identity"])
    net.load_state_dict(
        {"layers.0.weight": np.array([[1.0, -1.0]]), "layers.0.bias": np.array([20.0])}
    )
    r = lockstep(net, TorchMLP.from_scratch(net), X, np.ones(4), steps=3, lr=1e-3,
                 loss="bce-logits")  # fmt: skip
    d = r.first_divergence
    assert not r.passed and r.drift_steps == [], r.drift_steps
    assert (d.step, d.quantity) == (0, "prob"), d


# --- the backward allowance on a short sum over the batch -------------------------------------


def cancelling_bias_gradient_run(ulps=0, steps=3):
    """A 1-1 identity net in float32 on mse with a declared L2 on the weights (l2 4e-3):
    residuals of +-1000 make dz = +-500 per sample, whose sum, the bias gradient, is 0
    exactly. The flat bound allowed it 32 eps sum |dz| = 7.6e-3: the L2 term put on the bias
    as well (2 c b = 4e-3 at b = 1) passed at every step as drift. A sum of 4 terms rounds by
    at most a few eps of them; torch's bias gradient is moved by `ulps` ulps of sum |dz|."""
    X = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    y = np.array([[2.0 - 1000], [3.0 + 1000], [4.0 - 1000], [5.0 + 1000]], np.float32)
    net = scratch.MLP([1, 1], ["identity"], dtype="float32")
    net.load_state_dict({"layers.0.weight": np.array([[1.0]]), "layers.0.bias": np.array([1.0])})
    ref = TorchMLP.from_scratch(net)
    if ulps:
        off = ulps * torch.finfo(torch.float32).eps * 2000.0
        ref.layers[0].bias.register_hook(lambda g: g + off)
    loss = scratch.get_loss("mse", l2=4e-3, l2_on="weights")
    return lockstep(net, ref, X, y, steps=steps, lr=1e-6, loss=loss)


def test_an_l2_term_wrongly_on_a_bias_within_the_flat_backward_allowance_is_refused(monkeypatch):
    # scratch's loss puts its L2 term on every parameter, whatever l2_on says
    monkeypatch.setattr(losses, "l2_names", lambda on, names: list(names))
    r = cancelling_bias_gradient_run()
    d = r.first_divergence
    assert not r.passed, r.drift_steps
    assert (d.step, d.label) == (0, "grad layers.0.bias") and r.drift_steps == [], d


def test_a_short_batch_sum_s_own_rounding_is_still_excused():
    r = cancelling_bias_gradient_run(ulps=4, steps=1)
    assert not r.within[0].all() and r.drift_steps == [0]
    assert r.passed, r.first_divergence


def test_more_than_a_short_batch_sum_can_round_is_refused():
    d = cancelling_bias_gradient_run(ulps=24, steps=1).first_divergence
    assert d is not None and (d.step, d.label) == (0, "grad layers.0.bias"), d


# --- user code: relu'(0) = 1 where carried-in drift moved torch's zero below the kink --------


MOMENTUM = {"name": "sgd", "momentum": 0.9}  # its first step is plain SGD's: b1 = 0 exactly


def kink_at_step_1(relu_at_zero_is_one: bool):
    """A dict-style 1-1-1 relu/identity net on mse with X = 0, so z = b1: b1 = 0.25, y summing
    to 0 and lr 0.5 bring b1 to 0 exactly at step 1 on both sides (exact arithmetic), where
    the user's relu' is taken at z >= 0 (1 at the kink) or z > 0 (torch's 0)."""
    X = np.zeros((4, 1))
    y = np.array([1.0, -1.0, 0.5, -0.5])
    P = {"W1": np.array([[1.0]]), "b1": np.array([0.25]), "W2": np.array([[1.0]]),
         "b2": np.zeros(1)}  # fmt: skip

    def grads(X, y):
        z1 = X @ P["W1"] + P["b1"]
        a1 = np.maximum(z1, 0)
        dz2 = 2 * (a1 @ P["W2"] + P["b2"] - y[:, None]) / len(X)
        dz1 = dz2 @ P["W2"].T * ((z1 >= 0) if relu_at_zero_is_one else (z1 > 0))
        return {"W1": X.T @ dz1, "b1": dz1.sum(0), "W2": a1.T @ dz2, "b2": dz2.sum(0)}

    layout = {"W1": "in,out", "W2": "in,out"}
    net = adapt(P, activations=["relu", "identity"], loss="mse", grads=grads, layout=layout)
    return net, X, y


def _nudge_torch_bias_down_before_step_1(monkeypatch):
    """torch's b1 (0 after step 0) one ulp below 0 before step 1: drift within the parameters'
    tolerance that puts torch's z below the kink, the user's on it."""
    original = TorchSide.step

    def step(self, Xt, Yt):
        if self.stepped == 1:
            b = self.params[self.order.index(next(k for k in self.order if "0.bias" in k))]
            with torch.no_grad():
                assert b[0] == 0
                b[0] = torch.nextafter(b[0], torch.tensor(-1.0, dtype=b.dtype))
        return original(self, Xt, Yt)

    monkeypatch.setattr(TorchSide, "step", step)


@pytest.mark.parametrize("opt", ["sgd", MOMENTUM], ids=["sgd", "momentum"])
def test_a_user_s_relu_derivative_of_one_at_zero_is_not_excused_by_drift(opt, monkeypatch):
    # the rerun from torch's start (z < 0) gives torch's values, so the step was excused as
    # drift and the run passed, though the user's relu'(0) = 1 acted at step 1
    _nudge_torch_bias_down_before_step_1(monkeypatch)
    net, X, y = kink_at_step_1(True)
    r = check(net, X, y, steps=4, lr=0.5, optimizer=opt)
    d = r.first_divergence
    assert not r.passed, (r.kink_steps, r.drift_steps)
    assert (d.step, d.quantity, d.label) == (1, "grad", "grad b1"), d


@pytest.mark.parametrize("opt", ["sgd", MOMENTUM], ids=["sgd", "momentum"])
def test_a_correct_user_relu_on_the_kink_with_drift_carried_in_passes(opt, monkeypatch):
    _nudge_torch_bias_down_before_step_1(monkeypatch)
    net, X, y = kink_at_step_1(False)
    r = check(net, X, y, steps=4, lr=0.5, optimizer=opt)
    assert r.passed, r.first_divergence


# --- attacks the re-check refused as it stood (evidence) -------------------------------------


def test_a_naive_bce_with_logits_near_saturation_is_not_excused_as_saturation(monkeypatch):
    # -(y log s + (1 - y) log(1 - s)) with s = sigmoid(z): at z = 20, 1 - s cancels to a few
    # digits, the loss parts from torch's log-sum-exp form, and p is within rounding of 1, so
    # the step is a candidate for 'saturation'; the loss stage, on torch's own output, still
    # computes the wrong form and refuses it
    def naive(self, out, y):
        s = 1 / (1 + np.exp(-out))
        return self._reduce(-(y * np.log(s) + (1 - y) * np.log(1 - s))), (out, y)

    monkeypatch.setattr(losses.BCEWithLogitsLoss, "_forward", naive)
    X = np.array([[20.0], [22.0], [19.0], [21.0]])
    y = np.zeros((4, 1))
    net = scratch.MLP([1, 1], ["identity"])
    net.load_state_dict({"layers.0.weight": np.array([[1.0]]), "layers.0.bias": np.zeros(1)})
    r = lockstep(net, TorchMLP.from_scratch(net), X, y, steps=3, lr=1e-3, loss="bce-logits")
    d = r.first_divergence
    assert not r.passed and r.saturation_steps == r.drift_steps == [], d
    assert (d.step, d.quantity) == (0, "loss"), d


def test_a_gradient_wrong_only_on_the_last_smaller_mini_batch_is_refused(monkeypatch):
    # the mean's gradient 2 (o - t) / R with R the full batch's size (4), on the last batch of 2
    def backward(self, cache):
        o, t = cache
        return o.dtype.type(2.0 / 4) * (o - t)

    monkeypatch.setattr(losses.MSELoss, "_backward", backward)
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 1))
    net = scratch.MLP([3, 4, 1], ["tanh", "identity"], rng=1)
    r = lockstep(net, TorchMLP.from_scratch(net), X, y, epochs=2, batch_size=4, lr=0.1,
                 loss="mse", shuffle=False)  # fmt: skip
    d = r.first_divergence
    assert not r.passed and r.drift_steps == r.kink_steps == [], d
    assert (d.step, d.quantity) == (2, "grad"), d


def test_a_clipped_tanh_at_a_saturated_hidden_unit_is_refused(monkeypatch):
    # tanh(clip(z, -10, 10)): 1 - 4e-9 at z = 20, where tanh is 1.0; z = 20 exactly from terms
    # of 1e9, whose flat allowance (7e-6, at slope 1) covered the hidden a and passed the run
    monkeypatch.setattr(
        scratch.activations.Tanh, "forward", lambda self, z: np.tanh(np.clip(z, -10, 10))
    )
    big = 5e8
    X = np.array([[big, big], [2 * big, 2 * big], [big, big], [big, big]])
    y = np.array([[1.0], [2.0], [0.5], [3.0]])
    net = scratch.MLP([2, 1, 1], ["tanh", "identity"])
    net.load_state_dict(
        {"layers.0.weight": np.array([[1.0, -1.0]]), "layers.0.bias": np.array([20.0]),
         "layers.1.weight": np.array([[2.0]]), "layers.1.bias": np.zeros(1)}
    )  # fmt: skip
    r = lockstep(net, TorchMLP.from_scratch(net), X, y, steps=3, lr=1e-3, loss="mse")
    d = r.first_divergence
    assert not r.passed, (r.drift_steps, r.saturation_steps)
    assert (d.step, d.quantity, d.layer) == (0, "a", 0) and r.drift_steps == [], d
