"""The rounding a correct stage can leave, for the stage-wise re-check (recheck.py).

Two correct implementations sum the same products in different orders. A sum of terms t_i
computed two ways differs by at most about n eps sum_i |t_i| (in practice sqrt(n) eps): an
absolute error set by the terms' magnitudes, not by the result's. A result that cancels large
terms (a z near 0 from raw inputs, a weight gradient summing over the batch products that
cancel) can therefore differ by far more than the table's fixed atol while both are right.

Each stage of the re-check is fed torch's inputs for that stage, so only the stage's own
rounding is allowed:

    forward    each layer from torch's input to it: min(_DOT_ULPS, D + 2) eps (|x| |W|^T + |b|)
               per element of z, D the layer's inputs (the worst case of a short sum, in
               practice sqrt(D)), and of a = f(z) times f's largest slope within it (a saturated
               sigmoid's or tanh's is near 0); nothing carried from earlier layers
    backward   the chain dz_l = f'(z_l) (dz_{l+1} W_{l+1}) is scratch's own (torch keeps no
               hidden dz), so each layer's gradient may carry the rounding of every product
               above it: the magnitudes are propagated with absolute values, |dz_l| <=
               |f'| (|dz_{l+1}| |W_{l+1}|) (|f'| taken as the size of the terms its formula
               sums: 1 + a^2 for tanh's 1 - a^2, which near saturation rounds at an ulp of
               1, not of the result), and a weight gradient's slack is eps |dz_l|^T |x_l|
               times the ulps of each sum on the way: 2 at the top (dout, f'), dot_ulps(H)
               per layer crossed (dz W over its H outputs), dot_ulps(N) for the sum over the
               N samples; at most _DOT_ULPS per layer crossed (a short sum is allowed its
               own worst case: an L2 term wrongly on a bias hid in the flat bound)

    update     theta + step, where a step as large as theta cancels it (a blowing-up gradient
               brought back near 0): _UPDATE_ULPS eps (|theta| + |step|), the step torch's
               own (its after - before); the step's rounding is relative to itself

A real difference (a wrong derivative, a missing sample, a factor) is of the size of the value
itself, or of the terms; these bounds are a few dozen ulps of the terms.
"""

from __future__ import annotations

import numpy as np

__all__ = ["backward_slack", "forward_slack", "update_slack"]

# How many units of epsilon, times the sum of magnitudes of its terms, a sum may differ by
# between two libraries: worst case about n eps each, in practice about sqrt(n) eps.
_DOT_ULPS = 32


def dot_ulps(terms: int) -> int:
    """The ulps (of the terms' magnitude) two correct libraries may part by on a sum of `terms`
    products plus a bias, then an activation of slope at most 1: each side's sum rounds by at
    most (terms + 1) eps / 2 of it in any order, the activation by one ulp more. _DOT_ULPS caps
    it: a short sum is allowed its worst case, not a long sum's (a dropped bias of 4 on a 2-term
    z of 2e6 in float32 was 8 ulps of 2e6, within the flat 32, test_dense_adversary.py)."""
    return min(_DOT_ULPS, terms + 2)


def forward_slack(net, items, inputs: list[np.ndarray], zs: list[np.ndarray], loss="") -> list:
    """Per forward item, elementwise: z dot_ulps(D) * eps * (|x| |W|^T + |b|), with x torch's
    input to that item's layer; a that times the activation's largest slope within it of
    torch's z `zs` (sigmoid and tanh, whose slope is far below 1 where they saturate; 1
    otherwise); prob the last layer's a's (what it is, or a map of slope <= 1 of it), times
    sigmoid's slope for `loss` "bce-logits" (p = sigmoid of an identity output)."""
    eps = float(np.finfo(net.dtype).eps)
    slack = {}
    for l, (x, z) in enumerate(zip(inputs, zs)):
        m = np.abs(x) @ np.abs(net.params[f"layers.{l}.weight"]).T  # (N, H)
        if net.bias:
            m = m + np.abs(net.params[f"layers.{l}.bias"])
        slack["z", l] = dot_ulps(x.shape[-1]) * eps * m
        slack["a", l] = slack["z", l] * _slope(net.layers[l].activation.name, z, slack["z", l])
    last = slack["a", len(inputs) - 1]
    if loss == "bce-logits" and net.layers[-1].activation.name == "identity":
        last = last * _slope("sigmoid", zs[-1], last)
    return [last if it.quantity == "prob" else slack[it.quantity, it.layer] for it in items]


