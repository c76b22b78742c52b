"""The side protocol: what the lockstep asks of each side, and the keys of what a step reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from nn_parity import scratch

Key = tuple[str, Any, Any, Any]


def forward_keys(n_layers: int, *, z: set[int], a: set[int], prob: bool, loss: bool) -> list[Key]:
    keys: list[Key] = []
    for l in range(n_layers):
        if l in z:
            keys.append(("z", l, None, None))
        if l in a and l < n_layers - 1:
            keys.append(("a", l, None, None))
    if prob:
        keys.append(("prob", n_layers - 1, None, None))
    if loss:
        keys.append(("loss", None, None, None))
    return keys


def update_keys(order: list[str], state_names: tuple[str, ...]) -> list[Key]:
    """Per parameter (in `order`: last layer first): the gradient, the optimizer's state, then
    the updated parameter, the order an update computes them in (Adam's moments before the
    step they scale)."""
    split = [(int(n.split(".")[1]), n.split(".")[2]) for n in order]
    keys: list[Key] = [("grad", l, p, None) for l, p in split]
    keys += [("state", l, p, b) for l, p in split for b in state_names]
    keys += [("param", l, p, None) for l, p in split]
    return keys


def active_state(names, state: Mapping[str, Mapping]) -> tuple[str, ...]:
    """The buffers an optimizer keeps with its settings (SGD without momentum keeps none), in
    its declared order, from its state after a step."""
    kept = set().union(*(set(s) for s in state.values())) if state else set()
    return tuple(b for b in names if b in kept)


def backward_order(desc: scratch.MLP) -> list[str]:
    """Parameter names last layer first, weight before bias: backward's order, where the first
    failing layer is the one the error entered."""
    return [
        f"layers.{l}.{p}"
        for l in range(len(desc.layers) - 1, -1, -1)
        for p in (("weight", "bias") if desc.bias else ("weight",))
    ]


def _state_values(state: Mapping[str, Mapping[str, np.ndarray]], order, names) -> list:
    return [np.asarray(state[n][b]) for n in order for b in names]
