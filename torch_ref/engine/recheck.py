"""Why a mismatch is not an error, when it is not: the stage-wise re-check.

Two correct implementations can still part past a tight tolerance: a relu pre-activation within
rounding of 0 falls on opposite sides of the kink; an output within rounding of 0 or 1 turns a
1-ulp difference in p into a large one in log(1 - p); a weight passing near zero amplifies
ulp-level parameter differences carried in from earlier steps. At a mismatch the engine asks the
scratch side to redo its step from torch's inputs. If that reproduces torch, the step is
recorded as "kink", "saturation" or "drift" and the run resynchronises; a wrong formula fails its
stage however its inputs are fed.

How finely the step can be redone depends on the side's capabilities:

    staged      (the built-in network) each stage on torch's inputs for that stage: forward from
                torch's parameters, the loss on torch's output, the backward through torch's z
                and a, the update from torch's parameters, gradients and optimizer state
    rerunnable  (user code) the whole step from torch's parameters
    neither     no explanation: every mismatch is reported
"""

from __future__ import annotations

import numpy as np
import torch
from nn_parity.scratch.network import MLP
from nn_parity.torch_ref.compare import (
    first_mismatch,
    tolerance,
)
from nn_parity.torch_ref.engine.comparer import _np
from nn_parity.torch_ref.engine.rounding import backward_slack, forward_slack, update_slack
from nn_parity.torch_ref.engine.scratch_side import MLPSide
from nn_parity.torch_ref.mirror.model import torch_activation


def _has_kink(act) -> bool:
    return act.name.partition(":")[0] in ("relu", "leaky_relu")


def _kink_flips(sside, tside, layers: list[int]) -> dict[int, np.ndarray]:
    """Per relu-family layer, where the two sides put z on opposite sides of 0."""
    cache = getattr(sside, "cache", None)
    if not isinstance(sside, MLPSide) or cache is None:
        return {}
    flips = {}
    for l in layers:
        flip = (cache[l][1] > 0) != (_np(tside.cache[l][0]) > 0)  # (N, H)
        if flip.any():
            flips[l] = flip
    return flips


def _resync(sside, tside) -> None:
    """Scratch takes torch's parameters and optimizer state."""
    sside.set_params(tside.params_now())
    if sside.stateful:
        sside.opt.load_state_dict(tside.state())
    take_buffers = getattr(sside, "take_buffers", None)
    if take_buffers is not None:  # a layered network's batchnorm running statistics
        take_buffers(tside)


def explain(sside, tside, items, within: np.ndarray, svals: list, tvals: list, flips, batch):
    """("kink" | "saturation" | "drift", None) when the mismatch is explained, else
    (None, index of the item where the failing stage first disagreed, or None)."""
    layered = getattr(sside, "recheck", None)
    if layered is not None:  # a network of gallery layers, stage by stage: layered_recheck.py
        return layered(tside, items, within, svals, tvals)
    if sside.staged:
        return _staged(sside, tside, items, within, svals, tvals, flips)
    if sside.rerunnable:
        failing = {items[k].quantity for k in np.flatnonzero(~within)}
        return _rerun_whole(sside, tside, items, svals, tvals, batch, failing)
    return None, None


def _reason(sside, flips: dict, out_t: np.ndarray, failing: set[str]) -> str:
    """What made a correct step part past tolerance: a relu kink crossed; an output within
    rounding of 0 or 1, when the mismatch is in what the output feeds (prob, loss, gradients);
    otherwise rounding amplified (drift), e.g. in an optimizer's division."""
    if flips:
        return "kink"
    if failing & {"prob", "loss", "grad"} and sside.loss.name != "mse":
        p = np.asarray(sside.loss.probabilities(out_t), dtype=np.float64)
        if np.minimum(p, 1 - p).min() < np.sqrt(np.finfo(sside.dtype).eps):
            return "saturation"
    return "drift"


def _first_disagreeing(items, torch_values, values, start: int, dtype, slack=None) -> int | None:
    for k, value in enumerate(values, start):
        tol = tolerance(items[k].quantity, dtype)
        atol = tol.atol if slack is None else tol.atol + slack[k - start]
        if first_mismatch(np.asarray(value), _np(torch_values[k]), tol.rtol, atol) is not None:
            return k
    return None


