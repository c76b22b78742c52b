"""Dropout in the user's own layered network (`adapt_layers(..., dropout={3: ...})`): the mask
their code drew this step, read where it keeps it (a layer object's `self.mask`, or a function
returning CS231n's cached mask), applied by torch's `GivenMask`; planted dropout bugs caught and
located in the user's names; a mask that is not the one the code used is not excused.
Batchnorm's running statistics (`stats={1: ...}`), compared with torch's buffers every step."""

from __future__ import annotations

import types

import numpy as np
import pytest
from nn_parity.torch_ref import adapt_layers, check
from nn_parity.torch_ref.user.network import UserCodeError

from .user_code import cs231n_bn_dropout as cb
from .user_code import layer_list_mlp as lm

SPEC = cb.SPEC  # "affine32,bn,relu,dropout0.2,affine10"


def digits(n=None):
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = d.data / 16.0, d.target  # pixels / 16, as the CLI's digits
    return (X, y) if n is None else (X[:n], y[:n])


def wire_layer_list(net, mask=None, stats=True, training=True):
    """As the user's loop runs it: forward, then the backward on that forward's caches."""

    def grads(X, y):
        return net.backward_loss(y), net.gradients()

    return adapt_layers(net, SPEC, (64,), names=lm.NAMES, grads=grads,
                        forward=lambda X: (net.forward(X, training), net.outputs),
                        dropout={3: mask or "layers[3].mask"}, training=training,
                        stats={1: "layers[1]"} if stats else None)  # fmt: skip


def wire_cs231n(model, mask=None, stats=True):
    """loss(X, y) is the whole step; the mask is the one its dropout cache holds."""
    return adapt_layers(model.params, SPEC, (64,), grads=lambda X, y: model.loss(X, y),
                        dropout={3: mask or (lambda: model.caches["dropout1"][1])},
                        stats={1: lambda: model.bn_params[0]} if stats else None)  # fmt: skip


def build(style, dtype=np.float64, mask=None):
    if style == "cs231n":
        return wire_cs231n(cb.BNDropoutNet(dtype=dtype), mask)
    return wire_layer_list(lm.bn_dropout_mlp(dtype=dtype), mask)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("style", ["layer_list", "cs231n"])
def test_each_style_passes_with_its_own_masks(style, dtype):
    X, y = digits(256)
    r = check(build(style, dtype), X.astype(dtype), y, lr=0.1, batch_size=32, epochs=13)
    assert r.passed, str(r.first_divergence)
    assert len(r.loss_torch) == 104
    assert r.loss_torch[-8:].mean() < r.loss_torch[:8].mean()  # it learns


@pytest.mark.parametrize("style", ["layer_list", "cs231n"])
def test_a_mask_other_than_the_one_the_code_used_is_caught(style):
    """The refusal: torch given a mask of the right shape and scale, but not the code's."""
    fixed = (np.random.default_rng(5).random((32, 32)) < 0.8) / 0.8

    def other():
        return fixed

    X, y = digits(64)
    r = check(build(style, mask=other), X, y, lr=0.1, batch_size=32, epochs=1)
    div = r.first_divergence
    assert div is not None and div.step == 0, str(div)
    assert div.label == ("out[3]" if style == "layer_list" else "loss"), str(div)


@pytest.mark.parametrize("bug", list(lm.BUGS))
def test_layer_list_bugs_are_caught_and_located(bug):
    method, fn, where = lm.BUGS[bug]
    net = lm.bn_dropout_mlp()
    setattr(net.layers[3], method, types.MethodType(fn, net.layers[3]))
    X, y = digits(64)
    div = check(wire_layer_list(net), X, y, lr=0.1, batch_size=32, epochs=1).first_divergence
    assert div is not None and (div.step, div.label) == (0, where), str(div)


@pytest.mark.parametrize(("bug", "where"), [("dropout_backward_redrawn", "grad gamma1"),
                                            ("dropout_forward_unscaled", "loss")])  # fmt: skip
