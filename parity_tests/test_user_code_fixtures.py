"""The user-code fixtures are what they claim: each correct network is torch's network, each
catalogued bug breaks it where its entry says, each equivalent rewriting does not.

The glue here is test-only and deliberately small: it copies the user's weights into an
`nn.Sequential` with the transposes each style needs, runs both side by side, and reports the
first (step, kind, user's name) where they differ, in the lockstep's order (forward layer by
layer, loss, gradients from the last layer back, then the updated parameters). The real adapter
is nn-parity's; this only checks the fixtures it will be tested on.
"""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import torch
from torch import nn

from .helpers import make_data
from .user_code import class_style, dict_style, nielsen_style

LR = 0.5
N = 8

# float64 throughout. Both sides run the same arithmetic in different orders (BLAS vs. per-sample
# sums, torch's BCE backward dividing by p (1 - p) then multiplying by sigmoid', implied
# gradients (before - after) / lr), each O(1) value off by a few ulps per operation. Measured
# over 500 steps: at most 5.3e-15 absolute on any quantity, about 24 eps (dict style; class
# 2.7e-15, Nielsen 1.3e-15). The check is |user - torch| <= ATOL + RTOL |torch| with
# ATOL = 2**14 eps ~ 3.6e-12 and RTOL = 2**12 eps ~ 9.1e-13: a margin of ~700x on the drift,
# and the smallest bug divergence measured, 3.8e-3 (Nielsen's sigmoid' at a), is nine orders
# of magnitude above it.
EPS = float(np.finfo(np.float64).eps)
RTOL, ATOL = 2**12 * EPS, 2**14 * EPS


# --- the glue: one small class per style ---------------------------------------------------


class DictGlue:
    """params dict, weights (in, out); grads returned by `loss_and_grads`, `sgd_step` updates."""

    forward_names = (("z1", "a1"), ("z2", "a2"))
    param_names = (("W1", "b1"), ("W2", "b2"))
    loss_name = "loss"
    sizes = (3, 5, 1)
    acts = (nn.Tanh, nn.Sigmoid)

    def __init__(self, factory, seed=0):
        self.p = factory()
        self.params = self.p.init_params(self.sizes, seed)

    def layers(self):
        return [(self.params[w].T, self.params[b]) for w, b in self.param_names]

    def step(self, X, y, lr):
        rec = {}
        _, cache = self.p.forward(self.params, X)
        for z, a in self.forward_names:
            rec["forward", z], rec["forward", a] = cache[z].copy(), cache[a].copy()
        loss, grads = self.p.loss_and_grads(self.params, X, y)  # labels flat, (N,)
        rec["loss", "loss"] = np.asarray(loss)
        for w, b in self.param_names:
            rec["grad", w], rec["grad", b] = grads[w].T, grads[b]
        self.p.sgd_step(self.params, grads, lr)
        for w, b in self.param_names:
            rec["param", w], rec["param", b] = self.params[w].T, self.params[b]
        return rec


class ClassGlue:
    """attributes W1 (in, out), b1 (1, H); a fused `backward(X, y, lr)`: implied gradients."""

    forward_names = (("z1", "a1"), ("z2", "a2"))
    param_names = (("W1", "b1"), ("W2", "b2"))
    loss_name = "loss"
    sizes = (3, 4, 1)
    acts = (nn.Sigmoid, nn.Sigmoid)

    def __init__(self, factory, seed=0):
        self.net = factory(*self.sizes, seed=seed)

    def layers(self):
        return [
            (getattr(self.net, w).T, getattr(self.net, b).reshape(-1)) for w, b in self.param_names
        ]

    def step(self, X, y, lr):
        rec = {}
        y = y.reshape(-1, 1)  # (N, 1), as the style takes labels
        out = self.net.forward(X)
        for z, a in self.forward_names:
            rec["forward", z] = getattr(self.net, z).copy()
            rec["forward", a] = getattr(self.net, a).copy()
        rec["loss", "loss"] = np.asarray(self.net.compute_loss(y, out))
        before = self.layers()
        before = [(w.copy(), b.copy()) for w, b in before]
        self.net.backward(X, y, lr)
        for (w, b), (w0, b0), (w1, b1) in zip(self.param_names, before, self.layers()):
            rec["grad", w], rec["grad", b] = (w0 - w1) / lr, (b0 - b1) / lr
            rec["param", w], rec["param", b] = w1, b1
        return rec


