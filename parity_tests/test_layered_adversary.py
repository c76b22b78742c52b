"""An adversary against the layered re-check's excuses (engine/layered_recheck.py): bugs planted
in a scratch layer where a kink, a tie or a large allowance could hide them.

Each rounding event is made by construction, as in test_layered_recheck.py: integer images and
weights make the conv's output exact, so its zeros and pooling ties are exact on the scratch
side, and torch's conv is made to round chosen elements by one ulp.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.engine.loop import lockstep
from nn_parity.torch_ref.mirror.sequential import TorchSequential
from torch import nn

from parity_tests.test_layered_recheck import (
    conv_out,
    integer_net,
    pool_to_the_last_max,
    relu_derivative_one_at_zero,
)


class ConvRoundingAt(nn.Conv2d):
    """nn.Conv2d, except that the chosen output elements, when their exact value is `at[i]`,
    come out one representable number beyond it towards `to` (-inf: below; +inf: above): what
    another correct summation may return."""

    def __init__(self, conv: nn.Conv2d, where: list[tuple], at: list[float], to=-np.inf):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, dtype=conv.weight.dtype)  # fmt: skip
        self.load_state_dict(conv.state_dict())
        self.where, self.at, self.to = where, at, to

    def forward(self, x):
        z = super().forward(x)
        out = z.detach().numpy().copy()
        for index, at in zip(self.where, self.at, strict=True):
            if out[index] == at:
                out[index] = np.nextafter(out[index], self.to)
        bump = torch.from_numpy(out) - z.detach()  # exact: neighbouring floats
        return z + bump


# --- a relu'(0) convention bug where torch's rounding sends every exact zero below 0 ---------

RELU_SPEC = "conv2x3,relu,flatten,affine3"


def zeros_rounded_down_run(bug=None, steps=3, spec=RELU_SPEC):
    """Every exact zero of the conv output comes out as the largest float below 0 on torch's
    side: relu(-tiny) = 0 and relu'(-tiny) = 0, what a correct scratch gives at an exact 0.
    Only a scratch relu with another convention at 0 parts from torch."""
    net, X, y = integer_net(spec, (1, 5, 5), seed=4)
    zeros = [tuple(int(i) for i in z) for z in np.argwhere(conv_out(net, X) == 0)]
    assert len(zeros) >= 2
    ref = TorchSequential(net)
    ref[0] = ConvRoundingAt(ref[0], zeros, [0.0] * len(zeros))
    if bug is not None:
        bug(net)
    return lockstep(net, ref, X, y, steps=steps, lr=0.1, loss="ce")


def test_rounding_below_a_kink_is_no_mismatch_for_a_correct_relu():
    r = zeros_rounded_down_run()
    assert r.passed and r.within.all(), r.first_divergence
    assert r.kink_steps == r.drift_steps == []


def leaky_slope_one_at_zero(net):
    """leaky_relu'(0) = 1 (torch: the slope)."""
    slope = 0.2
    net.layers[1].backward = lambda dout, cache: (np.where(cache[1] >= 0, dout, slope * dout), {})


KINK_BUGS = {
    "relu": (RELU_SPEC, relu_derivative_one_at_zero),
    "leaky": ("conv2x3,leaky_relu:0.2,flatten,affine3", leaky_slope_one_at_zero),
}


@pytest.mark.parametrize("kind", list(KINK_BUGS))
def test_rounding_below_a_kink_is_no_mismatch_for_a_correct_activation(kind):
    r = zeros_rounded_down_run(spec=KINK_BUGS[kind][0])
    assert r.passed, r.first_divergence
    assert r.kink_steps == r.drift_steps == []


@pytest.mark.parametrize("kind", list(KINK_BUGS))
def test_a_derivative_of_one_at_zero_is_not_excused_when_torch_rounds_below(kind):
    # f'(0) = 1 in scratch: its conv gradients part from torch's at step 0, and only there
    # (the update moves the conv off its exact zeros). Torch's inputs hold no 0, so a re-check
    # from torch's inputs alone never meets the bug: it must also see scratch's own zeros.
    spec, bug = KINK_BUGS[kind]
    r = zeros_rounded_down_run(bug=bug, spec=spec)
    assert not r.within[0].all()  # the bug is seen by the raw comparison
    d = r.first_divergence
    assert not r.passed, (r.kink_steps, r.drift_steps)
    assert r.kink_steps == r.drift_steps == []
    assert (d.step, d.quantity, d.layer) == (0, "grad", 0), d


# --- a max-pool routing bug where torch's rounding breaks the tie the correct way ----------

