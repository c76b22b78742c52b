"""A two-layer network as a parameter dict, the way course notebooks write it.

    params = {"W1": (D, H), "b1": (H,), "W2": (H, C), "b2": (C,)}   weights stored (in, out)

Forward:   z1 = X W1 + b1, a1 = tanh(z1), z2 = a1 W2 + b2, probs = sigmoid(z2)
Loss:      mean binary cross-entropy, L = -1/N sum_n [y ln p + (1 - y) ln(1 - p)]
Backward:  dz2 = (probs - y) / N, dW2 = a1^T dz2, db2 = sum_n dz2,
           dz1 = (dz2 W2^T) * (1 - tanh(z1)^2), dW1 = X^T dz1, db1 = sum_n dz1

Labels come flat, y of shape (N,), as scikit-learn's datasets give them.

    params = init_params([2, 5, 1], seed=0)
    for step in range(100):
        loss, grads = loss_and_grads(params, X, y)
        sgd_step(params, grads, lr=0.5)

NumPy only. Below the network: `BUGS` and `EQUIVALENTS`, the catalogue the tests run
(see `parity_tests/user_code/__init__.py`); `program()` returns the four functions as one object.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def init_params(sizes, seed=0):
    D, H, C = sizes
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.standard_normal((D, H)) * np.sqrt(1.0 / D),  # Xavier-like for tanh
        "b1": np.zeros(H),
        "W2": rng.standard_normal((H, C)) * np.sqrt(1.0 / H),
        "b2": np.zeros(C),
    }


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def tanh_prime(z):
    return 1.0 - np.tanh(z) ** 2


def forward(params, X):
    z1 = X @ params["W1"] + params["b1"]  # (N, H)
    a1 = np.tanh(z1)  # (N, H)
    z2 = a1 @ params["W2"] + params["b2"]  # (N, C)
    probs = sigmoid(z2)  # (N, C)
    cache = {"z1": z1, "a1": a1, "z2": z2, "a2": probs}
    return probs, cache


def bce_loss(probs, y):
    y = y.reshape(-1, 1)  # (N, 1): flat labels against (N, 1) probabilities
    return -np.mean(y * np.log(probs) + (1 - y) * np.log(1 - probs))


def backward(params, cache, X, y):
    y = y.reshape(-1, 1)  # (N, 1)
    N = X.shape[0]
    grads = {}
    dz2 = (cache["a2"] - y) / N  # (N, C): sigmoid + cross-entropy, averaged over the batch
    grads["W2"] = cache["a1"].T @ dz2  # (H, C)
    grads["b2"] = np.sum(dz2, axis=0)  # (C,)
    da1 = dz2 @ params["W2"].T  # (N, H)
    dz1 = da1 * tanh_prime(cache["z1"])  # (N, H)
    grads["W1"] = X.T @ dz1  # (D, H)
    grads["b1"] = np.sum(dz1, axis=0)  # (H,)
    return grads


def loss_and_grads(params, X, y):
    probs, cache = forward(params, X)
    return bce_loss(probs, y), backward(params, cache, X, y)


def sgd_step(params, grads, lr):
    for k in params:
        params[k] -= lr * grads[k]


def program(
    forward=forward, bce_loss=bce_loss, backward=backward, sgd_step=sgd_step
) -> SimpleNamespace:
    """The user's functions as one object, with any of them replaced (a bug or a rewriting)."""

    def loss_and_grads(params, X, y):
        probs, cache = forward(params, X)
        return bce_loss(probs, y), backward(params, cache, X, y)

    return SimpleNamespace(
        init_params=init_params,
        forward=forward,
        loss_and_grads=loss_and_grads,
        sgd_step=sgd_step,
    )


# --- the bugs: each a variant of one function, `# BUG` on the line that is wrong ------------


def backward_db1_mean_not_sum(params, cache, X, y):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    grads = {}
    dz2 = (cache["a2"] - y) / N
    grads["W2"] = cache["a1"].T @ dz2
    grads["b2"] = np.sum(dz2, axis=0)
    da1 = dz2 @ params["W2"].T
    dz1 = da1 * tanh_prime(cache["z1"])
    grads["W1"] = X.T @ dz1
    grads["b1"] = np.mean(dz1, axis=0)  # BUG: mean of a dz that already carries 1 / N
    return grads


def backward_averaged_twice(params, cache, X, y):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    grads = {}
    dz2 = (cache["a2"] - y) / N
    grads["W2"] = (1 / N) * cache["a1"].T @ dz2  # BUG: the course's 1/m on an averaged dz
    grads["b2"] = (1 / N) * np.sum(dz2, axis=0)  # BUG
    da1 = dz2 @ params["W2"].T
    dz1 = da1 * tanh_prime(cache["z1"])
    grads["W1"] = (1 / N) * X.T @ dz1  # BUG
    grads["b1"] = (1 / N) * np.sum(dz1, axis=0)  # BUG
    return grads


def backward_tanh_prime_of_z_as_if_a(params, cache, X, y):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    grads = {}
    dz2 = (cache["a2"] - y) / N
    grads["W2"] = cache["a1"].T @ dz2
    grads["b2"] = np.sum(dz2, axis=0)
    da1 = dz2 @ params["W2"].T
    dz1 = da1 * (1 - cache["z1"] ** 2)  # BUG: 1 - a^2 is right, written on z
    grads["W1"] = X.T @ dz1
    grads["b1"] = np.sum(dz1, axis=0)
    return grads


