"""A divergence as found: the failing element, both values, the finite-difference verdict and the
likely cause."""

from __future__ import annotations

import math

import numpy as np
from nn_parity import scratch
from nn_parity.scratch.gradcheck import network_gradient
from nn_parity.torch_ref.compare import (
    Mismatch,
    first_mismatch,
    tolerance,
)
from nn_parity.torch_ref.engine.comparer import _np
from nn_parity.torch_ref.engine.diagnosis import Context, diagnose
from nn_parity.torch_ref.engine.layered_fd import layered_fd_verdict
from nn_parity.torch_ref.engine.layered_side import LayeredSide
from nn_parity.torch_ref.engine.opt_causes import state_cause
from nn_parity.torch_ref.engine.schedule_causes import schedule_cause
from nn_parity.torch_ref.engine.setup import _opt_of
from nn_parity.torch_ref.evidence import agreement
from nn_parity.torch_ref.results import Divergence, Item


def _snapshot(items, svals, tvals, sside) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Copies of both sides' full tensors at one step."""
    snap = {it.label: (np.array(sv), _np(tv).copy()) for it, sv, tv in zip(items, svals, tvals)}
    before = np.concatenate([np.ravel(v) for v in sside.params_before.values()])
    snap["params before the step"] = (before, np.empty(0))
    return snap


def _nonfinite(step, items, svals, tvals, loss, tside) -> Divergence | None:
    """The first quantity, in step order, where either side holds NaN or Inf."""
    for it, sv, tv in zip(items, svals, tvals):
        s_bad = ~np.isfinite(np.asarray(sv))
        t_bad = ~np.isfinite(_np(tv))
        if not (s_bad.any() or t_bad.any()):
            continue
        side = "both" if s_bad.any() and t_bad.any() else "scratch" if s_bad.any() else "torch"
        bad = s_bad | t_bad
        flat = int(np.argmax(bad.ravel()))
        index = tuple(int(i) for i in np.unravel_index(flat, bad.shape)) if bad.shape else ()
        sval, tval = float(np.ravel(sv)[flat]), float(np.ravel(_np(tv))[flat])
        tol = tolerance(it.quantity, np.asarray(sv).dtype)
        return Divergence(
            step=step, quantity=it.quantity, layer=it.layer, param=it.param, label=it.label,
            index=it.user_index(index), scratch=sval, torch=tval, abs_err=math.nan,
            rel_err=math.nan, rtol=tol.rtol, atol=tol.atol, mismatches=int(bad.sum()),
            total=int(bad.size), nonfinite=side,
            diagnosis={"cause": "non-finite", "explanation": _nonfinite_why(
                step, it, side, loss, _np(tside.cache[-1][1]))},
        )  # fmt: skip
    return None


def _nonfinite_why(step: int, it: Item, side: str, loss, out_t: np.ndarray) -> str:
    """Why NaN or Inf appeared, where the numbers say: a log of exactly 0 or 1 on one side.
    `out_t` is torch's output at the step, from the same weights."""
    where = f"NaN or Inf first appears at step {step} in {it.label}"
    if side == "both":
        return f"{where} on both sides: training blew up (a learning rate far too large?)"
    other = "torch" if side == "scratch" else "scratch"
    why = f"{where} on {side}'s side while {other}'s stayed finite"
    if side == "scratch" and loss.name == "bce" and it.quantity not in ("z", "a"):
        edge = np.flatnonzero((out_t == 0) | (out_t == 1))  # (N, 1) probabilities
        if edge.size:
            i = int(edge[0])
            return (
                f"{why}: p is exactly {out_t.ravel()[i]:g} at sample {i}, where a log of 0 "
                "is -inf; torch's BCELoss clamps the log at -100 (clip p, or compute the "
                "loss from the logits)"
            )
    return f"{why}: {side}'s code produced it (a division by zero, a log of 0, an overflow?)"


