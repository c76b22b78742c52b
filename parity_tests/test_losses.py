"""The class and regression losses (ce, nll, mse) and the row-wise output activations (softmax,
log_softmax): forward and backward against torch autograd, against their own docstring formulas,
at huge logits, with bugs planted on purpose, and on bad labels.

Tolerances are the table's (`tolerance("loss" | "grad", dtype)`), rtol and atol together. On top,
both dtypes are held to machine precision, normwise: the two sides run the same steps (a max
shift, an exp and a sum over C per row, a log, one subtraction per element), so they differ by
the ulps of exp and log (<= 1 each, Sleef against libm), the summation order over the C classes
(<= C eps of the row's magnitude) and, for the loss, over the N samples (positive terms, so
pairwise against cascade order costs <= log2 N eps). With C <= 10 and N = 37 that is below
16 eps; measured over 50 seeds x 2 reductions at N = 256, C = 10: at most 3.0 eps
(docs/losses.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from nn_parity import scratch
from nn_parity.scratch.activations import LogSoftmax, Softmax, log_softmax, softmax
from nn_parity.scratch.validate import check_labels, check_xy
from nn_parity.torch_ref import TorchMLP, assert_parity
from nn_parity.torch_ref.compare import tolerance
from nn_parity.torch_ref.mirror.model import _scratch_activation, torch_activation, torch_loss
from torch import nn

DTYPES = ["float64", "float32"]
REDUCTIONS = ["mean", "sum"]
N, C = 37, 5  # N odd and not a multiple of a SIMD width: the tail paths run too
WEIGHT = [0.5, 2.0, 1.0, 3.0, 0.25]
MACHINE_ULPS = 16  # normwise, float64: see the module docstring

# (id, loss name, options): every form the lockstep can be asked for
CASES = [
    ("ce", "ce", {}),
    ("ce-weight", "ce", {"weight": WEIGHT}),
    ("ce-smooth", "ce", {"label_smoothing": 0.2}),
    ("ce-weight-smooth", "ce", {"weight": WEIGHT, "label_smoothing": 0.3}),
    ("ce-smooth-1", "ce", {"label_smoothing": 1.0}),
    ("nll", "nll", {}),
    ("nll-weight", "nll", {"weight": WEIGHT}),
    ("mse", "mse", {}),
]


def _inputs(name: str, dtype, seed: int = 0, scale: float = 3.0):
    """Network output and raw labels for a loss: logits, log-probabilities or predictions."""
    rng = np.random.default_rng(seed)
    z = (scale * rng.standard_normal((N, C))).astype(dtype)  # (N, C)
    if name == "nll":
        z = log_softmax(z)  # what a log_softmax output layer hands the loss
    y = rng.standard_normal((N, C)) if name == "mse" else rng.integers(0, C, N)
    return z, y


def _scratch(loss: scratch.Loss, out: np.ndarray, y: np.ndarray):
    value, cache = loss.forward(out, y)
    return np.asarray(value, out.dtype), loss.backward(cache)


def _torch(loss: scratch.Loss, out: np.ndarray, y: np.ndarray):
    xt = torch.from_numpy(out.copy()).requires_grad_()
    lt = torch_loss(loss, dtype=out.dtype)(xt, torch.from_numpy(y))
    lt.backward()
    return lt.detach().numpy(), xt.grad.numpy()


def _normwise(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- against torch autograd ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "options"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_loss_and_gradient_match_torch(name, options, reduction, dtype):
    loss = scratch.get_loss(name, reduction, **options)
    out, y = _inputs(name, dtype)
    y = loss.targets(y, C, dtype)
    before = out.copy(), y.copy()
    value, grad = _scratch(loss, out, y)
    value_t, grad_t = _torch(loss, out, y)
    assert grad.dtype == np.dtype(dtype) and value.dtype == np.dtype(dtype)
    assert_parity(value, value_t, quantity="loss")
    assert_parity(grad, grad_t, quantity="grad")
    assert np.array_equal(out, before[0]) and np.array_equal(y, before[1])  # inputs untouched
    eps = float(np.finfo(dtype).eps)  # the same algorithm on both sides, in either dtype
    assert abs(float(value) - float(value_t)) <= MACHINE_ULPS * eps * abs(float(value_t))
    assert _normwise(grad, grad_t) <= MACHINE_ULPS * eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_takes_one_column_targets_as_n(reduction, dtype):
    loss = scratch.get_loss("mse", reduction)
    rng = np.random.default_rng(1)
    out = rng.standard_normal((N, 1)).astype(dtype)  # (N, 1)
    y = loss.targets(rng.standard_normal(N), 1, dtype)  # (N,) -> (N, 1)
    assert y.shape == (N, 1) and y.dtype == np.dtype(dtype)
    value, grad = _scratch(loss, out, y)
    value_t, grad_t = _torch(loss, out, y)
    assert_parity(value, value_t, quantity="loss")
    assert_parity(grad, grad_t, quantity="grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_log_softmax_plus_nll_is_cross_entropy_on_both_sides(weighted, reduction, dtype):
    """The second form: the log_softmax activation's backward fed by NLL's gradient gives the
    logits' gradient, as nn.LogSoftmax + nn.NLLLoss gives nn.CrossEntropyLoss's."""
    options = {"weight": WEIGHT} if weighted else {}
    z, y = _inputs("ce", dtype)
    nll = scratch.get_loss("nll", reduction, **options)
    act = LogSoftmax()
    lp = act.forward(z)  # (N, C)
    value, cache = nll.forward(lp, y)
    dz = act.backward(nll.backward(cache), z, lp)  # (N, C)
    zt = torch.from_numpy(z).requires_grad_()
    lt = torch_loss(nll, dtype=dtype)(nn.LogSoftmax(dim=1)(zt), torch.from_numpy(y))
    lt.backward()
    assert_parity(np.asarray(value, dtype), lt, quantity="loss")
    assert_parity(dz, zt.grad, quantity="grad")
    ce_value, ce_dz = _scratch(scratch.get_loss("ce", reduction, **options), z, y)
    assert_parity(np.asarray(value, dtype), ce_value, quantity="loss")
    assert_parity(dz, ce_dz, quantity="grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_row_activations_match_torch_for_any_upstream_gradient(name, dtype):
    rng = np.random.default_rng(2)
    z = (4 * rng.standard_normal((N, C))).astype(dtype)  # (N, C)
    da = rng.standard_normal((N, C)).astype(dtype)  # not all ones: the Jacobian is not diagonal
    act = scratch.get_activation(name)
    a = act.forward(z)
    dz = act.backward(da, z, a)
    zt = torch.from_numpy(z).requires_grad_()
    at = torch_activation(act)(zt)
    at.backward(torch.from_numpy(da))
    assert_parity(a, at, quantity="a")
    assert_parity(dz, zt.grad, quantity="grad")
    assert dz.dtype == np.dtype(dtype)


@pytest.mark.parametrize("loss", ["ce", "nll", "mse"])
def test_network_backward_matches_central_differences(loss):
    """Dense.backward with the row-wise activations: the whole network, against finite
    differences (float64, eps 1e-6: truncation and rounding both near 1e-10 relative)."""
    loss_s = scratch.get_loss(loss, weight=WEIGHT[:3]) if loss != "mse" else scratch.MSELoss()
    rng = np.random.default_rng(5)
    X = rng.standard_normal((12, 4))  # (N, D)
    raw = rng.standard_normal((12, 3)) if loss == "mse" else rng.integers(0, 3, 12)
    y = loss_s.targets(raw, 3)
    net = scratch.MLP([4, 6, 3], ["tanh", loss_s.output_activation], init="normal", rng=3)
    net.flat_params *= 4
    out, cache = net.forward(X)
    _, lcache = loss_s.forward(out, y)
    grads = {k: g.copy() for k, g in net.backward(loss_s.backward(lcache), cache).items()}
    f = scratch.loss_fn(net, loss_s, X, y)
    for name, p in net.params.items():
        fd = scratch.numerical_gradient(f, p)
        np.testing.assert_allclose(grads[name], fd, rtol=1e-6, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["ce", "nll", "mse"])
def test_network_step_matches_torch(loss, dtype):
    """One forward and backward of a whole network on both sides: the output activation
    mirrored by torch_activation, the loss by torch_loss."""
    loss_s = scratch.get_loss(loss)
    rng = np.random.default_rng(6)
    X = rng.standard_normal((20, 4)).astype(dtype)  # (N, D)
    raw = rng.standard_normal((20, 3)) if loss == "mse" else rng.integers(0, 3, 20)
    y = loss_s.targets(raw, 3, dtype)
    net = scratch.MLP([4, 8, 3], ["relu", loss_s.output_activation], dtype=dtype, rng=4)
    ref = TorchMLP.from_scratch(net)
    out, cache = net.forward(X)
    value, lcache = loss_s.forward(out, y)
    grads = net.backward(loss_s.backward(lcache), cache)
    out_t, _ = ref.forward_cache(torch.from_numpy(X))
    lt = torch_loss(loss_s, dtype=dtype)(out_t, torch.from_numpy(y))
    lt.backward()
    assert_parity(loss_s.probabilities(out), _torch_probabilities(loss, out_t), quantity="prob")
    assert_parity(np.asarray(value, dtype), lt, quantity="loss")
    assert_parity(grads, {k: p.grad for k, p in ref.named_parameters()}, quantity="grad")


def _torch_probabilities(loss: str, out: torch.Tensor) -> torch.Tensor:
    out = out.detach()
    return {"ce": lambda: torch.softmax(out, 1), "nll": out.exp, "mse": lambda: out}[loss]()


@given(
    n=st.integers(1, 40),
    c=st.integers(2, 12),
    log_scale=st.floats(-3, 3),  # logits from 1e-3 to 1e3 in size
    weighted=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_matches_torch_over_shapes_and_scales(
    n, c, log_scale, weighted, smoothing, reduction, dtype, seed
):
    rng = np.random.default_rng(seed)
    z = (10.0**log_scale * rng.standard_normal((n, c))).astype(dtype)  # (N, C)
    y = rng.integers(0, c, n)
    weight = rng.uniform(0.1, 3.0, c) if weighted else None  # > 0: W never vanishes
    loss = scratch.get_loss("ce", reduction, weight=weight, label_smoothing=smoothing)
    value, grad = _scratch(loss, z, loss.targets(y, c))
    value_t, grad_t = _torch(loss, z, y)
    assert_parity(value, value_t, quantity="loss")
    assert_parity(grad, grad_t, quantity="grad")
    assert_parity(loss.probabilities(z), torch.softmax(torch.from_numpy(z), 1), quantity="prob")


# --- huge logits ---------------------------------------------------------------------------


HUGE = np.array(
    [
        [1000.0, -1000.0, 0.0],
        [-1000.0, -1000.0, -1000.0],
        [1e4, 1e4 - 1, -1e4],
        [-1e4, -1e4 + 30, -1e4 + 1],
        [800.0, 799.0, 798.0],
    ]
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smooth"])
@pytest.mark.parametrize("target", [0, 1, 2])
def test_cross_entropy_is_finite_and_exact_at_huge_logits(target, smoothing, reduction, dtype):
    z = HUGE.astype(dtype)  # (5, 3)
    y = np.full(len(z), target, dtype=np.int64)
    loss = scratch.get_loss("ce", reduction, label_smoothing=smoothing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, no log(0)
        value, grad = _scratch(loss, z, y)
        p = loss.probabilities(z)
    value_t, grad_t = _torch(loss, z, y)
    assert np.isfinite(value) and np.isfinite(grad).all() and np.isfinite(p).all()
    assert_parity(value, value_t, quantity="loss")
    assert_parity(grad, grad_t, quantity="grad")
    assert_parity(p, torch.softmax(torch.from_numpy(z), 1), quantity="prob")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_row_activations_at_huge_logits(name, dtype):
    z = HUGE.astype(dtype)
    act = scratch.get_activation(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = act.forward(z)
        dz = act.backward(np.ones_like(z), z, a)
    zt = torch.from_numpy(z.copy()).requires_grad_()
    torch_activation(act)(zt).sum().backward()
    assert np.isfinite(a).all()
    assert_parity(a, torch_activation(act)(torch.from_numpy(z)), quantity="a")
    assert_parity(dz, zt.grad, quantity="grad")


# --- the docstrings' formulas, evaluated on their own ----------------------------------------


def _ref_softmax(z):
    """Softmax from the definition, in float64 with an independent shift (the row's mean)."""
    e = np.exp(z - z.mean(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("e", [0.0, 0.25])
def test_cross_entropy_matches_its_docstring(e, weighted, reduction):
    z, y = _inputs("ce", "float64", seed=3, scale=2.0)
    w = np.array(WEIGHT) if weighted else np.ones(C)
    loss = scratch.CrossEntropyLoss(reduction, weight=w if weighted else None, label_smoothing=e)
    value, grad = _scratch(loss, z, y)
    p = _ref_softmax(z)  # (N, C)
    lp = np.log(p)
    onehot = np.eye(C)[y]  # (N, C)
    R = w[y].sum() if reduction == "mean" else 1.0
    # L = (1 - e) nll / R + (e / C) smooth / R
    nll = -(w[y] * lp[np.arange(N), y]).sum()
    smooth = -(lp * w).sum()
    assert float(value) == pytest.approx((1 - e) * nll / R + (e / C) * smooth / R, rel=1e-13)
    # dlp[n, c] = -((1 - e) w_{y_n} [c = y_n] + (e / C) w_c) / R; dz = dlp - p sum_c dlp
    dlp = -((1 - e) * w[y][:, None] * onehot + (e / C) * w) / R
    dz = dlp - p * dlp.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(grad, dz, rtol=1e-12, atol=1e-15)
    if not weighted:  # (softmax - q) / N, q the smoothed target
        q = (1 - e) * onehot + e / C
        np.testing.assert_allclose(grad, (p - q) / (N if reduction == "mean" else 1), atol=1e-15)
    if e == 0:  # w_{y_n} (softmax - onehot) / W
        np.testing.assert_allclose(grad, w[y][:, None] * (p - onehot) / R, atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_matches_its_docstring(reduction):
    lp, y = _inputs("nll", "float64", seed=4)
    w = np.array(WEIGHT)
    value, grad = _scratch(scratch.NLLLoss(reduction, weight=w), lp, y)
    R = w[y].sum() if reduction == "mean" else 1.0
    assert float(value) == pytest.approx(-(w[y] * lp[np.arange(N), y]).sum() / R, rel=1e-13)
    expected = np.zeros((N, C))
    expected[np.arange(N), y] = -w[y] / R
    np.testing.assert_allclose(grad, expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_matches_its_docstring(reduction):
    o, t = _inputs("mse", "float64", seed=5)
    value, grad = _scratch(scratch.MSELoss(reduction), o, t)
    R = o.size if reduction == "mean" else 1.0
    assert float(value) == pytest.approx(((o - t) ** 2).sum() / R, rel=1e-13)
    np.testing.assert_allclose(grad, 2 / R * (o - t), rtol=1e-15, atol=0)


def test_row_activations_match_their_docstring():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((N, C))
    da = rng.standard_normal((N, C))
    p = _ref_softmax(z)
    np.testing.assert_allclose(softmax(z), p, rtol=1e-14)
    np.testing.assert_allclose(log_softmax(z), np.log(p), rtol=1e-13, atol=1e-15)
    # the Jacobians, applied row by row: da_i/dz_j = a_i (delta_ij - a_j) and delta_ij - a_j
    for n in range(N):
        J_soft = np.diag(p[n]) - np.outer(p[n], p[n])
        J_log = np.eye(C) - np.outer(np.ones(C), p[n])
        dz_soft = Softmax().backward(da[n : n + 1], z[n : n + 1], p[n : n + 1])[0]
        dz_log = LogSoftmax().backward(da[n : n + 1], z[n : n + 1], np.log(p[n : n + 1]))[0]
        np.testing.assert_allclose(dz_soft, J_soft.T @ da[n], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(dz_log, J_log.T @ da[n], rtol=1e-12, atol=1e-15)


# --- bugs planted on purpose: the same comparisons must report them --------------------------


class NoMinusOne(scratch.CrossEntropyLoss):
    """The cross-entropy gradient missing the -1 at the target class: dz = softmax / N."""

    def backward(self, cache):
        lp, y, _, _ = cache
        return np.exp(lp) / len(y)


class NoMaxShift(scratch.CrossEntropyLoss):
    """log-sum-exp without the max shift: e^1000 overflows."""

    def forward(self, out, y):
        with np.errstate(over="ignore", invalid="ignore"):
            lp = out - np.log(np.exp(out).sum(axis=1, keepdims=True))  # (N, C)
        value, wy, total = self._nll(lp, y)
        return float(value), (lp, y, wy, total)


class MeanOverN(scratch.CrossEntropyLoss):
    """The weighted mean taken over N instead of the targets' total weight."""

    def _nll(self, logp, y):
        value, wy, total = super()._nll(logp, y)
        return value * total / len(y), wy, len(y)


class OffByOneClass(scratch.CrossEntropyLoss):
    """One-hot labels shifted by one class."""

    def forward(self, out, y):
        return super().forward(out, (y + 1) % out.shape[1])


class TextbookSmoothing(scratch.CrossEntropyLoss):
    """Smoothing that spreads e over the C - 1 other classes (a common variant, not torch's)."""

    def forward(self, out, y):
        lp = log_softmax(out)
        e, n = self.label_smoothing, out.shape[1]
        q = np.full_like(lp, e / (n - 1))
        q[np.arange(len(y)), y] = 1 - e
        return float(-(q * lp).sum() / len(y)), (lp, y, None, len(y))


class MSEOverN(scratch.MSELoss):
    """The mean over samples only, not over N x C elements."""

    def backward(self, cache):
        o, t = cache
        return 2 / len(o) * (o - t)


class ElementwiseSoftmax(Softmax):
    """softmax' taken as the sigmoid-style a (1 - a): the Jacobian's off-diagonal dropped."""

    def backward(self, da, z, a):
        return da * a * (1 - a)


BUGS = [
    ("no -1 at target", NoMinusOne(), "ce", {}, "grad"),
    ("no max shift", NoMaxShift(), "ce", {}, "loss"),
    ("weighted mean over N", MeanOverN(weight=WEIGHT), "ce", {"weight": WEIGHT}, "loss"),
    ("off by one class", OffByOneClass(), "ce", {}, "loss"),
    (
        "smoothing over C-1",
        TextbookSmoothing(label_smoothing=0.2),
        "ce",
        {"label_smoothing": 0.2},
        "loss",
    ),
    ("mse mean over N", MSEOverN(), "mse", {}, "grad"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("bug", "name", "options", "quantity"), [b[1:] for b in BUGS], ids=[b[0] for b in BUGS]
)
def test_planted_bug_is_reported(bug, name, options, quantity, dtype):
    out, y = _inputs(name, dtype)
    if isinstance(bug, NoMaxShift):
        out = out + 1000  # the logits where the shift matters
    y = bug.targets(y, C, dtype)
    reference = scratch.get_loss(name, **options)
    value_t, grad_t = _torch(reference, out, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unshifted exp overflows, on purpose
        value, grad = _scratch(bug, out, y)
    expected = value_t if quantity == "loss" else grad_t
    with pytest.raises(AssertionError, match=rf"^{quantity}: \d+ / \d+ elements differ"):
        assert_parity(value if quantity == "loss" else grad, expected, quantity=quantity)


@pytest.mark.parametrize("dtype", DTYPES)
def test_planted_softmax_jacobian_bug_is_reported(dtype):
    z, _ = _inputs("ce", dtype)
    da = np.random.default_rng(8).standard_normal((N, C)).astype(dtype)
    a = Softmax().forward(z)
    zt = torch.from_numpy(z).requires_grad_()
    nn.Softmax(dim=1)(zt).backward(torch.from_numpy(da))
    assert_parity(Softmax().backward(da, z, a), zt.grad, quantity="grad")  # the control
    with pytest.raises(AssertionError, match=r"^grad: \d+ / \d+ elements differ"):
        assert_parity(ElementwiseSoftmax().backward(da, z, a), zt.grad, quantity="grad")


def test_planted_bugs_miss_machine_precision_by_far():
    """The float64 margin: each bug's error is orders of magnitude above the tolerance."""
    tol = tolerance("grad", "float64")
    out, y = _inputs("ce", "float64")
    _, grad_t = _torch(scratch.CrossEntropyLoss(), out, y)
    _, grad = _scratch(NoMinusOne(), out, y)
    assert np.abs(grad - grad_t).max() > 1e6 * (tol.atol + tol.rtol * np.abs(grad_t).max())


# --- dtypes and options --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_float32_network_gets_float32_loss_and_gradient(name, options):
    """Float64 weights or targets must not widen a float32 network's gradient."""
    loss = scratch.get_loss(name, **options)
    out, y = _inputs(name, "float32")
    y = loss.targets(y, C)  # float64 targets for mse: forward rounds them to the output's dtype
    value, cache = loss.forward(out, y)
    assert loss.backward(cache).dtype == np.float32
    assert isinstance(value, float) and value == float(np.float32(value))


def test_options_rebuild_an_equal_loss():
    loss = scratch.get_loss("ce", "sum", weight=WEIGHT, label_smoothing=0.1)
    again = type(loss)(loss.reduction, **loss.options)
    out, y = _inputs("ce", "float64")
    assert _scratch(loss, out, y)[0] == _scratch(again, out, y)[0]
    assert repr(again) == repr(loss)
    assert "label_smoothing=0.1" in repr(loss) and "weight=[0.5" in repr(loss)


def test_unset_options_are_not_given():
    assert repr(scratch.get_loss("mse", weight=None)) == "MSELoss(reduction='mean')"
    assert scratch.get_loss("nll", label_smoothing=None).weight is None
    ce = scratch.CrossEntropyLoss()
    assert scratch.get_loss(ce, weight=None) is ce
    with pytest.raises(ValueError, match=r"options \['weight'\] given with a ready-made"):
        scratch.get_loss(ce, weight=[1.0, 2.0])


def test_losses_carry_task_activation_and_name():
    table = {
        name: (cls.task, cls.output_activation, cls.name) for name, cls in scratch.LOSSES.items()
    }
    assert table == {
        "bce": ("binary", "sigmoid", "bce"),
        "bce-logits": ("binary", "identity", "bce-logits"),
        "ce": ("multiclass", "identity", "ce"),
        "nll": ("multiclass", "log_softmax", "nll"),
        "mse": ("regression", "identity", "mse"),
    }


def test_torch_loss_mirrors_each_loss():
    w = np.array(WEIGHT)
    ce = torch_loss(scratch.get_loss("ce", "sum", weight=w, label_smoothing=0.1), dtype="float32")
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.reduction == "sum"
    assert ce.label_smoothing == 0.1 and ce.weight.dtype == torch.float32
    assert np.array_equal(ce.weight.numpy(), w.astype(np.float32))
    nll = torch_loss(scratch.get_loss("nll", weight=w))
    assert isinstance(nll, nn.NLLLoss) and nll.weight.dtype == torch.float64
    assert isinstance(torch_loss(scratch.get_loss("mse")), nn.MSELoss)
    assert torch_loss(scratch.get_loss("ce")).weight is None


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_row_activations_cross_to_torch_and_back(name):
    act = scratch.get_activation(name)
    module = torch_activation(act)
    assert isinstance(module, {"softmax": nn.Softmax, "log_softmax": nn.LogSoftmax}[name])
    assert _scratch_activation(module) == act
    for dim in (1, -1):
        assert _scratch_activation(type(module)(dim=dim)) == act
    with pytest.raises(ValueError, match=r"runs over the classes, the last axis"):
        _scratch_activation(type(module)(dim=0))
    net = TorchMLP([3, 4, 2], ["tanh", name]).to_scratch()
    assert [a.name for a in net.activations] == ["tanh", name]


# --- bad input -------------------------------------------------------------------------------

BAD = [
    # (id, call, exception, message)
    ("label >= C", lambda: scratch.get_loss("ce").targets([0, 1, 3], 3), ValueError,
     r"class labels must lie in 0\.\.2 for a network with 3 outputs; y\[2\] = 3 is outside "
     r"\(1 label\(s\) outside\)"),
    ("negative label", lambda: scratch.get_loss("nll").targets([0, -1, 1], 3), ValueError,
     r"y\[1\] = -1 is outside"),
    ("real-valued label", lambda: scratch.get_loss("ce").targets([0.0, 1.5, 2.0], 3), ValueError,
     r"class labels must be whole numbers 0\.\.2; y\[1\] = 1\.5 is real-valued \(for "
     r"real-valued targets use a regression loss, e\.g\. mse\)"),
    ("NaN label", lambda: scratch.get_loss("ce").targets([0.0, np.nan], 3), ValueError,
     r"y holds a non-finite value: y\[1\] = nan"),
    ("inf target", lambda: scratch.get_loss("mse").targets([[0, 0], [0, np.inf]], 2),
     ValueError, r"y holds a non-finite value: y\[1, 1\] = inf"),
    ("NaN binary label", lambda: scratch.get_loss("bce").targets([1.0, np.nan], 1), ValueError,
     r"y holds a non-finite value: y\[1\] = nan"),
    ("bce on 3 outputs", lambda: scratch.get_loss("bce").targets([0, 1], 3), ValueError,
     r"bce needs 1 output \(the class-1 probability\), got a network with 3 outputs; for 3 "
     r"classes use ce or nll"),
    ("ce on 1 output", lambda: scratch.get_loss("ce").targets([0, 1], 1), ValueError,
     r"ce needs one output per class \(2 or more\), got a network with 1 output; for two "
     r"classes with one output use bce or bce-logits"),
    ("binary label 2", lambda: scratch.get_loss("bce-logits").targets([0, 2], 1), ValueError,
     r"binary cross-entropy needs labels 0 or 1; y\[1\] = 2\.0"),
    ("weights vs outputs", lambda: scratch.get_loss("ce", weight=[1, 2, 3]).targets([0], 4),
     ValueError, r"ce has 3 class weights but the network has 4 outputs; give one weight per"),
    ("mse columns", lambda: scratch.get_loss("mse").targets(np.zeros((4, 2)), 3), ValueError,
     r"mse targets have 2 column\(s\) but the network has 3 outputs"),
    ("mse 3-D", lambda: scratch.get_loss("mse").targets(np.zeros((4, 2, 1)), 2), ValueError,
     r"regression targets must be \(samples,\) or \(samples, outputs\), got shape \(4, 2, 1\)"),
    ("2-D class labels", lambda: scratch.get_loss("ce").targets(np.zeros((4, 3)), 3),
     ValueError, r"y must be 1-D \(samples,\) or \(samples, 1\), got shape \(4, 3\)"),
    ("no labels", lambda: scratch.get_loss("ce").targets([], 3), ValueError,
     r"y holds no labels"),
    ("string labels", lambda: scratch.get_loss("ce").targets(["a", "b"], 3), TypeError,
     r"y must hold real numbers, got dtype <U1"),
    ("torch labels", lambda: scratch.get_loss("ce").targets(torch.zeros(3), 3), TypeError,
     r"y must be a NumPy array, got a torch tensor; pass y\.numpy\(\)"),
    ("smoothing > 1", lambda: scratch.get_loss("ce", label_smoothing=1.5), ValueError,
     r"label_smoothing must be in \[0, 1\], got 1\.5"),
    ("smoothing text", lambda: scratch.get_loss("ce", label_smoothing="lots"), TypeError,
     r"label_smoothing must be a number, got 'lots'"),
    ("negative weight", lambda: scratch.get_loss("ce", weight=[1, -2, 1]), ValueError,
     r"class weights must be finite and >= 0; weight\[1\] = -2\.0"),
    ("NaN weight", lambda: scratch.get_loss("nll", weight=[1, np.nan]), ValueError,
     r"class weights must be finite and >= 0; weight\[1\] = nan"),
    ("2-D weight", lambda: scratch.get_loss("ce", weight=[[1, 2]]), ValueError,
     r"class weights must be a 1-D array, one per class, got shape \(1, 2\)"),
    ("unknown loss", lambda: scratch.get_loss("hinge"), ValueError,
     r"unknown loss 'hinge'; expected one of bce, bce-logits, ce, nll, mse"),
    ("option not taken", lambda: scratch.get_loss("mse", weight=[1.0]), ValueError,
     r"loss 'mse' takes no options; got 'weight'"),
    ("nll smoothing", lambda: scratch.get_loss("nll", label_smoothing=0.1), ValueError,
     r"loss 'nll' takes weight; got 'label_smoothing'"),
    ("unknown reduction", lambda: scratch.get_loss("ce", "none"), ValueError,
     r"unknown reduction 'none'"),
    ("float labels to forward", lambda: scratch.CrossEntropyLoss().forward(
        np.zeros((2, 3)), np.array([0.0, 1.0])), TypeError,
     r"ce takes class indices as integers, got dtype float64; convert labels with "
     r"loss\.targets\(y, C\)"),
    ("wrapped index in forward", lambda: scratch.NLLLoss().forward(
        np.zeros((2, 3)), np.array([0, -1])), ValueError,
     r"class labels must lie in 0\.\.2; y\[1\] = -1 is outside"),
    ("shape mismatch in forward", lambda: scratch.CrossEntropyLoss().forward(
        np.zeros((2, 3)), np.array([0, 1, 2])), ValueError,
     r"ce takes out \(N, C\) and y \(N,\), got \(2, 3\) and \(3,\)"),
    ("mse shapes in forward", lambda: scratch.MSELoss().forward(np.zeros((2, 3)), np.zeros(2)),
     ValueError, r"mse takes out and y of one shape, got \(2, 3\) and \(2,\)"),
    ("unknown task", lambda: check_labels([0, 1], "ordinal"), ValueError,
     r"unknown task 'ordinal'; expected one of binary, multiclass, regression"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "exc", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_a_one_line_message(call, exc, message):
    with pytest.raises(exc, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_targets_never_mutate_or_alias_the_callers_labels():
    y = np.array([2.0, 0.0, 1.0])
    t = scratch.get_loss("ce").targets(y, 3)
    assert t.dtype == np.int64 and t.tolist() == [2, 0, 1]
    yi = np.array([2, 0, 1])
    t = scratch.get_loss("nll").targets(yi, 3)
    t[0] = 0
    assert yi[0] == 2  # a copy, even when no conversion was needed
    yb = np.array([1.0, 0.0])
    tb = scratch.get_loss("bce").targets(yb, 1, "float32")
    assert tb.shape == (2, 1) and tb.dtype == np.float32
    tb[0] = 7
    assert yb[0] == 1.0
    ym = np.zeros((2, 2))
    scratch.get_loss("mse").targets(ym, 2)[0, 0] = 5
    assert ym[0, 0] == 0


# --- check_xy learns the task ----------------------------------------------------------------


def test_check_xy_per_task():
    X = np.zeros((4, 2))
    _, y = check_xy(X, np.array([[0.0], [2.0], [1.0], [2.0]]), task="multiclass", n_classes=3)
    assert y.dtype == np.int64 and y.shape == (4,)
    _, y = check_xy(X, np.array([True, False, True, True]), task="multiclass")
    assert y.tolist() == [1, 0, 1, 1]
    _, y = check_xy(X, np.arange(8).reshape(4, 2), task="regression")
    assert y.shape == (4, 2) and y.dtype == np.float64
    _, y = check_xy(X, np.ones((4, 1), np.float32), task="regression")
    assert y.shape == (4,) and y.dtype == np.float32
    _, y = check_xy(X, np.array([0.0, 1.0, 1.0, 0.0]))  # binary, as before
    assert y.dtype == np.float64
    with pytest.raises(ValueError, match=r"binary cross-entropy needs labels 0 or 1; y\[1\] = 2"):
        check_xy(X, np.array([0, 2, 1, 0]))
    with pytest.raises(ValueError, match=r"class labels must lie in 0\.\.2; y\[3\] = 3"):
        check_xy(X, np.array([0, 2, 1, 3]), task="multiclass", n_classes=3)
    with pytest.raises(ValueError, match=r"whole numbers 0\.\.C-1; y\[0\] = 0\.5 is real"):
        check_xy(X, np.array([0.5, 2, 1, 3]), task="multiclass")
    with pytest.raises(ValueError, match=r"X has 4 samples but y has 3"):
        check_xy(X, np.zeros((3, 2)), task="regression")
