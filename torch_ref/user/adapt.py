"""`adapt`: the user's own network as a lockstep side, in a few lines."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nn_parity import scratch
from nn_parity.scratch.activations import get_activation
from nn_parity.scratch.losses import check_output
from nn_parity.torch_ref.user.access import _Access, _check_arrays
from nn_parity.torch_ref.user.network import UserNetwork, _fn_name


def adapt(
    params: Any,
    *,
    activations: Sequence[str],
    loss: str | scratch.Loss = "bce",
    grads: Callable | None = None,
    step: Callable | None = None,
    update: Callable | None = None,
    forward: Callable | None = None,
    loss_fn: Callable | None = None,
    names: Sequence[str] | None = None,
    layout: Mapping[str, str] | None = None,
    state: Mapping[str, str] | None = None,
    state_of: Any = None,
    dropout: Mapping[str, str] | None = None,
) -> UserNetwork:
    """Adapt a hand-written NumPy network for the lockstep, without subclassing anything.

    params       the parameters: a dict of arrays, an object whose attributes hold them (or
                 lists of them), or a list; `names` picks which keys or attributes, in order
    activations  one per layer, as in `scratch.MLP` ("sigmoid", "tanh", "relu", ...)
    loss         the loss the network trains on ("bce", "bce-logits", ...), mean reduction
    grads        `grads(X, y) -> grads` or `-> (loss, grads)`: gradients by parameter name (or
                 in the parameters' order); nn-parity applies the update, `theta -= lr * g`,
                 unless `update(grads, lr)` (yours, taking the grads as you returned them) is
                 given
    step         or a fused `step(X, y, lr)` that updates the parameters itself; the gradient
                 compared is then the one the update implies, (before - after) / lr, with that
                 recovery's rounding allowed for explicitly
    forward      optional `forward(X) -> out` or `-> (out, cache)`: the network output (what
                 the loss takes: probabilities for bce, logits for bce-logits), with z1, a1, ...
                 in `cache` compared layer by layer; nn-parity calls it before each step, as a
                 training loop does
    loss_fn      optional `loss_fn(X, y) -> float`: your own loss at the parameters the step
                 starts from, compared with torch's (a fused step shows no loss otherwise)
    layout       settles what neither shapes nor a probe can: {"W1": "in,out" or "out,in"}
    state        your own optimizer's state, by torch's buffer name and the path to yours:
                 `state={"exp_avg": "m", "exp_avg_sq": "v", "step": "t"}`, each path holding
                 a dict keyed by your parameter names (or a list in their order) or, for
                 `step`, one number; read from `state_of` (your optimizer object; default
                 `params`) after every step and compared buffer by buffer with torch's

    X and y reach your functions as you pass them to `lockstep` (rows of them, with mini-batches):
    y keeps its shape, (N,) or (N, 1), and dtype. A fused step may return the loss it computed;
    it is then compared. Parameters at paths: `names=["[0].weights", "dense1.biases"]` reads a
    list's elements' and objects' attributes.
    """
    if (grads is None) == (step is None):
        raise ValueError("give exactly one of grads=(X, y) -> grads and step=(X, y, lr)")
    if update is not None and grads is None:
        raise ValueError("update= goes with grads=; a fused step= updates by itself")
    roles = (("grads", grads), ("step", step), ("update", update), ("forward", forward),
             ("loss_fn", loss_fn))  # fmt: skip
    for role, fn in roles:
        if fn is not None and not callable(fn):
            raise TypeError(f"{role} must be a function, got {type(fn).__name__} {fn!r}")
    acts = [get_activation(a) for a in activations]
    access = _Access(params, names)
    loss_s = scratch.get_loss(loss)
    if acts:
        check_output(loss_s, acts[-1].name)
    fn = grads if grads is not None else step
    assert fn is not None
    arrays = access.read()
    dtype = _check_arrays(arrays)
    net = UserNetwork(
        access=access,
        activations=acts,
        loss=loss_s,
        form="grads" if grads is not None else "step",
        fn=fn,
        update=update,
        forward=forward,
        loss_fn=loss_fn,
        dtype=dtype,
        layout=dict(layout or {}),
        names={
            "fn": _fn_name(fn),
            "forward": _fn_name(forward) if forward else "",
            "update": _fn_name(update) if update else "",
            "loss_fn": _fn_name(loss_fn) if loss_fn else "",
        },
    )
    net.dropout = _dropout(dropout, forward)
    net.state_paths, net.state_access = _state(state, params if state_of is None else state_of)
    for key, value in net.layout.items():
        if key not in arrays:
            raise ValueError(
                f"layout names {key!r}, which is not a parameter ({', '.join(arrays)})"
            )
        if value not in ("in,out", "out,in"):
            raise ValueError(f"layout[{key!r}] = {value!r}; expected 'in,out' or 'out,in'")
    return net


_BUFFERS = ("step", "exp_avg", "exp_avg_sq", "momentum_buffer", "square_avg", "sum")


def _state(state: Mapping[str, str] | None, where: Any) -> tuple[dict[str, str], Any]:
    if not state:
        return {}, None
    unknown = [b for b in state if b not in _BUFFERS]
    if unknown:
        raise ValueError(f"state names {unknown}, not torch buffers; expected some of {_BUFFERS}")
    access = _Access(where, [])
    for path in state.values():
        access.get(path)  # refuses a path that leads nowhere, now
    return dict(state), access


def _dropout(dropout: Mapping[str, str] | None, forward: Callable | None) -> dict[str, str]:
    """`dropout={"a1": "mask1"}`: the activation each mask multiplies, named as the user's
    cache names it, and the cache entry holding the mask their forward drew."""
    if dropout is None:
        return {}
    if not isinstance(dropout, Mapping) or not dropout:
        raise TypeError(
            f"dropout must map an activation to its mask's name in your forward's cache, "
            f"e.g. dropout={{'a1': 'mask1'}}; got {dropout!r}"
        )
    if forward is None:
        raise ValueError(
            "dropout= reads this step's masks from your forward's cache: give forward=(X) -> "
            "(out, cache) too, its cache holding the masks"
        )
    for act, mask in dropout.items():
        if not isinstance(act, str) or not re.fullmatch(r"[aA]_?\d+", act):
            raise ValueError(
                f"dropout names {act!r}; expected the activation the mask multiplies, as your "
                "cache names it ('a1', 'a_2')"
            )
        if not isinstance(mask, str):
            raise TypeError(f"dropout[{act!r}] must be the mask's name in your cache, got {mask!r}")
    return dict(dropout)
