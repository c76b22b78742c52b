"""A divergence that a loss convention explains, named before any other cause.

Hand-written costs often differ from torch's plain losses by a convention, not a bug: a 1/2 in
front of the squared error, a sum where torch takes the mean, a mean over samples where torch
takes it over every element, an L2 term written into the gradient. Each leaves an exact mark
where the loss enters:

    scale, reduction   the loss, or the output layer's gradient, is c times torch's, with c one
                       of the ratios k / k0 * R0 / R that another reduction (R: N C, N or 1) or
                       scale (k: 1, 1/2, 2) gives
    L2                 a weight's gradient is torch's plus k times that weight, exactly,
                       over two or more nonzero elements (one number fits any k)

`explain` names the declaration that would make the two agree ("declare it if that is your
cost"). Only the exact factor or term is named; once it is declared, the two sides compute the
same objective and any other difference (a hidden layer's bug) is reported as it stands. A
ratio seen only below the output layer is no loss convention and is left to diagnosis.py. A
loss that exceeds torch's by some amount is not named an L2 term: one number cannot tell it from
another excess; the gradient's exact multiple of the weight can.
"""

from __future__ import annotations

import numpy as np
from nn_parity.torch_ref.evidence import constant_ratio, near

__all__ = ["explain"]

_SCALES = (1.0, 0.5, 2.0)
_L2_FIT_MIN = 2  # nonzero weight elements the L2 fit needs: one more than its one unknown, k


