"""The user's own layered network through `adapt_layers`: a CS231n-style model (NCHW, params
dict, layer functions with caches) and a list of layer objects (NHWC, kernels (KH, KW, C, F),
dense weights (in, out)) pass as written, and bugs planted between their layers are caught and
located in the user's names, at their index."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity.torch_ref import adapt_layers, check

from . import user_layered_bugs as bugs
from .user_code import cs231n_convnet as cs
from .user_code import layer_list_cnn as ll

CS_SPEC = "conv4x3p1,relu,pool2,flatten,affine16,relu,affine10"
LL_SPEC = "conv4x3,relu,pool2,flatten,affine16,relu,affine10"
LL_NAMES = ["layers[0].kernels", "layers[0].bias", "layers[4].weights", "layers[4].biases",
            "layers[6].weights", "layers[6].biases"]  # fmt: skip


def digits(n=None):
    """sklearn's digits as (N, 1, 8, 8) images in [0, 1] and their labels (no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = (d.data / 16.0).reshape(-1, 1, 8, 8), d.target
    return (X, y) if n is None else (X[:n], y[:n])


def synthetic(n=96, seed=0):
    """Random 8x8 images; the label is the brightest of ten fixed 3x3 patches."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, 1, 8, 8))
    corners = [(r, c) for r in (0, 2, 5) for c in (0, 3, 5)] + [(3, 3)]
    y = np.argmax([X[:, 0, r : r + 3, c : c + 3].sum(axis=(1, 2)) for r, c in corners], axis=0)
    return X, y


def wire_cs231n(model, form="grads"):
    """As a CS231n user would: the params dict, loss(X, y), and loss(X) for the scores."""
    if form == "step":

        def sgd_step(X, y, lr):
            loss, grads = model.loss(X, y)
            for p, w in model.params.items():
                model.params[p] = w - lr * grads[p]
            return loss

        return adapt_layers(model.params, CS_SPEC, (1, 8, 8), step=sgd_step,
                            forward=lambda X: model.loss(X))  # fmt: skip
    return adapt_layers(model.params, CS_SPEC, (1, 8, 8), grads=lambda X, y: model.loss(X, y),
                        forward=lambda X: model.loss(X))  # fmt: skip


def wire_layer_list(net, form="grads"):
    """The layer objects' arrays by path, the layer outputs the forward keeps, NHWC."""
    fn = {"grads": lambda X, y: net.gradients(X, y)} if form == "grads" else {
        "step": lambda X, y, lr: net.train_step(X, y, lr)}  # fmt: skip
    return adapt_layers(net, LL_SPEC, (8, 8, 1), layout="NHWC", names=LL_NAMES,
                        forward=lambda X: (net.forward(X), net.outputs), **fn)  # fmt: skip


def build(style, dtype=np.float64, form="grads", model_class=None):
    if style == "cs231n":
        return wire_cs231n((model_class or cs.ThreeLayerConvNet)(dtype=dtype), form)
    return wire_layer_list(ll.small_cnn(dtype=dtype), form)


def images(style, X):
    return X if style == "cs231n" else X.transpose(0, 2, 3, 1).copy()


def run(style, data, dtype=np.float64, form="grads", model_class=None, **options):
    X, y = data
    net = build(style, dtype, form, model_class)
    return check(net, images(style, X).astype(dtype), y, **options)


STYLES = ["cs231n", "layer_list"]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "opt,form,batch",
    [
        ("sgd", "grads", None),
        ("sgd", "step", 16),
        ("adam", "grads", 16),
        ("adam", "grads", None),
        ({"name": "sgd", "momentum": 0.9}, "grads", 16),
    ],
    ids=["sgd-full", "sgd-fused-mini", "adam-mini", "adam-full", "momentum-mini"],
)
@pytest.mark.parametrize("data", ["digits", "synthetic"])
def test_each_style_passes_as_written(style, dtype, opt, form, batch, data):
    d = digits(64) if data == "digits" else synthetic(64)
    lr = 0.01 if opt == "adam" else 0.1 if opt == "sgd" else 0.05
    epochs = None if batch is None else 2
    r = run(style, d, dtype, form, optimizer=opt, lr=lr, steps=8, batch_size=batch, epochs=epochs)
    assert r.passed, r.first_divergence
    labels = r.labels
    assert "loss" in labels and "prob" in labels
    grads = [x for x in labels if x.startswith("grad ")]
    assert len(grads) == 6, labels  # every gradient compared (recovered from the fused step)
    if style == "layer_list":  # the layer outputs the forward keeps, in NHWC, all compared
        assert [f"out[{l}]" for l in range(7)] == [x for x in labels if x.startswith("out[")]
    if opt == "adam":
        assert any(x.startswith("exp_avg ") for x in labels)
    if isinstance(opt, dict):
        assert any(x.startswith("momentum_buffer ") for x in labels)