def _rerun_whole(sside, tside, items, svals: list, tvals: list, batch, failing: set[str]):
    """User code: the step must repeat itself bit for bit from its own parameters, and from
    torch's it must reproduce torch's values within tolerance. When the two starts are the same
    bit for bit, the rerun from torch's must also equal the step's own: code whose values
    change from one call to the next (hidden state) is not excused by the call that matches."""
    X, Y, rows = batch
    keep_after = {k: np.array(v) for k, v in sside.after.items()}
    keep_before = {k: np.array(v) for k, v in sside.params_before.items()}
    keep_state = sside.opt.state_dict() if sside.stateful else None
    torch_before = dict(zip(tside.order, tside.params_before))
    torch_values = [_np(v) for v in tvals]
    keys = [(it.quantity, it.layer, it.param, it.buffer) for it in items]
    pick = [sside.keys.index(k) for k in keys]
    try:
        # the step again as it ran: from its own parameters and the state it started from
        start_state = getattr(sside, "state_before", None) if sside.stateful else None
        again = sside.rerun(keep_before, X, Y, rows, start_state)
        for k, j in enumerate(pick):
            if not np.array_equal(again[j], svals[k], equal_nan=True):
                return None, None  # it does not repeat itself (hidden state): the first
                # item that parted is where the report starts
        torch_state = tside.state_before()
        redo = sside.rerun(torch_before, X, Y, rows, torch_state)
        redo_items = [redo[j] for j in pick]
        if _same_start(keep_before, torch_before, start_state, torch_state):
            for k, j in enumerate(pick):  # the same start, twice: only hidden state parts them
                if not np.array_equal(redo[j], again[j], equal_nan=True):
                    return None, k
        recovery = sside.recovery_slack()  # of the rerun's own before and after
        slack = [recovery.get(it.name or "", 0.0) if it.quantity == "grad" else 0.0 for it in items]
        bad = _first_disagreeing(items, torch_values, redo_items, 0, sside.dtype, slack)
        if bad is not None:
            return None, bad
        if (bad := _claimed_at_own_start(sside, items, svals, keep_before)) is not None:
            return None, bad
    finally:  # the step's own record back, for the divergence report and the next step
        sside.set_params(keep_after)
        sside.before, sside.after = keep_before, keep_after
        sside.X, sside.Y = X, Y
        if keep_state is not None:
            sside.opt.load_state_dict(keep_state)
    out_t = _np(tside.cache[-1][1])
    return _reason(sside, {}, out_t, failing), None


def _claimed_at_own_start(sside, items, svals: list, before: dict) -> int | None:
    """User code's gradients against the claimed network's (scratch, verified against torch)
    from the user's own start: the index of the first that differs, else None. The rerun from
    torch's start cannot see a bug that drift moved out of its way: a relu'(0) = 1 where the
    user's z sits on the kink and torch's was carried below it, or code whose values change
    from call to call (hidden state) and are right on the rerun's call. From one start, two
    correct implementations part by their own rounding only, as at step 0."""
    desc = getattr(sside, "desc", None)
    if not isinstance(desc, MLP):
        return None
    desc.load_state_dict(before)
    out, cache = desc.forward(sside.X)
    _, lcache = sside.loss.forward(out, sside.Y)
    desc.backward(sside.loss.backward(lcache), cache)
    for name, g in sside.loss.penalty(desc.params)[1].items():
        desc.grads[name] += g
    recovery = sside.recovery_slack()
    for k, it in enumerate(items):
        if it.quantity != "grad":
            continue
        tol = tolerance("grad", sside.dtype)
        atol = tol.atol + recovery.get(it.name or "", 0.0)
        if first_mismatch(np.asarray(svals[k]), desc.grads[it.name], tol.rtol, atol) is not None:
            return k
    return None


def _same(a, b) -> bool:
    return np.shape(a) == np.shape(b) and np.array_equal(a, b, equal_nan=True)


def _same_start(own: dict, theirs: dict, own_state, their_state) -> bool:
    """Whether user code's step and its rerun from torch's parameters (and state) start from the
    same values bit for bit: then nothing carried in can explain a difference between them."""
    if own.keys() != theirs.keys() or not all(_same(own[k], theirs[k]) for k in own):
        return False
    own_state, their_state = own_state or {}, their_state or {}
    for name in set(own_state) | set(their_state):
        mine, other = own_state.get(name, {}), their_state.get(name, {})
        if mine.keys() != other.keys() or not all(_same(mine[b], other[b]) for b in mine):
            return False
    return True


