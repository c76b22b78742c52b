"""The gallery's vectorised conv2d and max pooling against their naive loop forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nn_parity.scratch import ops
from nn_parity.scratch.ops_loops import (
    conv2d_backward_loop,
    conv2d_forward_loop,
    maxpool2d_backward_loop,
    maxpool2d_forward_loop,
)

CONVS = {  # (N, C, H, W), (F, KH, KW), stride, padding
    "3x3": ((2, 1, 8, 8), (4, 3, 3), 1, 0),
    "stride2-pad1": ((2, 3, 7, 6), (5, 3, 2), 2, 1),
    "1x1": ((3, 2, 4, 4), (3, 1, 1), 1, 0),
    "kernel-is-image": ((2, 2, 5, 5), (2, 5, 5), 1, 0),
}


def _gamma(n, dtype):
    u = np.finfo(dtype).eps / 2  # unit roundoff
    return n * u / (1 - n * u)


def _within_bound(a, b, abs_sum, n, dtype):
    """|a - b| <= 2 gamma_n sum|terms|: each form is within gamma_n of the exact sum."""
    return np.all(np.abs(a - b) <= 2 * _gamma(n, dtype) * abs_sum)


def _conv_case(name, dtype, seed=0):
    (n, c, h, w), (f, kh, kw), s, pad = CONVS[name]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    W = rng.normal(size=(f, c, kh, kw)).astype(dtype)
    b = rng.normal(size=f).astype(dtype)
    return x, W, b, s, pad


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONVS))
def test_conv2d_vectorised_matches_the_loops(name, dtype):
    x, W, b, s, pad = _conv_case(name, dtype)
    out, cache = ops.conv2d_forward(x, W, b, s, pad)
    ref, ref_cache = conv2d_forward_loop(x, W, b, s, pad)
    assert out.dtype == ref.dtype == np.dtype(dtype)
    # the sums of absolute terms are the same convolution of absolute values
    abs_out, _ = conv2d_forward_loop(np.abs(x), np.abs(W), np.abs(b), s, pad)
    assert _within_bound(out, ref, abs_out, W[0].size + 1, dtype)

    dout = np.random.default_rng(1).normal(size=out.shape).astype(dtype)
    grads = ops.conv2d_backward(dout, cache)
    refs = conv2d_backward_loop(dout, ref_cache)
    _, abs_cache = conv2d_forward_loop(np.abs(x), np.abs(W), b, s, pad)
    abs_grads = conv2d_backward_loop(np.abs(dout), abs_cache)
    n_terms = max(dout[:, 0].size, W.shape[0] * W[0, 0].size)  # db, dW: N Ho Wo; dx: <= F KH KW
    for got, want, bound, label in zip(grads, refs, abs_grads, ("dx", "dW", "db"), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype, label
        assert _within_bound(got, want, bound, n_terms, dtype), label


def test_conv2d_loop_bound_catches_a_wrong_vectorised_form():
    # the check can fail: a kernel flipped (convolution instead of cross-correlation) is far out
    x, W, b, s, pad = _conv_case("3x3", "float64")
    out, _ = ops.conv2d_forward(x, W[:, :, ::-1, ::-1], b, s, pad)
    ref, _ = conv2d_forward_loop(x, W, b, s, pad)
    abs_out, _ = conv2d_forward_loop(np.abs(x), np.abs(W), np.abs(b), s, pad)
    assert not _within_bound(out, ref, abs_out, W[0].size + 1, "float64")


def _tied(shape, seed=0):
    # values from {0, 1, 2}: most 2x2 windows hold a tie for the max
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.float64)


@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 1), (3, 2), (2, 1)])
def test_maxpool_vectorised_matches_the_loops_bit_for_bit(kernel, stride):
    x = _tied((2, 3, 7, 7))
    out, cache = ops.maxpool2d_forward(x, kernel, stride)
    ref, ref_cache = maxpool2d_forward_loop(x, kernel, stride)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(cache[1], ref_cache[1])  # the same element chosen on ties
    # dout of small integers: every sum of them is exact, whatever the order, so even
    # overlapping windows (stride < kernel) agree bit for bit
    dout = np.random.default_rng(1).integers(-4, 5, size=out.shape).astype(np.float64)
    np.testing.assert_array_equal(
        ops.maxpool2d_backward(dout, cache), maxpool2d_backward_loop(dout, ref_cache)
    )


@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 1)])
def test_maxpool_ties_are_routed_as_torch_routes_them(kernel, stride):
    x = _tied((2, 2, 6, 6), seed=3)
    out, cache = maxpool2d_forward_loop(x, kernel, stride)
    dout = np.random.default_rng(2).normal(size=out.shape)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.nn.functional.max_pool2d(xt, kernel, stride)
    yt.backward(torch.from_numpy(dout))
    np.testing.assert_array_equal(out, yt.detach().numpy())
    want = xt.grad.numpy()
    # overlapping windows sum gradients in another order: within 2 gamma_n of each other
    np.testing.assert_allclose(maxpool2d_backward_loop(dout, cache), want, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(ops.maxpool2d_backward(dout, cache), want, rtol=1e-15, atol=1e-15)


def test_maxpool_last_max_on_ties_is_caught():
    # the check can fail: routing a tie to the last max instead of the first moves gradient
    x = _tied((1, 1, 4, 4), seed=5)
    out, cache = maxpool2d_forward_loop(x, 2)
    flat = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(2, 3))[:, :, ::2, ::2]
    flat = flat.reshape(*flat.shape[:4], -1)[..., ::-1]
    last = 3 - flat.argmax(axis=-1)
    assert (last != cache[1]).any()  # the data holds ties
    dout = np.ones_like(out)
    assert not np.array_equal(
        maxpool2d_backward_loop(dout, (x.shape, last, 2, 2)), maxpool2d_backward_loop(dout, cache)
    )