def backward_tanh_prime_twice(params, cache, X, y):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    grads = {}
    dz2 = (cache["a2"] - y) / N
    grads["W2"] = cache["a1"].T @ dz2
    grads["b2"] = np.sum(dz2, axis=0)
    da1 = dz2 @ params["W2"].T * tanh_prime(cache["z1"])  # already dz1, named da1
    dz1 = da1 * tanh_prime(cache["z1"])  # BUG: the derivative applied a second time
    grads["W1"] = X.T @ dz1
    grads["b1"] = np.sum(dz1, axis=0)
    return grads


def forward_tanh_in_place(params, X):
    z1 = X @ params["W1"] + params["b1"]
    a1 = np.tanh(z1, out=z1)  # BUG: saves a copy, but cache["z1"] is now a1
    z2 = a1 @ params["W2"] + params["b2"]
    probs = sigmoid(z2)
    cache = {"z1": z1, "a1": a1, "z2": z2, "a2": probs}
    return probs, cache


def bce_loss_flat_labels(probs, y):
    # BUG: y (N,) against probs (N, 1) broadcasts to (N, N): every label against every output
    return -np.mean(y * np.log(probs) + (1 - y) * np.log(1 - probs))


def sgd_step_weights_only(params, grads, lr):
    for layer in (1, 2):
        params[f"W{layer}"] -= lr * grads[f"W{layer}"]  # BUG: the biases are never updated


BUGS = {
    "db1-mean-not-sum": (
        lambda: program(backward=backward_db1_mean_not_sum),
        "b1",
        "grad",
        "np.mean(dz1, axis=0) where np.sum is right: the hidden biases' gradient is 1/N^2",
    ),
    "averaged-twice": (
        lambda: program(backward=backward_averaged_twice),
        "W2",
        "grad",
        "the course's 1/m applied to a dz that is already averaged: every gradient is 1/N^2",
    ),
    "tanh-prime-of-z-as-if-a": (
        lambda: program(backward=backward_tanh_prime_of_z_as_if_a),
        "W1",
        "grad",
        "1 - z1**2 where 1 - a1**2 (or 1 - tanh(z1)**2) is meant",
    ),
    "tanh-prime-twice": (
        lambda: program(backward=backward_tanh_prime_twice),
        "W1",
        "grad",
        "da1 already carries tanh', then dz1 multiplies by it again",
    ),
    "tanh-in-place-aliases-z1": (
        lambda: program(forward=forward_tanh_in_place),
        "z1",
        "forward",
        "np.tanh(z1, out=z1) overwrites the cached z1, so tanh'(z1) is taken at a1",
    ),
    "loss-with-flat-labels": (
        lambda: program(bce_loss=bce_loss_flat_labels),
        "loss",
        "loss",
        "y (N,) against probs (N, 1) broadcasts to an (N, N) mean; the gradients are right",
    ),
    "sgd-weights-only": (
        lambda: program(sgd_step=sgd_step_weights_only),
        "b2",
        "param",
        "the update loop runs over W1 and W2 only: the biases stay at their initial zeros",
    ),
}


# --- rewritings that are not bugs --------------------------------------------------------


def backward_tanh_prime_from_a1(params, cache, X, y):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    grads = {}
    dz2 = (cache["a2"] - y) / N
    grads["W2"] = cache["a1"].T @ dz2
    grads["b2"] = np.sum(dz2, axis=0)
    da1 = dz2 @ params["W2"].T
    dz1 = da1 * (1 - cache["a1"] ** 2)  # the stored activation: tanh'(z) = 1 - tanh(z)^2
    grads["W1"] = X.T @ dz1
    grads["b1"] = np.sum(dz1, axis=0)
    return grads


def backward_descent_direction(params, cache, X, y):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    step = {}  # the downhill direction, -dL/dtheta, as "error = y - output" tutorials write it
    delta2 = (y - cache["a2"]) / N
    step["W2"] = cache["a1"].T @ delta2
    step["b2"] = np.sum(delta2, axis=0)
    delta1 = delta2 @ params["W2"].T * tanh_prime(cache["z1"])
    step["W1"] = X.T @ delta1
    step["b1"] = np.sum(delta1, axis=0)
    return {k: -v for k, v in step.items()}  # the two minus signs cancel


def backward_sum_then_divide(params, cache, X, y):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    grads = {}
    dz2 = cache["a2"] - y  # summed over the batch here, divided once at the end
    grads["W2"] = cache["a1"].T @ dz2
    grads["b2"] = np.sum(dz2, axis=0)
    dz1 = dz2 @ params["W2"].T * tanh_prime(cache["z1"])
    grads["W1"] = X.T @ dz1
    grads["b1"] = np.sum(dz1, axis=0)
    return {k: g / N for k, g in grads.items()}


def sgd_step_new_arrays(params, grads, lr):
    for k in params:
        params[k] = params[k] - lr * grads[k]  # new arrays in the same dict


EQUIVALENTS = {
    "tanh-prime-from-a1": (
        lambda: program(backward=backward_tanh_prime_from_a1),
        "tanh' from the stored activation, 1 - a1**2, instead of recomputed from z1",
    ),
    "descent-direction-negated": (
        lambda: program(backward=backward_descent_direction),
        "error = y - probs, the signs cancelled at the end",
    ),
    "sum-then-divide": (
        lambda: program(backward=backward_sum_then_divide),
        "sums over the batch, divided by N once at the end",
    ),
    "sgd-new-arrays": (
        lambda: program(sgd_step=sgd_step_new_arrays),
        "params[k] = params[k] - lr * g replaces the arrays instead of updating them in place",
    ),
}
