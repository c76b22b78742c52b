"""A gallery of hand-derived ops: forward and backward side by side, NumPy only.

Every op is a pair `<op>_forward(...) -> (out, cache)` and `<op>_backward(dout, cache)`, the
backward returning one gradient per differentiable argument, in the forward's argument order
(a bare array when there is one). `dX` means dL/dX and has X's shape; `dout` is dL/dout for
whatever scalar L sits downstream. Reductions are means unless said otherwise, as in torch.

Letters: N batch, D features, H outputs, C channels (classes for the losses), F filters,
KH x KW kernel, Ho x Wo output size, V vocabulary.

    affine                 out = x W^T + b                                  nn.Linear
    activation             a = f(z), the five of scratch/activations.py     torch.sigmoid ...
    softmax                y = e^x / sum e^x  (last axis)                   torch.softmax
    log_softmax            y = x - logsumexp x                              torch.log_softmax
    softmax_cross_entropy  L = -mean_n log softmax(x_n)[y_n]                F.cross_entropy
    mse                    L = mean (p - t)^2                               nn.MSELoss
    dropout                out = x * mask / (1 - p), mask given             x * mask / (1 - p)
    batchnorm              training mode, running statistics                nn.BatchNorm1d/2d
    layernorm              over the last axis                               nn.LayerNorm
    conv2d                 NCHW, stride, zero padding                       nn.Conv2d
    maxpool2d              NCHW, kernel, stride (windows may overlap)       nn.MaxPool2d
    embedding              out = W[idx]                                     nn.Embedding

`torch_ref.opcheck.check_op` checks any such pair against its torch reference.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .activations import get_activation

__all__ = [
    "activation_backward",
    "activation_forward",
    "affine_backward",
    "affine_forward",
    "batchnorm_backward",
    "batchnorm_backward_compact",
    "batchnorm_forward",
    "conv2d_backward",
    "conv2d_forward",
    "dropout_backward",
    "dropout_forward",
    "embedding_backward",
    "embedding_forward",
    "layernorm_backward",
    "layernorm_forward",
    "log_softmax_backward",
    "log_softmax_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "mse_backward",
    "mse_forward",
    "softmax_backward",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
    "softmax_forward",
]


# --- affine -------------------------------------------------------------------------------


def affine_forward(x, W, b):
    """out = x W^T + b, with W stored (H, D) like `nn.Linear.weight`.

    out_nh = sum_d x_nd W_hd + b_h, so
        dx_nd = sum_h dout_nh W_hd      dx = dout W         (N, D)
        dW_hd = sum_n dout_nh x_nd      dW = dout^T x       (H, D)
        db_h  = sum_n dout_nh                               (H,)
    (b is broadcast over the batch, so its gradient sums over the batch.)
    """
    out = x @ W.T + b  # (N, H)
    return out, (x, W)


def affine_backward(dout, cache):
    """(dx, dW, db) of `affine_forward`."""
    x, W = cache
    dx = dout @ W  # (N, D)
    dW = dout.T @ x  # (H, D)
    db = dout.sum(axis=0)  # (H,)
    return dx, dW, db


# --- activations --------------------------------------------------------------------------


def activation_forward(z, kind="tanh"):
    """a = f(z) for one of scratch/activations.py's functions (`kind`: sigmoid, tanh, relu,
    leaky_relu[:slope], identity); the math of each is in that module's docstring.

    Elementwise, so dz = dout * f'(z), with f' written from the cached output where it can be
    (sigmoid: a (1 - a), tanh: 1 - a^2), as torch's autograd writes it.
    """
    act = get_activation(kind)
    a = act.forward(z)  # z's shape
    return a, (act, z, a)


def activation_backward(dout, cache):
    """dz of `activation_forward`."""
    act, z, a = cache
    return act.backward(dout, z, a)  # z's shape


# --- softmax and its log ------------------------------------------------------------------


def softmax_forward(x):
    """y_i = e^{x_i} / sum_j e^{x_j} over the last axis, shifted by max x for stability.

    dy_i/dx_j = y_i (delta_ij - y_j), so
        dx_j = sum_i dout_i y_i (delta_ij - y_j) = y_j (dout_j - sum_i dout_i y_i)
    """
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # (N, C)
    y = e / e.sum(axis=-1, keepdims=True)  # (N, C)
    return y, y


def softmax_backward(dout, cache):
    """dx of `softmax_forward`."""
    y = cache
    return y * (dout - (dout * y).sum(axis=-1, keepdims=True))  # (N, C)


def log_softmax_forward(x):
    """y_i = x_i - log sum_j e^{x_j} over the last axis (log-sum-exp shifted by max x).

    dy_i/dx_j = delta_ij - softmax(x)_j, so
        dx_j = dout_j - softmax(x)_j sum_i dout_i
    """
    shifted = x - x.max(axis=-1, keepdims=True)  # (N, C)
    y = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # (N, C)
    return y, y


def log_softmax_backward(dout, cache):
    """dx of `log_softmax_forward`; softmax(x) = e^y."""
    y = cache
    return dout - np.exp(y) * dout.sum(axis=-1, keepdims=True)  # (N, C)


# --- losses -------------------------------------------------------------------------------


def softmax_cross_entropy_forward(logits, labels):
    """L = -(1/N) sum_n log softmax(logits_n)[labels_n], labels integer class indices.

    With p = softmax(logits) and Y the one-hot labels,
        dlogits = dout (p - Y) / N                                      (N, C)
    labels take no gradient.
    """
    n = logits.shape[0]
    logp, _ = log_softmax_forward(logits)  # (N, C)
    loss = -logp[np.arange(n), labels].mean()
    return loss, (logp, labels)


def softmax_cross_entropy_backward(dout, cache):
    """dlogits of `softmax_cross_entropy_forward`."""
    logp, labels = cache
    n = logp.shape[0]
    dlogits = np.exp(logp)  # (N, C): p
    dlogits[np.arange(n), labels] -= 1
    return dlogits * (dout / n)  # (N, C)


def mse_forward(pred, target):
    """L = (1/M) sum (pred - target)^2 over all M elements (`nn.MSELoss()`, mean).

    dpred = dout 2 (pred - target) / M,   dtarget = -dpred
    """
    diff = pred - target  # pred's shape
    return (diff * diff).mean(), diff


def mse_backward(dout, cache):
    """(dpred, dtarget) of `mse_forward`."""
    diff = cache
    dpred = diff * (2 * dout / diff.size)  # pred's shape
    return dpred, -dpred


# --- dropout ------------------------------------------------------------------------------


def dropout_forward(x, mask, p=0.5):
    """Inverted dropout with a given keep-mask (1 keep, 0 drop): out = x * mask / (1 - p).

    Linear in x:  dx = dout * mask / (1 - p).  The mask takes no gradient.
    """
    scale = mask.astype(x.dtype) / (1 - p)  # x's shape: a bool mask must not upcast x
    return x * scale, scale


def dropout_backward(dout, cache):
    """dx of `dropout_forward`."""
    return dout * cache  # x's shape


# --- normalisation ------------------------------------------------------------------------


def _channel_axes(x):
    """The axes batchnorm reduces over: all but the channel axis 1 ((N, C) or (N, C, H, W))."""
    return (0, *range(2, x.ndim))


def batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    """Batch normalisation in training mode, per channel (axis 1), like nn.BatchNorm1d/2d.

    Over the M = N (H W) values of each channel:
        mu = mean x,  var = mean (x - mu)^2  (biased: this normalises)
        xhat = (x - mu) / sqrt(var + eps),   out = gamma xhat + beta
    and, in place, as torch does (momentum weights the new value; the running variance is
    unbiased, var M / (M - 1)):
        running_mean <- (1 - momentum) running_mean + momentum mu
        running_var  <- (1 - momentum) running_var  + momentum var M / (M - 1)
    The running statistics take no gradient. Backward, staged through the graph:
        dbeta = sum dout,  dgamma = sum dout xhat,  dxhat = dout gamma
        dvar = sum dxhat (x - mu) (-1/2) (var + eps)^(-3/2)
        dmu  = -sum dxhat / sqrt(var + eps) + dvar (-2/M) sum (x - mu)   (the last sum is 0)
        dx   = dxhat / sqrt(var + eps) + dvar 2 (x - mu) / M + dmu / M
    """
    axes = _channel_axes(x)
    shape = [1] * x.ndim
    shape[1] = x.shape[1]  # broadcast a (C,) vector against x
    m = x.size // x.shape[1]
    mu = x.mean(axis=axes, keepdims=True)  # (1, C, 1, 1)
    xc = x - mu  # x's shape
    var = (xc * xc).mean(axis=axes, keepdims=True)  # (1, C, 1, 1)
    inv_std = 1 / np.sqrt(var + eps)  # (1, C, 1, 1)
    xhat = xc * inv_std  # x's shape
    out = gamma.reshape(shape) * xhat + beta.reshape(shape)  # x's shape
    running_mean *= 1 - momentum
    running_mean += momentum * mu.reshape(-1)
    running_var *= 1 - momentum
    running_var += momentum * var.reshape(-1) * (m / (m - 1))
    return out, (xc, xhat, var, inv_std, gamma.reshape(shape), axes, m, eps)


def batchnorm_backward(dout, cache):
    """(dx, dgamma, dbeta) of `batchnorm_forward`, staged as in its docstring."""
    xc, xhat, var, inv_std, gamma, axes, m, eps = cache
    dbeta = dout.sum(axis=axes)  # (C,)
    dgamma = (dout * xhat).sum(axis=axes)  # (C,)
    dxhat = dout * gamma  # x's shape
    dvar = (dxhat * xc).sum(axis=axes, keepdims=True) * -0.5 * (var + eps) ** -1.5  # (1, C, 1, 1)
    dmu = -dxhat.sum(axis=axes, keepdims=True) * inv_std  # (1, C, 1, 1)
    dx = dxhat * inv_std + dvar * 2 * xc / m + dmu / m  # x's shape
    return dx, dgamma, dbeta


def batchnorm_backward_compact(dout, cache):
    """The same gradients in one line for dx, the staged sums collected:

    dx = (1 / (M sqrt(var + eps))) (M dxhat - sum dxhat - xhat sum dxhat xhat)
    """
    _, xhat, _, inv_std, gamma, axes, m, _ = cache
    dxhat = dout * gamma  # x's shape
    dx = (inv_std / m) * (
        m * dxhat
        - dxhat.sum(axis=axes, keepdims=True)
        - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True)
    )  # x's shape
    return dx, (dout * xhat).sum(axis=axes), dout.sum(axis=axes)


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """Layer normalisation over the last axis (D), like nn.LayerNorm(D):

        mu = mean_d x,  var = mean_d (x - mu)^2,  xhat = (x - mu) / sqrt(var + eps)
        out = gamma xhat + beta                      gamma, beta: (D,)
    Backward: gamma and beta are shared by every row, so their gradients sum over the rows;
    per row the batchnorm algebra with the roles of the axes swapped:
        dgamma = sum_n dout xhat,  dbeta = sum_n dout,  dxhat = dout gamma
        dx = (1 / (D sqrt(var + eps))) (D dxhat - sum_d dxhat - xhat sum_d dxhat xhat)
    """
    mu = x.mean(axis=-1, keepdims=True)  # (N, 1)
    xc = x - mu  # (N, D)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (N, 1)
    inv_std = 1 / np.sqrt(var + eps)  # (N, 1)
    xhat = xc * inv_std  # (N, D)
    return gamma * xhat + beta, (xhat, inv_std, gamma)


def layernorm_backward(dout, cache):
    """(dx, dgamma, dbeta) of `layernorm_forward`."""
    xhat, inv_std, gamma = cache
    d = xhat.shape[-1]
    rows = tuple(range(xhat.ndim - 1))  # every axis but the normalised one
    dxhat = dout * gamma  # (N, D)
    dx = (inv_std / d) * (
        d * dxhat
        - dxhat.sum(axis=-1, keepdims=True)
        - xhat * (dxhat * xhat).sum(axis=-1, keepdims=True)
    )  # (N, D)
    return dx, (dout * xhat).sum(axis=rows), dout.sum(axis=rows)


# --- convolution and pooling --------------------------------------------------------------


def conv2d_forward(x, W, b, stride=1, padding=0):
    """2-D cross-correlation, NCHW, like nn.Conv2d(C, F, (KH, KW), stride, padding):

        out[n, f, i, j] = b_f + sum_{c, p, q} W[f, c, p, q] xpad[n, c, s i + p, s j + q]
    with xpad x zero-padded by `padding` on every side and Ho = (H + 2 pad - KH) // s + 1.
    Each weight meets one input value per output position, so
        dW[f, c, p, q] = sum_{n, i, j} dout[n, f, i, j] xpad[n, c, s i + p, s j + q]
        db_f = sum_{n, i, j} dout[n, f, i, j]
        dxpad[n, c, s i + p, s j + q] += sum_f dout[n, f, i, j] W[f, c, p, q]
    (windows overlap when s < K, so dxpad accumulates), and dx is dxpad without its padding.

    Computed as one matrix product over im2col rows: row (n, i, j) of `cols` holds the C KH KW
    values under the kernel at output (i, j) of sample n, so out = cols W^T + b; backward builds
    the same rows again from xpad: dW = dout^T cols, and dcols = dout W, each row of which is
    added back onto its window of dxpad.
    """
    s, pad = stride, padding
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # (N, C, H+2p, W+2p)
    f, _, kh, kw = W.shape
    cols = _im2col(xpad, kh, kw, s)  # (N Ho Wo, C KH KW)
    n, ho, wo = len(x), (xpad.shape[2] - kh) // s + 1, (xpad.shape[3] - kw) // s + 1
    out = cols @ W.reshape(f, -1).T + b  # (N Ho Wo, F)
    return out.reshape(n, ho, wo, f).transpose(0, 3, 1, 2), (x.shape, xpad, W, s, pad)


def _im2col(xpad, kh, kw, s):
    """(N Ho Wo, C KH KW): row (n, i, j) the C KH KW values under the kernel at output (i, j)."""
    win = sliding_window_view(xpad, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]  # (N, C, Ho, Wo, KH, KW)
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


def conv2d_backward(dout, cache):
    """(dx, dW, db) of `conv2d_forward`."""
    x_shape, xpad, W, s, pad = cache
    f, c, kh, kw = W.shape
    n, _, ho, wo = dout.shape
    d = dout.transpose(0, 2, 3, 1).reshape(-1, f)  # (N Ho Wo, F)
    dW = (d.T @ _im2col(xpad, kh, kw, s)).reshape(W.shape)  # (F, C, KH, KW)
    db = dout.sum(axis=(0, 2, 3))  # (F,)
    dcols = (d @ W.reshape(f, -1)).reshape(n, ho, wo, c, kh, kw)  # each row back to its window
    h, w = x_shape[2:]
    dxpad = np.zeros_like(xpad)  # (N, C, H+2p, W+2p)
    for p in range(kh):
        for q in range(kw):
            # one kernel offset reaches positions s*i + p: distinct for distinct i, so the
            # slice-add cannot collide with itself; other offsets reach them in later passes
            dxpad[:, :, p : p + s * ho : s, q : q + s * wo : s] += dcols[..., p, q].transpose(
                0, 3, 1, 2
            )  # (N, C, Ho, Wo)
    return dxpad[:, :, pad : pad + h, pad : pad + w], dW, db


def maxpool2d_forward(x, kernel=2, stride=None):
    """Max pooling, NCHW, like nn.MaxPool2d(kernel, stride) (stride defaults to kernel):

        out[n, c, i, j] = max_{p, q < K} x[n, c, s i + p, s j + q]
    The max is piecewise the identity of one element, so each output's gradient goes to the
    element that was the max (the first in row-major order on a tie, as torch picks):
        dx[n, c, s i + p*, s j + q*] += dout[n, c, i, j]
    With s < K windows overlap and one element can be the max of several: it gets the sum.
    """
    s = kernel if stride is None else stride
    win = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::s, ::s]  # (N,C,Ho,Wo,K,K)
    flat = win.reshape(*win.shape[:4], -1)  # (N, C, Ho, Wo, K*K)
    arg = flat.argmax(axis=-1)  # (N, C, Ho, Wo): the first max
    out = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]  # (N, C, Ho, Wo)
    return out, (x.shape, arg, kernel, s)


def maxpool2d_backward(dout, cache):
    """dx of `maxpool2d_forward`."""
    x_shape, arg, k, s = cache
    ho, wo = dout.shape[2:]
    dx = np.zeros(x_shape, dtype=dout.dtype)  # (N, C, H, W)
    for p in range(k):
        for q in range(k):
            routed = np.where(arg == p * k + q, dout, 0)  # (N, C, Ho, Wo)
            dx[:, :, p : p + s * ho : s, q : q + s * wo : s] += routed  # add: windows overlap
    return dx


# --- embedding ----------------------------------------------------------------------------


def embedding_forward(idx, W):
    """out = W[idx]: row idx[n] of the (V, D) table, like nn.Embedding(V, D).

        dW[v] = sum_{n : idx[n] = v} dout[n]
    A repeated index reads one row many times, so its gradient is the sum (np.add.at; a plain
    `dW[idx] = dout` keeps only the last). idx takes no gradient.
    """
    return W[idx], (idx, W.shape)


def embedding_backward(dout, cache):
    """dW of `embedding_forward`."""
    idx, shape = cache
    dW = np.zeros(shape, dtype=dout.dtype)  # (V, D)
    np.add.at(dW, idx, dout)
    return dW
