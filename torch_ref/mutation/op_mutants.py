"""The gallery's check cases, a catalogue of op-level bugs, and correct rewrites that must pass.

`gallery(dtype, seed)` pairs every op of `scratch/ops.py` with its torch reference and seeded
inputs: the keyword arguments of one `check_op` call. A mutant is a named, realistic bug in one
op: a wrapper around, or an altered copy of, the correct forward or backward, built per case and
never applied to the shipped code. `op_score()` runs `check_op` on every mutant and reports
whether it was caught (the check failed, or refused the op with an error naming the input) and
located (the first mismatch names the item where the bug lives).

    python -m nn_parity.torch_ref.mutation.op_mutants            # the score table, float64
    python -m nn_parity.torch_ref.mutation.op_mutants float32
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from nn_parity.scratch import ops
from nn_parity.scratch.activations import sigmoid
from nn_parity.torch_ref.mutation.score import Score
from nn_parity.torch_ref.opcheck.check import check_op
from nn_parity.torch_ref.opcheck.results import OpCheckResult

__all__ = ["ALTERNATIVES", "OP_MUTANTS", "OpMutant", "gallery", "op_score"]

_BN = {"gamma": "weight", "beta": "bias"}


def gallery(dtype="float64", seed: int = 0) -> dict[str, dict]:
    """Per op, the keyword arguments of its `check_op` call (forward and backward included)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dt)

    cases: dict[str, dict] = {}
    # square W (H = D), so a transposed gradient keeps its shape and shows as a value
    cases["affine"] = dict(
        forward=ops.affine_forward, backward=ops.affine_backward, torch_ref=torch.nn.Linear(5, 5),
        inputs={"x": normal(8, 5)}, params={"W": normal(5, 5), "b": normal(5)},
        names={"W": "weight", "b": "bias"},
    )  # fmt: skip
    acts = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "leaky_relu:0.1": partial(F.leaky_relu, negative_slope=0.1),
        "identity": torch.nn.Identity(),
    }
    for kind, ref in acts.items():
        cases[kind.partition(":")[0]] = dict(
            forward=partial(ops.activation_forward, kind=kind), backward=ops.activation_backward,
            torch_ref=(lambda z, f=ref: f(z)) if not isinstance(ref, torch.nn.Module) else ref,
            inputs={"z": normal(6, 4, scale=2.0)},
        )  # fmt: skip
    cases["sigmoid"]["torch_ref"] = torch.sigmoid  # a bare torch function works too
    cases["tanh"]["torch_ref"] = torch.tanh
    cases["softmax"] = dict(
        forward=ops.softmax_forward, backward=ops.softmax_backward,
        torch_ref=lambda x: torch.softmax(x, dim=-1), inputs={"x": normal(6, 4, scale=2.0)},
    )  # fmt: skip
    cases["log_softmax"] = dict(
        forward=ops.log_softmax_forward, backward=ops.log_softmax_backward,
        torch_ref=lambda x: torch.log_softmax(x, dim=-1), inputs={"x": normal(6, 4, scale=2.0)},
    )  # fmt: skip
    cases["softmax_cross_entropy"] = dict(
        forward=ops.softmax_cross_entropy_forward, backward=ops.softmax_cross_entropy_backward,
        torch_ref=torch.nn.CrossEntropyLoss(),
        inputs={"logits": normal(8, 4, scale=2.0), "labels": rng.integers(0, 4, 8)},
    )  # fmt: skip
    cases["mse"] = dict(
        forward=ops.mse_forward, backward=ops.mse_backward, torch_ref=torch.nn.MSELoss(),
        inputs={"pred": normal(8, 3), "target": normal(8, 3)},
    )  # fmt: skip
    cases["dropout"] = dict(
        forward=partial(ops.dropout_forward, p=0.4), backward=ops.dropout_backward,
        torch_ref=lambda x, mask: x * mask / (1 - 0.4),
        inputs={"x": normal(8, 6), "mask": rng.random((8, 6)) < 0.6},
    )  # fmt: skip
    bn_state = lambda c: {  # noqa: E731
        "running_mean": normal(c, scale=0.5),
        "running_var": np.asarray(rng.uniform(0.5, 2.0, c), dtype=dt),
    }
    cases["batchnorm"] = dict(
        forward=ops.batchnorm_forward, backward=ops.batchnorm_backward,
        torch_ref=torch.nn.BatchNorm1d(5), inputs={"x": normal(8, 5, scale=2.0) + 1},
        params={"gamma": normal(5), "beta": normal(5)}, state=bn_state(5), names=_BN,
    )  # fmt: skip
    cases["batchnorm_compact"] = {**cases["batchnorm"], "backward": ops.batchnorm_backward_compact}
    cases["batchnorm2d"] = dict(
        forward=ops.batchnorm_forward, backward=ops.batchnorm_backward,
        torch_ref=torch.nn.BatchNorm2d(3), inputs={"x": normal(2, 3, 4, 4) + 1},
        params={"gamma": normal(3), "beta": normal(3)}, state=bn_state(3), names=_BN,
    )  # fmt: skip
    # square (N = D), so gamma's gradient summed over the wrong axis keeps its shape
    cases["layernorm"] = dict(
        forward=ops.layernorm_forward, backward=ops.layernorm_backward,
        torch_ref=torch.nn.LayerNorm(5), inputs={"x": normal(5, 5, scale=2.0)},
        params={"gamma": normal(5), "beta": normal(5)}, names=_BN,
    )  # fmt: skip
    cases["conv2d"] = dict(
        forward=partial(ops.conv2d_forward, stride=2, padding=1), backward=ops.conv2d_backward,
        torch_ref=torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
        inputs={"x": normal(2, 3, 7, 7)}, params={"W": normal(4, 3, 3, 3), "b": normal(4)},
        names={"W": "weight", "b": "bias"},
    )  # fmt: skip
    # kernel 3, stride 2: neighbouring windows share a row and a column
    cases["maxpool2d"] = dict(
        forward=partial(ops.maxpool2d_forward, kernel=3, stride=2),
        backward=ops.maxpool2d_backward, torch_ref=torch.nn.MaxPool2d(3, 2),
        inputs={"x": normal(2, 3, 7, 7)},
    )  # fmt: skip
    idx = np.r_[rng.integers(0, 6, 8), [2, 2]]  # (10,): index 2 at least twice
    cases["embedding"] = dict(
        forward=ops.embedding_forward, backward=ops.embedding_backward,
        torch_ref=torch.nn.Embedding(6, 3), inputs={"idx": idx}, params={"W": normal(6, 3)},
        names={"W": "weight"},
    )  # fmt: skip
    return cases