@pytest.mark.parametrize("style", STYLES)
def test_a_200_step_run_passes(style):
    r = run(style, digits(256), steps=200, lr=0.1, batch_size=32, epochs=25)
    assert r.passed, r.first_divergence
    assert r.steps == 200


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_1000_steps_without_a_false_alarm(style, dtype):
    r = run(style, digits(512), dtype, steps=1000, lr=0.05, batch_size=32, epochs=63)
    assert r.passed, r.first_divergence
    assert r.steps == 1000


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_1000_adam_steps_in_float32_without_a_false_alarm(style):
    """Adam in float32 on the synthetic set: rounding carried in is re-checked (the step from
    torch's parameters gives torch's values), never reported."""
    r = run(style, synthetic(256), np.float32, optimizer="adam", lr=0.005, steps=1000,
            batch_size=32, epochs=125)  # fmt: skip
    assert r.passed, r.first_divergence
    assert r.steps == 1000


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_the_synthetic_set_trains_down(style, dtype):
    """Not only agreement: both sides learn the task (the loss falls)."""
    r = run(style, synthetic(96), dtype, steps=60, lr=0.1, batch_size=32, epochs=20)
    assert r.passed, r.first_divergence
    assert r.loss_scratch[-10:].mean() < r.loss_scratch[:10].mean()


CASES = [pytest.param(style, bug, id=f"{style}-{bug}") for style, bug in bugs.WHERE]


@pytest.mark.parametrize("style,bug", CASES)
def test_each_planted_bug_is_caught_and_located(style, bug, monkeypatch):
    model_class = bugs.plant(monkeypatch, style, bug)
    r = run(style, digits(32), steps=3, lr=0.1, model_class=model_class)
    step, label = bugs.WHERE[(style, bug)]
    d = r.first_divergence
    assert not r.passed and d is not None
    assert (d.step, d.label) == (step, label), d


def test_the_planted_bugs_are_not_there_unplanted():
    """The fixtures as written pass the same short runs the bugs fail."""
    for style in STYLES:
        r = run(style, digits(32), steps=3, lr=0.1)
        assert r.passed, r.first_divergence


@pytest.mark.parametrize(
    "style,name,user_index",
    [
        ("cs231n", "W1", (2, 0, 1, 1)),  # (F, C, KH, KW), as torch
        ("cs231n", "W2", (37, 5)),  # (in, out): torch's weight[5, 37]
        ("layer_list", "layers[0].kernels", (2, 0, 0, 3)),  # (KH, KW, C, F): torch's [3, 0, 2, 0]
        ("layer_list", "layers[4].weights", (20, 7)),
    ],
)
def test_a_divergence_is_reported_at_the_users_own_index(style, name, user_index, monkeypatch):
    """One gradient element nudged in the user's code is reported at that element, as the user
    indexes the array."""
    if style == "cs231n":
        loss = cs.ThreeLayerConvNet.loss

        def nudged(self, X, y=None):
            got = loss(self, X, y)
            if y is not None:
                got[1][name][user_index] += 1e-3
            return got

        monkeypatch.setattr(cs.ThreeLayerConvNet, "loss", nudged)
    else:
        gradients = ll.Network.gradients

        def nudged_ll(self, X, y):
            value, grads = gradients(self, X, y)
            grads[LL_NAMES.index(name)][user_index] += 1e-3
            return value, grads

        monkeypatch.setattr(ll.Network, "gradients", nudged_ll)
    r = run(style, digits(32), steps=2, lr=0.1)
    d = r.first_divergence
    assert d is not None and d.label == f"grad {name}" and d.step == 0, d
    assert tuple(d.index) == user_index
    assert d.mismatches == 1