def _staged(sside, tside, items, within, svals, tvals, flips):
    """The built-in network, stage by stage:

      0. scratch's step repeats itself bit for bit (a computation that does not is a bug), and
         each layer's cached input is the previous layer's output (X for the first);
     0b. each relu-family derivative on scratch's own z equals torch's on that z (the stages
         below run on torch's z, where a kink crossed by rounding has no exact 0);
      1. its forward, from torch's parameters as the step found them, each layer fed torch's
         input to it, gives torch's z, a, p (within each layer's own rounding);
      2. its loss (and declared L2 term), on torch's output and parameters, gives torch's;
      3. its backward, through torch's z and a, gives torch's gradients (within the rounding
         its own chain can carry, engine/rounding.py);
      4. its update, from torch's parameters, gradients and optimizer state, gives torch's
         updated parameters (within the update's rounding at its terms' size) and state.

    Returns the reason, or None and the index of the item where the failing stage first
    disagreed.
    """
    net, loss, dtype, opt = sside.net, sside.loss, sside.dtype, sside.opt
    failing = {items[k].quantity for k in np.flatnonzero(~within)}
    kinds = [it.quantity for it in items]
    loss_k = kinds.index("loss")
    original = [np.array(v) for v in svals]  # copies: the reruns below overwrite the live ones
    torch_values = [_np(v) for v in tvals]
    cache_t = [(_np(z), _np(a)) for z, a in tside.cache]
    updated, grads = net.flat_params.copy(), net.flat_grads.copy()  # the step's record
    state = opt.state_dict() if sside.stateful else None
    first_disagreeing = lambda values, start, slack=None: _first_disagreeing(  # noqa: E731
        items, torch_values, values, start, dtype, slack
    )

    grad_of = {name: loss_k + 1 + j for j, name in enumerate(sside.order)}
    inputs = [sside.X] + [a for _, _, a in sside.cache[:-1]]
    for l, ((x, _, _), expected) in enumerate(zip(sside.cache, inputs)):
        if not np.array_equal(x, expected):
            if l == 0:  # the forward ran on other data than the batch: z[0] is where it shows
                return None, kinds.index("z")
            return None, grad_of[f"layers.{l}.weight"]  # backward uses what no check compares
    try:
        net.flat_params[...] = sside.flat_before
        again = _rerun(sside)
        for k, (value, before) in enumerate(zip(again, original)):
            if not np.array_equal(value, before):
                return None, k  # 0.
        if (bad := _own_kinks(sside)) is not None:
            return None, grad_of[f"layers.{bad}.weight"]  # 0b.
        for name, before in zip(tside.order, tside.params_before):
            np.copyto(net.params[name], before)
        inputs_t = [sside.X] + [a for _, a in cache_t[:-1]]
        cache = [layer.forward(x)[1] for layer, x in zip(net.layers, inputs_t)]
        forward = sside.forward_values(cache, cache[-1][2], 0.0)  # each layer on torch's input
        slack = forward_slack(net, items[:loss_k], inputs_t, [z for z, _ in cache_t], loss.name)
        if (bad := first_disagreeing(forward[:loss_k], 0, slack)) is not None:
            return None, bad  # 1.
        out_t = cache_t[-1][1]
        loss_t, lcache = loss.forward(out_t, sside.Y)
        loss_t += loss.penalty(net.params)[0]  # at torch's parameters, set above
        if first_disagreeing([np.asarray(loss_t, dtype)], loss_k) is not None:
            return None, loss_k  # 2.
        patched = [(x, z_t, a_t) for x, (z_t, a_t) in zip(inputs_t, cache_t)]
        grads_now, bslack = _backward_stage(sside, loss.backward(lcache), patched)
        if (bad := first_disagreeing(grads_now, loss_k + 1, bslack)) is not None:
            return None, bad  # 3.
        if "lr" in failing:  # 3b. the rate the update takes: a schedule that parts
            return None, kinds.index("lr")
        if failing & {"param", "state"}:
            bad = _update_repeats(sside, items, original, grads)
            if bad is not None:
                return None, bad  # 0., for the update
            bad = _update_stage(sside, tside, items)
            if bad is not None:
                return None, bad  # 4.
    finally:
        net.flat_params[...] = updated
        net.flat_grads[...] = grads
        if state is not None:
            opt.load_state_dict(state)
    return _reason(sside, flips, out_t, failing), None


