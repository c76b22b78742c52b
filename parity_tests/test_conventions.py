"""Loss conventions, declared once on the scratch loss: the torch side computes the same
objective, the fixtures written in real code's idioms pass once their convention is declared,
their planted bugs are caught in the user's names, and an undeclared convention is named before
any other cause, without masking a hidden layer's bug once declared."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nn_parity import scratch
from nn_parity.scratch import get_loss
from nn_parity.torch_ref import adapt, check, lockstep
from nn_parity.torch_ref.frontends.cli import main
from nn_parity.torch_ref.mirror.model import TorchMLP, torch_loss

from .helpers import make_data
from .user_code import clipped_bce, network2_l2, nielsen_quadratic

# --- the objective, scratch against torch autograd ------------------------------------------

CASES = [
    ("mse", {"scale": 0.5}),
    ("mse", {"reduction": "samples"}),
    ("mse", {"reduction": "samples", "scale": 0.5}),
    ("mse", {"reduction": "sum", "scale": 0.5}),
    ("bce-logits", {"reduction": "samples", "scale": 2.0}),
    ("ce", {"reduction": "samples", "scale": 0.5, "weight": np.array([1.0, 2.0, 0.5])}),
    ("nll", {"reduction": "sum", "scale": 0.5}),
    ("bce", {"clip": 1e-7}),
    ("mse", {"l2": 0.3}),
    ("mse", {"l2": 0.3, "l2_form": "full", "l2_on": "all"}),
    ("bce", {"l2": 0.3, "l2_n": 50, "l2_on": ["layers.0.bias", "layers.1.weight"]}),
]


def _problem(name, seed=0):
    """Outputs in the loss's form (N = 6), targets, and two layers' parameters."""
    rng = np.random.default_rng(seed)
    C = 3 if name in ("ce", "nll", "mse") else 1
    out = rng.standard_normal((6, C))
    if name == "bce":
        out = 1 / (1 + np.exp(-6 * out))
        out[0, 0] = 1e-9  # saturated: the clip matters here
    if name == "nll":
        out = scratch.activations.log_softmax(out)
    y = {
        "ce": rng.integers(0, 3, 6),
        "nll": rng.integers(0, 3, 6),
        "mse": rng.standard_normal((6, 3)),
    }
    y = y.get(name, (rng.random(6) > 0.5).astype(float))
    params = {
        "layers.0.weight": rng.standard_normal((4, 2)),
        "layers.0.bias": rng.standard_normal(4),
        "layers.1.weight": rng.standard_normal((C, 4)),
        "layers.1.bias": rng.standard_normal(C),
    }
    return out, y, params


def _formula(loss, out, Y, params):
    """The objective as docs/conventions.md writes it, from the plain torch loss in float64."""
    plain = scratch.LOSSES[loss.name](
        "sum",
        **{k: v for k, v in loss.options.items() if k in ("weight", "label_smoothing", "clip")},
    )
    total = plain.forward(out, Y)[0]
    R = {"sum": 1, "samples": len(out)}.get(loss.reduction)
    if R is None:
        R = (
            out.size
            if loss.task != "multiclass"
            else (len(out) if loss.options.get("weight") is None else loss.weight[Y].sum())
        )
    c = loss.l2 / loss.l2_n / (2 if loss.l2_form == "half" else 1)
    names = scratch.conventions.l2_names(loss.l2_on, list(params)) if loss.l2 else []
    return loss.scale * total / R + c * sum(float((params[n] ** 2).sum()) for n in names)


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_the_declared_objective_and_its_gradients_match_torch_autograd(name, opts):
    out, y, params = _problem(name)
    opts = dict(opts)
    loss = get_loss(name, opts.pop("reduction", "mean"), **opts)
    Y = loss.targets(y, out.shape[1])
    value, cache = loss.forward(out, Y)
    pen, dpen = loss.penalty(params)
    dout = loss.backward(cache)

    ot = torch.from_numpy(out.copy()).requires_grad_()
    pt = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in params.items()}
    lt = torch_loss(loss, params=pt)(ot, torch.from_numpy(Y))
    lt.backward()
    assert value + pen == pytest.approx(lt.item(), rel=1e-12)
    assert value + pen == pytest.approx(_formula(loss, out, Y, params), rel=1e-12)
    np.testing.assert_allclose(dout, ot.grad.numpy(), rtol=1e-12, atol=1e-300)
    for k, p in pt.items():
        tg = np.zeros_like(params[k]) if p.grad is None else p.grad.numpy()
        np.testing.assert_allclose(dpen.get(k, np.zeros_like(params[k])), tg, rtol=1e-12)


@pytest.mark.parametrize("name,opts", CASES[:-3], ids=[f"{n}-{o}" for n, o in CASES[:-3]])
def test_a_convention_torch_does_not_share_is_seen(name, opts):
    """The check above can fail: torch's plain loss against the declared one differs."""
    out, y, _ = _problem(name)
    opts = dict(opts)
    loss = get_loss(name, opts.pop("reduction", "mean"), **opts)
    Y = loss.targets(y, out.shape[1])
    plain = torch_loss(get_loss(name, **{k: v for k, v in opts.items() if k == "weight"}))
    assert loss.forward(out, Y)[0] != pytest.approx(
        plain(torch.from_numpy(out), torch.from_numpy(Y)).item(), rel=1e-6
    )