def test_nhwc_flatten_is_mirrored_in_the_users_order():
    """The torch mirror of an NHWC network flattens (H, W, C): the same vector the user's
    Flatten makes, so the dense weights after it mean the same thing; nn.Flatten's (C, H, W)
    would not be."""
    from nn_parity.torch_ref.engine.user_layered_side import FlattenNHWC

    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4))  # NHWC
    import torch

    mine = ll.Flatten().forward(x)
    nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    assert np.array_equal(mine, FlattenNHWC()(nchw).numpy())
    assert not np.array_equal(mine, torch.nn.Flatten()(nchw).numpy())


def test_the_users_arrays_are_updated_in_their_layout():
    """After a run the user's own arrays hold the trained weights, in their shapes."""
    net = ll.small_cnn()
    shapes = [a.shape for a in (net.layers[0].kernels, net.layers[4].weights)]
    before = net.layers[0].kernels.copy()
    X, y = digits(32)
    r = check(wire_layer_list(net), images("layer_list", X), y, steps=3, lr=0.1)
    assert r.passed, r.first_divergence
    assert [a.shape for a in (net.layers[0].kernels, net.layers[4].weights)] == shapes
    assert not np.array_equal(before, net.layers[0].kernels)


def test_ambiguous_shapes_are_settled_by_a_declaration():
    """A square affine weight fits (in, out) and (out, in): refused without a declaration,
    and a wrong declaration is then a divergence, not a pass."""
    rng = np.random.default_rng(0)
    P = {"W1": rng.normal(size=(4, 4)) * 0.5, "b1": np.zeros(4)}
    X = rng.normal(size=(16, 4))
    y = rng.integers(0, 4, size=16)

    def grads(X, y):  # x @ W1 + b1: (in, out)
        z = X @ P["W1"] + P["b1"]
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        return {"W1": X.T @ p / len(y), "b1": p.sum(0) / len(y)}

    with pytest.raises(ValueError, match=r"declare which, weights=\{'W1': 'out,in'\}"):
        adapt_layers(P, "affine4", (4,), grads=grads)
    good = adapt_layers(P, "affine4", (4,), grads=grads, weights={"W1": "in,out"})
    assert check(good, X, y, steps=3, lr=0.1).passed
    wrong = adapt_layers(P, "affine4", (4,), grads=grads, weights={"W1": "out,in"})
    r = check(wrong, X, y, steps=3, lr=0.1)
    assert not r.passed and r.first_divergence.step == 0


def test_the_readme_subsection_runs_and_is_short(monkeypatch, capsys):
    """README "Your own conv net": at most 12 lines, and it runs, on the CS231n fixture."""
    import re
    import sys
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("### Your own conv net", 1)[1].split("\n## ", 1)[0]
    assert len([x for x in section.splitlines() if x.strip()]) <= 12  # prose, fences, code
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.setitem(sys.modules, "cnn", cs)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "None"


def _bn_mlp(seed=0):
    """CS231n's FullyConnectedNet with batchnorm, one hidden layer, written out: affine -
    batchnorm (training mode, batch statistics) - relu - affine - softmax, on flat inputs."""
    rng = np.random.default_rng(seed)
    params = {"W1": rng.normal(0, 0.1, (64, 16)), "b1": np.zeros(16),
              "gamma1": np.ones(16), "beta1": np.zeros(16),
              "W2": rng.normal(0, 0.1, (16, 10)), "b2": np.zeros(10)}  # fmt: skip

    def loss(X, y=None, eps=1e-5):
        p = params
        a = X @ p["W1"] + p["b1"]
        mu, var = a.mean(axis=0), a.var(axis=0)
        xhat = (a - mu) / np.sqrt(var + eps)
        h = np.maximum(0, p["gamma1"] * xhat + p["beta1"])
        scores = h @ p["W2"] + p["b2"]
        if y is None:
            return scores
        value, dscores = cs.softmax_loss(scores, y)
        dh = dscores @ p["W2"].T * (h > 0)
        dxhat = dh * p["gamma1"]
        N = len(X)
        da = (N * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0)) / (N * np.sqrt(var + eps))
        return value, {"W2": h.T @ dscores, "b2": dscores.sum(0), "gamma1": (dh * xhat).sum(0),
                       "beta1": dh.sum(0), "W1": X.T @ da, "b1": da.sum(0)}  # fmt: skip

    return params, loss