class NielsenGlue:
    """lists of weights (out, in) and biases (out, 1); `update_mini_batch` rebinds the lists."""

    sizes = (4, 4, 4, 1)  # square hidden layers: the transposed-nabla bug keeps its shapes
    forward_names = ((None, None), (None, None), (None, "feedforward"))
    param_names = tuple((f"weights[{l}]", f"biases[{l}]") for l in range(3))
    loss_name = "total_cost"
    acts = (nn.Sigmoid, nn.Sigmoid, nn.Sigmoid)

    def __init__(self, factory, seed=0):
        self.net = factory(list(self.sizes), seed=seed)

    def layers(self):
        return [(w, b.reshape(-1)) for w, b in zip(self.net.weights, self.net.biases)]

    def step(self, X, y, lr):
        data = [(x.reshape(-1, 1), t.reshape(-1, 1)) for x, t in zip(X, y)]  # columns
        rec = {("forward", "feedforward"): self.net.feedforward(X.T).T}  # (N, 1)
        rec["loss", "total_cost"] = np.asarray(self.net.total_cost(data))
        before = [(w.copy(), b.copy()) for w, b in self.layers()]
        self.net.update_mini_batch(data, lr)
        for (w, b), (w0, b0), (w1, b1) in zip(self.param_names, before, self.layers()):
            rec["grad", w], rec["grad", b] = (w0 - w1) / lr, (b0 - b1) / lr
            rec["param", w], rec["param", b] = w1, b1
        return rec


STYLES = {"dict": (dict_style, DictGlue), "class": (class_style, ClassGlue)}
STYLES["nielsen"] = (nielsen_style, NielsenGlue)
CORRECT = {
    "dict": dict_style.program,
    "class": class_style.NeuralNetwork,
    "nielsen": nielsen_style.Network,
}


def torch_model(glue) -> nn.Sequential:
    """nn.Sequential(Linear, act, ...) holding the user's weights, bit for bit."""
    mods = []
    for (W, b), act in zip(glue.layers(), glue.acts):
        lin = nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W)))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
        mods += [lin, act()]
    return nn.Sequential(*mods)


def torch_step(model, glue, X, y, lr) -> dict:
    """One BCELoss(mean) + SGD step, recorded under the user's names in the lockstep's order."""
    rec = {}
    a = torch.from_numpy(X)
    linears = list(model)[::2]
    for lin, act, (zn, an) in zip(linears, list(model)[1::2], glue.forward_names):
        z = lin(a)  # (N, H_l)
        a = act(z)  # (N, H_l)
        rec["forward", zn], rec["forward", an] = z.detach().numpy(), a.detach().numpy()
    loss = nn.BCELoss()(a, torch.from_numpy(y.reshape(-1, 1)))
    model.zero_grad()
    loss.backward()
    rec["loss", glue.loss_name] = loss.detach().numpy()
    pairs = list(zip(linears, glue.param_names))[::-1]
    for lin, (w, b) in pairs:
        rec["grad", w], rec["grad", b] = (
            lin.weight.grad.numpy().copy(),
            lin.bias.grad.numpy().copy(),
        )
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    for lin, (w, b) in pairs:
        rec["param", w], rec["param", b] = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    return rec


def first_divergence(style, factory, steps, seed=0):
    """(step, kind, name, max |diff|) of the first disagreement, or None; also the largest
    difference seen on keys that agreed."""
    glue = STYLES[style][1](factory, seed)
    model = torch_model(glue)
    X, y = make_data(N, glue.sizes[0], seed=seed)
    worst = 0.0
    for step in range(steps):
        mine = glue.step(X, y, LR)
        ref = torch_step(model, glue, X, y, LR)
        for key, t in ref.items():
            if key not in mine:  # the style does not expose it (Nielsen's hidden z and a)
                continue
            u = np.asarray(mine[key])
            if u.shape != t.shape:
                return (step, *key, np.inf), worst
            diff = np.abs(u - t)
            if not np.all(diff <= ATOL + RTOL * np.abs(t)):  # NaN fails too
                return (step, *key, float(np.nanmax(diff))), worst
            worst = max(worst, float(diff.max(initial=0.0)))
    return None, worst


