"""Op causes a recomputation confirms: the op's gradient recomputed in float64 under a
hypothesised bug, named only when it equals scratch's to rounding and differs from the right one.

    dropped-term       a normalisation's backward without its mean path (- mean(dxhat)) or its
                       variance path (- xhat mean(dxhat xhat))
    wrong-axis         a normalisation's statistics over the wrong axis (layer norm's backward
                       with the batch axis's), softmax's sum over the batch
    jacobian-diagonal  softmax's Jacobian taken as its diagonal y (1 - y): it is not diagonal
    layout             an affine layer's dx through W^T where W is meant (square W)
    kink-mask          relu's mask taken where dout > 0 instead of where x > 0
"""

from __future__ import annotations

import numpy as np
import torch
from nn_parity.torch_ref.opcheck.spec import _Spec

__all__ = ["recomputed_cause"]


def _fits(s, g, right) -> bool:
    if g is None or np.shape(g) != np.shape(s) or not np.all(np.isfinite(g)):
        return False
    scale = max(float(np.linalg.norm(right)), 1e-300)
    apart = float(np.linalg.norm(g - right)) > 1e-6 * scale
    return apart and float(np.linalg.norm(s - g)) <= 1e-9 * scale


def _norm_dx(x, dout, gamma, eps, axes, mean_term=True, var_term=True, sums=None):
    """A normalisation's dx with statistics over `axes` and its backward's sums over `sums`
    (the same axes unless given), with its mean or variance path left out on request."""
    sums = axes if sums is None else sums
    mu = x.mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat = (x - mu) * inv
    dxhat = dout * gamma
    dx = dxhat
    if mean_term:
        dx = dx - dxhat.mean(axis=sums, keepdims=True)
    if var_term:
        dx = dx - xhat * (dxhat * xhat).mean(axis=sums, keepdims=True)
    return dx * inv


