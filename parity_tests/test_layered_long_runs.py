"""Long runs of layered networks in lockstep (issue 19's "done when"): a conv net and a batchnorm
+ dropout MLP, in float64 and float32, on digits and on a synthetic set, as the built-in
`Sequential` and as user code in two styles (a layer-object list; a CS231n-style class with a
params dict and cached forward/backward functions), mini-batches, no false alarm.

Default tier: a few 200-step runs. Slow tier (`-m slow`): the whole matrix, 1,000 steps each.
Nothing is loosened here: each run must PASS with the tolerances of `compare.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref import adapt_layers, check

from .test_user_layered import CS_SPEC, digits, synthetic, wire_cs231n, wire_layer_list
from .user_code import cs231n_bn_dropout as cb
from .user_code import cs231n_convnet as cs
from .user_code import layer_list_cnn as ll
from .user_code import layer_list_mlp as lm

MLP = cb.SPEC  # "affine32,bn,relu,dropout0.2,affine10"
STYLES = ["builtin", "layer_list", "cs231n"]
LR = {"conv": 0.05, "mlp": 0.1}


def dataset(name: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, 8, 8) images in [0, 1] and labels: digits (pixels / 16, as the CLI scales them;
    all 1,797 when n is None) or the synthetic set (the brightest of ten fixed patches; 512)."""
    return digits(n) if name == "digits" else synthetic(n or 512, seed=3)


def mlp_wiring(style: str, dtype) -> object:
    """The bn + dropout MLP in a user style, its masks read where the code keeps them."""
    if style == "cs231n":
        model = cb.BNDropoutNet(dtype=dtype)
        return adapt_layers(model.params, MLP, (64,), grads=lambda X, y: model.loss(X, y),
                            dropout={3: lambda: model.caches["dropout1"][1]},
                            stats={1: lambda: model.bn_params[0]})  # fmt: skip
    net = lm.bn_dropout_mlp(dtype=dtype)
    return adapt_layers(net, MLP, (64,), names=lm.NAMES,
                        grads=lambda X, y: (net.backward_loss(y), net.gradients()),
                        forward=lambda X: (net.forward(X), net.outputs),
                        dropout={3: "layers[3].mask"}, stats={1: "layers[1]"})  # fmt: skip


def network(kind: str, style: str, dtype):
    """(the network to check, X as it takes it from (N, 1, 8, 8) images)."""
    flat = lambda X: X.reshape(len(X), -1)  # noqa: E731
    if style == "builtin":
        spec, shape = (CS_SPEC, (1, 8, 8)) if kind == "conv" else (MLP, (64,))
        net = sq.from_spec(spec, shape, dtype=dtype, rng=0)
        return net, (lambda X: X) if kind == "conv" else flat
    if kind == "mlp":
        return mlp_wiring(style, dtype), flat
    if style == "cs231n":
        return wire_cs231n(cs.ThreeLayerConvNet(dtype=dtype)), lambda X: X
    return wire_layer_list(ll.small_cnn(dtype=dtype)), lambda X: X.transpose(0, 2, 3, 1).copy()


def long_run(kind, style, dtype, data, steps, n=None, batch=32):
    X, y = dataset(data, n)
    n = len(X)
    net, shape = network(kind, style, dtype)
    epochs = -(-steps // -(-n // batch))
    r = check(net, np.ascontiguousarray(shape(X), dtype=dtype), y, lr=LR[kind], steps=steps,
              batch_size=batch, epochs=epochs, seed=0)  # fmt: skip
    return r


def _assert_passed(r, steps):
    assert r.passed, str(r.first_divergence)
    assert r.steps == steps
    assert np.isfinite(r.loss_torch).all()


DEFAULT = [("conv", "cs231n", np.float32, "digits"), ("conv", "layer_list", np.float64,
           "synthetic"), ("mlp", "layer_list", np.float32, "digits"), ("mlp", "cs231n",
           np.float64, "synthetic"), ("mlp", "builtin", np.float32, "synthetic")]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "style", "dtype", "data"),
    DEFAULT,
    ids=["-".join((k, s, np.dtype(t).name, d)) for k, s, t, d in DEFAULT],
)
def test_a_200_step_run_passes(kind, style, dtype, data):  # fmt: skip
    r = long_run(kind, style, dtype, data, steps=200, n=256)
    _assert_passed(r, 200)
    assert r.loss_torch[-20:].mean() < r.loss_torch[:20].mean()  # it trains


# Known, kept as it is (measured 2026-12-05, torch 2.13.0 CPU): conv-f32-digits-builtin
# first diverges at step 211 (epoch 3, batch 40), grad layers.0.weight, rel 0.043. Cause: a
# max-pool near-tie flipped by carried-in rounding: sample 15 of that batch, channel 0,
# window (0, 2) holds 0.8957083 and 0.8957084 one ulp apart; torch's parameters, 2.4e-7 off
# scratch's after 211 steps, order the two the other way, so the pool routes the gradient
# to another pixel. A rounding event the layered re-check (another branch) is to excuse; the
# test stays as it is, tolerances untouched, until it does.
@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("data", ["digits", "synthetic"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_1000_steps_without_a_false_alarm(kind, dtype, data, style):
    r = long_run(kind, style, dtype, data, steps=1000)
    _assert_passed(r, 1000)
