"""The two sides of a lockstep, behind one small protocol.

A side takes one training step on a batch and reports what it computed, as values in the order of
its `keys`, one key per compared quantity:

    ("z", l, None, None)              layer l's pre-activation            forward
    ("a", l, None, None)              layer l's (hidden) activation
    ("prob", L-1, None, None)         the output probabilities
    ("loss", None, None, None)        the scalar loss                     loss
    ("grad", l, "weight", None)       a gradient, last layer first        backward
    ("lr", None, None, None)          the step's learning rate (a schedule) update
    ("param", l, "weight", None)      a parameter after the update        update
    ("state", l, "weight", "exp_avg") an optimizer buffer after the update
    ("out", l, None, None)            layer l's output (a network of layers,  forward
                                      engine/layered_side.py)
    ("stat", l, "running_mean", None) batchnorm's running statistics      forward

in canonical names and layout (`layers.{l}.weight` stored (out, in), like nn.Linear). The engine
compares the keys both sides report and records the ones only one side could. `Side` below is
what the loop, the ledger and the start check ask of a scratch side; the re-check
(`recheck.py`) asks more, by capability:

    staged       forward, loss, backward and update can each rerun on given inputs (the
                 built-in network): the stage-wise explanation of a mismatch
    rerunnable   the whole step can rerun from given parameters (user code): a coarser
                 explanation, "this step from torch's weights reproduces torch's"
    recheck      a method: the side's own stage-wise re-check (a network of gallery layers,
                 engine/layered_recheck.py), asked before the two above
    stateful     optimizer state can be read and set: compared and resynchronised
    recovered    gradients are recovered from a fused update, (before - after) / lr, and carry
                 that recovery's rounding, allowed for explicitly
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from nn_parity import scratch

Key = tuple[str, Any, Any, Any]
LR_KEY: Key = ("lr", None, None, None)


class Side(Protocol):
    """A scratch side: the built-in network (`MLPSide`) or the user's (`UserSide`)."""

    keys: list[Key]  # what a step reports, in order; known after the first step
    order: list[str]  # canonical parameter names, last layer first
    dtype: Any
    desc: scratch.MLP  # the network the side computes, as a description
    loss: scratch.Loss
    loss_value: float  # the last step's loss
    opt: Any  # the scratch optimizer both sides' optimizers are built from, or None
    staged: bool
    rerunnable: bool
    stateful: bool
    recovered: bool

    def step(self, X: np.ndarray, Y: np.ndarray, rows: Any = None) -> list: ...

    @property
    def params_before(self) -> dict[str, np.ndarray]: ...

    def get_params(self) -> dict[str, np.ndarray]: ...

    def set_params(self, params: Mapping[str, np.ndarray]) -> None: ...

    def recovery_slack(self) -> dict[str, float]: ...

    def oracle(self) -> tuple[scratch.MLP, dict[str, np.ndarray], list]: ...


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


def update_keys(order: list[str], state_names: tuple[str, ...], lr: bool = False) -> list[Key]:
    """Per parameter (in `order`: last layer first): the gradient, the optimizer's state, then
    the updated parameter, the order an update computes them in (Adam's moments before the
    step they scale). With `lr` (a schedule), the step's learning rate comes after the
    gradients: a schedule that parts is found there, before the parameters it moves."""
    split = [(int(n.split(".")[1]), n.split(".")[2]) for n in order]
    keys: list[Key] = [("grad", l, p, None) for l, p in split]
    keys += [LR_KEY] * lr
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
