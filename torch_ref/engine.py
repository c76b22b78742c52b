"""The lockstep engine: the step loop that sees both worlds.

From identical weights, a scratch side (the built-in network, or the user's own through
`adapt`) and a torch side take the same training steps on the same batches. After every step
each quantity both sides report is compared, in the order the step computes it:

    z[l], a[l]   every layer's pre-activation and (hidden) activation      forward
    prob         the output probabilities                                  forward
    loss         the scalar loss                                           loss
    grad ...     every parameter's gradient, last layer first              backward
    param ...    every parameter after the update, last layer first        update
    state ...    every optimizer buffer after the update (exp_avg W1, ...)  update

so the first failing (step, quantity, layer, index) is where the two first part: backward runs
from the last layer down, and an error made in one layer spreads to the layers below it.

Per step only small summaries are recorded (largest absolute difference and normwise relative
error of each quantity); full tensors are kept for the step of the first divergence alone, so a
run of any length stays in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch.gradcheck import network_gradient
from nn_parity.scratch.losses import check_output
from nn_parity.scratch.optim import check_lr
from nn_parity.scratch.validate import check_finite, check_xy

from . import threads
from .adapter import Slot, UserCodeError, UserNetwork, resolve_layout
from .budget import check_steps
from .compare import Mismatch, compare_segments, first_mismatch, segment_starts, tolerance
from .diagnose import Context, diagnose
from .explain import explain
from .model import TorchMLP
from .sides import MLPSide, TorchSide, UserSide

__all__ = ["Divergence", "Item", "LockstepResult", "check", "lockstep", "run_length"]

# Quantities this small are packed into one buffer per side and compared in one pass, which
# saves a dozen NumPy calls per step on small nets; larger ones are compared where they lie.
_PACK_LIMIT = 1 << 16


@dataclass(frozen=True)
class Item:
    """One compared quantity: e.g. z of layer 0, the gradient of layers.1.weight, or Adam's
    exp_avg of it. `param` is "weight" or "bias" (of layer `layer`); `user` is the user's own
    name for it (a parameter, or a cached z1, a1), and `slot` how user code stores that
    parameter."""

    quantity: str
    layer: int | None
    param: str | None
    shape: tuple[int, ...]
    buffer: str | None = None  # an optimizer state buffer's torch name
    user: str | None = None
    slot: Slot | None = None

    @property
    def name(self) -> str | None:
        """The canonical parameter name, `layers.{layer}.{param}`, or None."""
        return None if self.param is None else f"layers.{self.layer}.{self.param}"

    @property
    def label(self) -> str:
        if self.param is not None:
            what = self.buffer if self.quantity == "state" else self.quantity
            return f"{what} {self.user or self.name}"
        if self.quantity in ("z", "a"):
            return self.user or f"{self.quantity}[{self.layer}]"
        return self.quantity

    def user_index(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """A canonical element index in the user's own layout."""
        return index if self.slot is None else self.slot.user_index(index)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Divergence:
    """Where scratch and torch first part. `index` is in the user's own layout when the
    scratch side is user code (W1[3, 0] of a weight stored (in, out))."""

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
    epoch: int | None = None  # with mini-batches: the epoch and the batch within it
    batch: int | None = None

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}

    def __str__(self) -> str:
        where = f"step {self.step}"
        if self.epoch is not None:
            where += f" (epoch {self.epoch}, batch {self.batch})"
        at = f", index {list(self.index)}" if self.index else ""
        s = (
            f"{where}, {self.label}{at}: "
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
    # What was checked: the keys only one side reported (e.g. "z[0] (your forward keeps no
    # z1)"), the parameter map of user code, and how its gradients were obtained.
    not_compared: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)
    epochs: np.ndarray | None = None  # (steps,) with mini-batches: each step's epoch and batch
    batches: np.ndarray | None = None
    rows_first: np.ndarray | None = None  # with mini-batches: the rows of probs_first, _last
    rows_last: np.ndarray | None = None
    dtype: str | None = None  # the run's dtype ("float64"); None where not known
    # the optimizer as a record keeps it: {"name": "adam", **the options given}
    optimizer: dict = field(default_factory=lambda: {"name": "sgd"})
    # A fault in the user's code that ended the run early ({"step", "message"}): an exception
    # it raised or a value breaking the contract, at a step after the first. Never a pass.
    fault: dict | None = None

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

    def __repr__(self) -> str:  # the dataclass's would print every array
        from .display import result_repr

        return result_repr(self)

    def _repr_html_(self) -> str:
        """Jupyter's view: the verdict, the first divergence and the per-item table."""
        from .display import result_html

        return result_html(self)

    def figures(self, **context):
        """The report's figures as matplotlib Figures, no display needed (`display.py`)."""
        from .display import result_figures

        return result_figures(self, **context)


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
        # axis=None flattens each input as it copies: no ravel per item
        np.concatenate([svals[i] for i in self.idx], axis=None, out=self.sbuf)
        np.concatenate([tvals[i] for i in self.idx], axis=None, out=self.tbuf)
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


