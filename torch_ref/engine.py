"""The lockstep engine: the one place that sees both worlds.

From identical weights, a scratch network and its torch mirror take the same gradient-descent
steps on the same data. After every step each quantity is compared, in the order the step
computes it:

    z[l], a[l]   every layer's pre-activation and (hidden) activation      forward
    prob         the output probabilities                                  forward
    loss         the scalar loss                                           loss
    grad ...     every parameter's gradient, last layer first              backward
    param ...    every parameter after the update, last layer first        update

so the first failing (step, quantity, layer, index) is where the two first part: backward runs
from the last layer down, and an error made in one layer spreads to the layers below it.

Per step only small summaries are recorded (largest absolute difference and normwise relative
error of each quantity); full tensors are kept for the step of the first divergence alone, so a
run of any length stays in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch.gradcheck import network_gradient
from nn_parity.scratch.optim import check_lr
from nn_parity.scratch.validate import check_xy

from . import threads
from .compare import Mismatch, compare_segments, first_mismatch, segment_starts, tolerance
from .diagnose import Context, diagnose
from .model import TorchMLP, torch_loss

__all__ = ["Divergence", "Item", "LockstepResult", "lockstep"]

# Quantities this small are packed into one buffer per side and compared in one pass, which
# saves a dozen NumPy calls per step on small nets; larger ones are compared where they lie.
_PACK_LIMIT = 1 << 16


@dataclass(frozen=True)
class Item:
    """One compared quantity: e.g. z of layer 0, or the gradient of layers.1.weight."""

    quantity: str
    layer: int | None
    param: str | None
    shape: tuple[int, ...]

    @property
    def label(self) -> str:
        if self.param is not None:
            return f"{self.quantity} layers.{self.layer}.{self.param}"
        if self.quantity in ("z", "a"):
            return f"{self.quantity}[{self.layer}]"
        return self.quantity

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Divergence:
    """Where scratch and torch first part."""

    step: int
    quantity: str
    layer: int | None
    param: str | None
    label: str
    index: tuple[int, ...]
    scratch: float
    torch: float
    abs_err: float
    rel_err: float
    rtol: float
    atol: float
    mismatches: int
    total: int
    fd: float | None = None  # the finite-difference gradient at that element, in float64
    fd_agrees_with: str | None = None  # "scratch", "torch", "both", "neither", or None
    diagnosis: dict | None = None  # {"cause", "explanation"}: the likely bug, if recognised
    nonfinite: str | None = None  # "scratch", "torch" or "both" when NaN/Inf appeared

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}

    def __str__(self) -> str:
        s = (
            f"step {self.step}, {self.label}, index {list(self.index)}: "
            f"scratch {self.scratch!r} vs torch {self.torch!r} "
            f"(|diff| {self.abs_err:.3g}, rel {self.rel_err:.3g}; "
            f"{self.mismatches}/{self.total} elements outside rtol={self.rtol:.3g}, "
            f"atol={self.atol:.3g})"
        )
        if self.fd is not None:
            s += f"; finite differences give {self.fd!r}: agrees with {self.fd_agrees_with}"
        if self.diagnosis:
            s += f"; likely cause ({self.diagnosis['cause']}): {self.diagnosis['explanation']}"
        return s


@dataclass
class LockstepResult:
    passed: bool
    steps: int  # steps run
    items: list[Item]
    max_abs: np.ndarray  # (steps, items)
    rel_err: np.ndarray  # (steps, items), normwise ||scratch - torch|| / ||torch||
    within: np.ndarray  # (steps, items) bool: every element within tolerance
    loss_scratch: np.ndarray  # (steps,)
    loss_torch: np.ndarray  # (steps,)
    tolerances: dict[str, dict]  # item label -> {rtol, atol, reason}
    first_divergence: Divergence | None
    # Steps whose mismatch `_explained` traced to the conditioning of the computation, not to
    # an error: a relu kink crossed by rounding, an output probability within rounding of 0 or
    # 1, or rounding amplified past tolerance (drift). The run resynchronised after each.
    kink_steps: list[int] = field(default_factory=list)
    saturation_steps: list[int] = field(default_factory=list)
    drift_steps: list[int] = field(default_factory=list)
    probs_first: tuple[np.ndarray, np.ndarray] | None = None  # (scratch, torch) at step 0
    probs_last: tuple[np.ndarray, np.ndarray] | None = None
    snapshot: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [it.label for it in self.items]

    @property
    def judged(self) -> np.ndarray:
        """(steps, items) bool: within tolerance, or at a step explained as kink, saturation or
        drift (where `within` keeps the raw comparison)."""
        judged = self.within.copy()
        judged[self.kink_steps + self.saturation_steps + self.drift_steps] = True
        return judged

    def worst(self) -> dict[str, dict]:
        """Per item, the largest absolute and relative error over all steps, and the verdict."""
        judged = self.judged
        return {
            it.label: {
                "max_abs": float(np.max(self.max_abs[:, k])) if self.steps else 0.0,
                "max_rel": float(np.max(self.rel_err[:, k])) if self.steps else 0.0,
                "passed": bool(judged[:, k].all()),
            }
            for k, it in enumerate(self.items)
        }


def _items(net: scratch.MLP, n: int) -> list[Item]:
    L = len(net.layers)
    items = []
    for l, layer in enumerate(net.layers):
        items.append(Item("z", l, None, (n, layer.fan_out)))
        if l < L - 1:
            items.append(Item("a", l, None, (n, layer.fan_out)))
    items.append(Item("prob", L - 1, None, (n, net.sizes[-1])))
    items.append(Item("loss", None, None, ()))
    for quantity in ("grad", "param"):
        for l in range(L - 1, -1, -1):
            for p in ("weight", "bias") if net.bias else ("weight",):
                items.append(Item(quantity, l, p, net.shapes[f"layers.{l}.{p}"]))
    return items


class _Group:
    """Consecutive items compared together, packed into one buffer per side when small."""

    def __init__(self, idx: list[int], items: list[Item], dtype: np.dtype):
        self.idx = idx
        self.slice = slice(idx[0], idx[-1] + 1)
        sizes = [items[i].size for i in idx]  # the loss, shape (), has size 1
        self.starts = segment_starts(sizes)
        tols = [tolerance(items[i].quantity, dtype) for i in idx]
        self.rtol = np.array([t.rtol for t in tols])
        self.atol = np.array([t.atol for t in tols])
        self.packed = len(idx) > 1
        if self.packed:
            self.sbuf = np.empty(sum(sizes), dtype)
            self.tbuf = np.empty(sum(sizes), dtype)

    def flat(self, svals: list, tvals: list) -> tuple[np.ndarray, np.ndarray]:
        if not self.packed:
            i = self.idx[0]
            return np.ravel(svals[i]), np.ravel(tvals[i])
        np.concatenate([np.ravel(svals[i]) for i in self.idx], out=self.sbuf)
        np.concatenate([np.ravel(tvals[i]) for i in self.idx], out=self.tbuf)
        return self.sbuf, self.tbuf


def _groups(items: list[Item], dtype: np.dtype) -> list[_Group]:
    groups: list[list[int]] = [[]]
    filled = 0
    for i, it in enumerate(items):
        if filled + it.size > _PACK_LIMIT:  # a large item, or a full group: start a new one
            groups.append([])
            filled = 0
        groups[-1].append(i)
        filled += it.size
    return [_Group(g, items, dtype) for g in groups if g]


def _check_data(net: scratch.MLP, X, y) -> tuple[np.ndarray, np.ndarray]:
    X, y = check_xy(X, y, width=net.sizes[0])
    if net.sizes[-1] != 1:
        raise ValueError(f"binary cross-entropy needs one output, got sizes {net.sizes}")
    X = np.ascontiguousarray(X, dtype=net.dtype)
    Y = np.ascontiguousarray(y, dtype=net.dtype).reshape(-1, 1)
    return X, Y


# The threading arrangement is chosen per run from the run's own first steps (threads.py): which
# one is fastest depends on the CPU, the BLAS kernel, the sizes and the machine's load, so no
# fixed size threshold is right everywhere. A single arrangement here means no choice is made.
_ARRANGEMENTS: tuple[threads.Arrangement, ...] = threads.ARRANGEMENTS
_TRIAL_STEPS = 2  # per arrangement; min of 2 sets aside the first step's one-off costs


def _side_by_side() -> AbstractContextManager[threads.Schedule]:
    """Per step, a `pair(scratch_step, torch_step)`: the steps run in each arrangement in turn,
    then in the fastest; the trial steps are the run's own first steps."""
    return threads.schedule(_ARRANGEMENTS, _TRIAL_STEPS)


