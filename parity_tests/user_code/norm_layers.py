"""Batch normalisation and layer normalisation the way a course's `layers.py` solutions write
them: a forward that returns `(out, cache)`, a backward that returns `(dx, dgamma, dbeta)`, and
every reduction taken with `keepdims=True`, so dgamma, dbeta and the running statistics come
back with shape (1, D) for gamma and beta of shape (D,).

    out, cache = batchnorm_forward(x, gamma, beta, bn_param)   # bn_param: mode, eps, momentum,
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)        # running_mean, running_var
    out, cache = layernorm_forward(x, gamma, beta, ln_param)
    dx, dgamma, dbeta = layernorm_backward(dout, cache)

Training-mode batchnorm normalises with the biased batch variance and updates the running
variance with it (torch keeps the unbiased one: `running_var_unbiased` below does that, as the
torch module does). NumPy only. `BUGS` below: a wrong dgamma in each, planted as a course
student writes it.
"""

from __future__ import annotations

import numpy as np


def batchnorm_forward(x, gamma, beta, bn_param):
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros((1, D), dtype=x.dtype))
    running_var = bn_param.get("running_var", np.ones((1, D), dtype=x.dtype))
    mu = x.mean(axis=0, keepdims=True)  # (1, D)
    xc = x - mu
    var = (xc**2).mean(axis=0, keepdims=True)  # (1, D), biased
    std = np.sqrt(var + eps)
    xhat = xc / std
    out = gamma * xhat + beta
    running_mean = momentum * running_mean + (1 - momentum) * mu
    running_var = momentum * running_var + (1 - momentum) * var * N / (N - 1)
    bn_param["running_mean"] = running_mean  # (1, D) from here on
    bn_param["running_var"] = running_var
    return out, (xhat, gamma, std)


def batchnorm_backward(dout, cache):
    xhat, gamma, std = cache
    N = dout.shape[0]
    dbeta = dout.sum(axis=0, keepdims=True)  # (1, D)
    dgamma = (dout * xhat).sum(axis=0, keepdims=True)  # (1, D)
    dxhat = dout * gamma
    dx = (
        N * dxhat
        - dxhat.sum(axis=0, keepdims=True)
        - xhat * (dxhat * xhat).sum(axis=0, keepdims=True)
    ) / (N * std)
    return dx, dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    mu = x.mean(axis=1, keepdims=True)  # (N, 1)
    xc = x - mu
    var = (xc**2).mean(axis=1, keepdims=True)
    std = np.sqrt(var + eps)
    xhat = xc / std
    return gamma * xhat + beta, (xhat, gamma, std)


def layernorm_backward(dout, cache):
    xhat, gamma, std = cache
    D = dout.shape[1]
    dbeta = dout.sum(axis=0, keepdims=True)  # (1, D)
    dgamma = (dout * xhat).sum(axis=0, keepdims=True)
    dxhat = dout * gamma
    dx = (
        D * dxhat
        - dxhat.sum(axis=1, keepdims=True)
        - xhat * (dxhat * xhat).sum(axis=1, keepdims=True)
    ) / (D * std)
    return dx, dgamma, dbeta


# --- planted bugs: a wrong dgamma, as students write it ----------------------------------------


def batchnorm_backward_dgamma_unnormalised(dout, cache):
    """dgamma summed against the centred input instead of the normalised one (x - mu, not
    (x - mu) / std): the 1/std forgotten."""
    xhat, _, std = cache
    dx, _, dbeta = batchnorm_backward(dout, cache)
    dgamma = (dout * xhat * std).sum(axis=0, keepdims=True)
    return dx, dgamma, dbeta


def layernorm_backward_dgamma_averaged(dout, cache):
    """dgamma averaged over the batch instead of summed: a 1/N that belongs to the loss, not
    to the layer."""
    xhat = cache[0]
    dx, _, dbeta = layernorm_backward(dout, cache)
    dgamma = (dout * xhat).mean(axis=0, keepdims=True)
    return dx, dgamma, dbeta


BUGS = {
    "batchnorm dgamma without 1/std": (batchnorm_forward, batchnorm_backward_dgamma_unnormalised),
    "layernorm dgamma averaged over the batch": (
        layernorm_forward,
        layernorm_backward_dgamma_averaged,
    ),
}
