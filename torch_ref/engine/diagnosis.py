"""Name the likely cause of a divergence from its fingerprint.

Given the first divergence and both sides' full tensors at that step, each test below looks for
the mark a known class of hand-derivation bug leaves:

    reduction     scratch's gradient is N or 1/N times torch's, everywhere
    sign          scratch's gradient (or update) is -1 times torch's
    scale         some other constant ratio (e.g. the learning rate applied twice: ratio lr)
    layout        scratch's weight gradient is the transpose of torch's
    derivative-at-z   scratch matches a backward pass whose activation derivative was
                  evaluated at z instead of at f(z)
    saturation    the two agree on every sample except those whose output is saturated
                  (p within 1e-7 of 0 or 1): clamping or numerical stability
    update-rule   gradients agree but the update does not (and, from step 1 on, earlier
                  steps' state: momentum, accumulated gradients)
    carried-state the first step agreed, a later one's gradients differ though the weights
                  still agree within tolerance

`diagnose` returns the first that fits, or None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.torch_ref.engine.causes import (
    confirmed_causes,
    fits,
    loss_ratio_cause,
    order_cause,
)
from nn_parity.torch_ref.engine.conventions import explain as explain_convention
from nn_parity.torch_ref.evidence import constant_ratio as _constant_ratio
from nn_parity.torch_ref.evidence import near as _near
from nn_parity.torch_ref.mirror.model import torch_loss

__all__ = ["Context", "diagnose"]


@dataclass
class Context:
    """The lockstep's state at the divergence step."""

    net: scratch.MLP
    loss: scratch.Loss
    X: np.ndarray
    Y: np.ndarray  # (N, 1)
    cache: list  # scratch's forward cache: (x, z, a) per layer
    torch_cache: list  # torch's: (z, a) tensors per layer
    params_before: dict[str, np.ndarray]  # the parameters at the start of the step
    lr: float
    optimizer: object = None  # the scratch optimizer; None: plain SGD
    names: dict | None = None  # canonical parameter name -> the user's, for user code


_DERIVATIVES = {  # f'(z) from (z, a), as a hand derivation should take it, and at z by mistake
    "sigmoid": (lambda z, a: a * (1 - a), lambda z, a: z * (1 - z)),
    "tanh": (lambda z, a: 1 - a * a, lambda z, a: 1 - z * z),
}


def _ratio_cause(c: float, n: int, lr: float, what: str) -> dict | None:
    if n > 1 and _near(c, n):
        return _d(
            "reduction",
            f"scratch's {what} is N = {n} times torch's: the 1/N of the mean "
            "reduction is missing (a sum where torch takes the mean)",
        )
    if n > 1 and _near(c, 1 / n):
        return _d(
            "reduction",
            f"scratch's {what} is 1/N = 1/{n} of torch's: the 1/N factor is "
            "applied twice (or a mean where torch takes the sum)",
        )
    if _near(c, -1):
        return _d("sign", f"scratch's {what} is -1 times torch's: a sign error")
    if _near(c, lr):
        return _d(
            "scale",
            f"scratch's {what} is lr = {lr:g} times torch's: the learning rate is applied twice",
        )
    return _d("scale", f"scratch's {what} is {c:.6g} times torch's everywhere: a constant factor")


def _d(cause: str, explanation: str) -> dict:
    return {"cause": cause, "explanation": explanation}


def diagnose(div, s: np.ndarray, t: np.ndarray, ctx) -> dict | None:
    """The likely cause of `div`, from scratch's (`s`) and torch's (`t`) tensors of that item.

    `ctx` is the lockstep's scratch side at the divergence step (network, loss, data, the
    parameters before the step, its cache) plus `lr` and `torch_cache`.
    """
    convention = explain_convention(div, s, t, ctx)
    bug = _bug_cause(div, s, t, ctx)
    if convention is None or bug is None or bug["cause"] == convention["cause"]:
        return convention or bug
    # both fit the same numbers: the declaration that would make the two agree first
    # (a user's cost may simply be that convention), then the bug it would otherwise be
    return {
        **convention,
        "also": [bug["cause"], *bug.get("also", ())],
        "explanation": f"{convention['explanation']}; if that is not your cost: "
        f"{bug['explanation']}",
    }


