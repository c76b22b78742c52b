"""The stage-wise re-check for a network of gallery layers (engine/layered_side.py).

At a mismatch the scratch side redoes its step, each stage from torch's inputs to that stage:

    0. the step repeats itself bit for bit (the same parameters, running statistics and dropout
       masks; the update from the same gradients and optimizer state): a computation that does
       not is a bug, whatever torch says;
    1. each layer, on torch's input to it (X, or torch's output of the layer before) with
       torch's parameters and running statistics as the step found them, gives torch's output
       (and batchnorm's updated statistics) within the table's tolerance plus a computation
       allowance (`_slack`, derived in docs/tolerances.md); prob from torch's last output;
    2. the loss on torch's output, plus the declared L2 term at torch's parameters, gives
       torch's loss;
    3. the backward, from the loss's gradient at torch's output, through every layer's cache as
       its forward on torch's input left it (stage 1), plus the L2 term's gradient at torch's
       parameters (an ulp of each added term allowed), gives torch's parameter gradients;
    4. the update, from torch's parameters, gradients and optimizer state, gives torch's
       updated parameters and state (when those are what failed);
    5. each relu-family and max-pool layer, on scratch's OWN input to it, gives what torch's
       module gives on that same input, output and gradient (`_own_kinks`): an exact 0 or an
       exact tie lies there, where torch's inputs (stages 1 and 3) may have rounded off it,
       and a convention bug at the kink (relu'(0) = 1, a tie routed to the last max) would
       otherwise go unseen whenever torch's rounding lands on the side of the right convention;
    6. each affine, conv and norm layer and a float64 copy of torch's module, both in float64
       on torch's input recentred (a norm's output does not change when its input and running
       mean move by a constant per channel or row; an affine or conv is as well tested on
       one input as another), with torch's parameters and statistics, agree within the
       float64 tolerance and allowance, forward and backward (`_lifted`): an allowance for a
       sum of large terms (unnormalised inputs) can exceed a formula bug; here it cannot.

A wrong formula fails its stage whatever its inputs. If every stage reproduces torch, the step
is explained: "kink" when a relu or leaky-relu input lies on opposite sides of 0 on the two
sides, or when a max-pool window picks a different element (a tie within rounding: the max is
piecewise, the tie its kink); otherwise "drift". Everything the re-check runs works on copies,
and the side is left as its step left it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.compare import first_mismatch, tolerance
from nn_parity.torch_ref.engine.comparer import _np
from nn_parity.torch_ref.engine.layered_slack import _backward_slack, _slack

_KINKED = ("relu", "leaky_relu")


def _key(it) -> tuple:
    return (it.quantity, it.layer, it.param, it.buffer)


def _first_off(items, values: dict, reference: list, dtype, slack=None, exact=False):
    """The index of the first item whose recomputed value (in `values`, by key) is not within
    tolerance (plus `slack`, by key) of `reference`; bit for bit with `exact`."""
    for k, it in enumerate(items):
        v = values.get(_key(it))
        if v is None:
            continue
        v, e = np.asarray(v), np.asarray(reference[k])
        if exact:
            if not np.array_equal(v, e, equal_nan=True):
                return k
            continue
        tol = tolerance(it.quantity, dtype)
        atol = tol.atol + (slack or {}).get(_key(it), 0.0)
        if first_mismatch(v, e, tol.rtol, atol) is not None:
            return k
    return None


class _Pass:
    """One forward (and backward) of the network's layers on given parameters, running
    statistics (copied: batchnorm updates them in place) and dropout masks, through the
    layers' own forward and backward: a bug planted in a layer is in the re-check too."""

    def __init__(self, sside, params: dict, buffers: dict):
        self.net, self.masks = sside.net, sside.masks()
        self.params = {k.removeprefix("layers."): np.array(v) for k, v in params.items()}
        self.buffers = {k: np.array(v) for k, v in buffers.items()}

    def layer(self, l: int, x: np.ndarray):
        net, prefix = self.net, f"{l}."
        both = {**self.params, **self.buffers}
        p = {k[len(prefix) :]: v for k, v in both.items() if k.startswith(prefix)}
        layer = net.layers[l]
        if l in self.masks:  # the step's own mask, through the layer's own forward
            keep = layer.__dict__.get("next_mask")
            layer.next_mask = lambda shape, m=self.masks[l]: m
            try:
                return layer.forward(x, p, net.training)
            finally:
                if keep is None:
                    del layer.next_mask
                else:
                    layer.next_mask = keep
        return layer.forward(x, p, net.training)

    def forward(self, inputs: list | None, X: np.ndarray) -> tuple[list, list]:
        """Each layer's output and cache; layer l on inputs[l] when given, else on the output
        of the layer before."""
        outs, caches, x = [], [], X
        for l in range(len(self.net.layers)):
            x, c = self.layer(l, x if inputs is None else inputs[l])
            outs.append(x)
            caches.append(c)
        return outs, caches

    def backward(self, dout: np.ndarray, caches: list) -> dict:
        """The chained backward (the step's own, for stage 0): gradients by key."""
        grads = {}
        for l in range(len(self.net.layers) - 1, -1, -1):
            dout, g = self.net.layers[l].backward(dout, caches[l])
            grads.update({("grad", l, name, None): np.array(v) for name, v in g.items()})
        return grads

    def values(self, outs: list, prob) -> dict:
        v: dict = {("out", l, None, None): o for l, o in enumerate(outs)}
        for name, b in self.buffers.items():
            l, buf = name.split(".")
            v[("stat", int(l), buf, None)] = b
        v[("prob", len(outs) - 1, None, None)] = prob
        return v