def _norm_candidates(spec: _Spec, x, dout):
    ref = spec.torch_ref
    gamma_name = next((k for k, v in spec.module_names.items() if v == "weight"), None)
    if gamma_name is None:
        return []
    gamma = spec.arrays[gamma_name].astype(np.float64)
    if isinstance(ref, torch.nn.modules.batchnorm._BatchNorm):
        axes, other = (0, *range(2, x.ndim)), tuple(range(1, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        what, wrong = "each channel's values over the batch", "each sample's values"
    elif isinstance(ref, torch.nn.LayerNorm) and x.ndim == 2:
        axes, other, shape = (-1,), (0,), (1, -1)
        what, wrong = "each row's features", "the batch axis (batch norm's formula)"
    else:
        return []
    g = gamma.reshape(shape)
    eps = float(ref.eps)
    right = _norm_dx(x, dout, g, eps, axes)
    return right, [
        (
            _norm_dx(x, dout, g, eps, axes, mean_term=False),
            "dropped-term",
            "its backward leaves out the mean path: the - mean(dxhat) term of dx",
        ),
        (
            _norm_dx(x, dout, g, eps, axes, var_term=False),
            "dropped-term",
            "its backward leaves out the variance path: the - xhat mean(dxhat xhat) term of dx",
        ),
        (
            _norm_dx(x, dout, g, eps, other),
            "wrong-axis",
            f"its backward takes the statistics over {wrong}, not over {what}",
        ),
        (
            _norm_dx(x, dout, g, eps, axes, sums=other),
            "wrong-axis",
            f"its backward's sums (of dxhat and dxhat xhat) run over {wrong}, not over {what}",
        ),
    ]


def _softmax_candidates(x, dout, y):
    right = y * (dout - (dout * y).sum(axis=-1, keepdims=True))
    return right, [
        (
            dout * y * (1 - y),
            "jacobian-diagonal",
            "dx = dout y (1 - y): softmax's Jacobian taken as its diagonal, but every output "
            "depends on every input (dx = y (dout - sum(dout y)))",
        ),
        (
            y * (dout - (dout * y).sum(axis=0, keepdims=True)),
            "wrong-axis",
            "the sum(dout y) of softmax's backward is taken over the batch (axis 0), not over "
            "the classes",
        ),
    ]


def _candidates(spec: _Spec, name: str, dout, t_out):
    """(the right gradient, [(hypothesis, cause, words)]) for the ops these causes know."""
    if spec.perms or name not in spec.inputs:
        return None
    x = spec.arrays[name].astype(np.float64)
    d = np.asarray(dout, dtype=np.float64)
    y = np.asarray(t_out, dtype=np.float64)
    ref = spec.torch_ref
    if isinstance(ref, torch.nn.CrossEntropyLoss) and x.ndim == 2 and ref.reduction == "mean":
        labels = next((spec.arrays[k] for k in spec.inputs if k != name), None)
        if labels is None or ref.weight is not None or ref.label_smoothing:
            return None
        p = np.exp(x - x.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        onehot = np.eye(x.shape[1])[np.asarray(labels).astype(int)]
        words = "dlogits = dout p / N: the one-hot targets are not subtracted (p - Y is meant)"
        return d * (p - onehot) / len(x), [(d * p / len(x), "derivative-form", words)]
    if isinstance(ref, torch.nn.Linear) and len(spec.params) >= 1:
        W = spec.arrays[next(k for k, v in spec.module_names.items() if v == "weight")]
        W = W.astype(np.float64)
        if W.shape[0] != W.shape[1]:
            return None
        words = "dx = dout W^T where dout W is meant (W is square, so the shapes fit)"
        return d @ W, [(d @ W.T, "layout", words)]
    if isinstance(ref, torch.nn.modules.batchnorm._BatchNorm | torch.nn.LayerNorm):
        found = _norm_candidates(spec, x, d)
        return found or None
    if spec.params or x.shape != y.shape or x.ndim != 2:
        return None
    if np.allclose(y, np.maximum(x, 0), rtol=0, atol=0):  # the op is relu
        words = "relu's mask is taken where dout > 0, not where the input x > 0"
        return d * (x > 0), [(d * (d > 0), "kink-mask", words)]
    soft = np.exp(x - x.max(axis=-1, keepdims=True))
    p = soft / soft.sum(axis=-1, keepdims=True)
    if np.allclose(y, p, rtol=1e-9, atol=1e-12):
        return _softmax_candidates(x, d, y)
    if np.allclose(y, np.log(p), rtol=1e-9, atol=1e-12):  # log-softmax
        right = d - p * d.sum(axis=-1, keepdims=True)
        return right, [
            (d, "dropped-term", "log-softmax's backward is taken as the identity: its softmax "
             "term - p sum(dout) is missing"),
            (d - y * d.sum(axis=-1, keepdims=True), "derivative-form", "log-softmax's backward "
             "uses the output y = log p where p = exp(y) is meant: dout - y sum(dout)"),
        ]  # fmt: skip
    return _leaky_candidates(x, d, y)


def _leaky_candidates(x, d, y):
    """A leaky relu (y = x for x > 0, slope x below): its negative slope dropped."""
    neg = x < 0
    if not neg.any() or not np.array_equal(y[~neg], x[~neg]):
        return None
    slope = y[neg] / x[neg]
    a = float(np.median(slope))
    if not 0 < a < 1 or not np.allclose(slope, a, rtol=1e-9, atol=0):
        return None
    words = f"leaky relu's negative slope {a:g} is dropped: 0 for x < 0, as plain relu's"
    return d * np.where(neg, a, 1.0), [(d * (x > 0), "derivative-form", words)]


def _forward_candidates(spec: _Spec, m):
    """A normalisation's output with eps outside the square root, its running statistics with
    momentum and 1 - momentum exchanged."""
    ref = spec.torch_ref
    names = {v: k for k, v in spec.module_names.items()}
    if spec.perms or not isinstance(
        ref, torch.nn.modules.batchnorm._BatchNorm | torch.nn.LayerNorm
    ):
        return None
    x = spec.arrays[spec.inputs[0]].astype(np.float64)
    if isinstance(ref, torch.nn.LayerNorm):
        axes, shape = (-1,), (1, -1)
    else:
        axes, shape = (0, *range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)
    mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    if m.kind == "output" and "weight" in names and "bias" in names:
        gamma = spec.arrays[names["weight"]].astype(np.float64).reshape(shape)
        beta = spec.arrays[names["bias"]].astype(np.float64).reshape(shape)
        right = gamma * (x - mu) / np.sqrt(var + ref.eps) + beta
        outside = gamma * (x - mu) / (np.sqrt(var) + ref.eps) + beta
        return right, [(outside, "eps-placement", "1 / (sqrt(var) + eps): eps outside the "
                        "square root, where torch takes 1 / sqrt(var + eps)")]  # fmt: skip
    if m.kind == "state" and isinstance(ref, torch.nn.modules.batchnorm._BatchNorm):
        n = x.size // x.shape[1]
        new = {"running_mean": mu.reshape(-1), "running_var": var.reshape(-1) * n / (n - 1)}
        buffer = spec.module_names.get(m.name)
        if buffer not in new or ref.momentum is None:
            return None
        old, k = spec.arrays[m.name].astype(np.float64), float(ref.momentum)
        right = (1 - k) * old + k * new[buffer]
        words = (f"the running statistic is updated as {k:g} old + {1 - k:g} new: momentum and "
                 f"1 - momentum exchanged (torch: (1 - momentum) old + momentum new)")  # fmt: skip
        return right, [(k * old + (1 - k) * new[buffer], "constant-swapped", words)]
    return None


def recomputed_cause(spec: _Spec, m, s, dout, t_out) -> tuple[str, str] | None:
    """The first hypothesis whose recomputation of the failing gradient equals scratch's
    (every one that fits is named, most likely first)."""
    if m.kind in ("output", "state"):
        found = _forward_candidates(spec, m)
    elif m.kind == "grad" and dout is not None:
        found = _candidates(spec, m.name, dout, t_out)
    else:
        return None
    if found is None:
        return None
    right, hypotheses = found
    fits = [(c, w) for g, c, w in hypotheses if _fits(s, g, right)]
    if not fits:
        return None
    what = f"scratch's {m.label.split('[')[0]}"
    words = "; or, fitting the same numbers, ".join(w for _, w in fits)
    return fits[0][0], f"{what} is recomputed exactly when {words}"