# --- the built-in network: any output torch accepts ------------------------------------------


@pytest.mark.parametrize(
    "last,loss",
    [
        ("sigmoid", get_loss("mse", scale=0.5)),
        ("softmax", get_loss("mse", reduction="samples")),
        ("tanh", "mse"),
        ("softmax", "ce"),
        ("sigmoid", "bce-logits"),
    ],
)
def test_the_built_in_network_takes_any_output_torch_accepts(last, loss):
    C = 1 if last == "sigmoid" or loss == "bce-logits" else 3
    net = scratch.MLP([2, 5, C], ["tanh", last], rng=0)
    X, y = make_data(16, 2, seed=3)
    if get_loss(loss).name == "ce":
        y = np.arange(16) % 3
    elif C == 3:
        y = np.random.default_rng(0).random((16, 3))
    result = lockstep(net, TorchMLP.from_scratch(net), X, y, steps=100, lr=0.3, loss=loss)
    assert result.passed, str(result.first_divergence)


# --- the fixtures ------------------------------------------------------------------------------


def pairs(X, y):
    return list(zip(X[:, :, None], np.reshape(y, (-1, 1, 1))))


def wire_quadratic(factory, loss, loss_fn=True):
    net = factory([4, 4, 4, 1], seed=0)
    return adapt(
        net,
        names=["weights", "biases"],
        activations=["sigmoid"] * 3,
        loss=loss,
        forward=lambda X: np.hstack([net.feedforward(x[:, None]) for x in X]).T,
        loss_fn=(lambda X, y: net.cost(pairs(X, y))) if loss_fn else None,
        step=lambda X, y, lr: net.update_mini_batch(pairs(X, y), lr),
    )


LMBDA, N = 0.5, 16


def wire_l2(factory, loss, loss_fn=True):
    net = factory([4, 4, 4, 1], seed=0)
    return adapt(
        net,
        names=["weights", "biases"],
        activations=["sigmoid"] * 3,
        loss=loss,
        forward=lambda X: np.hstack([net.feedforward(x[:, None]) for x in X]).T,
        loss_fn=(lambda X, y: net.total_cost(pairs(X, y), LMBDA)) if loss_fn else None,
        step=lambda X, y, lr: net.update_mini_batch(pairs(X, y), lr, LMBDA, N),
    )