def test_a_batchnorm_net_matches_gamma_and_beta_by_order():
    """gamma and beta take the batchnorm layer's weight and bias, in the user's order; a
    gamma gradient that is off is reported as the user's gamma1."""
    params, loss = _bn_mlp()
    X, y = digits(64)
    net = adapt_layers(params, "affine16,bn,relu,affine10", (64,), grads=loss, forward=loss)
    assert [s.canonical for s in net.pmap.slots][2:4] == ["layers.1.weight", "layers.1.bias"]
    r = check(net, X.reshape(64, 64), y, steps=20, lr=0.1, batch_size=16, epochs=5)
    assert r.passed, r.first_divergence
    params, loss = _bn_mlp()

    def off(X, y=None):
        got = loss(X, y)
        if y is not None:
            got[1]["gamma1"] = got[1]["gamma1"] * 1.01
        return got

    r = check(adapt_layers(params, "affine16,bn,relu,affine10", (64,), grads=off),
              X.reshape(64, 64), y, steps=3, lr=0.1)  # fmt: skip
    assert (r.first_divergence.step, r.first_divergence.label) == (0, "grad gamma1")


def test_a_gradient_function_that_updates_is_refused():
    """grads= must leave the parameters alone: one that also steps would step twice in the
    user's own loop. Refused at the first step, the user's arrays left as they were."""
    model = cs.ThreeLayerConvNet()

    def loss_and_step(X, y):
        value, grads = model.loss(X, y)
        model.params["W3"] -= 0.1 * grads["W3"]
        return value, grads

    before = {k: v.copy() for k, v in model.params.items()}
    net = adapt_layers(model.params, CS_SPEC, (1, 8, 8), grads=loss_and_step)
    X, y = digits(16)
    with pytest.raises(ValueError, match="loss_and_step changed parameter 'W3'"):
        check(net, X, y, steps=2, lr=0.1)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())


def test_a_fused_step_that_changes_nothing_is_refused():
    model = cs.ThreeLayerConvNet()
    net = adapt_layers(model.params, CS_SPEC, (1, 8, 8), step=lambda X, y, lr: model.loss(X, y)[0])
    X, y = digits(16)
    with pytest.raises(ValueError, match="changed no parameter"):
        check(net, X, y, steps=2, lr=0.1)


