"""check_op on course-style layer solutions whose reductions keep their axes: dgamma, dbeta and
the running statistics of shape (1, D) for gamma of shape (D,) are compared as values; a shape
that differs otherwise is still refused. And the layout probe, when no layout reproduces the
user's own numbers, says that their code disagrees with every layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nn_parity.torch_ref import adapt, lockstep
from nn_parity.torch_ref.opcheck import check_op
from nn_parity.torch_ref.opcheck.spec import keepdims_fit

from .user_code import norm_layers as nl

N, D = 8, 5


def _arrays(dtype="float64"):
    rng = np.random.default_rng(0)
    x, gamma, beta = (rng.normal(size=s).astype(dtype) for s in [(N, D), D, D])
    return x, gamma, beta


def _bn(forward=nl.batchnorm_forward):
    def bn_forward(x, gamma, beta, running_mean, running_var):
        bn_param = {"mode": "train", "momentum": 0.9, "running_mean": running_mean,
                    "running_var": running_var}  # fmt: skip
        out, cache = forward(x, gamma, beta, bn_param)
        return out, cache, {k: bn_param[k] for k in ("running_mean", "running_var")}

    return bn_forward


def _check_bn(backward, dtype="float64", state_shape=(1, D)):
    x, gamma, beta = _arrays(dtype)
    return check_op(
        _bn(), backward, torch.nn.BatchNorm1d(D), inputs={"x": x},
        params={"gamma": gamma, "beta": beta}, names={"gamma": "weight", "beta": "bias"},
        state={"running_mean": np.zeros(state_shape, dtype),
               "running_var": np.ones(state_shape, dtype)},
    )  # fmt: skip


def _check_ln(backward, dtype="float64"):
    x, gamma, beta = _arrays(dtype)
    return check_op(
        lambda x, gamma, beta: nl.layernorm_forward(x, gamma, beta, {}), backward,
        torch.nn.LayerNorm(D), inputs={"x": x}, params={"gamma": gamma, "beta": beta},
        names={"gamma": "weight", "beta": "bias"},
    )  # fmt: skip


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("state_shape", [(1, D), (D,)])
def test_batchnorm_returning_keepdims_shapes_passes_as_written(dtype, state_shape):
    result = _check_bn(nl.batchnorm_backward, dtype, state_shape)
    assert result.passed, str(result)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layernorm_returning_keepdims_shapes_passes_as_written(dtype):
    result = _check_ln(nl.layernorm_backward, dtype)
    assert result.passed, str(result)


@pytest.mark.parametrize("bug", list(nl.BUGS))
def test_a_wrong_dgamma_behind_keepdims_shapes_is_caught_at_dgamma(bug):
    forward, backward = nl.BUGS[bug]
    result = _check_bn(backward) if forward is nl.batchnorm_forward else _check_ln(backward)
    assert not result.passed
    assert result.first_mismatch.name in ("gamma", "dgamma"), str(result)


def test_a_wrong_running_statistic_in_keepdims_shape_is_caught():
    def forgets_unbiasing(x, gamma, beta, bn_param):
        out, cache = nl.batchnorm_forward(x, gamma, beta, bn_param)
        bn_param["running_var"] = bn_param["running_var"] * (N - 1) / N  # the biased variance
        return out, cache

    x, gamma, beta = _arrays()
    result = check_op(
        _bn(forgets_unbiasing), nl.batchnorm_backward, torch.nn.BatchNorm1d(D), inputs={"x": x},
        params={"gamma": gamma, "beta": beta}, names={"gamma": "weight", "beta": "bias"},
        state={"running_mean": np.zeros((1, D)), "running_var": np.ones((1, D))},
    )  # fmt: skip
    assert not result.passed and result.first_mismatch.name == "running_var", str(result)


@pytest.mark.parametrize(
    "shape",
    [(D, 2), (2, D), (D + 1,), (1, D + 1)],
    ids=["extra-axis", "two-rows", "longer", "keepdims-but-longer"],
)
def test_a_gradient_whose_shape_differs_beyond_size_one_axes_is_still_refused(shape):
    def backward(dout, cache):
        dx, _, dbeta = nl.batchnorm_backward(dout, cache)
        return dx, np.zeros(shape), dbeta

    with pytest.raises(ValueError, match=r"gradient for 'gamma' has shape"):
        _check_bn(backward)


def test_state_whose_shape_differs_beyond_size_one_axes_is_still_refused():
    with pytest.raises(ValueError, match=r"has shape \(2, 5\) in torch's layout"):
        _check_bn(nl.batchnorm_backward, state_shape=(2, D))


def test_keepdims_fit_is_exactly_size_one_axes():
    assert keepdims_fit((1, 5), (5,)) and keepdims_fit((5, 1), (5,)) and keepdims_fit((1, 1), ())
    assert not keepdims_fit((5, 2), (5,)) and not keepdims_fit((2, 5), (5, 2))


# --- the layout probe says what it saw ----------------------------------------------------


def _square(bug: bool):
    rng = np.random.default_rng(0)
    P = {"W1": rng.standard_normal((3, 4)), "b1": np.zeros(4), "W2": rng.standard_normal((4, 4)),
         "b2": np.zeros(4), "W3": rng.standard_normal((4, 1)), "b3": np.zeros(1)}  # fmt: skip

    def loss_and_grads(X, y):
        a1 = np.tanh(X @ P["W1"] + P["b1"])
        a2 = np.tanh(a1 @ P["W2"] + P["b2"])
        p = 1 / (1 + np.exp(-(a2 @ P["W3"] + P["b3"])))
        d3 = (p - y.reshape(-1, 1)) / len(X)
        d2 = (d3 @ P["W3"].T) * (1 - a2**2)
        d1 = (d2 @ P["W2"].T) * (1 - a1**2) * (3 if bug else 1)  # planted: a factor in layer 1
        return {"W1": X.T @ d1, "b1": d1.sum(0), "W2": a1.T @ d2, "b2": d2.sum(0),
                "W3": a2.T @ d3, "b3": d3.sum(0)}  # fmt: skip

    X = rng.standard_normal((20, 3))
    y = (X[:, 0] > 0).astype(float)
    return P, loss_and_grads, X, y


def test_the_probe_reports_code_that_disagrees_with_every_layout():
    P, fn, X, y = _square(bug=True)
    net = adapt(P, activations=["tanh", "tanh", "sigmoid"], grads=fn)
    with pytest.raises(ValueError) as err:
        lockstep(net, None, X, y, steps=3)
    msg = str(err.value)
    assert "loss_and_grads disagrees with every layout its shapes allow" in msg, msg
    assert "W2 (4, 4) (in, out)" in msg and "relative difference" in msg
    assert "layout={'W2': 'in,out'} is the closest" in msg
    assert "cannot tell" not in msg
    # the closest layout given, the bug is located in the user's names
    net = adapt(P, activations=["tanh", "tanh", "sigmoid"], grads=fn, layout={"W2": "in,out"})
    div = lockstep(net, None, X, y, steps=3).first_divergence
    assert div is not None and (div.step, div.label) == (0, "grad W1"), str(div)


def test_the_probe_still_settles_a_square_layer_of_correct_code():
    P, fn, X, y = _square(bug=False)
    net = adapt(P, activations=["tanh", "tanh", "sigmoid"], grads=fn)
    assert lockstep(net, None, X, y, steps=3).passed