def _l2(sside, params: dict) -> tuple[float, dict]:
    """The declared L2 term at `params` (canonical names): its value, and its gradient by the
    items' key; 0.0 and {} when none is declared."""
    value, grads = sside.l2_term(params)
    keyed = {}
    for name, g in grads.items():
        _, l, pname = name.split(".")
        keyed[("grad", int(l), pname, None)] = g
    return value, keyed


def _with_l2(mine: dict, slack: dict, l2: dict) -> None:
    """The L2 term's gradient added to the loss's (in place), and the rounding of that sum at
    its terms: an ulp of each (recheck.py's `_backward_stage` does the same)."""
    for key in mine.keys() & l2.keys():
        term = l2[key]
        mine[key] = mine[key] + term
        eps = float(np.finfo(term.dtype).eps)
        slack[key] = slack.get(key, 0.0) + eps * (2 * np.abs(term) + np.abs(mine[key]))


def _backward_stage(net, p: _Pass, items, theirs, dtype, inputs, caches, douts, l2) -> int | None:
    """3. Each layer's backward from torch's gradient at its output (douts[l]) through its
    cache on torch's input: its parameter gradients (with the L2 term's, `l2` by key) against
    torch's, and the gradient it passes down against torch's gradient at the layer below, each
    within the table's tolerance plus `_backward_slack`. A wrong dx fails at the first
    gradient it feeds."""
    grad_at = {_key(it): k for k, it in enumerate(items) if it.quantity == "grad"}
    for l in range(len(net.layers) - 1, -1, -1):
        if douts[l] is None:  # nothing below takes a gradient (a pool or flatten on X)
            break
        dx, g = net.layers[l].backward(douts[l], caches[l])
        mine = {("grad", l, name, None): v for name, v in g.items()}
        dx_slack, g_slack = _backward_slack(net.layers[l], l, p, douts[l], inputs[l], caches[l])
        _with_l2(mine, g_slack, l2)
        if (bad := _first_off(items, mine, theirs, dtype, g_slack)) is not None:
            return bad
        if l and douts[l - 1] is not None:
            tol = tolerance("grad", dtype)
            if first_mismatch(dx, douts[l - 1], tol.rtol, tol.atol + dx_slack) is not None:
                below = [k for key, k in grad_at.items() if key[1] < l]
                return min(below) if below else min(grad_at.values())
    return None


def explain_layered(sside, tside, items, within: np.ndarray, svals: list, tvals: list):
    """("kink" | "drift", None) when every stage reproduces torch, else (None, the index of
    the item where the failing stage first disagreed)."""
    failing = {items[k].quantity for k in np.flatnonzero(~within)}
    mine = [np.array(v) for v in svals]  # copies: the update stages overwrite live ones
    theirs = [np.array(_np(v)) for v in tvals]
    kept = _Kept(sside)
    try:
        bad = _stages(sside, tside, items, mine, theirs, failing)
    finally:
        kept.restore()
    if isinstance(bad, int):
        return None, bad
    return bad, None