# --- the catalogue ------------------------------------------------------------------------


@dataclass(frozen=True)
class OpMutant:
    name: str
    op: str  # the gallery case it breaks
    bug: str
    expect: str  # the item where the bug lives: "out", a state name, or the gradient's input
    change: Callable[[dict], dict]  # gallery case -> the case with the bug


def _backward(fn: Callable) -> Callable[[dict], dict]:
    """A mutant that replaces the backward with fn(correct_backward, dout, cache)."""
    return lambda case: {**case, "backward": partial(fn, case["backward"])}


def _forward(fn: Callable) -> Callable[[dict], dict]:
    return lambda case: {**case, "forward": partial(fn, case["forward"])}


def _replace(i: int, fn):
    """Replace gradient i of a tuple-returning backward with fn(its grads, dout, cache)."""

    def back(correct, dout, cache):
        grads = list(correct(dout, cache))
        grads[i] = fn(grads, dout, cache)
        return tuple(grads)

    return _backward(back)


def _act(fn):
    """An activation backward computed by fn(dout, z, a) instead."""
    return _backward(lambda correct, dout, cache: fn(dout, cache[1], cache[2]))


def _bn_running(fix):
    """The batchnorm forward, then the running statistics recomputed by fix(...) in place."""

    def forward(correct, x, gamma, beta, running_mean, running_var, **kw):
        rm0, rv0 = running_mean.copy(), running_var.copy()
        out, cache = correct(x, gamma, beta, running_mean, running_var, **kw)
        var = cache[2].reshape(-1)  # (C,): biased
        mu = x.mean(axis=(0, *range(2, x.ndim)))  # (C,)
        m = cache[6]
        fix(running_mean, running_var, rm0, rv0, mu, var, m, 0.1)
        return out, cache

    return _forward(forward)


