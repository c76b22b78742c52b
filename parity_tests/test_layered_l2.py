"""Declared loss conventions on layered networks: the L2 term, the scale and the reduction.

A `scratch.Sequential` trains on the declared objective (the L2 term's value in its loss, its
gradient in its gradients, through scratch's one `penalty`), torch's mirror on the same term
from its own parameters; a norm's gamma (`layers.K.weight`, torch's name) is not a weight. The
layered re-check includes the term in its loss and backward stages, and refuses an L2 term that
is off; the finite-difference verdict differentiates the declared objective. `adapt_layers`
code writes its L2 term into its own gradients (CS231n's `dW += reg * W`): declared once, in
`adapt_layers(..., loss=get_loss("ce", l2=reg))`, it passes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from nn_parity import scratch
from nn_parity.scratch import get_loss
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref import adapt_layers, lockstep
from nn_parity.torch_ref.engine.layered_side import (
    l2_params,
    layered_scratch_side,
    layered_torch_side,
)
from nn_parity.torch_ref.frontends.cli import main
from nn_parity.torch_ref.mirror.sequential import TorchSequential

from .test_builtin_l2 import _scaled_penalty
from .test_layered_recheck import ConvRoundingUpAt, conv_out, integer_net
from .test_user_layered import CS_SPEC, synthetic
from .user_code import cs231n_convnet as cs

NETS = {
    "conv": ("conv4x3p1,bn,relu,pool2,flatten,affine3", (2, 6, 6)),
    "bn-mlp": ("affine8,bn,tanh,affine3", (5,)),
}
L2_CASES = [
    {"l2": 0.1},
    {"l2": 0.1, "l2_form": "full"},
    {"l2": 0.5, "l2_n": 16},
    {"l2": 0.3, "l2_on": "all"},
    {"l2": 0.3, "l2_on": ["layers.1.weight", "layers.0.bias"]},  # a gamma, when named
    {"l2": 0.05, "l2_form": "full", "l2_n": 4, "l2_on": "all"},
]


def layered(kind: str, dtype="float64", n=12, seed=0):
    spec, shape = NETS[kind]
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(n, *shape)), rng.integers(0, 3, size=n)
    return sq.from_spec(spec, shape, dtype=dtype, rng=1), X, y


@pytest.mark.parametrize("opts", L2_CASES, ids=[str(o) for o in L2_CASES])
@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_layered_network_trains_on_its_l2_term(dtype, kind, opts):
    net, X, y = layered(kind, dtype)
    result = lockstep(net, None, X, y, steps=20, lr=0.1, loss=get_loss("ce", **opts))
    assert result.passed, str(result.first_divergence)
    if dtype == "float64":
        assert np.nanmax(result.max_abs) < 1e-14  # every quantity, every step
        assert not result.drift_steps and not result.kink_steps
    plain, X, y = layered(kind, dtype)
    without = lockstep(plain, None, X, y, steps=20, lr=0.1, loss="ce")
    assert not np.allclose(result.loss_torch, without.loss_torch)  # the term is in both


WEIGHTS = [("conv", {"layers.0.weight", "layers.5.weight"}),
           ("bn-mlp", {"layers.0.weight", "layers.3.weight"})]  # fmt: skip


@pytest.mark.parametrize("kind, weights", WEIGHTS)
def test_a_norms_gamma_is_not_a_weight_on_either_side(kind, weights):
    net, X, y = layered(kind)
    loss = get_loss("ce", l2=0.1)
    sside, _, _ = layered_scratch_side(net, loss, lambda p: scratch.SGD(p, lr=0.1), 0.1, X, y)
    tside = layered_torch_side(None, sside)
    assert set(loss.penalty(l2_params(net, loss, sside.params))[1]) == weights  # scratch's
    decayed = {n for n, p in tside.by_name.items() if any(p is q for q in tside.loss_fn.l2_params)}
    assert decayed == weights  # torch's: the same parameters, not layers.1.weight (gamma)
    every = get_loss("ce", l2=0.1, l2_on="all")
    assert "layers.1.weight" in every.penalty(l2_params(net, every, sside.params))[1]


CONVENTIONS = [
    ("ce", {"scale": 0.5}),
    ("ce", {"reduction": "sum"}),
    ("ce", {"reduction": "samples", "scale": 2.0, "l2": 0.1}),
    ("mse", {"scale": 0.5}),
    ("mse", {"reduction": "samples", "scale": 0.5}),
    ("mse", {"reduction": "sum", "l2": 0.05, "l2_form": "full"}),
]


@pytest.mark.parametrize("name, opts", CONVENTIONS, ids=[f"{n}-{o}" for n, o in CONVENTIONS])
@pytest.mark.parametrize("kind", list(NETS))
def test_scale_and_reduction_on_a_layered_network(kind, name, opts):
    net, X, y = layered(kind)
    labels = np.eye(3)[y] if name == "mse" else y
    loss = get_loss(name, **opts)
    lr = 0.002 if loss.reduction == "sum" else 0.05  # a sum's gradient is N times a mean's
    result = lockstep(net, None, X, labels, steps=10, lr=lr, loss=loss)
    assert result.passed, str(result.first_divergence)
    assert not result.drift_steps and not result.kink_steps
    plain, X, y = layered(kind)
    base = lockstep(plain, None, X, labels, steps=1, lr=lr, loss=name)
    assert result.loss_torch[0] != base.loss_torch[0]  # the declaration is torch's cost too


# --- an L2 term that is off is caught; the re-check does not excuse it -----------------------


@pytest.mark.parametrize("kind", list(NETS))
def test_an_l2_gradient_off_by_two_is_caught_and_fd_sides_with_torch(monkeypatch, kind):
    _scaled_penalty(monkeypatch, 2.0)  # l2 * W where the half form's gradient is (l2 / 2) * 2 W
    net, X, y = layered(kind)
    result = lockstep(net, None, X, y, steps=5, lr=0.1, loss=get_loss("ce", l2=0.1))
    div = result.first_divergence
    assert div is not None and div.step == 0 and div.quantity == "grad", str(div)
    assert div.label == "grad layers.5.weight" if kind == "conv" else "grad layers.3.weight"
    assert div.diagnosis["cause"] == f"layer {div.layer}", div.diagnosis  # located by layer
    # the verdict differentiates the declared objective: torch's gradient is the right one
    assert div.fd_agrees_with == "torch", (div.fd, div.scratch, div.torch)


@pytest.mark.parametrize("kind", list(NETS))
def test_the_layered_recheck_refuses_an_l2_difference(monkeypatch, kind):
    # 1e-8 of the L2 gradient: past the gradients' tolerance, and no stage's rounding
    _scaled_penalty(monkeypatch, 1 + 1e-8)
    net, X, y = layered(kind)
    result = lockstep(net, None, X, y, steps=5, lr=0.1, loss=get_loss("ce", l2=0.3))
    div = result.first_divergence
    assert div is not None and div.step == 0 and div.quantity == "grad", str(div)
    assert not result.drift_steps and not result.kink_steps


def test_finite_differences_side_with_torch_against_a_backward_bug_under_l2():
    # a large L2 term: a verdict on the loss alone would agree with neither side
    net, X, y = layered("conv")
    plain = net.layers[0].backward

    def off_by_a_thousandth(dout, cache):
        dx, grads = plain(dout, cache)
        return dx, {k: g * 1.001 for k, g in grads.items()}

    net.layers[0].backward = off_by_a_thousandth
    div = lockstep(net, None, X, y, steps=3, lr=0.1, loss=get_loss("ce", l2=2.0)).first_divergence
    assert div is not None and (div.step, div.quantity, div.layer) == (0, "grad", 0), str(div)
    assert div.fd_agrees_with == "torch", (div.fd, div.scratch, div.torch)


# --- a rounding event under L2: excused, and a real L2 difference still refused ---------------


def kink_run_l2(dtype, bug=None, monkeypatch=None):
    """tests/test_layered_recheck.kink_run with an L2 term declared: torch's copy of one exact
    zero of the conv output comes out one ulp above it (relu'(0) = 0 against relu'(eps) = 1)."""
    net, X, y = integer_net("conv2x3,relu,flatten,affine3", (1, 5, 5), seed=4, dtype=dtype)
    zeros = np.argwhere(conv_out(net, X) == 0)
    ref = TorchSequential(net)
    ref[0] = ConvRoundingUpAt(ref[0], tuple(int(i) for i in zeros[0]), 0.0)
    if bug is not None:
        _scaled_penalty(monkeypatch, bug)
    loss = get_loss("ce", l2=0.25, l2_on="all")
    return lockstep(net, ref, X, y, steps=3, lr=0.1, loss=loss)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_kink_under_l2_is_excused_and_an_l2_difference_on_it_is_not(dtype, monkeypatch):
    r = kink_run_l2(dtype)
    assert r.passed, r.first_divergence
    assert r.kink_steps == [0] and not r.within[0].all()  # the raw comparison failed
    # past the gradients' tolerance (float32's rtol is 2^-11), within no stage's rounding
    bad = kink_run_l2(dtype, bug=1 + 1e-2 if dtype == "float32" else 1 + 1e-8,
                      monkeypatch=monkeypatch)  # fmt: skip
    assert not bad.passed and bad.kink_steps == [], bad.first_divergence
    assert (bad.first_divergence.step, bad.first_divergence.quantity) == (0, "grad")


# --- adapt_layers: CS231n's `loss += 0.5 * reg * sum(W * W)`, `dW += reg * W` -------------------


def cs231n_with_reg(reg, loss=None, dtype=np.float64, bug=None):
    model = cs.ThreeLayerConvNet(input_dim=(1, 8, 8), reg=reg, dtype=dtype, seed=0)
    grads = model.loss if bug is None else (lambda X, y: bug(model, *model.loss(X, y)))
    net = adapt_layers(model.params, CS_SPEC, (1, 8, 8), grads=grads,
                       forward=lambda X: model.loss(X), loss=loss or "ce")  # fmt: skip
    X, y = synthetic(32)
    return lockstep(net, None, X.astype(dtype), y, steps=10, lr=0.05)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("l2_on", ["weights", ["W1", "W2", "W3"]], ids=["weights", "names"])
def test_cs231n_reg_passes_once_declared_in_one_line(dtype, l2_on):
    r = cs231n_with_reg(0.1, get_loss("ce", l2=0.1, l2_on=l2_on), dtype)
    assert r.passed, str(r.first_divergence)


def test_cs231n_reg_undeclared_diverges_at_step_0():
    div = cs231n_with_reg(0.1).first_divergence
    assert div is not None and div.step == 0 and div.quantity == "loss", str(div)


def test_cs231n_reg_gradient_doubled_is_caught_in_the_users_names():
    def doubled(model, loss, grads):  # BUG: 2 * reg * W against a loss of 0.5 * reg ||W||^2
        for w in ("W1", "W2", "W3"):
            grads[w] += model.reg * model.params[w]
        return loss, grads

    div = cs231n_with_reg(0.1, get_loss("ce", l2=0.1), bug=doubled).first_divergence
    assert div is not None and div.step == 0 and div.label == "grad W3", str(div)


# --- the command line -----------------------------------------------------------------------


def test_the_cli_runs_a_layered_network_with_l2(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["run", "--data", "digits", "--layers", "conv4x3,relu,pool2,flatten,affine10",
                 "--l2", "0.1", "--l2-form", "full", "--batch-size", "64", "--steps", "3",
                 "--out", str(out), "--no-figures", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True and "l2=0.1" in json.dumps(summary)


@pytest.mark.parametrize("spec", ["affine8,bn,tanh,affine3", "bn,affine8,tanh,affine3"])
def test_the_figures_loss_slice_includes_the_l2_term_as_the_lockstep_does(spec):
    from nn_parity.torch_ref.frontends.figure_data import layered_gradient_slice

    net, X, y = layered("bn-mlp")
    net = sq.from_spec(spec, (5,), rng=1)
    loss = get_loss("ce", l2=2.0)  # large: a slope without it would miss by far
    s = layered_gradient_slice(net, loss, X, y)["summary"]["gradient_slice"]
    assert s["grad_scratch"] == pytest.approx(s["grad_torch"], rel=1e-12, abs=1e-14)
    assert s["grad_fd"] == pytest.approx(s["grad_scratch"], rel=1e-6, abs=1e-8)


def test_an_adapted_network_declared_once_runs_again_and_refuses_another_l2():
    model = cs.ThreeLayerConvNet(input_dim=(1, 8, 8), reg=0.1, seed=0)
    loss = get_loss("ce", l2=0.1, l2_on=["W1", "W2", "W3"])
    net = adapt_layers(model.params, CS_SPEC, (1, 8, 8), grads=model.loss, loss=loss)
    X, y = synthetic(16)
    for _ in range(2):  # the same declaration given again to lockstep, twice
        assert lockstep(net, None, X, y, steps=2, lr=0.05, loss=loss).passed
    with pytest.raises(ValueError, match=r"l2=0\.2 given to lockstep, but the network was adapted"):
        lockstep(net, None, X, y, steps=2, lr=0.05, loss=get_loss("ce", l2=0.2))
