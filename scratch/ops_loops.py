"""The naive loop forms of conv2d and max pooling: the reference the gallery's vectorised forms
(scratch/ops.py, windows from `sliding_window_view`) are checked against.

One output element at a time, written straight from the formulas in `ops.conv2d_forward` and
`ops.maxpool2d_forward`, so a reader can check them by eye. Slow (Python loops over N, F, Ho, Wo):
tests only. The caches are the vectorised forms' caches, so either backward takes either forward.

Summation order: a loop sums C KH KW products left to right, BLAS (behind einsum) in blocks, so
conv2d agrees within the classic bound |sum_fl - sum| <= gamma_n sum |terms|,
gamma_n = n eps / (1 - n eps) (Higham, ch. 3) for each form, hence 2 gamma_n between them.
Max pooling selects and routes values without arithmetic: bit for bit, except where overlapping
windows add several gradients into one element (then the same bound with n = windows).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "conv2d_backward_loop",
    "conv2d_forward_loop",
    "maxpool2d_backward_loop",
    "maxpool2d_forward_loop",
]


def conv2d_forward_loop(x, W, b, stride=1, padding=0):
    """out[n, f, i, j] = b_f + sum_{c, p, q} W[f, c, p, q] xpad[n, c, s i + p, s j + q]."""
    s, pad = stride, padding
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # (N, C, H+2p, W+2p)
    n, _, hp, wp = xpad.shape
    f, _, kh, kw = W.shape
    ho, wo = (hp - kh) // s + 1, (wp - kw) // s + 1
    out = np.empty((n, f, ho, wo), dtype=np.result_type(x, W))  # (N, F, Ho, Wo)
    for m in range(n):
        for g in range(f):
            for i in range(ho):
                for j in range(wo):
                    window = xpad[m, :, s * i : s * i + kh, s * j : s * j + kw]  # (C, KH, KW)
                    out[m, g, i, j] = b[g] + np.sum(window * W[g])
    return out, (x.shape, xpad, W, s, pad)


def conv2d_backward_loop(dout, cache):
    """(dx, dW, db): each output element sends dout W back to its window and dout window to dW."""
    x_shape, xpad, W, s, pad = cache
    kh, kw = W.shape[2:]
    n, f, ho, wo = dout.shape
    dxpad = np.zeros_like(xpad)  # (N, C, H+2p, W+2p)
    dW = np.zeros_like(W)  # (F, C, KH, KW)
    db = np.zeros(f, dtype=dout.dtype)  # (F,)
    for m in range(n):
        for g in range(f):
            for i in range(ho):
                for j in range(wo):
                    d = dout[m, g, i, j]
                    rows, cols = slice(s * i, s * i + kh), slice(s * j, s * j + kw)
                    dxpad[m, :, rows, cols] += d * W[g]
                    dW[g] += d * xpad[m, :, rows, cols]
                    db[g] += d
    h, w = x_shape[2:]
    return dxpad[:, :, pad : pad + h, pad : pad + w], dW, db


def maxpool2d_forward_loop(x, kernel=2, stride=None):
    """out[n, c, i, j] = max of the window; the arg is the first max in row-major order (a later
    equal value does not replace it), as torch's CPU kernel keeps `val > max`."""
    s = kernel if stride is None else stride
    n, c, h, w = x.shape
    ho, wo = (h - kernel) // s + 1, (w - kernel) // s + 1
    out = np.empty((n, c, ho, wo), dtype=x.dtype)  # (N, C, Ho, Wo)
    arg = np.empty((n, c, ho, wo), dtype=np.intp)  # (N, C, Ho, Wo): p K + q of the max
    for m in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    best, where = x[m, ch, s * i, s * j], 0
                    for p in range(kernel):
                        for q in range(kernel):
                            v = x[m, ch, s * i + p, s * j + q]
                            if v > best:
                                best, where = v, p * kernel + q
                    out[m, ch, i, j], arg[m, ch, i, j] = best, where
    return out, (x.shape, arg, kernel, s)


def maxpool2d_backward_loop(dout, cache):
    """dx: each output's gradient to the element its arg names (summed where windows overlap)."""
    x_shape, arg, k, s = cache
    dx = np.zeros(x_shape, dtype=dout.dtype)  # (N, C, H, W)
    n, c, ho, wo = dout.shape
    for m in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    p, q = divmod(int(arg[m, ch, i, j]), k)
                    dx[m, ch, s * i + p, s * j + q] += dout[m, ch, i, j]
    return dx
