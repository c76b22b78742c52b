"""The scratch side on its own: gradients against finite differences, losses against their
docstring formulas and torch, activations at the extremes, weights across both worlds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from nn_parity import scratch
from nn_parity.scratch.activations import ACTIVATIONS
from nn_parity.scratch.init import INITS
from nn_parity.torch_ref import TorchMLP, assert_parity, scratch_to_torch, torch_to_scratch

from parity_tests.helpers import make_data, make_pair

SMOOTH = ["sigmoid", "tanh", "identity"]


@pytest.mark.parametrize("loss", ["bce", "bce-logits"])
@pytest.mark.parametrize("act", [*SMOOTH, "relu", "leaky_relu:0.1"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_backward_matches_central_differences(act, loss, bias):
    loss_s = scratch.get_loss(loss)
    X, y = make_data(12, 3, seed=7)
    net = scratch.MLP(
        [3, 5, 4, 1], [act, act, loss_s.output_activation], bias=bias, init="normal", rng=3
    )
    net.flat_params *= 4  # weights of order 0.4: pre-activations clear of the kink
    out, cache = net.forward(X)
    _, lcache = loss_s.forward(out, y[:, None])
    grads = {k: g.copy() for k, g in net.backward(loss_s.backward(lcache), cache).items()}
    f = scratch.loss_fn(net, loss_s, X, y[:, None])
    for name, p in net.params.items():
        if act.startswith(("relu", "leaky")):
            # Skip entries whose +-eps probes would straddle a kink: there the central difference
            # averages two slopes and is no oracle.
            zs = np.concatenate([c[1].ravel() for c in cache[:-1]])
            assert np.abs(zs).min() > 1e-4, "a pre-activation sits on the kink; pick another seed"
        fd = scratch.numerical_gradient(f, p)
        np.testing.assert_allclose(grads[name], fd, rtol=1e-6, atol=1e-9, err_msg=name)


def test_numerical_gradient_restores_the_parameters():
    net = scratch.MLP([2, 3, 1], ["tanh", "sigmoid"], rng=0)
    before = net.flat_params.copy()
    X, y = make_data(4, 2)
    scratch.numerical_gradient(
        scratch.loss_fn(net, scratch.BCELoss(), X, y[:, None]), net.params["layers.0.weight"]
    )
    assert np.array_equal(before, net.flat_params)


def test_bce_matches_its_docstring_formula():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, (50, 1))
    y = rng.integers(0, 2, (50, 1)).astype(float)
    for reduction, reduce in (("mean", np.mean), ("sum", np.sum)):
        loss = scratch.BCELoss(reduction)
        value, cache = loss.forward(p, y)
        assert value == pytest.approx(reduce(-(y * np.log(p) + (1 - y) * np.log(1 - p))), rel=1e-14)
        n = len(p) if reduction == "mean" else 1
        np.testing.assert_allclose(loss.backward(cache), (p - y) / (p * (1 - p)) / n, rtol=1e-14)

        z = rng.normal(0, 3, (50, 1))
        lg = scratch.BCEWithLogitsLoss(reduction)
        value, cache = lg.forward(z, y)
        s = 1 / (1 + np.exp(-z))
        assert value == pytest.approx(reduce((1 - y) * z - np.log(s)), rel=1e-13)
        np.testing.assert_allclose(lg.backward(cache), (s - y) / n, rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_losses_match_torch_at_and_around_saturation(dtype, reduction):
    p = np.array([0.0, 1e-45, 1e-30, 1e-8, 0.3, 0.5, 1 - 1e-8, 1.0], dtype=dtype).reshape(-1, 1)
    z = np.array([-1e4, -800, -40, -1, 0, 1, 40, 800, 1e4], dtype=dtype).reshape(-1, 1)
    for x, name, tmod in (
        (p, "bce", torch.nn.BCELoss),
        (z, "bce-logits", torch.nn.BCEWithLogitsLoss),
    ):
        for label in (0.0, 1.0):
            y = np.full_like(x, label)
            loss = scratch.get_loss(name, reduction)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no overflow or divide-by-zero warnings
                value, cache = loss.forward(x, y)
                grad = loss.backward(cache)
            xt = torch.from_numpy(x).requires_grad_()
            lt = tmod(reduction=reduction)(xt, torch.from_numpy(y))
            lt.backward()
            assert np.isfinite(value) and np.all(np.isfinite(grad))
            assert_parity(np.asarray(value, dtype), lt, quantity="loss")
            assert_parity(grad, xt.grad, quantity="grad")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_activations_match_torch_without_warnings_at_extremes(name, dtype):
    z = np.array([-1e4, -800, -50, -1, -1e-30, 0.0, 1e-30, 1, 50, 800, 1e4], dtype=dtype)
    act = scratch.get_activation(name)
    ref = TorchMLP([1, 1], [name])._modules["acts"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = act.forward(z)
        dz = act.backward(np.ones_like(z), z, a)
    zt = torch.from_numpy(z.copy()).requires_grad_()
    at = ref(zt)
    at.sum().backward()
    assert_parity(a, at, quantity="a")
    assert_parity(dz, zt.grad, quantity="grad")


def test_sigmoid_keeps_nan():
    assert np.isnan(scratch.sigmoid(np.array([np.nan]))).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weights_cross_both_ways_bit_for_bit(dtype):
    net, ref = make_pair([3, 7, 2, 1], ["relu", "tanh", "sigmoid"], dtype=dtype, seed=9)
    for name, t in ref.named_parameters():
        assert np.array_equal(t.detach().numpy(), net.params[name])
        assert t.dtype == getattr(torch, dtype)
    with torch.no_grad():
        for t in ref.parameters():
            t.mul_(3).add_(0.25)
    torch_to_scratch(ref, net)
    for name, t in ref.named_parameters():
        assert np.array_equal(t.detach().numpy(), net.params[name])
    back = ref.to_scratch()
    assert np.array_equal(back.flat_params, net.flat_params)
    assert [a.name for a in back.activations] == ["relu", "tanh", "sigmoid"]


def test_weight_copy_names_the_mismatch():
    net = scratch.MLP([3, 4, 1], ["tanh", "sigmoid"])
    with pytest.raises(
        ValueError, match=r"layers.0.weight: scratch shape \(4, 3\), torch shape \(5, 3\)"
    ):
        scratch_to_torch(net, TorchMLP([3, 5, 1], ["tanh", "sigmoid"]))
    with pytest.raises(ValueError, match=r"torch lacks \['layers.0.bias'"):
        scratch_to_torch(net, TorchMLP([3, 4, 1], ["tanh", "sigmoid"], bias=False))
    with pytest.raises(TypeError, match="dtype"):
        scratch_to_torch(net, TorchMLP([3, 4, 1], ["tanh", "sigmoid"], dtype="float32"))


def test_load_state_dict_names_missing_extra_and_misshaped():
    net = scratch.MLP([2, 3, 1], ["tanh", "sigmoid"])
    state = net.state_dict()
    state["layers.9.weight"] = state.pop("layers.1.weight")
    with pytest.raises(
        ValueError, match=r"missing \['layers.1.weight'\], unexpected \['layers.9.weight'\]"
    ):
        net.load_state_dict(state)
    state = net.state_dict()
    state["layers.0.bias"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"layers.0.bias: expected shape \(3,\), got \(4,\)"):
        net.load_state_dict(state)


@pytest.mark.parametrize("scheme", sorted(INITS))
def test_init_is_seeded_and_scaled(scheme):
    a = scratch.MLP([50, 40, 1], ["tanh", "sigmoid"], init=scheme, rng=1)
    b = scratch.MLP([50, 40, 1], ["tanh", "sigmoid"], init=scheme, rng=1)
    c = scratch.MLP([50, 40, 1], ["tanh", "sigmoid"], init=scheme, rng=2)
    assert np.array_equal(a.flat_params, b.flat_params)
    assert not np.array_equal(a.flat_params, c.flat_params)
    W = a.params["layers.0.weight"]
    expected_std = {
        "xavier_uniform": np.sqrt(2 / 90),
        "xavier_normal": np.sqrt(2 / 90),
        "he_uniform": np.sqrt(2 / 50),
        "he_normal": np.sqrt(2 / 50),
        "normal": 0.1,
        "uniform": 0.1 / np.sqrt(3),
        "torch_default": 1 / np.sqrt(50) / np.sqrt(3),
    }[scheme]
    assert W.std() == pytest.approx(expected_std, rel=0.1)


def test_network_refuses_bad_architecture():
    with pytest.raises(
        ValueError, match="2 layers in sizes \\[2, 3, 1\\] need 2 activations, got 1"
    ):
        scratch.MLP([2, 3, 1], ["sigmoid"])
    with pytest.raises(TypeError, match="one per layer"):
        scratch.MLP([2, 3, 1], "sigmoid")
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        scratch.MLP([2, 1], ["softplus"])
    with pytest.raises(ValueError, match="positive integers, got 0"):
        scratch.MLP([2, 0, 1], ["tanh", "sigmoid"])
    with pytest.raises(ValueError, match="unsupported dtype"):
        scratch.MLP([2, 1], ["sigmoid"], dtype="float16")
    with pytest.raises(ValueError, match="unknown init 'glorot'"):
        scratch.MLP([2, 1], ["sigmoid"], init="glorot")
    with pytest.raises(ValueError, match=r"input must have shape \(N, 2\)"):
        scratch.MLP([2, 1], ["sigmoid"]).forward(np.zeros((3, 5)))


def test_finite_differences_across_a_relu_kink_go_one_sided():
    # A unit whose pre-activation sits at z = 1e-8 on one sample: a central probe of eps = 1e-6
    # crosses the kink and averages two slopes; the kink-aware gradient must not.
    net = scratch.MLP([1, 1, 1], ["relu", "sigmoid"], rng=0)
    net.params["layers.0.weight"][...] = 1.0
    net.params["layers.0.bias"][...] = 0.0
    net.params["layers.1.weight"][...] = 2.0
    X = np.array([[1e-8], [1.0]])
    Y = np.array([[1.0], [0.0]])
    loss = scratch.BCELoss()
    out, cache = net.forward(X)
    _, lcache = loss.forward(out, Y)
    analytic = net.backward(loss.backward(lcache), cache)["layers.0.bias"].copy()

    central = scratch.numerical_gradient(
        scratch.loss_fn(net, loss, X, Y), net.params["layers.0.bias"]
    )
    fd, kinks = scratch.gradcheck.network_gradient(net, loss, X, Y, "layers.0.bias")
    assert abs(central[0] - analytic[0]) > 1e-3  # the naive probe is fooled
    assert fd[0] == pytest.approx(analytic[0], rel=1e-6) and kinks == []