def _biased_running_var(rm, rv, rm0, rv0, mu, var, m, mom):
    rv[...] = (1 - mom) * rv0 + mom * var  # the batch variance as it normalised: /M


def _momentum_flipped(rm, rv, rm0, rv0, mu, var, m, mom):
    rm[...] = mom * rm0 + (1 - mom) * mu  # Keras' convention: momentum weights the old value


def _bn_unbiased_forward(correct, x, gamma, beta, running_mean, running_var, **kw):
    _, cache = correct(x, gamma, beta, running_mean, running_var, **kw)
    xc, _, var, _, g, axes, m, eps = cache
    var_u = var * m / (m - 1)  # normalising with the unbiased variance
    inv_std = 1 / np.sqrt(var_u + eps)
    xhat = xc * inv_std
    shape = g.shape
    return g * xhat + beta.reshape(shape), (xc, xhat, var_u, inv_std, g, axes, m, eps)


def _ln_eps_outside(correct, x, gamma, beta, eps=1e-5):
    xc = x - x.mean(axis=-1, keepdims=True)  # (N, D)
    inv_std = 1 / (np.sqrt((xc * xc).mean(axis=-1, keepdims=True)) + eps)  # eps outside the root
    xhat = xc * inv_std
    return gamma * xhat + beta, (xhat, inv_std, gamma)


def _ln_dx_over_batch(grads, dout, cache):
    xhat, inv_std, gamma = cache
    n = xhat.shape[0]
    dxhat = dout * gamma
    return (inv_std / n) * (  # the batchnorm formula: sums over the batch, not the row
        n * dxhat
        - dxhat.sum(axis=0, keepdims=True)
        - xhat * (dxhat * xhat).sum(axis=0, keepdims=True)
    )


def _conv_dx(dout, cache, crop, stride=None):
    x_shape, xpad, W, s, pad = cache
    s = s if stride is None else stride
    kh, kw = W.shape[2:]
    ho, wo = dout.shape[2:]
    dxpad = np.zeros_like(xpad)
    for p in range(kh):
        for q in range(kw):
            rows, cols = slice(p, p + s * ho, s), slice(q, q + s * wo, s)
            dxpad[:, :, rows, cols] += np.einsum("nfhw,fc->nchw", dout, W[:, :, p, q])
    h, w = x_shape[2:]
    return crop(dxpad, pad, h, w)


def _maxpool_overwrite(correct, dout, cache):
    x_shape, arg, k, s = cache
    ho, wo = dout.shape[2:]
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for p in range(k):
        for q in range(k):
            region = dx[:, :, p : p + s * ho : s, q : q + s * wo : s]
            hit = arg == p * k + q
            region[hit] = dout[hit]  # overwrites what an overlapping window routed here
    return dx


def _maxpool_whole_window(correct, dout, cache):
    x_shape, _, k, s = cache
    ho, wo = dout.shape[2:]
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for p in range(k):
        for q in range(k):
            dx[:, :, p : p + s * ho : s, q : q + s * wo : s] += dout  # every element, not the max
    return dx


def _embedding_overwrite(correct, dout, cache):
    idx, shape = cache
    dW = np.zeros(shape, dtype=dout.dtype)
    dW[idx] = dout  # a repeated index keeps only its last row
    return dW


def _softmax_sum_over_batch(correct, dout, cache):
    y = cache
    return y * (dout - (dout * y).sum(axis=0, keepdims=True))


def _ce_grad(correct, dout, cache, onehot=True, scale=True):
    logp, labels = cache
    n = logp.shape[0]
    p = np.exp(logp)
    if onehot:
        p[np.arange(n), labels] -= 1
    return p * ((dout if scale else 1) / n)