class _ScratchSide:
    """One scratch training step; `step()` returns its values in item order."""

    def __init__(self, net: scratch.MLP, loss: scratch.Loss, opt: scratch.SGD, X, Y, order):
        self.net, self.loss, self.opt, self.X, self.Y = net, loss, opt, X, Y
        self.params_before = np.empty_like(net.flat_params)
        self.order = order  # parameter names in the items' order
        # views into the flat gradient and parameter buffers: stable across steps
        self.fixed = [net.grads[k] for k in self.order] + [net.params[k] for k in self.order]

    def step(self) -> list:
        net = self.net
        out, self.cache = net.forward(self.X)
        self.loss_value, self.lcache = self.loss.forward(out, self.Y)
        net.backward(self.loss.backward(self.lcache), self.cache)
        np.copyto(self.params_before, net.flat_params)
        self.opt.step()
        return self.values(net, self.cache, out, self.loss_value, self.loss) + self.fixed

    @staticmethod
    def values(net: scratch.MLP, cache: list, out, loss_value: float, loss: scratch.Loss) -> list:
        """The forward quantities in item order: z and hidden a per layer, prob, loss."""
        vals: list = []
        for l, (_, z, a) in enumerate(cache):
            vals.append(z)
            if l < len(cache) - 1:
                vals.append(a)
        vals.append(loss.probabilities(out))
        vals.append(np.asarray(loss_value, net.dtype))
        return vals