def wire_clipped(factory, loss, loss_fn=True):
    model = factory(2, 6, seed=0)
    model.dense2.weights *= 40  # large logits: one sample saturates, where the clip matters
    return adapt(
        model,
        names=["dense1.weights", "dense1.biases", "dense2.weights", "dense2.biases"],
        activations=["tanh", "sigmoid"],
        loss=loss,
        forward=model.forward,
        step=lambda X, y, lr: model.train_step(X, y, lr),
    )


def clipped_data():
    X, y = make_data(16, 2, seed=1)
    y[11] = 1.0  # the sample whose p is 2e-9 at the start: saturated and wrong
    return X, y


FIXTURES = {  # module, wiring, the one-line declaration, data, lr
    "nielsen-quadratic": (
        nielsen_quadratic,
        wire_quadratic,
        get_loss("mse", scale=0.5),
        lambda: make_data(N, 4, seed=1),
        0.5,
    ),
    "network2-l2": (
        network2_l2,
        wire_l2,
        get_loss("bce", l2=LMBDA, l2_n=N),
        lambda: make_data(N, 4, seed=1),
        0.5,
    ),
    "clipped-bce": (clipped_bce, wire_clipped, get_loss("bce", clip=1e-7), clipped_data, 0.1),
}
CORRECT = {
    "nielsen-quadratic": nielsen_quadratic.Network,
    "network2-l2": network2_l2.Network,
    "clipped-bce": clipped_bce.Model,
}


def run(style, factory, declared: bool, steps: int, **wiring):
    _, wire, loss, data, lr = FIXTURES[style]
    X, y = data()
    return check(wire(factory, loss if declared else loss.name, **wiring), X, y, steps=steps, lr=lr)


@pytest.mark.parametrize("style", list(FIXTURES))
def test_each_fixture_passes_as_written_once_its_convention_is_declared(style):
    result = run(style, CORRECT[style], True, 300)
    assert result.passed, str(result.first_divergence)
    assert result.loss_scratch[-1] < result.loss_scratch[0]


UNDECLARED = {  # what the report says before the convention is declared
    "nielsen-quadratic": ("loss", "convention", "it is torch's mse with scale 0.5: declare it"),
    "network2-l2": ("grad weights[2]", "convention", "with l2=0.03125, l2_n=1: declare it"),
    "clipped-bce": (
        "loss",
        "saturation",
        "declare it if that is your cost (loss=get_loss('bce', clip=1e-07))",
    ),
}


@pytest.mark.parametrize("style", list(FIXTURES))
def test_an_undeclared_convention_is_named_with_its_declaration(style):
    label, cause, words = UNDECLARED[style]
    div = run(
        style, CORRECT[style], False, 5, loss_fn=style == "nielsen-quadratic"
    ).first_divergence
    assert div is not None and div.step == 0 and div.label == label, str(div)
    assert div.diagnosis and div.diagnosis["cause"] == cause, div.diagnosis
    assert words in div.diagnosis["explanation"], div.diagnosis
    assert "learning rate" not in div.diagnosis["explanation"]  # lr is 0.5 too in the first


BUG_CASES = [
    pytest.param(style, name, id=f"{style}-{name}")
    for style, (module, *_) in FIXTURES.items()
    for name in module.BUGS
]


@pytest.mark.parametrize("style,name", BUG_CASES)
def test_each_planted_bug_is_caught_and_located_once_the_convention_is_declared(style, name):
    factory, where, kind, _ = FIXTURES[style][0].BUGS[name]
    div = run(style, factory, True, 5).first_divergence
    assert div is not None, f"{name} was not caught"
    expected = {"grad": f"grad {where}", "loss": "loss"}[kind]
    assert div.label == expected and div.step == 0, str(div)
    if kind == "grad" and style != "clipped-bce":
        # the finite differences are of the declared objective, its L2 term included
        assert div.fd_agrees_with == "torch", str(div)


