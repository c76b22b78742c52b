"""Weight initialisation, drawn from one `np.random.Generator`.

A scheme fills a layer's weight W (out, in) and bias b (out,) in place. fan_in = in, fan_out = out.

    xavier_uniform  W ~ U(-s, s),  s = sqrt(6 / (fan_in + fan_out)),   b = 0   (Glorot & Bengio)
    xavier_normal   W ~ N(0, 2 / (fan_in + fan_out)),                   b = 0
    he_uniform      W ~ U(-s, s),  s = sqrt(6 / fan_in),                b = 0   (He et al.)
    he_normal       W ~ N(0, 2 / fan_in),                               b = 0
    normal          W ~ N(0, 0.1^2),                                    b = 0
    uniform         W ~ U(-0.1, 0.1),                                   b = 0
    torch_default   W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))   (what nn.Linear does itself)

Explicit values, as the seed article sets its weights by hand, go through `MLP.from_weights`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["INITS", "init_layer"]


def _uniform(rng, W, b, w_bound, b_bound=0.0):
    W[...] = rng.uniform(-w_bound, w_bound, size=W.shape)
    if b is not None:
        b[...] = rng.uniform(-b_bound, b_bound, size=b.shape) if b_bound else 0


def _normal(rng, W, b, std):
    W[...] = rng.normal(0.0, std, size=W.shape)
    if b is not None:
        b[...] = 0


INITS = {
    "xavier_uniform": lambda rng, W, b: _uniform(rng, W, b, math.sqrt(6 / sum(W.shape))),
    "xavier_normal": lambda rng, W, b: _normal(rng, W, b, math.sqrt(2 / sum(W.shape))),
    "he_uniform": lambda rng, W, b: _uniform(rng, W, b, math.sqrt(6 / W.shape[1])),
    "he_normal": lambda rng, W, b: _normal(rng, W, b, math.sqrt(2 / W.shape[1])),
    "normal": lambda rng, W, b: _normal(rng, W, b, 0.1),
    "uniform": lambda rng, W, b: _uniform(rng, W, b, 0.1),
    "torch_default": lambda rng, W, b: _uniform(
        rng, W, b, 1 / math.sqrt(W.shape[1]), 1 / math.sqrt(W.shape[1])
    ),
}


def init_layer(scheme: str, rng: np.random.Generator, W: np.ndarray, b: np.ndarray | None) -> None:
    """Fill W (out, in) and b (out,) in place by the named scheme."""
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; expected one of {', '.join(INITS)}")
    INITS[scheme](rng, W, b)
