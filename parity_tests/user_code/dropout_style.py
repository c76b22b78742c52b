"""A two-layer network with inverted dropout, parameters in a dict, the way course notes write it.

    params = {"W1": (D, H), "b1": (H,), "W2": (H, 1), "b2": (1,)}   weights stored (in, out)

Forward (training): z1 = X W1 + b1, a1 = relu(z1), mask1 = (rng.random(a1.shape) < keep) / keep,
a1 *= mask1, z2 = a1 W2 + b2, probs = sigmoid(z2). The mask is drawn once per forward, from the
network's own seeded generator, and kept in the cache for the backward:

    da1 = dz2 W2^T,  da1 *= mask1  (the same mask, already scaled by 1 / keep),  dz1 = da1 [z1 > 0]

A training loop:

    probs, cache = forward(params, X, rng)
    grads = backward(params, cache, X, y)
    sgd_step(params, grads, lr=0.1)

Checked with `adapt(params, ..., dropout={"a1": "mask1"})`. NumPy only; `BUGS` below, `# BUG`
on the wrong line.
"""

from __future__ import annotations

import numpy as np

KEEP = 0.8  # the probability of keeping a unit


def init_params(sizes, seed=0):
    D, H, C = sizes
    rng = np.random.default_rng(seed)
    params = {
        "W1": rng.standard_normal((D, H)) * np.sqrt(2.0 / D),  # He for relu
        "b1": np.zeros(H),
        "W2": rng.standard_normal((H, C)) * np.sqrt(1.0 / H),
        "b2": np.zeros(C),
    }
    return params, np.random.default_rng(seed + 1)  # the dropout generator


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def forward(params, X, rng, keep=KEEP):
    z1 = X @ params["W1"] + params["b1"]  # (N, H)
    a1 = np.maximum(z1, 0)
    mask1 = (rng.random(a1.shape) < keep) / keep  # inverted dropout: scaled at training time
    a1 *= mask1
    z2 = a1 @ params["W2"] + params["b2"]  # (N, 1)
    probs = sigmoid(z2)
    return probs, {"z1": z1, "a1": a1, "mask1": mask1, "z2": z2, "probs": probs}


def backward(params, cache, X, y, rng=None, keep=KEEP):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    dz2 = (cache["probs"] - y) / N
    grads = {"W2": cache["a1"].T @ dz2, "b2": dz2.sum(axis=0)}
    da1 = dz2 @ params["W2"].T
    da1 *= cache["mask1"]
    dz1 = da1 * (cache["z1"] > 0)
    grads["W1"] = X.T @ dz1
    grads["b1"] = dz1.sum(axis=0)
    return grads


def sgd_step(params, grads, lr):
    for k in params:
        params[k] -= lr * grads[k]


# --- the bugs: each a variant of one function, `# BUG` on the line that is wrong ------------


def backward_mask_redrawn(params, cache, X, y, rng=None, keep=KEEP):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    dz2 = (cache["probs"] - y) / N
    grads = {"W2": cache["a1"].T @ dz2, "b2": dz2.sum(axis=0)}
    da1 = dz2 @ params["W2"].T
    da1 *= (rng.random(da1.shape) < keep) / keep  # BUG: a new mask, not the forward's
    dz1 = da1 * (cache["z1"] > 0)
    grads["W1"] = X.T @ dz1
    grads["b1"] = dz1.sum(axis=0)
    return grads


def backward_mask_unscaled(params, cache, X, y, rng=None, keep=KEEP):
    y = y.reshape(-1, 1)
    N = X.shape[0]
    dz2 = (cache["probs"] - y) / N
    grads = {"W2": cache["a1"].T @ dz2, "b2": dz2.sum(axis=0)}
    da1 = dz2 @ params["W2"].T
    da1 *= cache["mask1"] > 0  # BUG: the mask's 0/1 pattern, without its 1 / keep
    dz1 = da1 * (cache["z1"] > 0)
    grads["W1"] = X.T @ dz1
    grads["b1"] = dz1.sum(axis=0)
    return grads


def forward_output_dropped(params, X, rng, keep=KEEP):
    z1 = X @ params["W1"] + params["b1"]
    a1 = np.maximum(z1, 0)
    mask1 = (rng.random(a1.shape) < keep) / keep
    a1 *= mask1
    z2 = a1 @ params["W2"] + params["b2"]
    z2 = z2 * (rng.random(z2.shape) < keep) / keep  # BUG: dropout on the output layer
    probs = sigmoid(z2)
    return probs, {"z1": z1, "a1": a1, "mask1": mask1, "z2": z2, "probs": probs}


BUGS = {  # name: ({role: the function replacing it}, where it first shows, kind, what)
    "mask-redrawn-in-backward": ({"backward": backward_mask_redrawn}, "W1", "grad",
                                 "the backward draws a new mask instead of the forward's"),
    "mask-unscaled-in-backward": ({"backward": backward_mask_unscaled}, "W1", "grad",
                                  "the backward's mask lacks the 1 / keep of the forward's"),
    "dropout-on-output": ({"forward": forward_output_dropped}, "z2", "forward",
                          "dropout applied to the output layer's z as well"),
}  # fmt: skip