def test_a_hidden_layer_bug_is_masked_by_an_undeclared_scale_and_surfaces_once_declared():
    bug = nielsen_quadratic.HiddenSigmoidPrimeOfActivation
    clean = run("nielsen-quadratic", nielsen_quadratic.Network, False, 5).first_divergence
    masked = run("nielsen-quadratic", bug, False, 5).first_divergence
    assert (masked.label, masked.diagnosis) == (clean.label, clean.diagnosis)  # the same report
    surfaced = run("nielsen-quadratic", bug, True, 5).first_divergence
    assert surfaced.label == "grad weights[1]" and surfaced.fd_agrees_with == "torch", str(surfaced)
    hidden_l2 = run("network2-l2", network2_l2.HiddenSigmoidForPrime, True, 5).first_divergence
    assert hidden_l2.label == "grad weights[1]" and hidden_l2.fd_agrees_with == "torch"


@pytest.mark.parametrize(
    "style,loss",
    [
        ("nielsen-quadratic", get_loss("mse", scale=0.25)),
        ("nielsen-quadratic", get_loss("mse", reduction="sum", scale=0.5)),
        ("network2-l2", get_loss("bce", l2=LMBDA)),  # lmbda without its 1/n
        ("network2-l2", get_loss("bce", l2=LMBDA, l2_n=N, l2_on="all")),  # the biases too
        ("network2-l2", get_loss("bce", l2=LMBDA, l2_n=N, l2_form="full")),
        ("clipped-bce", get_loss("bce", clip=1e-8)),
    ],
)
def test_a_declaration_excuses_only_its_exact_factor_or_term(style, loss):
    _, wire, _, data, lr = FIXTURES[style]
    X, y = data()
    result = check(wire(CORRECT[style], loss), X, y, steps=5, lr=lr)
    assert not result.passed


def test_l2_on_names_the_users_parameters():
    X, y = make_data(N, 4, seed=1)
    on = get_loss("bce", l2=LMBDA, l2_n=N, l2_on=["weights[0]", "weights[1]", "weights[2]"])
    assert check(wire_l2(network2_l2.Network, on), X, y, steps=50, lr=0.5).passed
    some = get_loss("bce", l2=LMBDA, l2_n=N, l2_on=["weights[0]", "weights[1]"])
    div = check(wire_l2(network2_l2.Network, some), X, y, steps=5, lr=0.5).first_divergence
    assert div is not None and div.label == "loss"


def test_the_fixtures_learn_as_their_authors_ran_them():
    X, y = make_data(N, 4, seed=1)
    net = nielsen_quadratic.Network([4, 4, 4, 1], seed=0)
    data = pairs(X, y)
    before = net.cost(data)
    for _ in range(100):
        net.update_mini_batch(data, 2.0)
    assert net.cost(data) < 0.9 * before
    net2 = network2_l2.Network([4, 4, 4, 1], seed=0)
    before = net2.total_cost(data, LMBDA)
    for _ in range(100):
        net2.update_mini_batch(data, 0.5, LMBDA, len(data))
    assert net2.total_cost(data, LMBDA) < 0.9 * before
    model = clipped_bce.Model(2, 6, seed=0)
    X2, y2 = make_data(N, 2, seed=1)
    losses = [model.train_step(X2, y2, 0.5) for _ in range(100)]
    assert losses[-1] < 0.9 * losses[0]


# --- no false alarm: declared conventions, L2 included, on hand-written code ------------------


@st.composite
def l2_configs(draw):
    """A tanh network ending in a sigmoid, its loss with drawn conventions, L2 always on."""
    loss = draw(st.sampled_from(["mse", "bce"]))
    options = {
        "reduction": draw(st.sampled_from(["mean", "samples", "sum"])),
        "scale": draw(st.sampled_from([1.0, 0.5, 2.0])),
        "l2": draw(st.sampled_from([0.01, 0.1, 1.0])),
        "l2_form": draw(st.sampled_from(["half", "full"])),
        "l2_n": draw(st.sampled_from([1, 50])),
        "l2_on": draw(st.sampled_from(["weights", "all"])),
    }
    widths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=2))
    sizes = (draw(st.integers(1, 5)), *widths, 1)
    n = draw(st.integers(1, 32))
    return loss, options, sizes, n, draw(st.sampled_from([0.01, 0.1])), draw(st.integers(0, 999))