OP_MUTANTS: list[OpMutant] = [
    OpMutant("affine-dW-transposed", "affine", "dW = x^T dout, (D, H) for (H, D)", "W",
             _replace(1, lambda g, d, c: g[1].T)),
    OpMutant("affine-db-mean", "affine", "db averaged over the batch", "b",
             _replace(2, lambda g, d, c: d.mean(axis=0))),
    OpMutant("affine-dx-W^T", "affine", "dx = dout W^T (the forward's product)", "x",
             _replace(0, lambda g, d, c: d @ c[1].T)),
    OpMutant("sigmoid'-at-output", "sigmoid", "sigma'(a) = s(a)(1 - s(a)) where s'(z) is meant",
             "z", _act(lambda d, z, a: d * sigmoid(a) * (1 - sigmoid(a)))),
    OpMutant("sigmoid'-z(1-z)", "sigmoid", "a (1 - a) written with z for a", "z",
             _act(lambda d, z, a: d * z * (1 - z))),
    OpMutant("tanh'-1-z^2", "tanh", "1 - a^2 written with z for a", "z",
             _act(lambda d, z, a: d * (1 - z * z))),
    OpMutant("relu-mask-on-dout", "relu", "masked where dout > 0 instead of where z > 0", "z",
             _act(lambda d, z, a: np.where(d > 0, d, 0))),
    OpMutant("leaky-relu-slope-dropped", "leaky_relu", "0 for z < 0 where the slope is meant",
             "z", _act(lambda d, z, a: np.where(z > 0, d, 0))),
    OpMutant("softmax-diagonal-only", "softmax", "dx = dout y (1 - y): the Jacobian's diagonal",
             "x", _backward(lambda b, d, y: d * y * (1 - y))),
    OpMutant("softmax-sum-over-batch", "softmax", "sum(dout y) over axis 0, not the classes",
             "x", _backward(_softmax_sum_over_batch)),
    OpMutant("log-softmax-no-softmax-term", "log_softmax", "dx = dout: the softmax term missing",
             "x", _backward(lambda b, d, y: d)),
    OpMutant("log-softmax-y-for-softmax", "log_softmax", "dout - y sum(dout): y is log p, not p",
             "x", _backward(lambda b, d, y: d - y * d.sum(axis=-1, keepdims=True))),
    OpMutant("ce-missing-1/N", "softmax_cross_entropy", "dlogits = dout (p - Y), no 1/N",
             "logits", _backward(lambda b, d, c: b(d, c) * c[0].shape[0])),
    OpMutant("ce-no-onehot", "softmax_cross_entropy", "dlogits = dout p / N: Y not subtracted",
             "logits", _backward(partial(_ce_grad, onehot=False))),
    OpMutant("ce-dout-ignored", "softmax_cross_entropy", "(p - Y) / N, dout not applied",
             "logits", _backward(partial(_ce_grad, scale=False))),
    OpMutant("mse-missing-2", "mse", "d(p - t)^2 = (p - t)", "pred",
             _replace(0, lambda g, d, c: g[0] / 2)),
    OpMutant("mse-dtarget-sign", "mse", "dtarget = +dpred", "target",
             _replace(1, lambda g, d, c: g[0])),
    OpMutant("mse-mean-over-N", "mse", "divided by N where the mean is over N x D", "pred",
             _replace(0, lambda g, d, c: 2 * d * c / c.shape[0])),
    OpMutant("dropout-no-rescale", "dropout", "dx = dout mask: 1/(1 - p) forgotten", "x",
             _backward(lambda b, d, c: d * (c != 0))),
    OpMutant("dropout-mask-ignored", "dropout", "dx = dout / (1 - p): the mask forgotten", "x",
             _backward(lambda b, d, c: d / (1 - 0.4))),
    OpMutant("bn-running-var-biased", "batchnorm", "running var from the biased variance",
             "running_var", _bn_running(_biased_running_var)),
    OpMutant("bn-momentum-flipped", "batchnorm", "running = m old + (1 - m) new (Keras)",
             "running_mean", _bn_running(_momentum_flipped)),
    OpMutant("bn-normalise-unbiased", "batchnorm", "normalises with the unbiased variance",
             "out", _forward(_bn_unbiased_forward)),
    OpMutant("bn-dgamma-no-xhat", "batchnorm", "dgamma = sum dout (xhat forgotten)", "gamma",
             _replace(1, lambda g, d, c: d.sum(axis=c[5]))),
    OpMutant("bn-dx-no-mean-term", "batchnorm", "dx without the - sum(dxhat) term", "x",
             _replace(0, lambda g, d, c: g[0] + (c[3] / c[6]) * (d * c[4]).sum(axis=c[5],
                                                                              keepdims=True))),
    OpMutant("bn-dx-no-var-term", "batchnorm", "dx without the - xhat sum(dxhat xhat) term", "x",
             _replace(0, lambda g, d, c: g[0] + (c[3] / c[6]) * c[1]
                      * (d * c[4] * c[1]).sum(axis=c[5], keepdims=True))),
    OpMutant("ln-dx-no-mean-term", "layernorm", "dx without the - sum_d(dxhat) term", "x",
             _replace(0, lambda g, d, c: g[0] + (c[1] / d.shape[-1])
                      * (d * c[2]).sum(axis=-1, keepdims=True))),
    OpMutant("bn2d-dbeta-mean-over-HW", "batchnorm2d", "dbeta summed over N, averaged over H, W",
             "beta", _replace(2, lambda g, d, c: d.sum(axis=0).mean(axis=(1, 2)))),
    OpMutant("ln-dgamma-wrong-axis", "layernorm", "dgamma summed over the features, not rows",
             "gamma", _replace(1, lambda g, d, c: (d * c[0]).sum(axis=1))),
    OpMutant("ln-dx-batchnorm-formula", "layernorm", "dx's sums over the batch axis", "x",
             _replace(0, _ln_dx_over_batch)),
    OpMutant("ln-eps-outside-sqrt", "layernorm", "1 / (sqrt(var) + eps)", "out",
             _forward(_ln_eps_outside)),
    OpMutant("conv-dx-padding-left-in", "conv2d", "dx returned with its padding", "x",
             _replace(0, lambda g, d, c: _conv_dx(d, c, lambda a, p, h, w: a))),
    OpMutant("conv-dx-crop-offset", "conv2d", "padding cropped from one side only", "x",
             _replace(0, lambda g, d, c: _conv_dx(d, c, lambda a, p, h, w: a[:, :, :h, :w]))),
    OpMutant("conv-dx-stride-ignored", "conv2d", "dx scattered with stride 1", "x",
             _replace(0, lambda g, d, c: _conv_dx(
                 d, c, lambda a, p, h, w: a[:, :, p : p + h, p : p + w], stride=1))),
    OpMutant("conv-dW-kernel-flipped", "conv2d", "dW flipped (convolution for correlation)", "W",
             _replace(1, lambda g, d, c: g[1][..., ::-1, ::-1])),
    OpMutant("conv-db-mean", "conv2d", "db averaged over batch and positions", "b",
             _replace(2, lambda g, d, c: d.mean(axis=(0, 2, 3)))),
    OpMutant("maxpool-overwrite", "maxpool2d", "overlapping windows overwrite, not add", "x",
             _backward(_maxpool_overwrite)),
    OpMutant("maxpool-whole-window", "maxpool2d", "dout sent to every element of the window",
             "x", _backward(_maxpool_whole_window)),
    OpMutant("embedding-overwrite", "embedding", "dW[idx] = dout: repeated indices overwrite",
             "W", _backward(_embedding_overwrite)),
    OpMutant("embedding-dW-mean", "embedding", "dW divided by the number of indices", "W",
             _backward(lambda b, d, c: b(d, c) / len(c[0]))),
]  # fmt: skip