def _stages(sside, tside, items, mine, theirs, failing):
    """The index of the first disagreeing item, or the reason the step is explained."""
    net, loss, dtype = sside.net, sside.loss, sside.dtype
    loss_k = next(k for k, it in enumerate(items) if it.quantity == "loss")
    if not _stats_carried_in(sside, tside):
        stat = [k for k, it in enumerate(items) if it.quantity == "stat"]
        return stat[0] if stat else loss_k
    own = _Pass(sside, sside.params_before, sside.buffers_before)  # 0. the step repeats
    outs, caches = own.forward(None, sside.X)
    value, lcache = loss.forward(outs[-1], sside.Y)
    pen, l2 = _l2(sside, sside.params_before)  # as the step added it: value, then gradients
    again = own.values(outs, loss.probabilities(outs[-1]))
    again[("loss", None, None, None)] = np.asarray(value + pen, dtype)
    again.update(own.backward(loss.backward(lcache), caches))
    for key, term in l2.items():
        again[key] = again[key] + term
    if (bad := _first_off(items, again, mine, dtype, exact=True)) is not None:
        return bad
    t_outs = [np.array(_np(o)) for o, _ in tside.cache]
    inputs = [sside.X, *t_outs[:-1]]
    theirs_p = _Pass(sside, dict(zip(tside.order, tside.params_before)), tside.stats_before)
    outs, caches = theirs_p.forward(inputs, sside.X)  # 1. each layer from torch's input
    fwd = theirs_p.values(outs, loss.probabilities(t_outs[-1]))
    if (bad := _first_off(items, fwd, theirs, dtype, _slack(net, theirs_p, inputs))) is not None:
        return bad
    value, lcache = loss.forward(t_outs[-1], sside.Y)  # 2. the loss on torch's output
    pen, l2 = _l2(sside, dict(zip(tside.order, tside.params_before)))  # at torch's parameters
    loss_s = {_key(items[loss_k]): np.asarray(value + pen, dtype)}
    if _first_off(items, loss_s, theirs, dtype) is not None:
        return loss_k
    douts = [None if o.grad is None else np.array(_np(o.grad)) for o, _ in tside.cache]
    dlast = loss.backward(lcache)  # the loss's gradient at torch's output, against torch's
    tol = tolerance("grad", dtype)
    if douts[-1] is not None and first_mismatch(dlast, douts[-1], tol.rtol, tol.atol) is not None:
        return min(k for k, it in enumerate(items) if it.quantity == "grad")
    bad = _backward_stage(net, theirs_p, items, theirs, dtype, inputs, caches, douts, l2)  # 3.
    if bad is None:
        bad = _own_kinks(sside, tside, items, douts)  # 5.
    if bad is None:
        bad = _lifted(sside, tside, items, inputs, douts)  # 6.
    if bad is not None:
        return bad
    if "lr" in failing:  # the rate the update takes: a schedule that parts
        return next(k for k, it in enumerate(items) if it.quantity == "lr")
    if failing & {"param", "state"}:
        again = _update(sside, items, sside.params_before, sside.grads_kept, sside.state_before)
        if (bad := _first_off(items, again, mine, dtype, exact=True)) is not None:
            return bad  # 0., for the update
        torch_grads = {k: tside.by_name[k].grad.numpy() for k in tside.order}
        before = dict(zip(tside.order, tside.params_before))
        redo = _update(sside, items, before, torch_grads, tside.state_before())
        if (bad := _first_off(items, redo, theirs, dtype)) is not None:
            return bad  # 4.
    return _reason(net, sside, inputs, caches)