# The threading arrangement is chosen per run from the run's own first steps (threads.py): which
# one is fastest depends on the CPU, the BLAS kernel, the sizes and the machine's load, so no
# fixed size threshold is right everywhere. A single arrangement here means no choice is made.
_ARRANGEMENTS: tuple[threads.Arrangement, ...] = threads.ARRANGEMENTS
_TRIAL_STEPS = 2  # per arrangement; min of 2 sets aside the first step's one-off costs


def _side_by_side() -> AbstractContextManager[threads.Schedule]:
    """Per step, a `pair(scratch_step, torch_step)`: the steps run in each arrangement in turn,
    then in the fastest; the trial steps are the run's own first steps."""
    return threads.schedule(_ARRANGEMENTS, _TRIAL_STEPS)


def _batches(
    n: int, batch_size: int | None, epochs: int, seed: int, shuffle: bool, drop_last: bool
):
    """(epoch, batch, rows) for every step: one seeded permutation per epoch, the same for both
    sides. Without a batch size every step takes the whole data set (rows None)."""
    if batch_size is None:
        while True:
            yield 0, 0, None
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for b, start in enumerate(range(0, stop, batch_size)):
            yield epoch, b, order[start : start + batch_size]


def run_length(steps, batch_size, epochs, drop_last, n) -> int:
    """The number of steps a run takes, from steps or from batch size and epochs."""
    for name, v in (("steps", steps), ("batch_size", batch_size), ("epochs", epochs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if batch_size is None:
        if epochs is not None:
            raise ValueError("epochs needs batch_size; full-batch runs count steps")
        return 100 if steps is None else int(steps)
    if batch_size > n:
        raise ValueError(
            f"batch_size {batch_size} is larger than the data set ({n} samples); "
            f"use at most {n} (or leave it out for full-batch steps)"
        )
    per_epoch = n // batch_size if drop_last else -(-n // batch_size)
    total = per_epoch * (1 if epochs is None else int(epochs))
    return total if steps is None else min(int(steps), total)


def _scratch_side(net, loss, optimizer, lr, X, y):
    """The scratch side for the built-in network or for adapted user code."""
    if isinstance(net, UserNetwork):
        if loss is not None and scratch.get_loss(loss).name != net.loss.name:
            raise ValueError(
                f"loss {scratch.get_loss(loss).name!r} given, but the network was adapted "
                f"with loss {net.loss.name!r}"
            )
        loss_s = net.loss
        Xc, Yc = _check_data(loss_s, X, y, net.dtype, _user_sizes(net, X, y, loss_s))
        return (
            UserSide(net, _optimizer_factory(optimizer, lr), lr, np.asarray(X), np.asarray(y)),
            Xc,
            Yc,
        )
    if not isinstance(net, scratch.MLP):
        raise TypeError(
            f"lockstep takes a scratch.MLP or a network adapted with adapt(...), "
            f"got {type(net).__name__}"
        )
    loss_s = scratch.get_loss("bce" if loss is None else loss)
    check_output(loss_s, net.layers[-1].activation.name)
    _check_finite(net.params)
    Xc, Yc = _check_data(loss_s, X, y, net.dtype, net.sizes)
    if isinstance(optimizer, (str, Mapping)) or optimizer is None:
        opt = _optimizer_factory(optimizer, lr)(net)
    else:
        if getattr(optimizer, "net", None) is not net:
            raise ValueError("optimizer must be bound to the scratch network being trained")
        _check_mirrored(optimizer)
        opt = optimizer
    return MLPSide(net, loss_s, opt, lr), Xc, Yc


def _check_finite(params: Mapping[str, np.ndarray]) -> None:
    """Starting weights that hold NaN or Inf would be reported as a blow-up at step 0."""
    for name, p in params.items():
        check_finite(p, name, f"the starting weight {name}")


def _user_sizes(net: UserNetwork, X, y, loss_s) -> list[int]:
    """The user network's [D, ..., C], from its layout (worked out here if not yet)."""
    if net.pmap is None:
        Xa = np.asarray(X)
        if Xa.ndim != 2:
            raise ValueError(f"X must be 2-D (samples, features), got shape {Xa.shape}")
        resolve_layout(net, Xa, np.asarray(y), 1 if loss_s.task == "binary" else None)
    assert net.pmap is not None
    return net.pmap.sizes


def _check_data(loss_s, X, y, dtype, sizes):
    """X as a finite (N, D) array in the network's dtype, and the labels in the form the loss
    takes: (N, 1) 0/1 floats for the binary losses, (N,) class indices for ce and nll, (N, C)
    targets for mse. `sizes` is the network's [D, ..., C]."""
    # X and the labels' own form first, then the loss checks them against the output width
    X, _ = check_xy(X, y, width=sizes[0], task=loss_s.task)
    Y = loss_s.targets(y, sizes[-1], dtype)
    return np.ascontiguousarray(X, dtype=dtype), Y


def _optimizer_factory(spec, lr):
    """A function params -> scratch optimizer, from None (plain SGD), a name or a dict
    {"name": ..., **hyper-parameters}: the one description both sides are built from."""
    if spec is None:
        spec = {"name": "sgd"}
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(
            "for a user network give the optimizer by name or as a dict "
            f"{{'name': 'adam', 'betas': (0.9, 0.999)}}, got {type(spec).__name__}"
        )
    spec = dict(spec)
    name = spec.pop("name", "sgd")
    scratch.get_optimizer(name, {"probe": np.zeros(1)}, lr=lr, **spec)  # refuse bad input now
    return lambda params: scratch.get_optimizer(name, params, lr=lr, **spec)


def _opt_of(sside):
    """The scratch optimizer both sides' optimizers are built from."""
    return sside.opt if isinstance(sside, MLPSide) else sside.opt_desc


def _optimizer_record(spec, opt) -> dict:
    """The optimizer as a record keeps it (summary.json's "optimizer"), as `nn-parity run`
    writes it: the name and the options given; for an optimizer object, those off default."""
    if spec is None or isinstance(spec, (str, Mapping)):
        given = {"name": spec} if isinstance(spec, str) else dict(spec or {})
        return {"name": given.pop("name", "sgd"), **given}
    defaults = type(opt)._defaults()
    hyper = {k: v for k, v in opt.hyper.items() if k != "lr" and v != defaults.get(k)}
    return {"name": opt.name, **hyper}


def _check_mirrored(opt) -> None:
    """The torch side is built from the scratch optimizer's description (`opt.hyper`); an
    optimizer without one would be compared against the wrong thing."""
    registry = scratch.OPTIMIZERS
    if not isinstance(opt, tuple(registry.values())):
        raise ValueError(
            f"optimizer {type(opt).__name__} has no torch mirror: nn-parity builds torch's from "
            f"the scratch optimizer's description; use one of {', '.join(registry)}"
        )


def _torch_side(ref, sside, loss_s, opt_desc):
    """The torch side: the given module with the scratch side's weights copied in, or a
    TorchMLP built from the scratch side's description."""
    from .weights import module_parameters

    desc = sside.desc
    if ref is None:
        ref = TorchMLP.from_scratch(desc)
    by_name = module_parameters(ref, desc)
    if isinstance(sside, UserSide):
        params = sside.get_params()
        with torch.no_grad():
            for k, p in by_name.items():
                p.copy_(torch.from_numpy(np.ascontiguousarray(params[k])))
    return TorchSide(ref, by_name, loss_s, opt_desc, sside.order)


def lockstep(
    net,
    ref: torch.nn.Module | None,
    X: np.ndarray,
    y: np.ndarray,
    *,
    steps: int | None = None,
    lr: float = 0.1,
    loss: str | scratch.Loss | None = None,
    optimizer=None,
    batch_size: int | None = None,
    epochs: int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    resync: bool = False,
    stop_at_divergence: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LockstepResult:
    """Train `net` and `ref` side by side, comparing every quantity after every step.

    net        a `scratch.MLP`, or the user's own network adapted with `adapt(...)`
    ref        the torch module; None builds a `TorchMLP` from the network's description, at its
               weights. A module given for user code takes the user's weights, bit for bit; one
               given for the built-in network is used as it is (`TorchMLP.from_scratch(net)`
               copies the weights), so a test can set torch's copy apart on purpose.
    loss       for the built-in network: "bce" (default; the network ends in a sigmoid),
               "bce-logits", ... or a `scratch.Loss`; user code carries its own
    optimizer  None (plain SGD at `lr`), a name ("adam"), a dict {"name": "adam", "betas":
               (0.9, 0.999), ...}, or a scratch optimizer bound to `net`; torch's is built from
               the same description, never typed twice, and its state is compared by buffer
    steps      full-batch steps (default 100); with `batch_size`, mini-batches from one seeded
               permutation per epoch (`seed`, `shuffle`), `epochs` of them (default 1), the last
               partial batch kept unless `drop_last`; `steps` then caps the total
    resync     scratch takes torch's parameters (and optimizer state) after every step, so each
               step is judged from identical weights

    Both sides are trained in place. `progress(step)` is called after each step.
    """
    lr = check_lr(lr)
    sside, X, Y = _scratch_side(net, loss, optimizer, lr, X, y)
    n = len(X)
    steps = run_length(steps, batch_size, epochs, drop_last, n)
    check_steps(steps, len(sside.desc.layers))  # before the (steps, items) records
    loss_s = sside.loss
    opt_desc = _opt_of(sside)
    tside = _torch_side(ref, sside, loss_s, opt_desc)
    relu_layers = [l for l, a in enumerate(sside.desc.activations) if _has_kink(a)]
    plan = _batches(n, batch_size, epochs or 1, seed, shuffle, drop_last)
    # Before step 0, nothing has been computed: a difference in the starting state is no
    # rounding any step produced, so it is a divergence no re-check may excuse.
    first: Divergence | None = _start_divergence(sside, tside)
    fault: dict | None = None  # a fault in the user's code mid-run: {"step", "message"}
    start = {k: np.array(v) for k, v in sside.get_params().items()}
    started = _start_words(sside, first)

    # sized once the items are known, after step 0
    max_abs = rel_err = np.zeros((0, 0))
    within = np.zeros((0, 0), dtype=bool)
    loss_hist = np.zeros((2, steps))
    epochs_at = np.zeros(steps, dtype=np.int64)
    batches_at = np.zeros(steps, dtype=np.int64)
    explained: dict[str, list[int]] = {"kink": [], "saturation": [], "drift": []}
    snapshot: dict = {}
    probs_first = None
    rows_first = rows = None
    ran = 0
    items: list[Item] = []
    layout: dict[int, tuple[list[Item], list[_Group]]] = {}  # per batch size
    pick_s = pick_t = p_idx = None
    Xt_full, Yt_full = torch.from_numpy(X), torch.from_numpy(Y)

    # Overflow, NaN and log(0) are detected and reported as a blow-up below, not warned about.
    with (
        _side_by_side() as pairs,
        np.errstate(over="ignore", invalid="ignore", divide="ignore"),
    ):
        for step, (epoch, b, rows), pair in zip(range(steps), plan, pairs):
            Xb, Yb = (X, Y) if rows is None else (X[rows], Y[rows])
            Xt, Yt = (
                (Xt_full, Yt_full) if rows is None else (torch.from_numpy(Xb), torch.from_numpy(Yb))
            )
            epochs_at[step], batches_at[step] = epoch, b
            try:
                svals, tvals = pair(
                    lambda: sside.step(Xb, Yb, rows),  # noqa: B023 (called within this iteration)
                    lambda: tside.step(Xt, Yt),  # noqa: B023
                )
            except UserCodeError as err:
                if step == 0:  # nothing compared yet: the user's code does not run as given
                    sside.set_params(start)  # and a refused call leaves their arrays alone
                    raise
                fault = {"step": step, "message": str(err)}  # what came before it is kept
                break
            if step == 0:
                items, pick_s, pick_t, not_compared = _items(sside, tside, svals)
                p_idx = next((k for k, it in enumerate(items) if it.quantity == "prob"), None)
                max_abs = np.zeros((steps, len(items)))
                rel_err = np.zeros((steps, len(items)))
                within = np.zeros((steps, len(items)), dtype=bool)
            if pick_s is not None:
                svals = [svals[j] for j in pick_s]
            if pick_t is not None:
                tvals = [tvals[j] for j in pick_t]
            if len(Xb) not in layout:
                its = items if step == 0 else _resize(items, len(Xb))
                layout[len(Xb)] = (its, _groups(its, sside.dtype))
            step_items, groups = layout[len(Xb)]
            if step == 0:
                _check_dtypes(step_items, svals, tvals)
            slack = sside.recovery_slack() if sside.recovered else None

            for g in groups:
                s, t = g.flat(svals, tvals)
                atol = g.atol if slack is None else g.atol + _slack_for(g, step_items, slack)
                m, r, ok = compare_segments(s, t, g.starts, g.rtol, atol)
                max_abs[step, g.slice] = m
                rel_err[step, g.slice] = r
                within[step, g.slice] = ok
            loss_hist[0, step] = sside.loss_value
            loss_hist[1, step] = tside.loss_value
            if step == 0 and p_idx is not None:
                probs_first = (np.array(svals[p_idx]), _np(tvals[p_idx]).copy())
                rows_first = rows

            blowup = None
            if not (np.isfinite(max_abs[step]).all() and np.isfinite(rel_err[step]).all()):
                blowup = _nonfinite(step, step_items, svals, tvals, sside.loss, tside)
            if blowup is not None:
                # Training has blown up: every later step would compare NaN with NaN.
                first = first or blowup
                if not snapshot:
                    snapshot = _snapshot(step_items, svals, tvals, sside)
                ran = step + 1
                if progress is not None:
                    progress(step)
                break

            flips = _kink_flips(sside, tside, relu_layers) if relu_layers else {}
            reason = None
            if first is None and not within[step].all():
                reason, failed_at = None, None
                if _carried_in(sside, tside, step):
                    reason, failed_at = explain(
                        sside, tside, step_items, within[step], svals, tvals, flips, (Xb, Yb, rows)
                    )
                if reason is None:
                    # the stage that failed names the item, unless it is one that agreed
                    named = failed_at is not None and not bool(within[step][failed_at])
                    k = (
                        failed_at
                        if failed_at is not None and named
                        else int(np.argmin(within[step]))
                    )
                    first = _divergence(step, step_items, k, svals, tvals, sside, tside, slack)
                    if batch_size is not None:
                        first.epoch, first.batch = epoch, b
                    snapshot = _snapshot(step_items, svals, tvals, sside)
            elif flips and within[step].all():
                reason = "kink"  # agreed this time; resync so the trajectories cannot part
            if reason is not None:
                explained[reason].append(step)
            if reason is not None or resync:
                _resync(sside, tside)
            ran = step + 1
            if progress is not None:
                progress(step)
            if first is not None and stop_at_divergence:
                break

    probs_last = None
    if p_idx is not None:
        probs_last = (np.array(svals[p_idx]), _np(tvals[p_idx]).copy())
    return LockstepResult(
        passed=first is None and fault is None,
        fault=fault,
        steps=ran,
        items=items,
        max_abs=max_abs[:ran],
        rel_err=rel_err[:ran],
        within=within[:ran],
        loss_scratch=loss_hist[0, :ran],
        loss_torch=loss_hist[1, :ran],
        tolerances={it.label: tolerance(it.quantity, sside.dtype).as_dict() for it in items},
        first_divergence=first,
        kink_steps=explained["kink"],
        saturation_steps=explained["saturation"],
        drift_steps=explained["drift"],
        probs_first=probs_first,
        probs_last=probs_last,
        snapshot=snapshot,
        not_compared=not_compared,
        checked={**_checked(sside), "start": started},
        epochs=epochs_at[:ran] if batch_size is not None else None,
        rows_first=rows_first,
        rows_last=rows,
        batches=batches_at[:ran] if batch_size is not None else None,
        dtype=np.dtype(sside.dtype).name,
        optimizer=_optimizer_record(optimizer, opt_desc),
    )


def check(net, X: np.ndarray, y: np.ndarray, *, ref: torch.nn.Module | None = None, **options):
    """`lockstep` with the torch side built from the network's description: the one call for
    checking a network, yours (through `adapt`) or the built-in one. Options as `lockstep`."""
    return lockstep(net, ref, X, y, **options)


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
    if q == "loss":
        return "no loss returned by your gradient function, and no loss_fn"
    if q == "state":
        return "the update is yours, its state unseen"
    if q == "grad":
        return "a fused step with this optimizer implies no gradient: parameters compared"
    return "not reported"


def _resize(items: list[Item], n: int) -> list[Item]:
    """The same items for a batch of n rows (the last, partial batch)."""
    out = []
    for it in items:
        if it.quantity in ("z", "a", "prob"):
            it = replace(it, shape=(n, *it.shape[1:]))
        out.append(it)
    return out


def _slack_for(g: _Group, items: list[Item], slack: dict[str, float]) -> np.ndarray:
    return np.array(
        [slack.get(items[i].name or "", 0.0) if items[i].quantity == "grad" else 0.0 for i in g.idx]
    )


def _checked(sside) -> dict:
    """What the scratch side let the engine check, for the record and the report."""
    if not isinstance(sside, UserSide):
        return {"side": "built-in network", "gradients": "returned by backward"}
    net = sside.net
    assert net.pmap is not None
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
        "layout": net.pmap.describe(),
        "layout_decided_by": net.pmap.how,
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


def _divergence(step, items, k, svals, tvals, sside, tside, slack) -> Divergence:
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
    desc, params_before, cache = sside.oracle()
    if it.quantity == "grad":
        div.fd, div.fd_agrees_with = _fd_verdict(desc, sside, params_before, it, m)
    before64 = {k: np.asarray(v, dtype=np.float64) for k, v in params_before.items()}
    ctx = Context(
        desc, sside.loss, sside.X, sside.Y, cache, tside.cache, before64, sside.lr, _opt_of(sside)
    )
    if it.quantity != "state":
        div.diagnosis = diagnose(div, svals[k], tvals[k], ctx)
    else:
        div.diagnosis = {
            "cause": "optimizer-state",
            "explanation": f"parameters and gradients agree but the optimizer's {it.buffer} "
            f"buffer of {it.user or it.name} does not: the state update differs from "
            "torch.optim's definition",
        }
    return div


def _fd_verdict(desc, sside, params_before, it: Item, m: Mismatch) -> tuple[float, str]:
    """Which side the float64 central-difference gradient agrees with at the failing element."""
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
    s_ok = abs(m.scratch - fd) <= resolution
    t_ok = abs(m.torch - fd) <= resolution
    verdict = {(True, True): "both", (True, False): "scratch", (False, True): "torch"}.get(
        (s_ok, t_ok), "neither"
    )
    return fd, verdict


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