# --- correct rewrites: different derivations, the same gradients --------------------------


def _softmax_jacobian(correct, dout, y):
    J = y[:, :, None] * (np.eye(y.shape[1], dtype=y.dtype) - y[:, None, :])  # (N, C, C): dy_i/dx_j
    return np.einsum("ni,nij->nj", dout, J)


def _sigmoid_from_z(correct, dout, cache):
    s = sigmoid(cache[1])  # recomputed from z rather than read from the cached output
    return dout * s * (1 - s)


def _layernorm_staged(correct, dout, cache):
    xhat, inv_std, gamma = cache
    d = xhat.shape[-1]
    xc = xhat / inv_std
    dxhat = dout * gamma
    dvar = (dxhat * xc).sum(axis=-1, keepdims=True) * -0.5 * inv_std**3
    dmu = -dxhat.sum(axis=-1, keepdims=True) * inv_std
    dx = dxhat * inv_std + dvar * 2 * xc / d + dmu / d
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)


def _conv_dx_full(correct, dout, cache):
    """dx as a full correlation of the dilated dout with the flipped kernel."""
    _, dW, db = correct(dout, cache)
    x_shape, xpad, W, s, pad = cache
    n, f, ho, wo = dout.shape
    kh, kw = W.shape[2:]
    dil = np.zeros((n, f, (ho - 1) * s + 1, (wo - 1) * s + 1), dtype=dout.dtype)
    dil[:, :, ::s, ::s] = dout
    hp, wp = xpad.shape[2:]
    full = np.pad(dil, ((0, 0), (0, 0), (kh - 1, hp - dil.shape[2]), (kw - 1, wp - dil.shape[3])))
    flipped = W[:, :, ::-1, ::-1]
    dxpad = np.zeros_like(xpad)
    for p in range(kh):
        for q in range(kw):
            dxpad += np.einsum(
                "nfhw,fc->nchw", full[:, :, p : p + hp, q : q + wp], flipped[:, :, p, q]
            )
    h, w = x_shape[2:]
    return dxpad[:, :, pad : pad + h, pad : pad + w], dW, db


