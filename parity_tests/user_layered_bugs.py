"""Bugs between layers, planted in the two layered fixtures (parity_tests/user_code/
cs231n_convnet.py, layer_list_cnn.py): each a small variant of one function or method, applied
with pytest's monkeypatch (`plant(monkeypatch, style, bug)`), and the first divergence each must
be found at, in the user's own names."""

from __future__ import annotations

import numpy as np

from .user_code import cs231n_convnet as cs
from .user_code import layer_list_cnn as ll

# --- CS231n style: module functions replaced, or one line of the model's loss ---


def cs_affine_forward_nhwc_flatten(x, w, b):
    """Flattens (N, C, H, W) channels last: a different vector than the spec's flatten."""
    xf = x.transpose(0, 2, 3, 1).reshape(len(x), -1) if x.ndim == 4 else x.reshape(len(x), -1)
    return xf.dot(w) + b, (x, w, b)


def cs_affine_backward_nhwc_flatten(dout, cache):
    x, w, _ = cache
    if x.ndim == 4:
        N, C, H, W = x.shape
        dx = dout.dot(w.T).reshape(N, H, W, C).transpose(0, 3, 1, 2)
        dw = x.transpose(0, 2, 3, 1).reshape(N, -1).T.dot(dout)
    else:
        dx, dw = dout.dot(w.T), x.T.dot(dout)
    return dx, dw, np.sum(dout, axis=0)


def cs_conv_backward_pad_one_side(dout, cache):
    """conv_backward with one line changed: backward pads (0, 2 pad) where forward padded
    (pad, pad), so every window is read shifted."""
    x, w, _, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    _, _, HH, WW = w.shape
    _, _, H_out, W_out = dout.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (0, 2 * pad), (0, 2 * pad)), mode="constant")  # the bug
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(w)
    for i in range(H_out):
        for j in range(W_out):
            hs, ws = i * stride, j * stride
            window = x_pad[:, :, hs : hs + HH, ws : ws + WW]
            dw += np.tensordot(dout[:, :, i, j], window, axes=([0], [0]))
            dx_pad[:, :, hs : hs + HH, ws : ws + WW] += np.tensordot(
                dout[:, :, i, j], w, axes=([1], [0])
            )
    db = np.sum(dout, axis=(0, 2, 3))
    dx = dx_pad[:, :, pad : pad + x.shape[2], pad : pad + x.shape[3]]
    return dx, dw, db


_cs_conv_backward = cs.conv_backward
_cs_max_pool_backward = cs.max_pool_backward


def cs_conv_backward_bias_wrong_axis(dout, cache):
    dx, dw, _ = _cs_conv_backward(dout, cache)
    return dx, dw, dout.reshape(dout.shape[1], -1).sum(axis=1)  # (N, F, H, W) read as (F, -1)


def cs_max_pool_backward_swapped(dout, cache):
    """Routes each window's gradient to (j, i) of the window where the max is at (i, j)."""
    x, pool_param = cache
    ph, stride = pool_param["pool_height"], pool_param["stride"]
    N, C, H_out, W_out = dout.shape
    dx = np.zeros_like(x)
    n_idx, c_idx = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for i in range(H_out):
        for j in range(W_out):
            window = x[:, :, i * stride : i * stride + ph, j * stride : j * stride + ph]
            di, dj = np.unravel_index(np.argmax(window.reshape(N, C, -1), axis=2), (ph, ph))
            dx[n_idx, c_idx, i * stride + dj, j * stride + di] += dout[:, :, i, j]
    return dx


