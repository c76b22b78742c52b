"""A learning-rate schedule that parts, named from the numbers: which of torch's rates scratch's
rate is.

torch's loop is `optimizer.step(); scheduler.step()`: step t (0 for the first) runs at rate(t).
Scratch's rate at the divergence step is read where it lives: the compared `lr` item (nn-parity's
update), or, for an update of the user's own that is plain SGD, fitted from the update itself,
(before - after) = r g over every element of the parameter (an exact fit of one number over many,
so a rate is named only when the update is one). Each hypothesis is recomputed with torch's
rules and named only when it gives scratch's rate to 1e-9:

    before the update    r = rate(t + 1): the schedule is stepped before the update
    a step late          r = rate(t - 1): the count read before the last step's increment
    never moves          r = base at t >= 1: the count never advances
    once per epoch       r = rate(epoch), with mini-batches: stepped per epoch, torch per step
    another constant     r = base / (1 + d' t), base gamma'^t or base gamma'^(t // K), the
                         constant fitted from steps 0 (where both had base) and t

When scratch's schedule can be asked for other steps (nn-parity's own optimizer), a hypothesis
must also give its rates at the next steps; otherwise every one that fits is named, joined by
"or" (at step 1 a step late and never moving give the same rate, and so do a doubled decay and
a schedule stepped before the update).
"""

from __future__ import annotations

import copy

import numpy as np
from nn_parity.scratch.optim import Schedule
from nn_parity.torch_ref.evidence import near

__all__ = ["schedule_cause"]

_AHEAD = 3  # further steps a hypothesis must fit, when scratch's schedule can be asked


def schedule_cause(div, s, t, opt, base: float, grad=None, before=None) -> dict | None:
    """The schedule cause of `div` (an `lr` or a `param` item), or None. `opt` is the scratch
    optimizer (its description for user code), `base` the base rate; for a parameter, torch's
    gradient `grad` and the parameter `before` the step."""
    sched = getattr(opt, "schedule", None)
    if sched is None or div.quantity not in ("lr", "param"):
        return None
    r_s: float | None
    if div.quantity == "lr":
        r_s = float(np.asarray(s))
        asked = _asker(opt)
    else:
        r_s = _fitted_rate(opt, np.asarray(s), grad, before)
        asked = None
    if r_s is None:
        return None
    truth = _torch_schedule(sched)
    found = _hypotheses(truth, base, div.step, r_s, getattr(div, "epoch", None), asked)
    if not found:
        return None
    r_t = truth.lr(base, div.step)
    return {
        "cause": "schedule",
        "explanation": f"your rate at step {div.step} is {r_s:.6g} where torch's is {r_t:.6g} "
        f"(torch steps its scheduler after each update: step t runs at rate(t)): "
        + "; or ".join(found),
    }


def _torch_schedule(sched) -> Schedule:
    """A fresh schedule by torch's rules, from the declared one's description."""
    if sched.name == "lambda":
        return Schedule({"name": "lambda", "fn": sched.fn})
    return Schedule(sched.describe())


def _asker(opt):
    """Scratch's rate at any step, from a copy of its optimizer (the run's is left alone)."""
    twin = copy.deepcopy(opt)
    return lambda k: float(twin.schedule_to(k))


def _fitted_rate(opt, s, grad, before) -> float | None:
    """r with before - s = r g over every element, for a plain SGD update; else None."""
    hyper = getattr(opt, "hyper", {})
    if getattr(opt, "name", None) != "sgd" or hyper.get("momentum") or hyper.get("weight_decay"):
        return None
    if grad is None or before is None or np.count_nonzero(grad) < 2:
        return None
    g = np.asarray(grad, dtype=np.float64).ravel()
    d = (np.asarray(before, dtype=np.float64) - s.astype(np.float64)).ravel()
    r = float(np.vdot(d, g) / np.vdot(g, g))
    if np.linalg.norm(d - r * g) > 1e-9 * np.linalg.norm(d):
        return None  # not a rate times the gradient: not a schedule's doing
    return r


def _hypotheses(truth, base: float, step: int, r_s: float, epoch, asked) -> list[str]:
    rate = lambda k: truth.lr(base, max(k, 0))  # noqa: E731
    checks = [
        (lambda k: rate(k + 1), f"your rate at step {step} is torch's at step {step + 1}: you "
         "step the schedule before the update (torch steps it after)"),
        (lambda k: rate(k - 1), f"your rate at step {step} is torch's at step {step - 1}: your "
         "schedule runs a step late (its count read before the last update's increment)"),
        (lambda k: base, f"your rate at step {step} is still the base rate {base:g}: your "
         "schedule never moves (its count never advances)"),
    ]  # fmt: skip
    if epoch is not None and epoch != step:
        checks.append((lambda k: rate(epoch), f"your rate at step {step} is torch's at step "
                       f"{epoch}, the epoch: you step the schedule once per epoch, torch's "
                       "scheduler here steps once per batch"))  # fmt: skip
    found = []
    for fn, words in checks:
        if near(fn(step), r_s, 1e-9) and not near(rate(step), r_s, 1e-9):
            if asked is None or all(near(fn(k), asked(k), 1e-9) for k in _ahead(step)):
                found.append(words)
    constant = _constant(truth, base, step, r_s, asked)
    return [*found, constant] if constant else found


def _ahead(step: int) -> range:
    return range(step + 1, step + 1 + _AHEAD)


def _constant(truth, base: float, step: int, r_s: float, asked) -> str | None:
    """The schedule's constant refitted from steps 0 and `step`: torch's form, another value."""
    if step < 1 or r_s <= 0 or truth.name == "lambda":
        return None
    if truth.name == "inverse_time":
        value = (base / r_s - 1) / step
        spec, name, held = {"name": "inverse_time", "decay": value}, "decay", truth.decay
    else:
        n = step if truth.name == "exponential" else step // truth.step_size
        if n < 1:
            return None
        value = (r_s / base) ** (1 / n)
        spec = {"name": truth.name, "gamma": value}
        if truth.name == "step":
            spec["step_size"] = truth.step_size
        name, held = "gamma", truth.gamma
    if not np.isfinite(value) or value <= 0 or near(value, 1.0 if name == "gamma" else 0.0):
        return None  # no number, or one that leaves the rate where it was: never moves
    refit = Schedule(spec)
    if asked is not None and not all(near(refit.lr(base, k), asked(k), 1e-9) for k in _ahead(step)):
        return None
    return (
        f"your rates fit torch's {truth.name} schedule with {name}={value:.6g} (fitted from "
        f"steps 0 and {step}) where torch's has {name}={held:g}: a different constant"
    )
