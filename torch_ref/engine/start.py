"""The state a run starts from: both sides' parameters and optimizer state, compared bit for bit
before step 0."""

from __future__ import annotations

import math

import numpy as np
from nn_parity.torch_ref.compare import (
    first_mismatch,
    tolerance,
)
from nn_parity.torch_ref.results import Divergence, Item
from nn_parity.torch_ref.user.layout import Slot


def _start_divergence(sside, tside) -> Divergence | None:
    """The two sides' parameters and optimizer state as the run finds them, compared bit for
    bit: both were given the same numbers, and copying is exact."""
    pmap = getattr(sside.net, "pmap", None)
    slots: dict[str, Slot] = pmap.by_canonical if pmap is not None else {}
    s_params, t_params = sside.get_params(), tside.params_now()
    s_state = sside.opt.state_dict() if getattr(sside, "opt", None) is not None else {}
    t_state = tside.state()
    # the first layer first, weight before bias: where the run starts
    names = sorted(sside.order, key=lambda n: (int(n.split(".")[1]), n.endswith("bias")))
    pairs = [(n, None, s_params[n], t_params[n]) for n in names]
    for n in names:
        mine, theirs = s_state.get(n, {}), t_state.get(n, {})
        for b in dict.fromkeys([*mine, *theirs]):  # a buffer one side lacks: NaN on that side
            nan = np.full(np.shape(mine.get(b, theirs.get(b))), math.nan)
            pairs.append((n, b, mine.get(b, nan), theirs.get(b, nan)))
    for n, b, s, t in pairs:
        _, layer, param = n.split(".")
        slot = slots.get(n)
        user = slot.user if slot is not None else None
        it = Item("start", int(layer), param, np.shape(t), b, user=user, slot=slot)
        div = _start_mismatch(it, s, t, f"optimizer state ({b})" if b else "weights")
        if div is not None:
            return div
    return None


def _carried_in(sside, tside, step: int) -> bool:
    """Whether the parameters this step started from are as close as the comparisons before
    it allow: identical at step 0 (compared bit for bit), and after a later step within the
    tolerance its own parameter comparison applied (resynchronised steps start identical). An
    excuse re-checks the step from torch's parameters; it may only excuse a difference that
    compared steps can have produced, never one made between them."""
    tol = tolerance("param", sside.dtype)
    rtol, atol = (0.0, 0.0) if step == 0 else (tol.rtol, tol.atol)
    mine = sside.params_before
    return all(
        first_mismatch(mine[name], theirs, rtol, atol) is None
        for name, theirs in zip(tside.order, tside.params_before)
    )


def _start_words(sside, first: Divergence | None) -> str:
    n = len(sside.order)
    if first is not None and first.quantity == "start":
        return f"differed before step 0 ({first.label})"
    opt = getattr(sside, "opt", None)
    state = " and optimizer state" if opt is not None and any(opt.state_dict().values()) else ""
    return f"identical: {n} parameters{state} compared bit for bit"


def _start_mismatch(it: Item, s, t, what: str) -> Divergence | None:
    s, t = np.asarray(s), np.asarray(t)
    if s.dtype != t.dtype or np.array_equal(s, t, equal_nan=True):
        return None  # a dtype difference is reported by the first step's dtype check
    m = first_mismatch(s, t, 0.0, 0.0)
    assert m is not None
    name = it.user or it.name
    index = it.user_index(m.index)
    at = f"{name}{list(index)}" if index else str(name)
    if it.buffer:
        at = f"the {it.buffer} buffer of {at}"
    lacks = "scratch" if math.isnan(m.scratch) else "torch" if math.isnan(m.torch) else None
    if lacks and s.size and np.isnan(s if lacks == "scratch" else t).all():
        other = "torch" if lacks == "scratch" else "scratch"
        found = f"{other}'s optimizer starts with {at} = {getattr(m, other)!r}, {lacks}'s has none"
        fix = "start both optimizers fresh"
    else:
        found = f"{at} is {m.scratch!r} in scratch but {m.torch!r} in torch"
        fix = (
            "give torch a copy of scratch's weights (ref=None, or TorchMLP.from_scratch(net)) "
            "or load the same weights into both"
            if it.buffer is None
            else "start both optimizers fresh, or from the same state"
        )
    return Divergence(
        step=0, quantity="start", layer=it.layer, param=it.param,
        label=f"start {it.buffer + ' of ' if it.buffer else ''}{name}", index=index,
        scratch=m.scratch, torch=m.torch, abs_err=abs(m.scratch - m.torch),
        rel_err=abs(m.scratch - m.torch) / abs(m.torch) if m.torch else math.inf,
        rtol=0.0, atol=0.0, mismatches=m.count, total=m.total,
        diagnosis={
            "cause": "different-start",
            "explanation": f"the two sides did not start from the same {what}: {found} before "
            f"step 0 ({m.count} of {m.total} elements differ). No step produced this; {fix}",
        },
    )  # fmt: skip
