"""A small CNN as a list of layer objects, channels last (NHWC), the way "CNN from scratch in
NumPy" tutorials write it: each layer caches its input in forward and returns the gradient for
the layer below from backward, keeping its own parameter gradients.

    Conv(C, F, K)   kernels (K, K, C, F), bias (F,)   valid, stride 1
    ReLU, MaxPool(2), Flatten (H, W, C order), Dense(n_in, n_out) weights (n_in, n_out)

    net = Network([Conv(1, 4, 3), ReLU(), MaxPool(2), Flatten(), Dense(36, 16), ReLU(),
                   Dense(16, 10)])
    for X_batch, y_batch in batches:
        probs = softmax(net.forward(X_batch))
        net.backward((probs - one_hot(y_batch)) / len(X_batch))
        net.sgd(learning_rate)

NumPy only.
"""

from __future__ import annotations

import numpy as np


class Conv:
    def __init__(self, in_channels, filters, kernel_size, rng, dtype=np.float64):
        k = kernel_size
        scale = np.sqrt(2.0 / (k * k * in_channels))
        self.kernels = (rng.standard_normal((k, k, in_channels, filters)) * scale).astype(dtype)
        self.bias = np.zeros(filters, dtype=dtype)
        self.k = k

    def forward(self, x):
        self.x = x  # (N, H, W, C)
        N, H, W, _ = x.shape
        out_h, out_w = H - self.k + 1, W - self.k + 1
        out = np.zeros((N, out_h, out_w, self.kernels.shape[3]), dtype=x.dtype)
        for i in range(out_h):
            for j in range(out_w):
                patch = x[:, i : i + self.k, j : j + self.k, :]  # (N, K, K, C)
                out[:, i, j, :] = np.tensordot(patch, self.kernels, axes=3)
        return out + self.bias

    def backward(self, grad):
        x, k = self.x, self.k
        self.d_kernels = np.zeros_like(self.kernels)
        dx = np.zeros_like(x)
        for i in range(grad.shape[1]):
            for j in range(grad.shape[2]):
                patch = x[:, i : i + k, j : j + k, :]
                g = grad[:, i, j, :]  # (N, F)
                self.d_kernels += np.tensordot(patch, g, axes=([0], [0]))
                dx[:, i : i + k, j : j + k, :] += np.tensordot(g, self.kernels, axes=([1], [3]))
        self.d_bias = grad.sum(axis=(0, 1, 2))
        return dx

    def params_and_grads(self):
        return [(self.kernels, self.d_kernels), (self.bias, self.d_bias)]


class ReLU:
    def forward(self, x):
        self.x = x
        return np.maximum(x, 0)

    def backward(self, grad):
        return grad * (self.x > 0)

    def params_and_grads(self):
        return []


class MaxPool:
    def __init__(self, size=2):
        self.size = size

    def forward(self, x):
        self.x = x
        N, H, W, C = x.shape
        s = self.size
        windows = x[:, : H // s * s, : W // s * s, :].reshape(N, H // s, s, W // s, s, C)
        return windows.max(axis=(2, 4))

    def backward(self, grad):
        N, H, W, C = self.x.shape
        s = self.size
        dx = np.zeros_like(self.x)
        for i in range(H // s):
            for j in range(W // s):
                window = self.x[:, i * s : i * s + s, j * s : j * s + s, :].reshape(N, s * s, C)
                idx = window.argmax(axis=1)  # (N, C): the first max in the window
                n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
                dx[n, i * s + idx // s, j * s + idx % s, c] = grad[:, i, j, :]
        return dx

    def params_and_grads(self):
        return []


class Flatten:
    def forward(self, x):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)  # (N, H * W * C), channels fastest

    def backward(self, grad):
        return grad.reshape(self.shape)

    def params_and_grads(self):
        return []


class Dense:
    def __init__(self, n_in, n_out, rng, dtype=np.float64):
        self.weights = (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(dtype)
        self.biases = np.zeros(n_out, dtype=dtype)

    def forward(self, x):
        self.x = x
        return x @ self.weights + self.biases

    def backward(self, grad):
        self.d_weights = self.x.T @ grad
        self.d_biases = grad.sum(axis=0)
        return grad @ self.weights.T

    def params_and_grads(self):
        return [(self.weights, self.d_weights), (self.biases, self.d_biases)]


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Network:
    def __init__(self, layers):
        self.layers = layers

    def forward(self, x):
        self.outputs = []
        for layer in self.layers:
            x = layer.forward(x)
            self.outputs.append(x)
        return x

    def backward(self, grad):
        for layer in reversed(self.layers):
            grad = layer.backward(grad)

    def train_step(self, x, y, learning_rate):
        """One step of SGD on the mean cross-entropy; returns the loss."""
        probs = softmax(self.forward(x))
        n = len(x)
        loss = -np.log(probs[np.arange(n), y]).mean()
        grad = probs.copy()
        grad[np.arange(n), y] -= 1
        self.backward(grad / n)
        for layer in self.layers:
            for param, dparam in layer.params_and_grads():
                param -= learning_rate * dparam
        return loss

    def gradients(self, x, y):
        """(loss, [dW, db, ...]) in the layers' order, the parameters left as they are."""
        probs = softmax(self.forward(x))
        n = len(x)
        loss = -np.log(probs[np.arange(n), y]).mean()
        grad = probs.copy()
        grad[np.arange(n), y] -= 1
        self.backward(grad / n)
        return loss, [g for layer in self.layers for _, g in layer.params_and_grads()]


def small_cnn(seed=0, dtype=np.float64, filters=4, hidden=16):
    """Conv(1 -> filters, 3x3) - ReLU - MaxPool(2) - Flatten - Dense(-> hidden) - ReLU -
    Dense(-> 10), on 8x8x1 images."""
    rng = np.random.default_rng(seed)
    return Network([Conv(1, filters, 3, rng, dtype), ReLU(), MaxPool(2), Flatten(),
                    Dense(3 * 3 * filters, hidden, rng, dtype), ReLU(),
                    Dense(hidden, 10, rng, dtype)])  # fmt: skip