def _bug_cause(div, s, t, ctx) -> dict | None:
    """The bug whose fingerprint fits the numbers, or None."""
    s = np.asarray(s, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    n = len(ctx.X)
    if div.quantity == "grad":
        c = _constant_ratio(s, t)
        if c is not None:
            return loss_ratio_cause(c, ctx) or _ratio_cause(c, n, ctx.lr, "gradient")
        if s.ndim == 2 and s.shape[0] == s.shape[1] and np.allclose(s, t.T, rtol=1e-9, atol=0):
            return _d(
                "layout",
                f"scratch's gradient of {div.label.split()[-1]} is the transpose "
                "of torch's: dW = x^T dz where dz^T x is meant",
            )
        layer = _derivative_at_z(div, s, ctx)
        if layer is not None:
            act = ctx.net.layers[layer].activation.name
            return _d(
                "derivative-at-z",
                f"scratch matches a backward pass in which layer {layer}'s "
                f"{act} derivative is evaluated at z instead of at {act}(z)",
            )
        confirmed = confirmed_causes(div, s, t, ctx)
        if confirmed is not None:
            return confirmed
    saturated = _saturation(div, ctx)
    if saturated is not None:
        return saturated
    if div.quantity == "param":
        before = ctx.params_before[f"layers.{div.layer}.{div.param}"]
        ds, dt = s - before, t - before
        if not ds.any() and dt.any():
            return _d(
                "no-update",
                f"scratch's {div.label} did not move at step {div.step} while torch's did: "
                "its update is never applied (a copy updated instead of the array, a "
                "parameter missing from the optimizer's list, a skipped step)",
            )
        c = _constant_ratio(ds, dt)
        if c is not None:
            return _ratio_cause(c, n, ctx.lr, "update")
        if div.step > 0:
            return _d(
                "update-rule",
                "gradients agree but the update does not, from step "
                f"{div.step}: the update carries state between steps (momentum?)",
            )
        return _d("update-rule", "gradients agree but the update does not: " + _rule(ctx))
    if div.quantity in ("z", "a"):
        return order_cause(div, s, t)
    if div.quantity == "loss":
        return confirmed_causes(div, s, t, ctx)
    if div.step > 0 and div.quantity == "grad":
        return _d(
            "carried-state",
            f"step 0 agreed and step {div.step} starts from weights that still agree "
            "within tolerance, yet its gradients differ: something carries over between "
            "steps (gradients not reset, a stale cache) or depends on the weights' values",
        )
    return None


def _rule(ctx) -> str:
    """How the step-0 update differs, in the words of the run's optimizer."""
    opt = ctx.optimizer
    hyper = getattr(opt, "hyper", {})
    plain = not (hyper.get("momentum") or hyper.get("weight_decay"))
    if opt is None or (getattr(opt, "name", None) == "sgd" and plain):
        return "the update rule differs from theta - lr * g (an extra term such as weight decay?)"
    return f"the update rule differs from {opt!r}'s, torch.optim's with the same options"


def _reference_grads(ctx, at_z_layer: int | None) -> dict[str, np.ndarray]:
    """Float64 backprop from the step's starting weights, written independently of scratch's
    classes; layer `at_z_layer`'s derivative is taken at z."""
    net = ctx.net
    params = ctx.params_before
    x = ctx.X.astype(np.float64)
    cache = []
    for l, layer in enumerate(net.layers):
        W = params[f"layers.{l}.weight"]
        z = x @ W.T + (params[f"layers.{l}.bias"] if net.bias else 0)
        name = layer.activation.name
        a = 1 / (1 + np.exp(-z)) if name == "sigmoid" else np.tanh(z) if name == "tanh" else z
        cache.append((x, z, a))
        x = a
    y = ctx.Y.astype(np.float64) if ctx.Y.dtype.kind == "f" else ctx.Y
    out = cache[-1][2]
    if ctx.loss.name in ("bce", "bce-logits"):
        dout = (out - y) / np.maximum(out * (1 - out), 1e-12) if ctx.loss.name == "bce" else out - y
        if ctx.loss.reduction == "mean":
            dout = dout / out.size
    else:  # the other losses' gradients, from a fresh float64 instance of the same loss
        fresh = scratch.LOSSES[ctx.loss.name](ctx.loss.reduction, **ctx.loss.options)
        dout = fresh.backward(fresh.forward(out, ctx.Y)[1])
    grads = {}
    da = dout
    for l in range(len(net.layers) - 1, -1, -1):
        x, z, a = cache[l]
        name = net.layers[l].activation.name
        right, wrong = _DERIVATIVES.get(name, (lambda z, a: 1.0, lambda z, a: 1.0))
        dz = da * (wrong if l == at_z_layer else right)(z, a)
        grads[f"layers.{l}.weight"] = dz.T @ x
        if net.bias:
            grads[f"layers.{l}.bias"] = dz.sum(axis=0)
        da = dz @ params[f"layers.{l}.weight"]
    return grads


def _derivative_at_z(div, s: np.ndarray, ctx) -> int | None:
    names = [layer.activation.name for layer in ctx.net.layers]
    if not all(n in ("sigmoid", "tanh", "identity") for n in names):
        return None  # the independent reference covers these activations only
    key = f"layers.{div.layer}.{div.param}"
    right = _reference_grads(ctx, None)[key]
    rel = 1e-9 if ctx.X.dtype == np.float64 else 1e-4
    for l, name in enumerate(names):
        if name in _DERIVATIVES and fits(s, _reference_grads(ctx, l)[key], right, rel):
            return l  # fits scratch's to rounding, and tells itself apart from the right one
    return None


def _saturation(div, ctx) -> dict | None:
    """Both sides agree on unsaturated samples and differ only where p is within 1e-7 of 0/1."""
    if div.quantity not in ("loss", "grad") or (
        div.quantity == "grad" and div.layer != len(ctx.net.layers) - 1
    ):
        return None
    out = ctx.torch_cache[-1][1].detach()
    if ctx.loss.task != "binary":
        return None
    p = torch.sigmoid(out) if ctx.loss.name == "bce-logits" else out
    sat = ((p < 1e-7) | (p > 1 - 1e-7)).numpy().ravel()
    if not sat.any() or sat.all():
        return None
    fn = torch_loss(ctx.loss, reduction="sum")
    Y = torch.from_numpy(ctx.Y)
    s_out = ctx.cache[-1][2]
    agree = {}
    for name, mask in (("saturated", sat), ("unsaturated", ~sat)):
        ls, _ = type(ctx.loss)("sum").forward(s_out[mask], ctx.Y[mask])
        lt = float(fn(out[torch.from_numpy(mask)], Y[torch.from_numpy(mask)]))
        agree[name] = abs(ls - lt) <= 1e-9 * max(abs(lt), 1e-12)
    if agree["unsaturated"] and not agree["saturated"]:
        return _d(
            "saturation",
            f"the two agree on the {int((~sat).sum())} unsaturated samples and "
            f"differ on the {int(sat.sum())} whose output is within 1e-7 of 0 or 1: "
            "clamping or numerical stability at saturated logits",
        )
    return None