def _cases(attr):
    return [
        pytest.param(style, name, entry, id=f"{style}-{name}")
        for style, (module, _) in STYLES.items()
        for name, entry in getattr(module, attr).items()
    ]


# --- the tests --------------------------------------------------------------------------


@pytest.mark.parametrize("style", list(STYLES))
def test_correct_network_is_the_torch_network_for_500_steps(style):
    div, worst = first_divergence(style, CORRECT[style], steps=500)
    assert div is None, f"{style}: correct code diverges at {div}"
    assert worst < 1e-13, f"{style}: drift {worst:.3g} is closer to the tolerance than measured"


@pytest.mark.parametrize("style,name,entry", _cases("BUGS"))
def test_bug_diverges_within_three_steps_where_declared(style, name, entry):
    factory, where, kind, _ = entry
    div, _ = first_divergence(style, factory, steps=3)
    assert div is not None, f"{style} bug {name} went unnoticed for 3 steps"
    _, got_kind, got_where, size = div
    assert (got_kind, got_where) == (kind, where), f"{name}: first divergence {div}"
    assert size > 1e-6, f"{name}: diverges by only {size:.3g}"


@pytest.mark.parametrize("style,name,entry", _cases("EQUIVALENTS"))
def test_equivalent_rewriting_is_not_a_bug(style, name, entry):
    factory, _ = entry
    div, _ = first_divergence(style, factory, steps=20)
    assert div is None, f"{style} equivalent {name} diverges at {div}"


@pytest.mark.parametrize("style", list(STYLES))
def test_each_catalogue_is_complete_and_well_formed(style):
    module = STYLES[style][0]
    assert len(module.BUGS) >= 6 and len(module.EQUIVALENTS) >= 2
    for name, (factory, where, kind, description) in module.BUGS.items():
        assert callable(factory) and where and description, name
        assert kind in {"forward", "loss", "grad", "param"}, name
    for name, (factory, description) in module.EQUIVALENTS.items():
        assert callable(factory) and description, name


@pytest.mark.parametrize("style", list(STYLES))
def test_user_code_imports_numpy_only(style):
    # written as users write it: no nn_parity, no torch, nothing but NumPy and the stdlib
    tree = ast.parse(inspect.getsource(STYLES[style][0]))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"numpy", "types", "__future__"}, imported


def test_the_glue_reports_a_one_ulp_weight_change_nowhere_but_a_real_one_at_once():
    # the comparison can fail: torch's b2 nudged after the copy shows at the first z2
    glue = DictGlue(dict_style.program)
    model = torch_model(glue)
    X, y = make_data(N, 3)
    with torch.no_grad():
        model[2].bias += 1e-6
    ref = torch_step(model, glue, X, y, LR)
    mine = glue.step(X, y, LR)
    bad = [k for k, t in ref.items() if not np.allclose(mine[k], t, rtol=RTOL, atol=ATOL)]
    assert bad[0] == ("forward", "z2"), bad


def test_each_style_trains_with_its_own_loop():
    # the styles' own training helpers run as their tutorials use them and lower the loss
    X, y = make_data(64, 4, seed=1)
    params = dict_style.init_params((4, 5, 1), seed=0)
    first, _ = dict_style.loss_and_grads(params, X, y)
    for _ in range(200):
        loss, grads = dict_style.loss_and_grads(params, X, y)
        dict_style.sgd_step(params, grads, lr=0.5)
    assert loss < 0.6 * first

    losses = class_style.NeuralNetwork(4, 4, 1, seed=0).train(X, y.reshape(-1, 1), 200, 0.5)
    assert losses[-1] < 0.6 * losses[0]

    data = [(x.reshape(-1, 1), t.reshape(-1, 1)) for x, t in zip(X, y)]
    net = nielsen_style.Network([4, 4, 4, 1], seed=0)
    before = net.total_cost(data)
    net.SGD(data, epochs=20, mini_batch_size=8, eta=0.5)
    assert net.total_cost(data) < 0.9 * before