def explain(div, s, t, ctx) -> dict | None:
    """The declaration that explains `div` (scratch's `s` against torch's `t`), or None."""
    s = np.asarray(s, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    last = len(ctx.net.layers) - 1
    if div.quantity == "loss" or (div.quantity == "grad" and div.layer == last):
        c = _ratio(s, t) if div.quantity == "loss" else constant_ratio(s, t)
        found = None if c is None else _scale_or_reduction(c, ctx, div.quantity)
        if found is not None:
            return found
    if div.quantity == "grad" and div.param == "weight":
        return _l2_in_gradient(div, s, t, ctx)
    if div.quantity == "loss" and ctx.loss.name == "bce" and ctx.loss.clip is None:
        return _clipped(float(s), ctx)
    return None


_CLIPS = (1e-7, 1e-8, 1e-12, 1e-15)  # the eps of np.clip(p, eps, 1 - eps) in common code


def _clipped(s: float, ctx) -> dict | None:
    """scratch's loss is, to 1e-9, the BCE of torch's output clipped at a common eps."""
    loss = ctx.loss
    out = ctx.torch_cache[-1][1].detach().numpy().astype(np.float64)
    Y = ctx.Y.astype(np.float64)
    for eps in _CLIPS:
        if not ((out < eps) | (out > 1 - eps)).any():
            continue  # nothing this clip would touch: it cannot explain a difference
        clipped = type(loss)(loss.reduction, **{**loss.options, "clip": eps})
        if near(s, clipped.forward(out, Y)[0], 1e-9):
            return {  # the saturation class, with the declaration that settles it
                "cause": "saturation",
                "explanation": f"the two part where p is saturated: scratch's loss is torch's "
                f"BCE with p clipped to [{eps:g}, 1 - {eps:g}] (np.clip), where torch clamps "
                f"each log at -100: declare it if that is your cost "
                f"(loss=get_loss('bce', clip={eps:g}))",
            }
    return None


def _ratio(s: np.ndarray, t: np.ndarray) -> float | None:
    if t == 0 or s == 0 or near(float(s), float(t)):
        return None
    return float(s / t)


def _divisor(loss, r: str, n: int, numel: int) -> float | None:
    """R of reduction `r`: torch's mean is over every element for bce and mse, over the samples
    (or the targets' weight, unknown here) for ce and nll."""
    if r == "sum":
        return 1.0
    if r == "samples":
        return float(n)
    if loss.task == "multiclass":
        return None if getattr(loss, "weight", None) is not None else float(n)
    return float(numel)


def _scale_or_reduction(c: float, ctx, what: str) -> dict | None:
    loss = ctx.loss
    n, numel = len(ctx.X), int(ctx.cache[-1][2].size)
    R0, k0 = _divisor(loss, loss.reduction, n, numel), loss.scale
    if R0 is None:
        return None
    for r in dict.fromkeys((loss.reduction, "samples", "mean", "sum")):
        R = _divisor(loss, r, n, numel)
        for k in dict.fromkeys((k0, *_SCALES)):
            if R is None or (r, k) == (loss.reduction, k0) or not near(c, k / k0 * R0 / R):
                continue
            return _declare(c, loss, r, k, n, what)
    return None


def _declare(c: float, loss, r: str, k: float, n: int, what: str) -> dict:
    opts = {**{key: v for key, v in loss.options.items() if v is not None}, "scale": k}
    if k == 1.0:
        opts.pop("scale")
    args = "".join(f", {key}={v!r}" for key, v in opts.items())
    red = "" if r == "mean" else f", reduction={r!r}"
    call = f"get_loss({loss.name!r}{red}{args})"
    words = ", ".join(w for w in (red.lstrip(", "), f"scale {k:g}" * (k != loss.scale)) if w)
    verdict = (
        f"it is torch's {loss.name} with {words}: declare it if that is your cost (loss={call})"
    )
    if what == "loss":  # one number: the gradients must be of the same cost
        verdict += ", and your gradient is of the same cost"
    if k == loss.scale and near(c, n) and n > 1:  # the classic missing 1/N, in its old words
        return {
            "cause": "reduction",
            "explanation": f"scratch's {_what(what)} is N = {n} times torch's: the 1/N of the "
            f"mean reduction is missing (a sum where torch takes the mean), or {verdict}",
        }
    return {
        "cause": "convention",
        "explanation": f"scratch's {_what(what)} is {c:.6g} times torch's: {verdict}",
    }


def _what(quantity: str) -> str:
    return "output layer's gradient" if quantity == "grad" else quantity


def _l2_in_gradient(div, s: np.ndarray, t: np.ndarray, ctx) -> dict | None:
    """scratch's weight gradient = torch's + k W, k > 0, to 1e-6 of the difference, over at
    least two nonzero elements: one number always fits g_s - g_t = k W (a 1x1 weight), so it
    cannot tell an L2 term from any other difference."""
    W = ctx.params_before.get(f"layers.{div.layer}.{div.param}")
    if W is None or np.count_nonzero(W) < _L2_FIT_MIN:
        return None
    d = s - t
    k = float(np.vdot(d, W) / np.vdot(W, W))
    if k <= 0 or np.linalg.norm(d - k * W) > 1e-6 * np.linalg.norm(d):
        return None
    loss = ctx.loss
    # the term c ||W||^2 adds 2 c W; in the half form c = l2 / (2 l2_n), so l2 = 2 c l2_n
    n = loss.l2_n if loss.l2 else 1
    lam = (2 * _c(loss) + k) * n
    opts = {key: v for key, v in loss.options.items() if v is not None and key != "l2_form"}
    opts["l2"] = float(f"{lam:.6g}")
    red = "" if loss.reduction == "mean" else f", reduction={loss.reduction!r}"
    call = f"get_loss({loss.name!r}{red}{''.join(f', {key}={v!r}' for key, v in opts.items())})"
    return {
        "cause": "convention",
        "explanation": f"scratch's gradient of {div.label.split()[-1]} is torch's plus "
        f"{k:.6g} times the weight itself: an L2 term. It is torch's {loss.name} plus "
        f"0.5 * l2 / l2_n * ||W||^2 with l2={lam:.6g}, l2_n={n}: declare it if that is your "
        f"cost (loss={call}; network2.py's (lmbda / n) is l2=lmbda, l2_n=n; l2_on='all' if "
        "the biases decay too)",
    }


def _c(loss) -> float:
    if not loss.l2:
        return 0.0
    return loss.l2 / loss.l2_n / (2.0 if loss.l2_form == "half" else 1.0)
