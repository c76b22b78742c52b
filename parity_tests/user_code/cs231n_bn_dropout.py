"""A fully-connected net with batchnorm and dropout the way the CS231n assignments write it:
layer functions returning `(out, cache)`, a model class holding `self.params`, `self.bn_params`
(one dict per batchnorm layer, with its running statistics) and `self.dropout_param`.

    affine - batchnorm - relu - dropout - affine - softmax

`dropout_param["p"]` is the probability of KEEPING a unit (CS231n's convention; torch's p is
1 - keep): `mask = (rand < p) / p`, kept in the dropout cache. `loss(X)` (no labels) runs in
test mode; `loss(X, y)` in training mode, returning the loss and the gradients. The caches of
the last call are kept in `self.caches` (so the mask this step drew can be read back).

    model = BNDropoutNet(input_dim=64, hidden_dim=32, dropout_keep_ratio=0.8)
    for t in range(num_iterations):
        loss, grads = model.loss(X_batch, y_batch)
        for p, w in model.params.items():
            model.params[p] = w - learning_rate * grads[p]

NumPy only; computes in the model's dtype.
"""

from __future__ import annotations

import numpy as np

from .cs231n_convnet import (
    affine_backward,
    affine_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
)


def batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.ones(D, dtype=x.dtype))
    cache = None
    if mode == "train":
        sample_mean = x.mean(axis=0)
        sample_var = x.var(axis=0)
        std = np.sqrt(sample_var + eps)
        x_hat = (x - sample_mean) / std
        out = gamma * x_hat + beta
        cache = (x_hat, gamma, std)
        running_mean = momentum * running_mean + (1 - momentum) * sample_mean
        # the unbiased variance for the running estimate, as torch keeps it
        running_var = momentum * running_var + (1 - momentum) * sample_var * N / (N - 1)
    else:
        out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def batchnorm_backward(dout, cache):
    x_hat, gamma, std = cache
    N = dout.shape[0]
    dgamma = np.sum(dout * x_hat, axis=0)
    dbeta = np.sum(dout, axis=0)
    dx_hat = dout * gamma
    dx = (N * dx_hat - dx_hat.sum(axis=0) - x_hat * np.sum(dx_hat * x_hat, axis=0)) / (N * std)
    return dx, dgamma, dbeta


def dropout_forward(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    rng = dropout_param["rng"]
    mask = None
    if mode == "train":
        mask = ((rng.random(x.shape) < p) / p).astype(x.dtype)
        out = x * mask
    else:
        out = x
    cache = (dropout_param, mask)
    return out, cache


def dropout_backward(dout, cache):
    dropout_param, mask = cache
    if dropout_param["mode"] == "train":
        return dout * mask
    return dout


class BNDropoutNet:
    """affine - batchnorm - relu - dropout - affine - softmax"""

    def __init__(self, input_dim=64, hidden_dim=32, num_classes=10, dropout_keep_ratio=0.8,
                 weight_scale=None, dtype=np.float64, seed=0):  # fmt: skip
        rng = np.random.default_rng(seed)
        scale1 = weight_scale or np.sqrt(2.0 / input_dim)
        scale2 = weight_scale or np.sqrt(2.0 / hidden_dim)
        self.params = {
            "W1": scale1 * rng.standard_normal((input_dim, hidden_dim)),
            "b1": np.zeros(hidden_dim),
            "gamma1": np.ones(hidden_dim),
            "beta1": np.zeros(hidden_dim),
            "W2": scale2 * rng.standard_normal((hidden_dim, num_classes)),
            "b2": np.zeros(num_classes),
        }
        for k, v in self.params.items():
            self.params[k] = v.astype(dtype)
        self.bn_params = [{"mode": "train"}]
        self.dropout_param = {"mode": "train", "p": dropout_keep_ratio,
                              "rng": np.random.default_rng(seed + 1)}  # fmt: skip
        self.caches = {}

    def loss(self, X, y=None):
        mode = "test" if y is None else "train"
        self.bn_params[0]["mode"] = mode
        self.dropout_param["mode"] = mode
        p, c = self.params, self.caches
        a, c["affine1"] = affine_forward(X, p["W1"], p["b1"])
        bn, c["bn1"] = batchnorm_forward(a, p["gamma1"], p["beta1"], self.bn_params[0])
        r, c["relu1"] = relu_forward(bn)
        d, c["dropout1"] = dropout_forward(r, self.dropout_param)
        scores, c["affine2"] = affine_forward(d, p["W2"], p["b2"])
        if y is None:
            return scores
        loss, dscores = softmax_loss(scores, y)
        grads = {}
        dd, grads["W2"], grads["b2"] = affine_backward(dscores, c["affine2"])
        dr = dropout_backward(dd, c["dropout1"])
        dbn = relu_backward(dr, c["relu1"])
        da, grads["gamma1"], grads["beta1"] = batchnorm_backward(dbn, c["bn1"])
        _, grads["W1"], grads["b1"] = affine_backward(da, c["affine1"])
        return loss, grads


SPEC = "affine32,bn,relu,dropout0.2,affine10"


# --- the bugs: each a replacement layer function, `# BUG` on the line that is wrong --------


def dropout_backward_redrawn(dout, cache):
    dropout_param, _ = cache
    p = dropout_param["p"]
    return dout * (dropout_param["rng"].random(dout.shape) < p) / p  # BUG: a new mask


def dropout_forward_unscaled(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    mask = None
    if mode == "train":
        mask = (dropout_param["rng"].random(x.shape) < p).astype(x.dtype)  # BUG: no / p
        out = x * mask
    else:
        out = x
    return out, (dropout_param, mask)


def batchnorm_forward_momentum_swapped(x, gamma, beta, bn_param):
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.ones(D, dtype=x.dtype))
    if bn_param["mode"] != "train":
        out = gamma * (x - running_mean) / np.sqrt(running_var + 1e-5) + beta
        return out, None
    sample_mean, sample_var = x.mean(axis=0), x.var(axis=0)
    std = np.sqrt(sample_var + 1e-5)
    x_hat = (x - sample_mean) / std
    running_mean = (1 - momentum) * running_mean + momentum * sample_mean  # BUG: swapped
    running_var = (1 - momentum) * running_var + momentum * sample_var * N / (N - 1)  # BUG
    bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
    return gamma * x_hat + beta, (x_hat, gamma, std)