def test_layer_outputs_given_by_index_are_compared(monkeypatch):
    """forward -> (scores, {layer index: output}): the layers given are compared; a pool that
    averages where the spec's maxes is found at that layer's output, not later."""

    def wire(model):
        def forward(X):
            conv_param = {"stride": 1, "pad": 1}
            pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
            p = model.params
            pooled, _ = cs.conv_relu_pool_forward(X, p["W1"], p["b1"], conv_param, pool_param)
            return model.loss(X), {2: pooled}

        return adapt_layers(model.params, CS_SPEC, (1, 8, 8), grads=model.loss, forward=forward)

    X, y = digits(32)
    r = check(wire(cs.ThreeLayerConvNet()), X, y, steps=3, lr=0.1)
    assert r.passed, r.first_divergence
    assert [x for x in r.labels if x.startswith("out[")] == ["out[2]"]

    def average_pool(x, pool_param):
        N, C, H, W = x.shape
        out = x.reshape(N, C, H // 2, 2, W // 2, 2).mean(axis=(3, 5))
        return out, (x, pool_param)

    monkeypatch.setattr(cs, "max_pool_forward", average_pool)
    r = check(wire(cs.ThreeLayerConvNet()), X, y, steps=3, lr=0.1)
    assert (r.first_divergence.step, r.first_divergence.label) == (0, "out[2]")


def _on_the_kink(relu_at_zero_passes: bool, dtype):
    """A dict-style net whose hidden unit 0 sits exactly on relu's kink for every sample and
    step: x = (t, t, s), W1[:, 0] = (0.5, -0.5, 0), b1[0] = 0, so z0 = 0.5 t - 0.5 t = 0 exactly
    (t a power of two), its gradient 0, and it never moves. `relu_at_zero_passes` is the bug
    relu'(0) = 1 (z >= 0)."""
    X = np.array([[1, 1, 0.3], [2, 2, -0.7], [0.5, 0.5, 1.1], [4, 4, 0.2]], dtype)
    y = np.array([0, 1, 2, 1])
    P = {"W1": np.array([[0.5, 0.3], [-0.5, -0.2], [0.0, 0.4]], dtype),
         "b1": np.zeros(2, dtype), "W2": np.array([[0.3, -0.2, 0.1], [0.2, 0.1, -0.4]], dtype),
         "b2": np.zeros(3, dtype)}  # fmt: skip

    def grads(X, y):
        z1 = X @ P["W1"] + P["b1"]
        a1 = np.maximum(z1, 0)
        value, dscores = cs.softmax_loss(a1 @ P["W2"] + P["b2"], y)
        dz1 = dscores @ P["W2"].T * ((z1 >= 0) if relu_at_zero_passes else (z1 > 0))
        return value, {"W1": X.T @ dz1, "b1": dz1.sum(0), "W2": a1.T @ dscores,
                       "b2": dscores.sum(0)}  # fmt: skip

    return adapt_layers(P, "affine2,relu,affine3", (3,), grads=grads), X, y


def _nudge_torch_before_step(monkeypatch, step: int):
    """torch's W1[0, 0] (its layers.0.weight[0, 0]) moved up 1 ulp before `step`: within the
    parameters' tolerance, but it lifts torch's z0 off the kink while the user's stays on it."""
    from nn_parity.torch_ref.engine.user_layered_side import UserLayeredTorchSide

    original = UserLayeredTorchSide.step

    def step_nudged(self, Xt, Yt):
        if self.stepped == step:
            import torch

            with torch.no_grad():
                w = self.by_name["layers.0.weight"]
                w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(2.0, dtype=w.dtype))
        return original(self, Xt, Yt)

    monkeypatch.setattr(UserLayeredTorchSide, "step", step_nudged)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_a_kink_crossed_by_carried_in_rounding_is_rechecked_not_reported(dtype, opt, monkeypatch):
    """The coarse re-check: the step repeats itself bit for bit (with Adam, from the state it
    started from), and from torch's parameters and state it reproduces torch's values, so the
    mismatch is the 1 ulp carried in, not the user's code; the run resynchronises."""
    _nudge_torch_before_step(monkeypatch, 1)
    net, X, y = _on_the_kink(False, dtype)
    r = check(net, X, y, steps=4, lr=0.1, optimizer=opt)
    assert r.passed, r.first_divergence
    assert "grad W1" in {r.labels[k] for k in np.flatnonzero(~r.within[1])}  # raw record
    assert r.drift_steps == [1]
    assert np.delete(r.within, 1, axis=0).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_the_recheck_refuses_a_real_difference(dtype, monkeypatch):
    """relu'(0) = 1 in the user's backward: from torch's parameters the step still gives the
    user's gradient, not torch's, so it is reported, at step 0, in the user's names."""
    net, X, y = _on_the_kink(True, dtype)
    r = check(net, X, y, steps=4, lr=0.1)
    d = r.first_divergence
    assert d is not None and (d.step, d.label) == (0, "grad W1"), d
    assert r.drift_steps == r.kink_steps == r.saturation_steps == []


def test_a_difference_made_between_steps_is_not_excused(monkeypatch):
    """torch's weight moved far past the parameters' tolerance between two steps: no step made
    that, and the re-check is not asked (carried-in check), so it is reported."""
    from nn_parity.torch_ref.engine.user_layered_side import UserLayeredTorchSide

    original = UserLayeredTorchSide.step

    def step_moved(self, Xt, Yt):
        if self.stepped == 1:
            import torch

            with torch.no_grad():
                self.by_name["layers.0.weight"][0, 0] += 1e-3
        return original(self, Xt, Yt)

    monkeypatch.setattr(UserLayeredTorchSide, "step", step_moved)
    net, X, y = _on_the_kink(False, np.float64)
    r = check(net, X, y, steps=4, lr=0.1)
    assert r.first_divergence is not None and r.first_divergence.step == 1
    assert r.drift_steps == []