class _TorchSide:
    """One torch training step; `step()` returns its tensors in item order."""

    def __init__(self, ref: TorchMLP, loss: scratch.Loss, lr: float, X, Y, order):
        self.ref = ref
        self.loss_fn = torch_loss(loss)
        self.logits = loss.name == "bce-logits"
        self.opt = torch.optim.SGD(ref.parameters(), lr=lr)
        self.by_name = dict(ref.named_parameters())
        self.Xt, self.Yt = torch.from_numpy(X), torch.from_numpy(Y)
        self.params = list(ref.parameters())
        self.order = order
        # updated in place by the optimiser: views made once serve every step
        self.param_views = [self.by_name[k].detach().numpy() for k in self.order]
        self.params_before = [v.copy() for v in self.param_views]  # as the step found them

    def step(self) -> list:
        # What opt.zero_grad() does, without its profiler scaffolding: on a small net that
        # costs more than the rest of the comparison.
        for p in self.params:
            p.grad = None
        out, self.cache = self.ref.forward_cache(self.Xt)
        try:
            loss = self.loss_fn(out, self.Yt)
        except RuntimeError:
            if bool(torch.isfinite(out).all()):
                raise
            # BCELoss refuses NaN input; the lockstep reports where the NaN came from
            loss = torch.tensor(math.nan, dtype=out.dtype)
            for p in self.params:
                p.grad = torch.zeros_like(p)
        else:
            loss.backward()
            for keep, now in zip(self.params_before, self.param_views):
                np.copyto(keep, now)
            self.opt.step()
        last = len(self.cache) - 1
        vals: list = []
        for l, (z, a) in enumerate(self.cache):
            vals.append(z.detach().numpy())
            if l < last:
                vals.append(a.detach().numpy())
        out = out.detach()
        vals.append((torch.sigmoid(out) if self.logits else out).numpy())
        vals.append(loss.detach().numpy())
        self.loss_value = float(vals[-1])
        vals.extend(self.by_name[k].grad.numpy() for k in self.order)  # type: ignore[union-attr]
        self.last_values = vals
        return vals + self.param_views