def test_cs231n_bugs_are_caught_and_located(bug, where, monkeypatch):
    monkeypatch.setattr(cb, bug.replace("_redrawn", "").replace("_unscaled", ""),
                        getattr(cb, bug))  # fmt: skip
    X, y = digits(64)
    div = check(build("cs231n"), X, y, lr=0.1, batch_size=32, epochs=1).first_divergence
    assert div is not None and (div.step, div.label) == (0, where), str(div)


def test_the_unplanted_fixtures_have_no_bug_lines():
    import inspect

    for fn in (cb.dropout_forward, cb.dropout_backward, lm.Dropout.forward, lm.Dropout.backward):
        assert "# BUG" not in inspect.getsource(fn)


def test_a_forward_and_a_step_drawing_two_masks_is_refused():
    """A grads= that runs its own forward draws a second mask: one line naming both."""
    net = lm.bn_dropout_mlp()

    def grads(X, y):
        net.forward(X)  # a second forward: a second mask
        return net.backward_loss(y), net.gradients()

    ad = adapt_layers(net, SPEC, (64,), names=lm.NAMES, grads=grads,
                      forward=lambda X: (net.forward(X), net.outputs),
                      dropout={3: "layers[3].mask"})  # fmt: skip
    X, y = digits(32)
    with pytest.raises(UserCodeError, match="drew a new mask for dropout layer 3 after"):
        check(ad, X, y, lr=0.1, steps=2)


def test_an_nhwc_mask_is_given_to_torch_in_its_layout():
    """A conv net keeping its images channels last: the mask (N, H, W, C) permuted for torch."""
    rng = np.random.default_rng(0)
    params = {"K": rng.normal(0, 0.3, (3, 3, 1, 4)), "c": np.zeros(4),
              "W": rng.normal(0, 0.1, (144, 10)), "b": np.zeros(10)}  # fmt: skip
    keep, state = 0.5, {}

    def grads(X, y):
        N = len(X)
        z = np.zeros((N, 6, 6, 4))
        for i in range(6):
            for j in range(6):
                z[:, i, j] = np.tensordot(X[:, i : i + 3, j : j + 3], params["K"], axes=3)
        z += params["c"]
        state["mask"] = (rng.random(z.shape) < keep) / keep
        d = z * state["mask"]
        s = d.reshape(N, -1) @ params["W"] + params["b"]
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ds = p.copy()
        ds[np.arange(N), y] -= 1
        ds /= N
        dz = (ds @ params["W"].T).reshape(z.shape) * state["mask"]
        dK = sum(np.tensordot(X[:, i : i + 3, j : j + 3], dz[:, i, j], axes=([0], [0]))
                 for i in range(6) for j in range(6))  # fmt: skip
        loss = -np.log(p[np.arange(N), y]).mean()
        return loss, {"K": dK, "c": dz.sum((0, 1, 2)), "W": d.reshape(N, -1).T @ ds,
                      "b": ds.sum(0)}  # fmt: skip

    net = adapt_layers(params, "conv4x3,dropout0.5,flatten,affine10", (8, 8, 1), grads=grads,
                       layout="NHWC", dropout={1: lambda: state["mask"]})  # fmt: skip
    X, y = digits(32)
    r = check(net, X.reshape(32, 8, 8, 1), y, lr=0.1, steps=20)
    assert r.passed, str(r.first_divergence)


@pytest.mark.parametrize("style", ["layer_list", "cs231n"])
def test_running_statistics_are_compared_when_named(style):
    X, y = digits(64)
    r = check(build(style), X, y, lr=0.1, batch_size=32, epochs=2)
    assert r.passed, str(r.first_divergence)
    assert {"stat layers.1.running_mean", "stat layers.1.running_var"} <= set(r.labels)
    net = wire_cs231n(cb.BNDropoutNet(), stats=False)
    r = check(net, X, y, lr=0.1, batch_size=32, epochs=1)
    assert not any(label.startswith("stat ") for label in r.labels)
    assert any("stats={1: ...}" in m for m in r.not_compared), r.not_compared


