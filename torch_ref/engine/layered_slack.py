"""The allowance each stage of the layered re-check (engine/layered_recheck.py) gives a
correct layer (`p`: the re-check's `_Pass`, its params and buffers): _DOT_ULPS eps times the
sum of magnitudes its computation adds up, forward (`_slack`) and backward (`_backward_slack`),
derived in docs/tolerances.md."""

from __future__ import annotations

import numpy as np
from nn_parity.scratch import ops
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.engine.rounding import _DOT_ULPS

# f' written from the output a (ops.activation_forward), and how far it moves when a moves by
# a few ulps of itself: |d f'/da| |a|. Near saturation (a within rounding of 1, or of 0 for
# sigmoid) f' is itself a few ulps, so one ulp of a is a large relative change in dx.
_FROM_OUTPUT = {
    "tanh": lambda a: 2 * a * a,  # f' = 1 - a^2
    "sigmoid": lambda a: np.abs(1 - 2 * a) * a,  # f' = a (1 - a)
}


def _slack(net: sq.Sequential, p, inputs: list, dtype=None) -> dict:
    """Per layer output, the rounding its computation may carry beyond the table's fixed atol:
    _DOT_ULPS eps times the sum of magnitudes the layer adds up (docs/tolerances.md). Affine
    and conv: the same operation on |x|, |W|, |b|; a norm: |gamma| (|x| + |mu|) / sigma +
    |beta| (the centring cancels |x| and |mu|). Elementwise layers, pooling, flatten: none."""
    eps = float(np.finfo(net.dtype if dtype is None else dtype).eps)
    out = {}
    for l, (layer, x) in enumerate(zip(net.layers, inputs)):
        w, b = p.params.get(f"{l}.weight"), p.params.get(f"{l}.bias")
        if isinstance(layer, sq.Affine):
            m = np.abs(x) @ np.abs(w).T + np.abs(b)
        elif isinstance(layer, sq.Conv2d):
            m = ops.conv2d_forward(np.abs(x), np.abs(w), np.abs(b), layer.stride, layer.padding)[0]
        elif isinstance(layer, (sq.BatchNorm, sq.LayerNorm)):
            train = net.training or isinstance(layer, sq.LayerNorm)
            m = _norm_magnitude(layer, x, w, b, p.buffers, l, train, eps)
            if isinstance(layer, sq.BatchNorm) and net.training:
                out.update(_stat_slack(layer, l, x, eps))
        else:
            continue
        out[("out", l, None, None)] = _DOT_ULPS * eps * m
    return out


def _stat_slack(layer, l: int, x: np.ndarray, eps: float) -> dict:
    """Batchnorm's updated running statistics (training): momentum times the rounding of the
    batch mean, _DOT_ULPS eps mean |x| (a conv before it can make |x| far larger than its
    mean), and of the batch variance, mean |xc| (|xc| + 2 (|x| + |mu|)) with xc = x - mu
    carrying the centring's rounding (as `_norm_magnitude`), plus the mean's rounding squared
    (delta^2, _DOT_ULPS eps mean(|x| + |mu|) squared: all of a constant channel's variance),
    times M / (M - 1)."""
    axes, m = (0, *range(2, x.ndim)), x.size // x.shape[1]
    ax, mu = np.abs(x), x.mean((0, *range(2, x.ndim)), keepdims=True)
    xc, e = np.abs(x - mu), _DOT_ULPS * eps
    var = e * (xc * (xc + 2 * (ax + np.abs(mu)))).mean(axes)
    var = var + (e * (ax + np.abs(mu)).mean(axes)) ** 2
    k = layer.momentum
    return {("stat", l, "running_mean", None): k * e * ax.mean(axes),
            ("stat", l, "running_var", None): k * var * m / (m - 1)}  # fmt: skip


def _backward_slack(layer, l: int, p, dout, x, cache) -> tuple:
    """(for dx, for the parameter gradients by key): _DOT_ULPS eps times the magnitudes each
    sum adds up (docs/tolerances.md). Affine and conv: the same backward on |dout|, |x|, |W|
    (dx = sum |dout| |W|, dW = sum |dout| |x|, db = sum |dout|); a norm: xhat itself carries
    (|x| + |mu|) / sigma of rounding from the centring, so dgamma = sum |dout| (|xhat| + that),
    dbeta = sum |dout|, and dx = gamma / sigma (dout - mean dout - xhat mean(dout xhat)) term
    by term with xhat's rounding; tanh and sigmoid, f' from a within a few ulps of a
    (_FROM_OUTPUT). relu, pooling, flatten, dropout: none (their dx is a product or a move)."""
    eps = _DOT_ULPS * float(np.finfo(dout.dtype).eps)
    d, ax = np.abs(dout), np.abs(x)
    w = p.params.get(f"{l}.weight")
    if isinstance(layer, sq.Affine):
        dx, mags = d @ np.abs(w), (d.T @ ax, d.sum(0))
    elif isinstance(layer, sq.Conv2d):
        aw = np.abs(w)
        _, cache_abs = ops.conv2d_forward(ax, aw, np.zeros(len(aw), aw.dtype), layer.stride,
                                          layer.padding)  # fmt: skip
        dx, *mags = ops.conv2d_backward(d, cache_abs)
    elif isinstance(layer, (sq.BatchNorm, sq.LayerNorm)):
        dx, mags = _norm_backward_magnitude(layer, l, p, d, x, cache)
        dx = dx + _sigma_remainder(layer, l, p, d, x, cache, eps) / eps
    elif isinstance(layer, sq.Act) and layer.kind in _FROM_OUTPUT:
        return eps * d * _FROM_OUTPUT[layer.kind](np.abs(cache[2])), {}
    else:
        return 0.0, {}
    return eps * dx, {("grad", l, n, None): eps * m for n, m in zip(("weight", "bias"), mags)}