def _backward_stage(sside, dout, patched: list) -> tuple[list, list]:
    """Scratch's gradients through torch's z and a, its L2 term's at the parameters set (torch's),
    and the rounding each may carry: the chain's, and an ulp of each term added."""
    net, order = sside.net, sside.order
    net.backward(dout, patched)
    carried = backward_slack(net, dout, patched)
    terms = {n: np.abs(g) for n, g in sside.loss.penalty(net.params)[1].items()}
    sside.penalize(net.params)
    eps = float(np.finfo(net.dtype).eps)
    for n, t in terms.items():  # the sum loss-gradient + L2-gradient, rounded at its terms
        carried[n] = carried.get(n, 0.0) + eps * (2 * t + np.abs(net.grads[n]))
    slack = [carried.get(n, 0.0) for n in order]
    return [net.grads[n] for n in order], slack


def _own_kinks(sside) -> int | None:
    """The first relu-family layer whose derivative on scratch's own z differs from torch's
    activation's on the same z, or None. Scratch's exact zeros are here, not in torch's z: a
    derivative wrong only at 0 (relu'(0) = 1) would pass the backward stage, run on torch's z,
    when torch rounded those zeros below 0."""
    for l, (_, z, a) in enumerate(sside.cache):
        act = sside.net.layers[l].activation
        if not _has_kink(act):
            continue
        zt = torch.from_numpy(np.array(z)).requires_grad_(True)
        torch_activation(act)(zt).backward(torch.ones_like(zt))
        mine = act.backward(np.ones_like(z), z, a)
        if not np.array_equal(np.asarray(mine), zt.grad.numpy()):  # type: ignore[union-attr]
            return l
    return None


def _update_repeats(sside, items, svals, grads: np.ndarray) -> int | None:
    """Scratch's update again, from its own parameters, gradients and state as the step found
    them: it must give the same parameters and state bit for bit."""
    net, opt = sside.net, sside.opt
    net.flat_params[...] = sside.flat_before
    net.flat_grads[...] = grads  # the step's own, not the backward stage's
    if sside.stateful:
        opt.load_state_dict(sside.state_before)
    opt.step()
    for k, it in enumerate(items):
        if it.quantity == "param":
            again = net.params[it.name]
        elif it.quantity == "state":
            again = opt.state[it.name][it.buffer]
        else:
            continue
        if not np.array_equal(again, svals[k]):
            return k
    return None


def _update_stage(sside, tside, items) -> int | None:
    """Scratch's update from torch's parameters, gradients and optimizer state (as the step
    found them) against torch's updated parameters and state."""
    net, opt = sside.net, sside.opt
    for name, before in zip(tside.order, tside.params_before):
        np.copyto(net.params[name], before)
    for name in tside.order:
        np.copyto(net.grads[name], tside.by_name[name].grad.numpy())
    if sside.stateful:
        opt.load_state_dict(tside.state_before())
    opt.step()
    mine = opt.state if sside.stateful else {}
    torch_now = tside.state() if sside.stateful else {}
    before = dict(zip(tside.order, tside.params_before))
    for k, it in enumerate(items):
        slack = 0.0
        if it.quantity == "param":
            v, e = net.params[it.name], tside.by_name[it.name].detach().numpy()
            slack = update_slack(before[it.name], e)
        elif it.quantity == "state":
            v, e = mine[it.name][it.buffer], torch_now[it.name][it.buffer]
        else:
            continue
        tol = tolerance(it.quantity, sside.dtype)
        if first_mismatch(np.asarray(v), np.asarray(e), tol.rtol, tol.atol + slack) is not None:
            return k
    return None


def _rerun(sside) -> list[np.ndarray]:
    """Scratch's forward, loss and backward at its current parameters, without an update."""
    net = sside.net
    out, cache = net.forward(sside.X)
    value, lcache = sside.loss.forward(out, sside.Y)
    net.backward(sside.loss.backward(lcache), cache)
    value += sside.penalize(net.params)
    vals = sside.forward_values(cache, out, value)
    return [np.array(v) for v in vals] + [net.grads[k].copy() for k in sside.order]