def lockstep(
    net: scratch.MLP,
    ref: TorchMLP,
    X: np.ndarray,
    y: np.ndarray,
    *,
    steps: int = 100,
    lr: float = 0.1,
    loss: str | scratch.Loss = "bce",
    optimizer: scratch.SGD | None = None,
    resync: bool = False,
    stop_at_divergence: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LockstepResult:
    """Train `net` and `ref` side by side for `steps` full-batch SGD steps, comparing each step.

    Both are trained in place. `loss` is `bce` (the network must end in a sigmoid) or
    `bce-logits` (the network must end in identity), or a `scratch.Loss` of either kind.
    `optimizer` is the scratch optimiser, bound to `net` (default `scratch.SGD(net, lr)`); torch
    always takes `torch.optim.SGD(lr)`. With `resync`, scratch takes torch's updated parameters
    after every step, so each step is judged from identical weights: an error made within one
    step is told apart from rounding differences that accumulate over many.
    `progress(step)` is called after each step.
    """
    loss_s = scratch.get_loss(loss)
    if net.layers[-1].activation.name != loss_s.output_activation:
        raise ValueError(
            f"loss {loss_s.name!r} needs the last layer's activation to be "
            f"{loss_s.output_activation!r}, got {net.layers[-1].activation.name!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    lr = check_lr(lr)
    X, Y = _check_data(net, X, y)
    n = len(X)

    items = _items(net, n)
    groups = _groups(items, net.dtype)
    if optimizer is not None and optimizer.net is not net:
        raise ValueError("optimizer must be bound to the scratch network being trained")
    # last layer first, weight before bias: backward's order, where the first failing layer
    # is the one the error entered
    order = [f"layers.{it.layer}.{it.param}" for it in items if it.quantity == "grad"]
    sside = _ScratchSide(net, loss_s, optimizer or scratch.SGD(net, lr), X, Y, order)
    tside = _TorchSide(ref, loss_s, lr, X, Y, order)
    by_name = tside.by_name
    p_idx = next(k for k, it in enumerate(items) if it.quantity == "prob")
    relu_layers = any(_has_kink(layer.activation) for layer in net.layers)

    max_abs = np.zeros((steps, len(items)))
    rel_err = np.zeros((steps, len(items)))
    within = np.zeros((steps, len(items)), dtype=bool)
    loss_hist = np.zeros((2, steps))
    first: Divergence | None = None
    explained: dict[str, list[int]] = {"kink": [], "saturation": [], "drift": []}
    snapshot: dict = {}
    probs_first = None
    ran = 0

    # Overflow and NaN are detected and reported as a blow-up below, not warned about.
    with (
        _side_by_side() as pairs,
        np.errstate(over="ignore", invalid="ignore"),
    ):
        for step, pair in zip(range(steps), pairs):
            svals, tvals = pair(sside.step, tside.step)
            if step == 0:
                _check_dtypes(items, svals, tvals)

            for g in groups:
                s, t = g.flat(svals, tvals)
                m, r, ok = compare_segments(s, t, g.starts, g.rtol, g.atol)
                max_abs[step, g.slice] = m
                rel_err[step, g.slice] = r
                within[step, g.slice] = ok
            loss_hist[0, step] = sside.loss_value
            loss_hist[1, step] = tside.loss_value
            if step == 0:
                probs_first = (np.array(svals[p_idx]), _np(tvals[p_idx]).copy())

            blowup = None
            if not (np.isfinite(max_abs[step]).all() and np.isfinite(rel_err[step]).all()):
                blowup = _nonfinite(step, items, svals, tvals)
            if blowup is not None:
                # Training has blown up: every later step would compare NaN with NaN.
                first = first or blowup
                if not snapshot:
                    snapshot = _snapshot(items, svals, tvals, sside)
                ran = step + 1
                if progress is not None:
                    progress(step)
                break

            flips = _kink_flips(net, sside.cache, tside.cache) if relu_layers else {}
            reason = None
            if first is None and not within[step].all():
                reason, culprit = _explained(sside, tside, items, within[step], svals, flips)
                if reason is None:
                    # the stage that failed names the item, unless it is one that agreed
                    named = culprit is not None and not bool(within[step][culprit])
                    k = culprit if culprit is not None and named else int(np.argmin(within[step]))
                    first = _divergence(step, items, k, svals, tvals, sside, tside)
                    snapshot = _snapshot(items, svals, tvals, sside)
            elif flips and within[step].all():
                reason = "kink"  # agreed this time; resync so the trajectories cannot part
            if reason is not None:
                explained[reason].append(step)
            if reason is not None or resync:
                _resync(net, by_name)
            ran = step + 1
            if progress is not None:
                progress(step)
            if first is not None and stop_at_divergence:
                break

    probs_last = (np.array(svals[p_idx]), _np(tvals[p_idx]).copy())
    return LockstepResult(
        passed=first is None,
        steps=ran,
        items=items,
        max_abs=max_abs[:ran],
        rel_err=rel_err[:ran],
        within=within[:ran],
        loss_scratch=loss_hist[0, :ran],
        loss_torch=loss_hist[1, :ran],
        tolerances={it.label: tolerance(it.quantity, net.dtype).as_dict() for it in items},
        first_divergence=first,
        kink_steps=explained["kink"],
        saturation_steps=explained["saturation"],
        drift_steps=explained["drift"],
        probs_first=probs_first,
        probs_last=probs_last,
        snapshot=snapshot,
    )


def _check_dtypes(items: list[Item], svals: list, tvals: list) -> None:
    """Dtypes are compared before values: packing into one buffer would cast silently."""
    for it, sv, tv in zip(items, svals, tvals):
        s_dt, t_dt = np.asarray(sv).dtype, _np(tv).dtype
        if s_dt != t_dt:
            raise TypeError(f"{it.label}: scratch computes it in {s_dt}, torch in {t_dt}")


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _snapshot(items, svals, tvals, sside) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Copies of both sides' full tensors at one step."""
    snap = {it.label: (np.array(sv), _np(tv).copy()) for it, sv, tv in zip(items, svals, tvals)}
    snap["params before the step"] = (sside.params_before.copy(), np.empty(0))
    return snap


def _nonfinite(step, items, svals, tvals) -> Divergence | None:
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
            index=index, scratch=sval, torch=tval, abs_err=math.nan, rel_err=math.nan,
            rtol=tol.rtol, atol=tol.atol, mismatches=int(bad.sum()), total=int(bad.size),
            nonfinite=side,
            diagnosis={
                "cause": "non-finite",
                "explanation": f"NaN or Inf first appears at step {step} in {it.label} on "
                f"{'both sides' if side == 'both' else side + ' only'}: training blew up "
                "(a learning rate far too large?) and the run stopped",
            },
        )  # fmt: skip
    return None


def _divergence(step, items, k, svals, tvals, sside: _ScratchSide, tside: _TorchSide) -> Divergence:
    it = items[k]
    net = sside.net
    tol = tolerance(it.quantity, net.dtype)
    m: Mismatch | None = first_mismatch(np.asarray(svals[k]), _np(tvals[k]), tol.rtol, tol.atol)
    assert m is not None, "the packed and the elementwise comparison disagree"
    div = Divergence(
        step=step,
        quantity=it.quantity,
        layer=it.layer,
        param=it.param,
        label=it.label,
        index=m.index,
        scratch=m.scratch,
        torch=m.torch,
        abs_err=abs(m.scratch - m.torch),
        rel_err=abs(m.scratch - m.torch) / abs(m.torch) if m.torch else math.inf,
        rtol=tol.rtol,
        atol=tol.atol,
        mismatches=m.count,
        total=m.total,
    )
    if it.quantity == "grad":
        div.fd, div.fd_agrees_with = _fd_verdict(sside, it, m)
    before = sside.params_before.astype(np.float64)
    params_before = net._views(before)
    ctx = Context(
        net, sside.loss, sside.X, sside.Y, sside.cache, tside.cache, params_before, sside.opt.lr
    )
    div.diagnosis = diagnose(div, svals[k], tvals[k], ctx)
    return div


def _fd_verdict(sside: _ScratchSide, it: Item, m: Mismatch) -> tuple[float, str]:
    """Which side the float64 central-difference gradient agrees with at the failing element."""
    net, loss_s, X, Y = sside.net, sside.loss, sside.X, sside.Y
    oracle = scratch.MLP(net.sizes, net.activations, bias=net.bias, dtype="float64")
    oracle.flat_params[...] = sside.params_before
    name = f"layers.{it.layer}.{it.param}"
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    fresh_loss = type(loss_s)(loss_s.reduction)
    grad, kinks = network_gradient(oracle, fresh_loss, X64, Y64, name, [m.index])
    if kinks:
        return math.nan, "undecided: the element sits on a relu kink"
    fd = float(grad[m.index])
    # Central differences with eps = 1e-6 are good to about 1e-8 relative here; a float32
    # gradient carries its own rounding of about 1e-7 relative on top.
    resolution = (1e-7 if net.dtype == np.float64 else 1e-4) * max(abs(fd), abs(m.torch), 1e-3)
    s_ok = abs(m.scratch - fd) <= resolution
    t_ok = abs(m.torch - fd) <= resolution
    verdict = {(True, True): "both", (True, False): "scratch", (False, True): "torch"}.get(
        (s_ok, t_ok), "neither"
    )
    return fd, verdict


def _has_kink(act) -> bool:
    return act.name.partition(":")[0] in ("relu", "leaky_relu")


def _kink_flips(net, cache, cache_t) -> dict[int, np.ndarray]:
    """Per relu-family layer, where the two sides put z on opposite sides of 0."""
    flips = {}
    for l, layer in enumerate(net.layers):
        if _has_kink(layer.activation):
            flip = (cache[l][1] > 0) != (_np(cache_t[l][0]) > 0)  # (N, H)
            if flip.any():
                flips[l] = flip
    return flips


def _resync(net, by_name) -> None:
    """Scratch takes torch's parameters (plain SGD carries no other state to copy)."""
    for name, p in net.params.items():
        np.copyto(p, _np(by_name[name]))


def _explained(
    sside: _ScratchSide,
    tside: _TorchSide,
    items: list[Item],
    within: np.ndarray,
    svals: list,
    flips: dict,
) -> tuple[str | None, int | None]:
    """Why a mismatch at this step is not an error, if it is not: "kink", "saturation", "drift".

    Two correct implementations can still part past a tight tolerance: a relu pre-activation
    within rounding of 0 falls on opposite sides of the kink; an output within rounding of 0 or
    1 turns a 1-ulp difference in p into a large one in log(1 - p); a weight passing near zero
    amplifies ulp-level parameter differences carried in from earlier steps. The step is
    explained when every stage of scratch's computation, fed torch's inputs for that stage,
    reproduces torch's outputs within tolerance:

      0. scratch's step repeats itself bit for bit (a computation that does not is a bug), and
         each layer's cached input is the previous layer's output (X for the first);
      1. its forward, from torch's parameters as the step found them, gives torch's z, a, p;
      2. its loss, on torch's output, gives torch's loss;
      3. its backward, through torch's z and a, gives torch's gradients;
      4. its update (only the stateless `scratch.SGD` can be rerun), from torch's parameters
         and those gradients, gives torch's updated parameters.

    A wrong formula fails its stage however the inputs are fed. The caller then hands scratch
    torch's updated parameters so the run goes on from identical weights. Returns the reason,
    or None and the index of the item where the failing stage first disagreed.
    """
    stateless = type(sside.opt) is scratch.SGD
    failing = {items[k].quantity for k in np.flatnonzero(~within)}
    if not failing <= {"z", "a", "prob", "loss", "grad"} | ({"param"} if stateless else set()):
        return None, None
    net, loss, dtype = sside.net, sside.loss, sside.net.dtype
    n_check = next(k for k, it in enumerate(items) if it.quantity == "param")
    loss_k = next(k for k, it in enumerate(items) if it.quantity == "loss")
    original = [np.array(v) for v in svals[:n_check]]
    torch_values = [_np(v) for v in tside.last_values] + tside.param_views
    cache_t = [(_np(z), _np(a)) for z, a in tside.cache]
    updated, grads = net.flat_params.copy(), net.flat_grads.copy()  # the step's record

    def first_disagreeing(values, start: int, slack=None) -> int | None:
        for k, value in enumerate(values, start):
            tol = tolerance(items[k].quantity, dtype)
            atol = tol.atol if slack is None else tol.atol + slack[k - start]
            if first_mismatch(np.asarray(value), torch_values[k], tol.rtol, atol) is not None:
                return k
        return None

    grad_of = {name: loss_k + 1 + j for j, name in enumerate(sside.order)}
    inputs = [sside.X] + [a for _, _, a in sside.cache[:-1]]
    for l, ((x, _, _), expected) in enumerate(zip(sside.cache, inputs)):
        if not np.array_equal(x, expected):  # its backward would use what no check compares
            return None, grad_of[f"layers.{l}.weight"]
    try:
        net.flat_params[...] = sside.params_before
        again = _rerun(sside)
        for k, (value, before) in enumerate(zip(again, original)):
            if not np.array_equal(value, before):
                return None, k  # 0.
        for name, before in zip(tside.order, tside.params_before):
            np.copyto(net.params[name], before)
        out, cache = net.forward(sside.X)
        forward = _ScratchSide.values(net, cache, out, 0.0, loss)
        slack = _forward_slack(net, items[:loss_k], [sside.X] + [a for _, a in cache_t[:-1]])
        if (bad := first_disagreeing(forward[:loss_k], 0, slack)) is not None:
            return None, bad  # 1.
        out_t = cache_t[-1][1]
        loss_t, lcache = loss.forward(out_t, sside.Y)
        if first_disagreeing([np.asarray(loss_t, dtype)], loss_k) is not None:
            return None, loss_k  # 2.
        patched, x = [], sside.X
        for z_t, a_t in cache_t:
            patched.append((x, z_t, a_t))
            x = a_t
        net.backward(loss.backward(lcache), patched)
        if (bad := first_disagreeing([net.grads[n] for n in sside.order], loss_k + 1)) is not None:
            return None, bad  # 3.
        if stateless and "param" in failing:
            sside.opt.step()
            bad = first_disagreeing([net.params[n] for n in sside.order], n_check)
            if bad is not None:
                return None, bad  # 4.
    finally:
        net.flat_params[...] = updated
        net.flat_grads[...] = grads
    if flips:
        return "kink", None
    p = np.asarray(loss.probabilities(out_t), dtype=np.float64)
    if np.minimum(p, 1 - p).min() < np.sqrt(np.finfo(dtype).eps):
        return "saturation", None
    return "drift", None


# How many units of epsilon, times the sum of magnitudes sum_i |x_i w_i| + |b|, a dot product may
# differ by between two libraries: worst case about D eps each, in practice about sqrt(D) eps.
_DOT_ULPS = 32


def _forward_slack(net: scratch.MLP, items: list[Item], inputs: list[np.ndarray]) -> list:
    """Per forward item, the rounding a dot product of its layer can carry: _DOT_ULPS * eps *
    (|x| |W|^T + |b|), elementwise. A z near 0 that cancels large terms (raw, unscaled inputs)
    differs between correct implementations by more than the table's fixed atol; a, prob
    follow z through activations whose slope is at most 1."""
    eps = float(np.finfo(net.dtype).eps)
    magnitude = []
    for l, x in enumerate(inputs):
        m = np.abs(x) @ np.abs(net.params[f"layers.{l}.weight"]).T  # (N, H)
        if net.bias:
            m = m + np.abs(net.params[f"layers.{l}.bias"])
        magnitude.append(_DOT_ULPS * eps * m)
    return [magnitude[it.layer if it.layer is not None else -1] for it in items]


def _rerun(sside: _ScratchSide) -> list[np.ndarray]:
    """Scratch's forward, loss and backward at its current parameters, without an update."""
    net = sside.net
    out, cache = net.forward(sside.X)
    value, lcache = sside.loss.forward(out, sside.Y)
    net.backward(sside.loss.backward(lcache), cache)
    vals = _ScratchSide.values(net, cache, out, value, sside.loss)
    return [np.array(v) for v in vals] + [net.grads[k].copy() for k in sside.order]