def _slope(name: str, z: np.ndarray, within: np.ndarray) -> np.ndarray | float:
    """The largest |f'| over [z - within, z + within]: at the point nearest 0, for the
    saturating activations; 1 (a bound) for the rest."""
    near = np.sign(z) * np.maximum(np.abs(np.asarray(z, np.float64)) - within, 0.0)
    if name == "sigmoid":
        p = 1 / (1 + np.exp(-np.abs(near)))
        return p * (1 - p)
    if name == "tanh":
        return 1 - np.tanh(near) ** 2
    return 1.0


def _dz_magnitude(act, m: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """A bound on |dz| given a bound m on |da|, for the activation's backward."""
    if act.name == "softmax":  # dz = (da - sum(da a)) a
        return (m + (m * a).sum(axis=-1, keepdims=True)) * a
    if act.name == "log_softmax":  # dz = da - e^a sum(da)
        return m + np.exp(a) * m.sum(axis=-1, keepdims=True)
    if act.name in _TERMS:  # f'(z) from a sum whose terms are larger than the result
        return m * _TERMS[act.name](np.abs(a))
    return np.abs(act.backward(m, z, a))  # elementwise and exact: m |f'(z)|


# The magnitude of the terms an activation's derivative sums, from its output: tanh's 1 - a a
# near a = 1 rounds at an ulp of 1, which is an ulp of the result only when a is small
# (torch may fuse the multiply-subtract, one rounding against two).
_TERMS = {"tanh": lambda a: 1 + a * a, "sigmoid": lambda a: (1 + a) * a}


def backward_slack(net, dout: np.ndarray, cache: list[tuple]) -> dict[str, np.ndarray]:
    """Per parameter name, the rounding scratch's backward may carry against torch's, through
    the cache (x, z, a) per layer it ran on, from dL/d(output) = `dout`."""
    eps = float(np.finfo(net.dtype).eps)
    slack, m = {}, np.abs(np.asarray(dout, dtype=np.float64))
    chain = dot_ulps(0)  # dz at the top: dout's rounding and f''s product, ulps of |dz|
    for i in range(len(net.layers) - 1, -1, -1):
        layer, (x, z, a) = net.layers[i], cache[i]
        mz = _dz_magnitude(layer.activation, m, z, a)
        crossed = _DOT_ULPS * (len(net.layers) - i)  # the flat bound, a cap
        ulps = eps * min(crossed, chain + dot_ulps(len(x)))  # then summed over the N samples
        slack[f"layers.{i}.weight"] = ulps * (mz.T @ np.abs(x))
        if net.bias:
            slack[f"layers.{i}.bias"] = ulps * mz.sum(axis=0)
        m = mz @ np.abs(layer.weight)
        chain += dot_ulps(layer.weight.shape[0])  # dz W sums the layer's outputs
    return slack


# theta + step rounds once (torch's fused add_) or twice (theta - (lr g)): an ulp or two of the
# larger term, and a few of the step's own products
_UPDATE_ULPS = 4


def update_slack(before: np.ndarray, after_t: np.ndarray) -> np.ndarray:
    """The rounding of an update theta + step at the terms' size: _UPDATE_ULPS eps (|theta| +
    |step|), with torch's step after - before."""
    before = np.asarray(before, dtype=np.float64)
    step = np.asarray(after_t, dtype=np.float64) - before
    return (
        _UPDATE_ULPS
        * float(np.finfo(np.asarray(after_t).dtype).eps)
        * (np.abs(before) + np.abs(step))
    )