def _norm_backward_magnitude(layer, l: int, p, d, x, cache) -> tuple:
    ln = isinstance(layer, sq.LayerNorm)
    axes = tuple(range(d.ndim - 1)) if ln else (0, *range(2, d.ndim))
    xhat = np.abs(cache[0] if ln else cache[1])
    train = ln or not isinstance(cache[0], str)  # batchnorm's eval cache starts with "eval"
    mu, sigma, shape = _norm_stats(layer, x, p.buffers, l, train)
    centring = (np.abs(x) + np.abs(mu)) / sigma  # the rounding xhat carries, in ulps of 1
    within = (-1,) if ln else axes  # the means of the backward: per row, or per channel
    # dxhat = gamma dout enters the means: a layernorm's gamma varies along the row it averages
    # over, so |gamma| goes inside them (a batchnorm's is constant within its channel's means)
    g = np.abs(p.params[f"{l}.weight"].reshape(shape))
    dg = d * g
    md, mdx = dg.mean(within, keepdims=True), (dg * xhat).mean(within, keepdims=True)
    dx = (dg + md + xhat * mdx + centring * (mdx + xhat * md)) / sigma
    return dx, ((d * (xhat + centring)).sum(axes), d.sum(axes))


def _sigma_remainder(layer, l: int, p, d, x, cache, eps: float):
    """What `_norm_backward_magnitude` (first order in xhat's rounding, sigma exact) leaves
    out, sigma's own rounding (`_sigma_lo`): dx = gamma / sigma (dout - mean dout - xhat
    mean(dout xhat)) moves by |gamma| (1 / lo - 1 / sigma) times its terms' size at lo, and by
    |gamma| / sigma e mean(|dout| e), the product of xhat's two roundings e."""
    ln = isinstance(layer, sq.LayerNorm)
    if not (ln or not isinstance(cache[0], str)):  # eval: running statistics, exact
        return 0.0
    axes = (-1,) if ln else (0, *range(2, d.ndim))
    mu, sigma, shape = _norm_stats(layer, x, p.buffers, l, True)
    lo, e = _sigma_lo(layer, x, mu, sigma, axes, eps)
    hi = (np.abs(x - mu) + eps * (np.abs(x) + np.abs(mu))) / lo  # |xhat| at most
    gamma = np.abs(p.params[f"{l}.weight"].reshape(shape))
    terms = d + d.mean(axes, keepdims=True) + hi * (d * hi).mean(axes, keepdims=True)
    return gamma * ((1 / lo - 1 / sigma) * terms + e * (d * e).mean(axes, keepdims=True) / sigma)


def _sigma_lo(layer, x, mu, sigma, axes, eps: float) -> tuple:
    """(lo, e): the batch variance carries eps |xc| (|xc| + 2 (|x| + |mu|)) from xc's rounding
    and delta^2 from the mean's (delta = eps mean(|x| + |mu|)), so sigma may be as low as lo =
    sqrt(max(var - that, 0) + eps_norm); xhat = xc / sigma then carries e = (eps (|x| + |mu|)
    + |xc| (sigma / lo - 1)) / lo. Negligible unless the centring's rounding is of the spread
    (lo = sigma, e = the centring, to first order): a channel whose values are all equal,
    where one side's mean is an ulp off and its variance an ulp squared against 0, or exactly
    0 (torch's variance need not be formed from its own mean: xhat = an ulp / sqrt(eps))."""
    ax, xc, amu = np.abs(x), np.abs(x - mu), np.abs(mu)
    delta = eps * (ax + amu).mean(axes, keepdims=True)
    err = eps * (xc * (xc + 2 * (ax + amu))).mean(axes, keepdims=True) + delta**2
    lo = np.sqrt(np.maximum(sigma**2 - layer.eps - err, 0) + layer.eps)
    return lo, (eps * (ax + amu) + xc * (sigma / lo - 1)) / lo


def _norm_stats(layer, x, buffers, l: int, train: bool) -> tuple:
    """(mu, sigma, the shape a (C,) or (D,) vector broadcasts as) of a norm layer's input."""
    if isinstance(layer, sq.LayerNorm):
        return x.mean(-1, keepdims=True), np.sqrt(x.var(-1, keepdims=True) + layer.eps), (-1,)
    shape = (1, layer.c) + (1,) * (x.ndim - 2)
    if train:
        axes = (0, *range(2, x.ndim))
        return x.mean(axes, keepdims=True), np.sqrt(x.var(axes, keepdims=True) + layer.eps), shape
    mu, var = buffers[f"{l}.running_mean"], buffers[f"{l}.running_var"]
    return mu.reshape(shape), np.sqrt(var.reshape(shape) + layer.eps), shape


def _norm_magnitude(layer, x, gamma, beta, buffers, l: int, train: bool, eps: float):
    """|gamma| times xhat's rounding (the centring; with sigma's own, `_sigma_lo`, in
    training), in ulps of the dot's eps, plus |beta|."""
    mu, sigma, shape = _norm_stats(layer, x, buffers, l, train)
    centring = (np.abs(x) + np.abs(mu)) / sigma
    if train:
        axes = (-1,) if isinstance(layer, sq.LayerNorm) else (0, *range(2, x.ndim))
        centring = _sigma_lo(layer, x, mu, sigma, axes, _DOT_ULPS * eps)[1] / (_DOT_ULPS * eps)
    return np.abs(gamma.reshape(shape)) * centring + np.abs(beta.reshape(shape))


__all__ = ["_backward_slack", "_slack"]
