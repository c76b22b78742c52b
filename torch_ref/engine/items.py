"""The items both sides report, in step order, and in words what only one side reported."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from nn_parity.torch_ref.engine.user_side import UserSide
from nn_parity.torch_ref.results import Item


def _items(sside, tside, svals) -> tuple[list[Item], list[int] | None, list[int] | None, list[str]]:
    """The items both sides report, in step order, and which of each side's values they are;
    and, in words, what only one side reported."""
    pmap = getattr(sside.net, "pmap", None)
    slots = pmap.by_canonical if pmap is not None else {}
    cache_names = getattr(sside, "cache_names", {})
    t_keys, s_keys = set(tside.keys), set(sside.keys)

    def item(key, shape=()) -> Item:
        q, l, p, buf = key
        slot = slots.get(f"layers.{l}.{p}") if p is not None else None
        user = slot.user if slot else cache_names.get((q, l)) if q in ("z", "a") else None
        return Item(q, l, p, shape, buf, user=user, slot=slot)

    shared = [k for k in sside.keys if k in t_keys]
    items = [item(k, tuple(np.shape(svals[sside.keys.index(k)]))) for k in shared]
    missing = [f"{item(k).label} (torch does not report it)" for k in sside.keys if k not in t_keys]
    unseen = [k for k in tside.keys if k not in s_keys]
    # optimizer state unseen in user code: one line, not one per buffer and parameter
    state = [k for k in unseen if k[0] == "state"]
    if state:
        buffers = ", ".join(dict.fromkeys(k[3] for k in state))
        missing.append(f"optimizer state ({buffers}) of every parameter "
                       f"({_missing_reason(state[0], sside)})")  # fmt: skip
    missing += [f"{item(k).label} ({_missing_reason(k, sside)})" for k in unseen if k[0] != "state"]
    pick_s = None if shared == sside.keys else [sside.keys.index(k) for k in shared]
    pick_t = None if shared == tside.keys else [tside.keys.index(k) for k in shared]
    return items, pick_s, pick_t, missing


def _missing_reason(key, sside) -> str:
    q = key[0]
    if q in ("z", "a"):
        return (
            "your forward returns no cache with z1, a1, ..."
            if isinstance(sside, UserSide) and sside.net.forward
            else "no forward given"
        )
    if q == "prob":
        return "no forward given"
    if q == "stat":
        return f"your code's running statistics not named: stats={{{key[1]}: ...}}"
    if q == "loss":
        return "no loss returned by your gradient function, and no loss_fn"
    if q == "state":
        return "the update is yours, its state unseen"
    if q == "lr":
        return "the update is yours: its rate is seen through the parameters it moves"
    if q == "grad":
        return "a fused step with this optimizer implies no gradient: parameters compared"
    return "not reported"


def _resize(items: list[Item], n: int) -> list[Item]:
    """The same items for a batch of n rows (the last, partial batch)."""
    out = []
    for it in items:
        if it.quantity in ("z", "a", "out", "prob"):
            it = replace(it, shape=(n, *it.shape[1:]))
        out.append(it)
    return out


def _checked(sside) -> dict:
    """What the scratch side let the engine check, for the record and the report."""
    if hasattr(sside, "checked"):  # a side that says so itself (user_layered_side.py)
        return sside.checked()
    if not isinstance(sside, UserSide):
        return {"side": "built-in network", "gradients": "returned by backward"}
    net = sside.net
    pmap = net.param_map
    return {
        "side": repr(net),
        "gradients": (
            f"returned by {net.names['fn']}"
            if net.form == "grads"
            else "recovered from your fused step as (before - after) / lr"
            if sside.recovered
            else "not compared: a fused step with this optimizer implies none"
        ),
        "update": _update_owner(sside),
        "layout": pmap.describe(),
        "layout_decided_by": pmap.how,
    }


def _update_owner(sside) -> str:
    net = sside.net
    if sside.net.form == "step":
        return _yours(net.names["fn"])
    if net.update is not None:
        return _yours(net.names["update"])
    return f"nn-parity's {type(sside.opt).__name__}"


def _yours(name: str) -> str:
    return name if name.startswith("your ") else f"your {name}"