def _divergence(step, items, k, svals, tvals, sside, tside, slack, where=None) -> Divergence:
    it = items[k]
    dtype = sside.dtype
    tol = tolerance(it.quantity, dtype)
    atol = tol.atol + (slack.get(it.name or "", 0.0) if slack and it.quantity == "grad" else 0.0)
    m: Mismatch | None = first_mismatch(np.asarray(svals[k]), _np(tvals[k]), tol.rtol, atol)
    assert m is not None, "the packed and the elementwise comparison disagree"
    div = Divergence(
        step=step,
        quantity=it.quantity,
        layer=it.layer,
        param=it.param,
        label=it.label,
        index=it.user_index(m.index),
        scratch=m.scratch,
        torch=m.torch,
        abs_err=abs(m.scratch - m.torch),
        rel_err=abs(m.scratch - m.torch) / abs(m.torch) if m.torch else math.inf,
        rtol=tol.rtol,
        atol=atol,
        mismatches=m.count,
        total=m.total,
    )
    if where is not None:
        div.epoch, div.batch = where
    if getattr(sside, "layered", False):  # located by layer; the diagnoses read MLPs only
        div.diagnosis = {"cause": f"layer {it.layer}", "explanation": f"first part at {it.label}"}
        if it.quantity == "grad" and isinstance(sside, LayeredSide):  # engine/layered_fd.py
            div.fd, div.fd_agrees_with = layered_fd_verdict(sside, it, m)
        return div
    desc, params_before, cache = sside.oracle()
    if it.quantity == "grad":
        div.fd, div.fd_agrees_with = _fd_verdict(desc, sside, params_before, it, m)
    before64 = {k: np.asarray(v, dtype=np.float64) for k, v in params_before.items()}
    ctx = Context(
        desc, sside.loss, sside.X, sside.Y, cache, tside.cache, before64, sside.lr, _opt_of(sside)
    )
    ctx.names = {o.name: o.user for o in items if o.quantity == "grad" and o.user}
    if it.quantity in ("lr", "param"):  # a schedule that parts, before the update's causes
        g = _torch_grad(it, items, tvals)
        before = params_before.get(it.name or "")
        opt = _opt_of(sside)
        base = getattr(opt, "base_lr", sside.lr)
        div.diagnosis = schedule_cause(div, svals[k], tvals[k], opt, base, g, before)
    if div.diagnosis is None and it.quantity != "state":
        div.diagnosis = diagnose(div, svals[k], tvals[k], ctx)
    elif div.diagnosis is None:
        div.diagnosis = _state_cause(it, k, items, svals, tvals, sside, tside, step) or {
            "cause": "optimizer-state",
            "explanation": f"parameters and gradients agree but the optimizer's {it.buffer} "
            f"buffer of {it.user or it.name} does not: the state update differs from "
            "torch.optim's definition",
        }
    return div


def _torch_grad(it: Item, items, tvals):
    """torch's gradient of the parameter `it` names, at this step, or None."""
    return next((_np(tvals[j]) for j, o in enumerate(items) if o.quantity == "grad"
                 and (o.layer, o.param) == (it.layer, it.param)), None)  # fmt: skip


def _state_cause(it, k, items, svals, tvals, sside, tside, step) -> dict | None:
    """The optimizer bug whose recomputation of the buffer fits (`opt_causes`)."""
    opt = getattr(sside, "opt_desc", None) or _opt_of(sside)
    g = next((tvals[j] for j, o in enumerate(items) if o.quantity == "grad"
              and (o.layer, o.param) == (it.layer, it.param)), None)  # fmt: skip
    if opt is None or g is None or not hasattr(tside, "state_before"):
        return None
    prev = tside.state_before().get(it.name, {}).get(it.buffer)
    hyper = {**opt.hyper, "_step": step + 1}
    label = f"{it.buffer} of {it.user or it.name} at step {step}"
    return state_cause(it.buffer, svals[k], _np(tvals[k]), prev, _np(g), hyper, label)


def _fd_verdict(desc, sside, params_before, it: Item, m: Mismatch) -> tuple[float, str]:
    """Which side the float64 central-difference gradient agrees with at the failing element."""
    if getattr(sside, "masks", None):  # the description's forward has no dropout
        return math.nan, "undecided: the finite differences cannot replay your dropout masks"
    oracle = scratch.MLP(desc.sizes, desc.activations, bias=desc.bias, dtype="float64")
    oracle.load_state_dict({k: np.asarray(v, np.float64) for k, v in params_before.items()})
    X64 = sside.X.astype(np.float64)
    Y64 = sside.Y.astype(np.float64) if sside.Y.dtype.kind == "f" else sside.Y
    fresh_loss = type(sside.loss)(sside.loss.reduction, **sside.loss.options)
    grad, kinks = network_gradient(oracle, fresh_loss, X64, Y64, it.name, [m.index])
    if kinks:
        return math.nan, "undecided: the element sits on a relu kink"
    fd = float(grad[m.index])
    # Central differences with h = 1e-6 carry a truncation error of about h^2 |L'''| (1e-8
    # relative here) and a rounding error of about eps |L| / h = 1.1e-10 |L| in float64 (10x that
    # allowed); a float32 gradient carries its own rounding of about 1e-7 relative on top.
    loss64 = abs(fresh_loss.forward(oracle.forward(X64)[0], Y64)[0])
    rel = 1e-7 if sside.dtype == np.float64 else 1e-4
    resolution = rel * max(abs(fd), abs(m.torch)) + 1e-9 * max(loss64, 1.0)
    return fd, agreement(abs(m.scratch - fd) <= resolution, abs(m.torch - fd) <= resolution)