def hand_written(sizes, loss, options, seed):
    """Written from the declaration's formula alone: W (in, out), the L2 term's 2 c W added to
    the gradient, the loss with its term."""
    rng = np.random.default_rng(seed)
    P = {}
    for l, (d, h) in enumerate(itertools.pairwise(sizes), start=1):
        P[f"W{l}"], P[f"b{l}"] = rng.standard_normal((d, h)) / np.sqrt(d), np.zeros(h)
    L = len(sizes) - 1
    on = [k for k in P if options["l2_on"] == "all" or k.startswith("W")]
    c = options["l2"] / options["l2_n"] / (2 if options["l2_form"] == "half" else 1)

    def grads(X, y):
        y = y.reshape(-1, 1)
        acts = [X]
        for l in range(1, L + 1):
            z = acts[-1] @ P[f"W{l}"] + P[f"b{l}"]
            acts.append(1 / (1 + np.exp(-z)) if l == L else np.tanh(z))
        p = acts[-1]
        R = {"mean": p.size, "samples": len(p), "sum": 1}[options["reduction"]]
        k = options["scale"] / R
        if loss == "mse":
            value = k * np.sum((p - y) ** 2)
            dz = k * 2 * (p - y) * p * (1 - p)
        else:
            value = -k * np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))
            dz = k * (p - y)
        value += c * sum(np.sum(P[n] ** 2) for n in on)
        G = {}
        for l in range(L, 0, -1):
            G[f"W{l}"], G[f"b{l}"] = acts[l - 1].T @ dz, dz.sum(axis=0)
            dz = (dz @ P[f"W{l}"].T) * (1 - acts[l - 1] ** 2)
        return value, {n: G[n] + (2 * c * P[n] if n in on else 0) for n in P}

    layout = {k: "in,out" for k in P if k.startswith("W")}
    return P, grads, layout


@given(cfg=l2_configs())
@settings(deadline=None)
def test_declared_conventions_with_l2_never_raise_a_false_alarm(cfg):
    loss, options, sizes, n, lr, seed = cfg
    P, grads, layout = hand_written(sizes, loss, options, seed)
    rng = np.random.default_rng(seed + 1)
    X, y = rng.standard_normal((n, sizes[0])), (rng.random(n) > 0.5).astype(float)
    opts = dict(options)
    declared = get_loss(loss, opts.pop("reduction"), **opts)
    net = adapt(P, activations=["tanh"] * (len(sizes) - 2) + ["sigmoid"], loss=declared,
                grads=grads, layout=layout)  # fmt: skip
    result = check(net, X, y, steps=10, lr=lr)
    assert result.passed, f"{cfg}\n{result.first_divergence}"


def test_the_l2_sweep_can_fail():
    """The sweep's check sees an L2 term the declaration leaves out."""
    options = {"reduction": "mean", "scale": 1.0, "l2": 0.1, "l2_form": "half", "l2_n": 1,
               "l2_on": "weights"}  # fmt: skip
    P, grads, layout = hand_written((3, 4, 1), "bce", options, 0)
    X, y = make_data(8, 3, seed=0)
    net = adapt(P, activations=["tanh", "sigmoid"], loss="bce", grads=grads, layout=layout)
    assert not check(net, X, y, steps=3, lr=0.1).passed


def test_the_record_names_the_declared_cost():
    result = run("network2-l2", network2_l2.Network, True, 2)
    assert result.config["reduction"] == "mean, l2=0.5, l2_n=16"
    assert (
        run("nielsen-quadratic", nielsen_quadratic.Network, False, 2).config["reduction"] == "mean"
    )


def test_the_command_line_takes_the_samples_reduction(tmp_path):
    code = main(["run", "--data", "moons", "--reduction", "samples", "--steps", "5", "--quiet",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "summary.json").read_text())["reduction"] == "samples"