def _own_kinks(sside, tside, items, douts: list) -> int | None:
    """5. Each relu-family and max-pool layer and torch's module, on the input scratch's own
    step gave the layer, forward and (from torch's gradient at its output) backward: equal
    within the table's tolerance, with no allowance (no sum is formed). The first failing
    item: the layer's output, or the first gradient its dx feeds."""
    net, dtype = sside.net, sside.dtype
    mine = [sside.X] + [o for o, _ in sside.cache[:-1]]
    for l, layer in enumerate(net.layers):
        kinked = isinstance(layer, sq.Act) and layer.kind.partition(":")[0] in _KINKED
        if not (kinked or isinstance(layer, sq.MaxPool2d)):
            continue
        x = np.array(mine[l])
        out, cache = layer.forward(x, {}, net.training)
        xt = torch.from_numpy(x).requires_grad_(l > 0 and douts[l - 1] is not None)
        with torch.enable_grad():
            out_t = tside.ref[l](xt)
        tol = tolerance("out", dtype)
        if first_mismatch(out, out_t.detach().numpy(), tol.rtol, tol.atol) is not None:
            return _index(items, ("out", l, None, None))
        if not xt.requires_grad:  # nothing below takes a gradient
            continue
        out_t.backward(torch.from_numpy(np.array(douts[l])))
        dx, _ = layer.backward(np.array(douts[l]), cache)
        tol = tolerance("grad", dtype)
        if first_mismatch(dx, _grad(xt), tol.rtol, tol.atol) is not None:
            grads = [(it.layer, k) for k, it in enumerate(items) if it.quantity == "grad"]
            below = [k for layer_at, k in grads if layer_at < l]
            return min(below) if below else min(k for _, k in grads)
    return None


_SUMS = (sq.Affine, sq.Conv2d, sq.BatchNorm, sq.LayerNorm)


def _lifted(sside, tside, items, inputs: list, douts: list) -> int | None:
    """6. Each layer that forms sums and a float64 copy of torch's module, in float64 on
    torch's input to it recentred (`_recentred`): the output (and running statistics), the
    parameter gradients and dx from torch's gradient at its output, within the float64
    tolerance plus the float64 allowance. The first failing item, as stages 1 and 3 name it."""
    net, f64 = sside.net, np.float64
    before = {k: v.astype(f64) for k, v in zip(tside.order, tside.params_before)}
    p = _Pass(sside, before, {k: v.astype(f64) for k, v in tside.stats_before.items()})
    xs = [_recentred(layer, l, np.asarray(x, f64), p) for l, (layer, x) in
          enumerate(zip(net.layers, inputs))]  # fmt: skip
    slack = _slack(net, p, xs, f64)
    for l, layer in enumerate(net.layers):
        if not isinstance(layer, _SUMS) or douts[l] is None:
            continue
        module = _module64(tside.ref[l], p, l, net.training)
        xt = torch.from_numpy(xs[l]).requires_grad_(l > 0 and douts[l - 1] is not None)
        with torch.enable_grad():
            out_t = module(xt)
        out, cache = p.layer(l, xs[l])
        mine, ref = {("out", l, None, None): out}, {("out", l, None, None): out_t.detach().numpy()}
        for b in _stats(module):
            mine[("stat", l, b, None)] = p.buffers[f"{l}.{b}"]
            ref[("stat", l, b, None)] = getattr(module, b).numpy()
        if (bad := _first_off_keyed(items, mine, ref, slack)) is not None:
            return bad
        dout = douts[l].astype(f64)
        out_t.backward(torch.from_numpy(dout))
        dx, g = layer.backward(dout, cache)
        dx_slack, g_slack = _backward_slack(layer, l, p, dout, xs[l], cache)
        mine = {("grad", l, n, None): v for n, v in g.items()}
        ref = {("grad", l, n, None): _grad(getattr(module, n)) for n in g}
        if (bad := _first_off_keyed(items, mine, ref, g_slack)) is not None:
            return bad
        tol = tolerance("grad", f64)
        if xt.requires_grad and first_mismatch(dx, _grad(xt), tol.rtol,
                                               tol.atol + dx_slack) is not None:  # fmt: skip
            below = [k for k, it in enumerate(items) if it.quantity == "grad" and it.layer < l]
            return min(below) if below else _index(items, ("out", l, None, None))
    return None


def _grad(t: torch.Tensor) -> np.ndarray:
    assert t.grad is not None  # backward ran through t
    return t.grad.numpy()


