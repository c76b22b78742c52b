"""The dict-style network (`dict_style`) with bugs whose cause a recomputation confirms: a
derivative in the wrong form, a float32 temporary, targets reordered in the backward pass
only, a parameter the update never reaches. NumPy only.

`BUGS` maps a name to `(factory, where, kind, the cause it must get, what is wrong)`;
`EQUIVALENTS` the same derivatives written another valid way, which must pass.
"""

from __future__ import annotations

import numpy as np

from .dict_style import program, sigmoid


def _backward(dz1_of, y_of=lambda y: y):
    """dict_style's backward, with dz1 computed by `dz1_of(da1, cache)` and the targets read
    through `y_of`."""

    def backward(params, cache, X, y):
        y = y_of(y.reshape(-1, 1))  # (N, 1)
        N = X.shape[0]
        grads = {}
        dz2 = (cache["a2"] - y) / N  # (N, C)
        grads["W2"] = cache["a1"].T @ dz2  # (H, C)
        grads["b2"] = np.sum(dz2, axis=0)  # (C,)
        da1 = dz2 @ params["W2"].T  # (N, H)
        dz1 = dz1_of(da1, cache)  # (N, H)
        grads["W1"] = X.T @ dz1  # (D, H)
        grads["b1"] = np.sum(dz1, axis=0)  # (H,)
        return grads

    return backward


def _right(da1, cache):
    return da1 * (1 - np.tanh(cache["z1"]) ** 2)


def sigmoid_prime_for_tanh(da1, cache):
    return da1 * cache["a1"] * (1 - cache["a1"])  # BUG: the sigmoid's a (1 - a)


def tanh_prime_dropped(da1, cache):
    return da1  # BUG: the tanh' factor left out


def float32_temporary(da1, cache):
    return (da1 * (1 - cache["a1"] ** 2)).astype(np.float32).astype(np.float64)  # BUG


def sgd_step_skipping_w2(params, grads, lr):
    for k in params:
        if k != "W2":  # BUG: the update of W2 left out
            params[k] -= lr * grads[k]


BUGS = {
    "sigmoid-prime-for-tanh": (lambda: program(backward=_backward(sigmoid_prime_for_tanh)),
                               "W1", "grad", "derivative-form",
                               "a tanh layer differentiated with the sigmoid's a (1 - a)"),
    "tanh-prime-dropped": (lambda: program(backward=_backward(tanh_prime_dropped)),
                           "W1", "grad", "derivative-form", "dz1 = da1: tanh' left out"),
    "float32-temporary": (lambda: program(backward=_backward(float32_temporary)),
                          "W1", "grad", "precision", "dz1 through a float32 array"),
    "targets-reversed-in-backward": (
        lambda: program(backward=_backward(_right, y_of=lambda y: y[::-1])),
        "W2", "grad", "targets", "the backward pass reads the targets reversed"),
    "w2-never-updated": (lambda: program(sgd_step=sgd_step_skipping_w2),
                         "W2", "param", "no-update", "the SGD step skips W2"),
}  # fmt: skip

EQUIVALENTS = {
    "tanh-prime-as-sech": (
        lambda: program(backward=_backward(lambda da1, c: da1 / np.cosh(c["z1"]) ** 2)),
        "tanh' = 1 / cosh(z)^2",
    ),
    "tanh-prime-via-sigmoid": (
        lambda: program(
            backward=_backward(
                lambda da1, c: da1 * 4 * sigmoid(2 * c["z1"]) * sigmoid(-2 * c["z1"])
            )
        ),
        "tanh' = 4 sigma(2z) sigma(-2z)",
    ),
}