def test_running_statistics_the_code_starts_from_are_given_to_torch():
    """A network resumed mid-training: its running statistics, not torch's zeros and ones."""
    net = lm.bn_dropout_mlp()
    net.layers[1].running_mean += 0.5
    net.layers[1].running_var *= 3.0
    X, y = digits(64)
    r = check(wire_layer_list(net), X, y, lr=0.1, batch_size=32, epochs=1)
    assert r.passed, str(r.first_divergence)


def test_momentum_the_wrong_way_round_is_caught_at_the_running_mean(monkeypatch):
    monkeypatch.setattr(cb, "batchnorm_forward", cb.batchnorm_forward_momentum_swapped)
    X, y = digits(64)
    div = check(build("cs231n"), X, y, lr=0.1, batch_size=32, epochs=1).first_divergence
    assert div is not None and (div.step, div.label) == (0, "stat layers.1.running_mean")


def _trained_a_little(steps=3):
    """The layer-list network after a few steps of its own training loop: running statistics
    away from zeros and ones."""
    net = lm.bn_dropout_mlp()
    X, y = digits(96)
    for b in range(steps):
        net.forward(X[32 * b : 32 * (b + 1)])
        net.backward_loss(y[32 * b : 32 * (b + 1)])
        net.sgd(0.1)
    return net


def test_eval_mode_passes_and_compares_the_running_statistics_left_alone():
    """training=False: batchnorm by the running statistics, dropout off, torch's mirror in eval
    mode; the statistics compared (they must not move)."""
    net = _trained_a_little()
    start = net.layers[1].running_mean.copy()
    X, y = digits(128)
    r = check(wire_layer_list(net, training=False), X, y, lr=0.1, batch_size=32, epochs=3)
    assert r.passed, str(r.first_divergence)
    assert "stat layers.1.running_mean" in r.labels and "out[3]" in r.labels
    assert np.array_equal(net.layers[1].running_mean, start)


def test_eval_mode_refuses_a_network_run_in_training_mode():
    """Declared eval, run in training mode: batch statistics and masks where torch uses none."""
    net = _trained_a_little()
    ad = adapt_layers(net, SPEC, (64,), names=lm.NAMES, training=False,
                      grads=lambda X, y: (net.backward_loss(y), net.gradients()),
                      forward=lambda X: (net.forward(X, True), net.outputs))  # fmt: skip
    X, y = digits(64)
    r = check(ad, X, y, lr=0.1, batch_size=32, epochs=1)
    div = r.first_divergence
    # the batchnorm layer's output is where the two first part (the re-check's rerun, which
    # redraws the masks, does not repeat itself at out[3]: that is no place to start the report)
    assert div is not None and (div.step, div.label) == (0, "out[1]"), str(div)


@pytest.mark.parametrize("bug", list(lm.BN_BUGS))
def test_layer_list_batchnorm_bugs_are_caught(bug):
    method, fn, where = lm.BN_BUGS[bug]
    net = _trained_a_little()
    setattr(net.layers[1], method, types.MethodType(fn, net.layers[1]))
    X, y = digits(64)
    ad = wire_layer_list(net, training="eval" not in bug)
    div = check(ad, X, y, lr=0.1, batch_size=32, epochs=1).first_divergence
    assert div is not None and (div.step, div.label) == (0, where), str(div)


def test_a_rerun_sets_the_running_statistics_back_before_it_steps():
    """The coarse re-check reruns a step: the user's forward would advance their running
    statistics a second time; the rerun starts from the ones the step found."""
    from nn_parity.torch_ref.engine.setup import _optimizer_factory
    from nn_parity.torch_ref.engine.user_layered_side import user_layered_scratch_side

    net = _trained_a_little()
    X, y = digits(32)
    opt = _optimizer_factory("sgd", 0.1)
    side, Xc, Y = user_layered_scratch_side(wire_layer_list(net), None, opt, 0.1, X, y)
    start = side.get_params()
    side.step(Xc, Y)
    once = net.layers[1].running_mean.copy(), net.layers[1].running_var.copy()
    side.rerun(start, Xc, Y, None)
    assert np.array_equal(net.layers[1].running_mean, once[0])
    assert np.array_equal(net.layers[1].running_var, once[1])