def _recentred(layer, l: int, x: np.ndarray, p: _Pass) -> np.ndarray:
    """A norm's input less a per-channel (batchnorm) or per-row (layernorm) constant, near
    its mean, and batchnorm's running mean less the same: the output is unchanged, the
    centring no longer cancels large terms. An affine's or conv's input less its mean per
    feature or channel: its sums of large terms no longer cancel either."""
    if isinstance(layer, sq.LayerNorm):
        return x - x.mean(-1, keepdims=True)
    if isinstance(layer, (sq.Affine, sq.Conv2d)):  # another input, as good for the formula
        return x - x.mean((0, *range(2, x.ndim)), keepdims=True)
    if not isinstance(layer, sq.BatchNorm):
        return x
    c = x.mean((0, *range(2, x.ndim)))  # (C,)
    p.buffers[f"{l}.running_mean"] = p.buffers[f"{l}.running_mean"] - c
    return x - c.reshape((1, layer.c) + (1,) * (x.ndim - 2))


def _stats(module) -> tuple:
    return sq.BatchNorm.buffers if getattr(module, "running_mean", None) is not None else ()


def _module64(module, p: _Pass, l: int, train: bool):
    """A float64 copy of torch's module at the parameters and statistics the step found."""
    m = copy.deepcopy(module).double().train(train)
    with torch.no_grad():
        for name, v in {**p.params, **p.buffers}.items():
            layer, _, attr = name.partition(".")
            if int(layer) == l:
                getattr(m, attr).copy_(torch.from_numpy(np.array(v)))
    return m


def _index(items, key) -> int:
    return next(k for k, it in enumerate(items) if _key(it) == key)


def _first_off_keyed(items, mine: dict, ref: dict, slack: dict) -> int | None:
    """The index of the first item (in the run's order) whose float64 value in `mine` is not
    within the float64 tolerance plus `slack` of `ref`."""
    for k, it in enumerate(items):
        key = _key(it)
        if key in mine and key in ref:
            tol = tolerance(it.quantity, np.float64)
            atol = tol.atol + slack.get(key, 0.0)
            if first_mismatch(mine[key], ref[key], tol.rtol, atol) is not None:
                return k
    return None


def _update(sside, items, params: dict, grads: dict, state) -> dict:
    """Scratch's optimizer step from the given parameters, gradients and state: the updated
    parameters and state by key."""
    sside.set_params(params)
    if sside.stateful:
        sside.opt.load_state_dict(state)
    sside.opt.step({k: np.array(g) for k, g in grads.items()})
    out = {}
    for it in items:
        name = it.name
        if it.quantity == "param":
            out[_key(it)] = np.array(sside.params[name])
        elif it.quantity == "state":
            out[_key(it)] = np.array(sside.opt.state[name][it.buffer])
    return out


def _stats_carried_in(sside, tside) -> bool:
    """Batchnorm's running statistics as the step found them: identical before the first
    step, within the table's tolerance after (compared every step, taken over on resync)."""
    tol = tolerance("stat", sside.dtype)
    rtol, atol = (0.0, 0.0) if tside.stepped == 1 else (tol.rtol, tol.atol)
    return all(
        first_mismatch(v, tside.stats_before[k], rtol, atol) is None
        for k, v in sside.buffers_before.items()
    )


def _reason(net, sside, inputs: list, caches: list) -> str:
    """ "kink" when a relu-family input is on opposite sides of 0, or a max-pool window picks
    another element, between scratch's step and torch's inputs; else "drift"."""
    mine = [sside.X] + [o for o, _ in sside.cache[:-1]]
    for l, layer in enumerate(net.layers):
        if isinstance(layer, sq.Act) and layer.kind.partition(":")[0] in _KINKED:
            if ((mine[l] > 0) != (inputs[l] > 0)).any():
                return "kink"
        if isinstance(layer, sq.MaxPool2d):
            if not np.array_equal(sside.cache[l][1][1], caches[l][1]):
                return "kink"
    return "drift"


class _Kept:
    """The side as its step left it: parameters, gradients, optimizer state; restored after
    the re-check (the step's own record, for the report and the next step)."""

    def __init__(self, sside):
        self.sside = sside
        self.params = {k: np.array(v) for k, v in sside.params.items()}
        sside.grads_kept = {k: np.array(v) for k, v in sside.grads.items()}
        self.state = sside.opt.state_dict() if sside.stateful else None

    def restore(self) -> None:
        s = self.sside
        s.set_params(self.params)
        for k, g in s.grads_kept.items():
            np.copyto(s.grads[k], g)
        if self.state is not None:
            s.opt.load_state_dict(self.state)


__all__ = ["explain_layered"]