def _embedding_onehot(correct, dout, cache):
    idx, shape = cache
    onehot = (idx[:, None] == np.arange(shape[0])).astype(dout.dtype)  # (N, V)
    return onehot.T @ dout  # (V, D)


def _ce_log_of_softmax(logits, labels):
    y, _ = ops.softmax_forward(logits)
    n = len(labels)
    return -np.log(y[np.arange(n), labels]).mean(), (np.log(y), labels)


ALTERNATIVES: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "batchnorm-compact": ("batchnorm", lambda c: {**c, "backward": ops.batchnorm_backward_compact}),
    "batchnorm2d-compact": (
        "batchnorm2d", lambda c: {**c, "backward": ops.batchnorm_backward_compact}),
    "softmax-full-jacobian": ("softmax", _backward(_softmax_jacobian)),
    "sigmoid'-from-z": ("sigmoid", _backward(_sigmoid_from_z)),
    "layernorm-staged": ("layernorm", _backward(_layernorm_staged)),
    "conv-dx-full-correlation": ("conv2d", _backward(_conv_dx_full)),
    "embedding-onehot-matmul": ("embedding", _backward(_embedding_onehot)),
    "ce-log-of-softmax": (
        "softmax_cross_entropy", lambda c: {**c, "forward": _ce_log_of_softmax}),
}  # fmt: skip


# --- the score ----------------------------------------------------------------------------


def run_op_mutant(mutant: OpMutant, dtype="float64", seed: int = 0) -> OpCheckResult | str:
    """The check's result on the mutated op, or the one-line error it refused the op with."""
    case = mutant.change(gallery(dtype, seed)[mutant.op])
    try:
        return check_op(**case)
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"


def op_score(mutants: list[OpMutant] | None = None, dtype="float64") -> Score:
    rows = []
    for m in OP_MUTANTS if mutants is None else mutants:
        res = run_op_mutant(m, dtype)
        if isinstance(res, str):  # refused: located when the error names the item
            caught, located, where = True, f"'{m.expect}'" in res, "refused: " + res
        else:
            fm = res.first_mismatch
            caught = not res.passed
            located = fm is not None and fm.name == m.expect
            where = "-" if fm is None else fm.label + (f" ({fm.cause})" if fm.cause else "")
        rows.append({"name": m.name, "op": m.op, "caught": caught, "located": located,
                     "where": where})  # fmt: skip
    return Score(rows, where="first mismatch", width=30)


if __name__ == "__main__":
    import sys

    print(op_score(dtype=sys.argv[1] if len(sys.argv) > 1 else "float64").table())