class WrongCacheConvNet(cs.ThreeLayerConvNet):
    """ThreeLayerConvNet.loss with one line changed: the last affine layer's backward is handed
    a cache holding layer 2's ReLU input (the hidden pre-activation) instead of its own input.
    Shapes agree; numbers do not."""

    def loss(self, X, y=None):
        W1, b1 = self.params["W1"], self.params["b1"]
        W2, b2 = self.params["W2"], self.params["b2"]
        W3, b3 = self.params["W3"], self.params["b3"]
        conv_param = {"stride": 1, "pad": (W1.shape[2] - 1) // 2}
        pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
        out1, cache1 = cs.conv_relu_pool_forward(X, W1, b1, conv_param, pool_param)
        out2, cache2 = cs.affine_relu_forward(out1, W2, b2)
        scores, cache3 = cs.affine_forward(out2, W3, b3)
        if y is None:
            return scores
        grads = {}
        loss, dscores = cs.softmax_loss(scores, y)
        cache3 = (cache2[1], W3, b3)  # the bug: layer 2's relu cache as layer 3's input
        dout2, grads["W3"], grads["b3"] = cs.affine_backward(dscores, cache3)
        dout1, grads["W2"], grads["b2"] = cs.affine_relu_backward(dout2, cache2)
        _, grads["W1"], grads["b1"] = cs.conv_relu_pool_backward(dout1, cache1)
        return loss, grads


# --- layer-list style: a method replaced ---

_ll_conv_backward = ll.Conv.backward
_ll_network_forward = ll.Network.forward


def ll_flatten_channels_first(self, x):
    self.shape = x.shape
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def ll_unflatten_channels_first(self, grad):
    N, H, W, C = self.shape
    return grad.reshape(N, C, H, W).transpose(0, 2, 3, 1)


def ll_conv_backward_flipped(self, grad):
    """d_kernels from the patch flipped in H and W (convolution where forward correlates)."""
    dx = _ll_conv_backward(self, grad)
    k = self.k
    self.d_kernels = np.zeros_like(self.kernels)
    for i in range(grad.shape[1]):
        for j in range(grad.shape[2]):
            patch = self.x[:, i : i + k, j : j + k, :][:, ::-1, ::-1, :]
            self.d_kernels += np.tensordot(patch, grad[:, i, j, :], axes=([0], [0]))
    return dx


def ll_conv_backward_bias_wrong_axis(self, grad):
    dx = _ll_conv_backward(self, grad)
    self.d_bias = grad.reshape(grad.shape[-1], -1).sum(axis=1)  # (N, H, W, F) read as (F, -1)
    return dx


def ll_max_pool_backward_swapped(self, grad):
    N, H, W, C = self.x.shape
    s = self.size
    dx = np.zeros_like(self.x)
    n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for i in range(H // s):
        for j in range(W // s):
            idx = self.x[:, i * s : i * s + s, j * s : j * s + s, :].reshape(N, s * s, C)
            idx = idx.argmax(axis=1)
            dx[n, i * s + idx % s, j * s + idx // s, c] = grad[:, i, j, :]  # row and column swapped
    return dx


def ll_forward_wrong_cache(self, x):
    """The last Dense ends up holding the cache of the layer before it (the ReLU's input)."""
    out = _ll_network_forward(self, x)
    self.layers[-1].x = self.layers[-2].x
    return out


PLANTS = {
    "cs231n": {
        "wrong-layer cache": ("model", WrongCacheConvNet),
        "flatten reorders channels": (
            "functions",
            {
                "affine_forward": cs_affine_forward_nhwc_flatten,
                "affine_backward": cs_affine_backward_nhwc_flatten,
            },
        ),
        "conv backward pad": ("functions", {"conv_backward": cs_conv_backward_pad_one_side}),
        "max-pool routing": ("functions", {"max_pool_backward": cs_max_pool_backward_swapped}),
        "bias wrong axis": ("functions", {"conv_backward": cs_conv_backward_bias_wrong_axis}),
    },
    "layer_list": {
        "wrong-layer cache": (ll.Network, {"forward": ll_forward_wrong_cache}),
        "flatten reorders channels": (
            ll.Flatten,
            {"forward": ll_flatten_channels_first, "backward": ll_unflatten_channels_first},
        ),
        "conv backward flipped kernel": (ll.Conv, {"backward": ll_conv_backward_flipped}),
        "max-pool routing": (ll.MaxPool, {"backward": ll_max_pool_backward_swapped}),
        "bias wrong axis": (ll.Conv, {"backward": ll_conv_backward_bias_wrong_axis}),
    },
}

# where each is found first: (step, label), in the user's names
WHERE = {
    ("cs231n", "wrong-layer cache"): (0, "grad W3"),
    ("cs231n", "flatten reorders channels"): (0, "prob"),
    ("cs231n", "conv backward pad"): (0, "grad W1"),
    ("cs231n", "max-pool routing"): (0, "grad W1"),
    ("cs231n", "bias wrong axis"): (0, "grad b1"),
    ("layer_list", "wrong-layer cache"): (0, "grad layers[6].weights"),
    ("layer_list", "flatten reorders channels"): (0, "out[3]"),
    ("layer_list", "conv backward flipped kernel"): (0, "grad layers[0].kernels"),
    ("layer_list", "max-pool routing"): (0, "grad layers[0].kernels"),
    ("layer_list", "bias wrong axis"): (0, "grad layers[0].bias"),
}


def plant(monkeypatch, style: str, bug: str):
    """Apply one planted bug; returns the CS231n model class to build (the fixture's own
    unless the bug is in the model)."""
    where, what = PLANTS[style][bug]
    if where == "model":
        return what
    if where == "functions":
        for name, fn in what.items():
            monkeypatch.setattr(cs, name, fn)
        return cs.ThreeLayerConvNet
    for name, fn in what.items():
        monkeypatch.setattr(where, name, fn)
    return cs.ThreeLayerConvNet
