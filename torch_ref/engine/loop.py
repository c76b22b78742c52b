"""The run loop: one training step on both sides, compared, explained or recorded."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch.optim import check_lr
from nn_parity.torch_ref.compare import (
    compare_segments,
    tolerance,
)
from nn_parity.torch_ref.engine import threads
from nn_parity.torch_ref.engine.budget import check_steps
from nn_parity.torch_ref.engine.comparer import _check_dtypes, _Group, _groups, _np, _slack_for
from nn_parity.torch_ref.engine.findings import _divergence, _nonfinite, _snapshot
from nn_parity.torch_ref.engine.items import _checked, _items, _resize
from nn_parity.torch_ref.engine.recheck import _has_kink, _kink_flips, _resync, explain
from nn_parity.torch_ref.engine.setup import (
    _batches,
    _opt_of,
    _optimizer_record,
    _scratch_side,
    _torch_side,
    run_length,
)
from nn_parity.torch_ref.engine.start import _carried_in, _start_divergence, _start_words
from nn_parity.torch_ref.results import Divergence, Item, LockstepResult
from nn_parity.torch_ref.user.network import UserCodeError

# The threading arrangement is chosen per run from the run's own first steps (threads.py): which
# one is fastest depends on the CPU, the BLAS kernel, the sizes and the machine's load, so no
# fixed size threshold is right everywhere. A single arrangement here means no choice is made.
_ARRANGEMENTS: tuple[threads.Arrangement, ...] = threads.ARRANGEMENTS


_TRIAL_STEPS = 2  # per arrangement; min of 2 sets aside the first step's one-off costs


def _side_by_side() -> AbstractContextManager[threads.Schedule]:
    """Per step, a `pair(scratch_step, torch_step)`: the steps run in each arrangement in turn,
    then in the fastest; the trial steps are the run's own first steps."""
    return threads.schedule(_ARRANGEMENTS, _TRIAL_STEPS)


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