TIE_SPEC = "conv2x2,pool2,flatten,affine3"


def first_maxima_of_ties(z: np.ndarray) -> tuple[list, list]:
    """Every 2x2 pooling window of `z` whose maximum is taken more than once: the index of its
    first maximum (row-major, the one torch and scratch pick) and the value."""
    where, at = [], []
    for n, c, i, j in np.ndindex(z.shape[0], z.shape[1], z.shape[2] // 2, z.shape[3] // 2):
        win = z[n, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        tied = np.argwhere(win == win.max())
        if len(tied) >= 2:
            p, q = (int(v) for v in tied[0])
            where.append((n, c, 2 * i + p, 2 * j + q))
            at.append(float(win.max()))
    return where, at


def tie_broken_first_run(bug=None, dtype="float64"):
    """Every tied pooling window: torch's conv rounds the first tied maximum one ulp up, so
    torch picks it, as a correct scratch does on its exact tie (the first maximum)."""
    net, X, y = integer_net(TIE_SPEC, (1, 5, 5), seed=1, dtype=dtype, weights=(0, 1))
    where, at = first_maxima_of_ties(conv_out(net, X))
    assert where
    ref = TorchSequential(net)
    ref[0] = ConvRoundingAt(ref[0], where, at, to=np.inf)
    if bug is not None:
        bug(net)
    return lockstep(net, ref, X, y, steps=3, lr=0.1, loss="ce")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_tie_broken_the_scratch_way_is_no_mismatch_for_a_correct_pool(dtype):
    r = tie_broken_first_run(dtype=dtype)
    assert r.passed and r.within.all(), r.first_divergence


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_pool_routing_to_the_last_max_is_not_excused_when_torch_rounds_the_first_up(dtype):
    r = tie_broken_first_run(bug=pool_to_the_last_max, dtype=dtype)
    assert not r.within[0].all()
    d = r.first_divergence
    assert not r.passed, (r.kink_steps, r.drift_steps)
    assert r.kink_steps == r.drift_steps == []
    assert (d.step, d.quantity, d.layer, d.param) == (0, "grad", 0, "weight"), d


# --- a norm bug smaller than a float32 allowance, present at every step ---------------------

NORM_STEPS = 8


def unnormalised_run(spec, bug=None, dtype="float32", scale=1e4):
    """Raw features of order 1e4 with spread 1 (prices, counts) into a norm, in float32: the
    centring x - mu cancels four digits, so the norm's allowance (docs/tolerances.md) is about
    32 eps 2e4 = 0.08 while the rounding two correct float32 norms show is about 1e-3."""
    rng = np.random.default_rng(0)
    net = sq.from_spec(spec, (6,), dtype=dtype, rng=0)
    X = (scale + rng.normal(size=(32, 6))).astype(dtype)
    y = rng.integers(0, 3, size=32)
    ref = TorchSequential(net)
    if bug is not None:
        bug(net)
    return lockstep(net, ref, X, y, steps=NORM_STEPS, lr=0.1, loss="ce")


def batchnorm_normalising_by_the_unbiased_variance(net):
    """xhat = (x - mu) / sqrt(var_unbiased + eps): 1.6% small for a batch of 32."""
    layer, plain = net.layers[0], net.layers[0].forward

    def forward(x, p, train):
        out, cache = plain(x, p, train)
        n, b = len(x), p["bias"]
        return ((out - b) * np.sqrt((n - 1) / n) + b).astype(x.dtype), cache

    layer.forward = forward


def layernorm_eps_a_hundred_times_torch(net):
    net.layers[0].eps = 1e-3


NORM_BUGS = {
    "bn-unbiased-var": ("bn,tanh,affine3", batchnorm_normalising_by_the_unbiased_variance),
    "ln-eps": ("ln,tanh,affine3", layernorm_eps_a_hundred_times_torch),
}


@pytest.mark.parametrize("kind", list(NORM_BUGS))
def test_a_norm_bug_inside_a_float32_allowance_does_not_pass(kind):
    spec, bug = NORM_BUGS[kind]
    r = unnormalised_run(spec, bug)
    d = r.first_divergence
    assert not r.passed, (r.drift_steps, r.kink_steps)
    assert (d.step, d.quantity, d.layer) == (0, "out", 0), d


def batchnorm_variance_as_mean_square_less_square_mean(net):
    """var = E[x^2] - E[x]^2: it cancels x^2 where torch's cancels x, so its error grows as
    eps x^2 / sigma^2 against an allowance of eps |x| / sigma. Recentring (stage 6) would
    hide it; the stage on torch's own input (1) must refuse it first."""
    layer, plain = net.layers[0], net.layers[0].forward

    def forward(x, p, train):
        out, cache = plain(x, p, train)
        mu, b = x.mean(0), p["bias"]
        wrong = (x * x).mean(0) - mu * mu
        fix = np.sqrt((x.var(0) + layer.eps) / np.maximum(wrong + layer.eps, 1e-30))
        return ((out - b) * fix + b).astype(x.dtype), cache

    layer.forward = forward


def test_a_variance_that_cancels_squares_is_refused_before_any_recentring():
    spec = "bn,tanh,affine3"
    r = unnormalised_run(spec, batchnorm_variance_as_mean_square_less_square_mean, scale=300)
    d = r.first_divergence
    assert not r.passed and r.drift_steps == [], r.drift_steps
    assert (d.step, d.quantity, d.layer) == (0, "out", 0), d


@pytest.mark.parametrize("kind", list(NORM_BUGS))
def test_a_norm_bug_inside_a_float64_allowance_does_not_pass(kind):
    # the same bugs in float64, features of order 1e13: the norm's allowance is 32 eps 2e13 =
    # 0.14, the bugs 0.02 (bn) and 5e-4 (ln); recentred (stage 6) the allowance is about 1e-13.
    spec, bug = NORM_BUGS[kind]
    r = unnormalised_run(spec, bug, dtype="float64", scale=1e13)
    d = r.first_divergence
    assert not r.passed, (r.drift_steps, r.kink_steps)
    assert (d.step, d.quantity, d.layer) == (0, "out", 0), d


@pytest.mark.parametrize("kind", list(NORM_BUGS))
def test_a_correct_norm_on_unnormalised_float32_features_passes(kind):
    spec, _ = NORM_BUGS[kind]
    r = unnormalised_run(spec)
    assert r.passed, r.first_divergence


# --- attacks the re-check refused as it stood: evidence -----------------------------------


def small_run(spec, shape=(4,), train=True, bug=None, steps=6, **options):
    rng = np.random.default_rng(2)
    net = sq.from_spec(spec, shape, rng=2).train(train)
    X, y = rng.normal(size=(10, *shape)), rng.integers(0, 3, size=10)
    ref = TorchSequential(net)
    if bug is not None:
        bug(net)
    return lockstep(net, ref, X, y, steps=steps, lr=0.1, loss="ce", **options)


def dropout_scaling_in_eval(net):
    """Eval mode multiplies by 1 - p (the pre-inverted-dropout convention)."""
    layer, plain = net.layers[1], net.layers[1].forward
    layer.forward = lambda x, p, train: plain(x, p, train) if train else (x * (1 - layer.p), None)


def test_dropout_scaled_in_eval_mode_is_refused_at_its_output():
    r = small_run("affine8,dropout0.5,tanh,affine3", train=False, bug=dropout_scaling_in_eval)
    d = r.first_divergence
    assert not r.passed and r.drift_steps == r.kink_steps == []
    assert (d.step, d.quantity, d.layer) == (0, "out", 1), d


def running_variance_biased(net):
    """The running variance updated with the biased batch variance (torch: unbiased). The
    resync hands scratch torch's statistics after an excused step: the re-check must compare
    the statistics each step makes, not only those it is handed."""
    layer, plain = net.layers[1], net.layers[1].forward

    def forward(x, p, train):
        var_before = p["running_var"].copy()
        out, cache = plain(x, p, train)
        if train:
            v = x.var(axis=0)
            p["running_var"][...] = (1 - layer.momentum) * var_before + layer.momentum * v
        return out, cache

    layer.forward = forward


def test_running_statistics_updated_wrongly_are_refused_despite_the_resync():
    r = small_run("affine8,bn,tanh,affine3", bug=running_variance_biased)
    d = r.first_divergence
    assert not r.passed and r.drift_steps == r.kink_steps == []
    assert (d.step, d.quantity, d.layer) == (0, "stat", 1) and "running_var" in d.label, d


def test_a_momentum_buffer_started_at_a_fraction_of_the_gradient_is_refused(monkeypatch):
    from nn_parity.scratch import optim

    plain = optim.SGD._update

    def damped_start(self, p, g, state):
        first = "momentum_buffer" not in state
        plain(self, p, g, state)
        if first:  # b_1 = 0.9 g (torch: b_1 = g), the step taken from the wrong buffer
            p += self.lr * 0.1 * state["momentum_buffer"]
            state["momentum_buffer"] *= 0.9

    monkeypatch.setattr(optim.SGD, "_update", damped_start)
    opt = {"name": "sgd", "momentum": 0.9}
    r = small_run("affine8,bn,tanh,affine3", optimizer=opt)
    d = r.first_divergence
    assert not r.passed and r.drift_steps == r.kink_steps == []
    assert d.step == 0 and d.quantity in ("state", "param"), d


def wrong_on_a_smaller_batch(net):
    """Correct on batches of 4; on the last, smaller batch of an epoch the output is 1e-6 off."""
    layer, plain = net.layers[0], net.layers[0].forward

    def forward(x, p, train):
        out, cache = plain(x, p, train)
        return (out if len(x) == 4 else out + 1e-6), cache

    layer.forward = forward


def test_a_bug_only_in_the_last_smaller_batch_is_refused_there():
    r = small_run("affine8,tanh,affine3", bug=wrong_on_a_smaller_batch, steps=None,
                  batch_size=4, epochs=2)  # fmt: skip
    d = r.first_divergence
    assert not r.passed and r.drift_steps == r.kink_steps == []
    assert (d.step, d.quantity, d.layer, d.batch) == (2, "out", 0, 2), d


# --- the same attack on the built-in MLP's re-check (engine/recheck.py) --------------------


class LinearRoundingDownAtZero(nn.Linear):
    """nn.Linear, except that an output of exactly 0 comes out as -eps."""

    def forward(self, x):
        z = super().forward(x)
        return z - (z == 0) * torch.finfo(z.dtype).eps


def test_the_mlp_refuses_a_relu_derivative_of_one_at_zero_when_torch_rounds_below():
    # The MLP's re-check once excused this as drift (its backward stage runs on torch's z,
    # where the exact 0 is gone); stage 0b compares the derivative on scratch's own z. A
    # correct relu shows no mismatch at all here.
    from nn_parity import scratch
    from nn_parity.torch_ref.mirror.model import TorchMLP

    X = np.array([[1, -1], [2, 1], [-1, 3], [3, 2]], "float64")  # z[0] = 0 on sample 0 only
    y = np.array([0, 1, 1, 0], "float64")
    net = scratch.MLP([2, 2, 1], ["relu", "sigmoid"], dtype="float64")
    net.load_state_dict({
        "layers.0.weight": np.array([[1.0, 1.0], [2.0, -1.0]]), "layers.0.bias": np.zeros(2),
        "layers.1.weight": np.array([[0.5, -0.25]]), "layers.1.bias": np.zeros(1),
    })  # fmt: skip
    ref = TorchMLP.from_scratch(net)
    rounding = LinearRoundingDownAtZero(2, 2, dtype=torch.float64)
    rounding.load_state_dict(ref.layers[0].state_dict())
    ref.layers[0] = rounding
    net.layers[0].activation.backward = lambda da, z, a: np.where(z >= 0, da, 0)
    r = lockstep(net, ref, X, y, steps=5, lr=0.1)
    assert not r.within[0].all()
    assert not r.passed, (r.kink_steps, r.drift_steps)


# --- an affine bug inside the allowance of a sum that cancels ------------------------------


def cancelling_affine_run(bug=None):
    """Features of order 1e12 with spread 1, float64, a unit's weights summing to 0: its
    output is of order 1 while its allowance is 32 eps sum |x| |W| = 5e-3."""
    rng = np.random.default_rng(0)
    net = sq.from_spec("affine8,tanh,affine3", (6,), rng=0)
    w = net.params["0.weight"]
    w -= w.mean(1, keepdims=True)
    X, y = 1e12 + rng.normal(size=(32, 6)), rng.integers(0, 3, size=32)
    ref = TorchSequential(net)
    if bug is not None:
        bug(net)
    return lockstep(net, ref, X, y, steps=4, lr=1e-3, loss="ce")


def bias_one_percent_large(net):
    layer, plain = net.layers[0], net.layers[0].forward

    def forward(x, p, train):
        out, cache = plain(x, p, train)
        return out + 0.01 * p["bias"], cache

    layer.forward = forward


def test_a_correct_affine_on_cancelling_sums_passes():
    r = cancelling_affine_run()
    assert r.passed, r.first_divergence


def test_an_affine_bug_inside_a_cancelling_sums_allowance_is_not_excused():
    r = cancelling_affine_run(bias_one_percent_large)
    d = r.first_divergence
    assert not r.passed and r.drift_steps == [], r.drift_steps
    assert (d.step, d.quantity, d.layer) == (0, "out", 0), d
