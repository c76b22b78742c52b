"""An MLP as a list of layer objects with batchnorm and inverted dropout, the way "neural network
from scratch" tutorials write it: each layer caches what its backward needs, keeps its own
parameter gradients, and a Dropout layer keeps the mask it drew in `self.mask`.

    Dense(n_in, n_out)   weights (n_in, n_out), biases (n_out,)
    BatchNorm(n)         gamma, beta (n,); running_mean, running_var updated in training
    ReLU, Dropout(rate)  rate: the probability of DROPPING a unit (as torch's p)

    net = Network([Dense(64, 32), BatchNorm(32), ReLU(), Dropout(0.2), Dense(32, 10)])
    for X_batch, y_batch in batches:
        scores = net.forward(X_batch)
        loss = net.backward_loss(y_batch)   # softmax cross-entropy, backward through the layers
        net.sgd(learning_rate)

NumPy only. Works in the parameters' dtype (float32 stays float32).
"""

from __future__ import annotations

import numpy as np


class Dense:
    def __init__(self, n_in, n_out, rng, dtype=np.float64):
        self.weights = (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(dtype)
        self.biases = np.zeros(n_out, dtype=dtype)

    def forward(self, x, training=True):
        self.x = x
        return x @ self.weights + self.biases

    def backward(self, grad):
        self.d_weights = self.x.T @ grad
        self.d_biases = grad.sum(axis=0)
        return grad @ self.weights.T

    def params_and_grads(self):
        return [(self.weights, self.d_weights), (self.biases, self.d_biases)]


class BatchNorm:
    def __init__(self, n, momentum=0.1, eps=1e-5, dtype=np.float64):
        self.gamma, self.beta = np.ones(n, dtype=dtype), np.zeros(n, dtype=dtype)
        self.running_mean, self.running_var = np.zeros(n, dtype=dtype), np.ones(n, dtype=dtype)
        self.momentum, self.eps = momentum, eps

    def forward(self, x, training=True):
        self.training = training
        if not training:  # normalised by the running statistics, which stay as they are
            self.std = np.sqrt(self.running_var + self.eps)
            self.xhat = (x - self.running_mean) / self.std
            return self.gamma * self.xhat + self.beta
        mean, var = x.mean(axis=0), x.var(axis=0)
        self.xhat = (x - mean) / np.sqrt(var + self.eps)
        self.std = np.sqrt(var + self.eps)
        m, n = self.momentum, len(x)
        self.running_mean = (1 - m) * self.running_mean + m * mean
        self.running_var = (1 - m) * self.running_var + m * var * n / (n - 1)  # unbiased, as torch
        return self.gamma * self.xhat + self.beta

    def backward(self, grad):
        self.d_gamma = (grad * self.xhat).sum(axis=0)
        self.d_beta = grad.sum(axis=0)
        if not self.training:  # the statistics are constants here
            return grad * self.gamma / self.std
        dxhat = grad * self.gamma
        n = len(grad)
        return (n * dxhat - dxhat.sum(axis=0) - self.xhat * (dxhat * self.xhat).sum(axis=0)) / (
            n * self.std
        )

    def params_and_grads(self):
        return [(self.gamma, self.d_gamma), (self.beta, self.d_beta)]


class ReLU:
    def forward(self, x, training=True):
        self.x = x
        return np.maximum(x, 0)

    def backward(self, grad):
        return grad * (self.x > 0)

    def params_and_grads(self):
        return []


class Dropout:
    def __init__(self, rate, rng):
        self.rate, self.rng, self.mask = rate, rng, None

    def forward(self, x, training=True):
        self.training = training
        if not training:
            return x
        keep = 1 - self.rate
        self.mask = ((self.rng.random(x.shape) < keep) / keep).astype(x.dtype)
        return x * self.mask

    def backward(self, grad):
        return grad * self.mask if self.training else grad

    def params_and_grads(self):
        return []


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Network:
    def __init__(self, layers):
        self.layers = layers

    def forward(self, x, training=True):
        self.outputs = []
        for layer in self.layers:
            x = layer.forward(x, training)
            self.outputs.append(x)
        return x

    def backward_loss(self, y):
        """The mean cross-entropy of the last forward's scores, and the backward through every
        layer; returns the loss."""
        probs = softmax(self.outputs[-1])
        n = len(y)
        loss = -np.log(probs[np.arange(n), y]).mean()
        grad = probs.copy()
        grad[np.arange(n), y] -= 1
        grad /= n
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return loss

    def gradients(self):
        return [g for layer in self.layers for _, g in layer.params_and_grads()]

    def sgd(self, learning_rate):
        for layer in self.layers:
            for param, dparam in layer.params_and_grads():
                param -= learning_rate * dparam


def bn_dropout_mlp(n_in=64, hidden=32, classes=10, rate=0.2, seed=0, dtype=np.float64):
    """Dense - BatchNorm - ReLU - Dropout - Dense: the spec "affine32,bn,relu,dropout0.2,
    affine10". Parameters, in order: layers[0].weights, .biases, layers[1].gamma, .beta,
    layers[4].weights, .biases; the mask in layers[3].mask."""
    rng = np.random.default_rng(seed)
    return Network([Dense(n_in, hidden, rng, dtype), BatchNorm(hidden, dtype=dtype), ReLU(),
                    Dropout(rate, np.random.default_rng(seed + 1)),
                    Dense(hidden, classes, rng, dtype)])  # fmt: skip


NAMES = ["layers[0].weights", "layers[0].biases", "layers[1].gamma", "layers[1].beta",
         "layers[4].weights", "layers[4].biases"]  # fmt: skip


# --- the bugs: each a replacement method, `# BUG` on the line that is wrong ----------------


def batchnorm_forward_updating_in_eval(self, x, training=True):
    self.training = training
    mean, var, m, n = x.mean(axis=0), x.var(axis=0), self.momentum, len(x)
    if training:
        self.std = np.sqrt(var + self.eps)
        self.xhat = (x - mean) / self.std
    else:
        self.std = np.sqrt(self.running_var + self.eps)
        self.xhat = (x - self.running_mean) / self.std
    self.running_mean = (1 - m) * self.running_mean + m * mean  # BUG: in eval mode too
    self.running_var = (1 - m) * self.running_var + m * var * n / (n - 1)
    return self.gamma * self.xhat + self.beta


def dropout_backward_redrawn(self, grad):
    keep = 1 - self.rate
    return grad * ((self.rng.random(grad.shape) < keep) / keep)  # BUG: a new mask


def dropout_forward_unscaled(self, x, training=True):
    self.training = training
    if not training:
        return x
    keep = 1 - self.rate
    self.mask = (self.rng.random(x.shape) < keep).astype(x.dtype)  # BUG: no 1 / keep
    return x * self.mask


def batchnorm_forward_biased_running_var(self, x, training=True):
    self.training = training
    mean, var = x.mean(axis=0), x.var(axis=0)
    self.std = np.sqrt(var + self.eps)
    self.xhat = (x - mean) / self.std
    m = self.momentum
    self.running_mean = (1 - m) * self.running_mean + m * mean
    self.running_var = (1 - m) * self.running_var + m * var  # BUG: biased, not torch's n/(n-1)
    return self.gamma * self.xhat + self.beta


BUGS = {  # name: (the Dropout method replaced, the function, where it first shows)
    "mask-redrawn-in-backward": ("backward", dropout_backward_redrawn, "grad layers[1].gamma"),
    "mask-not-rescaled": ("forward", dropout_forward_unscaled, "out[3]"),
}
BN_BUGS = {  # name: (the BatchNorm method replaced, the function, where it first shows)
    "running-var-biased": ("forward", batchnorm_forward_biased_running_var,
                           "stat layers.1.running_var"),
    "running-stats-updated-in-eval": ("forward", batchnorm_forward_updating_in_eval,
                                      "stat layers.1.running_mean"),
}  # fmt: skip
