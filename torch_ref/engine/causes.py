"""Causes a recomputation confirms: the user's value, recomputed under a hypothesised bug.

Each hypothesis below is one hand-derivation bug, written as a change to an independent float64
backward pass from the step's starting weights. It is named only when the recomputed item equals
scratch's to rounding (and differs from the correct one by more than rounding, so it can be told
apart); every hypothesis that fits is named, most likely first.

    derivative-form  layer l differentiated with another activation's derivative (the
                     sigmoid's a (1 - a) for a tanh layer), or with none at all
    kink-mask        a relu layer's mask taken at the wrong place: z >= 0, the layer's input,
                     the upstream gradient
    layout           the gradient passed down through W^T where W is meant (square layers)
    stale-weights    the gradient passed down through the weight already updated by this step
    wrong-cache      layer l's backward handed layer l - 1's forward cache
    targets          the targets reordered or relabelled on scratch's side only
    precision        an error of the size float32 rounding leaves in a float64 chain
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from nn_parity import scratch

__all__ = ["confirmed_causes", "fits", "loss_ratio_cause", "order_cause"]

_BUDGET = 20_000_000  # inputs x layers up to which the hypotheses are recomputed
_FORWARD: dict[str, Callable] = {
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
    "identity": lambda z: z,
    "log_softmax": lambda z: (
        z
        - z.max(axis=-1, keepdims=True)
        - np.log(np.exp(z - z.max(axis=-1, keepdims=True)).sum(axis=-1, keepdims=True))
    ),
}
_FORMS: dict[
    str, tuple[Callable, str]
] = {  # an activation's derivative as a hand derivation writes it, from (z, a)
    "sigmoid": (lambda z, a: a * (1 - a), "a (1 - a)"),
    "tanh": (lambda z, a: 1 - a * a, "1 - a^2"),
}


@dataclass(frozen=True)
class _Bug:
    cause: str
    words: str
    layer: int | None = None
    dz: Callable | None = None  # dz(da, z, a, x) for `layer`, in place of the right one
    down: str | None = None  # "transposed" | "updated": the weight `layer` passes dz down with
    cache_of: int | None = None  # the forward cache `layer` is handed
    targets: np.ndarray | None = None
    samples: str | None = None  # "but-last", "but-first", "last": whose dW `layer` sums
    delta: Callable | None = None  # delta(out, y) -> the output layer's dz, up to a constant


def _layer(ctx, l: int) -> str:
    """Layer l, with the user's name for its weight where the user's code is checked."""
    user = (getattr(ctx, "names", None) or {}).get(f"layers.{l}.weight")
    return f"layer {l} ({user})" if user else f"layer {l}"


def _right_dz(name: str, da, z, a, x):
    if name in _FORMS:
        return da * _FORMS[name][0](z, a)
    if name == "relu":
        return da * (z > 0)
    if name == "log_softmax":
        return da - np.exp(a) * da.sum(axis=-1, keepdims=True)
    return da


def _forward(ctx, dtype) -> list | None:
    net, params = ctx.net, ctx.params_before
    names = [layer.activation.name for layer in net.layers]
    if not all(n in _FORWARD for n in names):
        return None  # the independent reference covers these activations only
    x = ctx.X.astype(dtype)
    cache = []
    for l, name in enumerate(names):
        W = params[f"layers.{l}.weight"].astype(dtype)
        z = x @ W.T + (params[f"layers.{l}.bias"].astype(dtype) if net.bias else 0)
        a = _FORWARD[name](z)
        cache.append((x, z, a))
        x = a
    return cache


def _dout(ctx, out, Y):
    loss = ctx.loss
    if loss.name == "bce":  # from p, without scratch's own clipping
        d = (out - Y) / np.maximum(out * (1 - out), 1e-12)
        return d / out.size if loss.reduction == "mean" else d
    fresh = scratch.LOSSES[loss.name](loss.reduction, **loss.options)
    return fresh.backward(fresh.forward(out.astype(np.float64), Y)[1]).astype(out.dtype)


def _backprop(ctx, bug: _Bug | None, dtype=np.float64) -> dict | None:
    """Every gradient of the step, recomputed under `bug` (None: the correct pass)."""
    cache = _forward(ctx, dtype)
    if cache is None:
        return None
    bug = bug or _Bug("", "")
    net, params = ctx.net, ctx.params_before
    Y = ctx.Y if bug.targets is None else bug.targets
    Y = Y.astype(dtype) if Y.dtype.kind == "f" else Y
    da = _dout(ctx, cache[-1][2], Y)
    grads = {}
    for l in range(len(net.layers) - 1, -1, -1):
        x, z, a = cache[l if bug.layer != l or bug.cache_of is None else bug.cache_of]
        name = net.layers[l].activation.name
        mutated = bug.layer == l and bug.dz is not None
        dz = bug.dz(da, z, a, x) if bug.dz is not None and mutated else _right_dz(name, da, z, a, x)
        if bug.delta is not None and l == len(net.layers) - 1:
            dz = bug.delta(a, Y)
        keep = _samples(len(x), bug.samples if bug.layer == l else None)
        grads[f"layers.{l}.weight"] = dz[keep].T @ x[keep]
        grads[f"dz.{l}"] = dz  # per sample, for the bias's fingerprints
        if net.bias:
            grads[f"layers.{l}.bias"] = dz.sum(axis=0)
        W = params[f"layers.{l}.weight"].astype(dtype)
        if bug.layer == l and bug.down == "transposed":
            W = W.T
        elif bug.layer == l and bug.down == "updated":
            W = W - ctx.lr * grads[f"layers.{l}.weight"]
        da = dz @ W
    return grads


def _hypotheses(ctx):
    """The bugs worth testing on this network, most likely first."""
    net = ctx.net
    names = [layer.activation.name for layer in net.layers]
    hidden = range(len(names) - 1)
    for l in hidden:
        name = names[l]
        for other, (form, text) in _FORMS.items():
            if other != name and name in (*_FORMS, "relu"):
                yield _Bug(
                    "derivative-form",
                    f"{_layer(ctx, l)}, a {name} layer, is differentiated with {other}'s "
                    f"derivative {text}: look at the {name}' in its backward",
                    l, lambda da, z, a, x, f=form: da * f(z, a),
                )  # fmt: skip
        if name != "identity":
            yield _Bug(
                "derivative-form",
                f"{_layer(ctx, l)}'s {name} derivative is left out of its backward (dz = da)",
                l, lambda da, z, a, x: da,
            )  # fmt: skip
        if name == "relu":
            yield from _relu_masks(ctx, l)
        if name in _FORMS:
            yield from _derivative_bugs(ctx, l, name)
    if names[-1] == "log_softmax":
        yield _Bug(
            "derivative-form",
            "the output layer's log-softmax backward is taken as the identity (dz = da): "
            "its softmax term - p sum(da) is missing",
            len(names) - 1, lambda da, z, a, x: da,
        )  # fmt: skip
    yield from _delta_bugs(ctx)
    samples = {
        "but-last": "leaves out the last sample of the batch (an off-by-one in a slice or "
        "a loop bound)",
        "but-first": "leaves out the first sample of the batch (an off-by-one in a slice or "
        "a loop bound)",
        "last": "holds the last sample's term only: assigned in the loop over samples where "
        "it should be summed (=, not +=)",
    }
    for l in range(len(names)):
        for which, text in samples.items():
            yield _Bug("sample-dropped", f"{_layer(ctx, l)}'s dW {text}", l, samples=which)
    yield from _downward_bugs(ctx, names)
    yield from _target_bugs(ctx)


def _downward_bugs(ctx, names):
    """The gradient passed down from layer l through the wrong weight, or layer l handed the
    wrong cache."""
    net = ctx.net
    for l in range(1, len(names)):
        W = ctx.params_before[f"layers.{l}.weight"]
        if W.shape[0] == W.shape[1]:
            yield _Bug(
                "layout",
                f"{_layer(ctx, l)}'s backward passes the gradient down as dz W^T where dz W "
                "is meant (the layer is square, so the shapes fit)",
                l, down="transposed",
            )  # fmt: skip
        if ctx.optimizer is None or _plain_sgd(ctx.optimizer):
            yield _Bug(
                "stale-weights",
                f"{_layer(ctx, l)}'s backward passes the gradient down through its weight "
                "already updated by this step (W - lr dW): update after the whole backward pass",
                l, down="updated",
            )  # fmt: skip
        if net.sizes[l] == net.sizes[l - 1] and net.sizes[l + 1] == net.sizes[l]:
            yield _Bug(
                "wrong-cache",
                f"{_layer(ctx, l)}'s backward is handed layer {l - 1}'s forward cache (x, z, a)",
                l, cache_of=l - 1,
            )  # fmt: skip


def _samples(n: int, which: str | None) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    if which == "but-last":
        keep[-1] = False
    elif which == "but-first":
        keep[0] = False
    elif which == "last":
        keep[:-1] = False
    return keep


def _derivative_bugs(ctx, l: int, name: str):
    """Layer l's derivative taken twice, or at its output a = f(z) instead of at z."""
    form, text = _FORMS[name]
    yield _Bug(
        "derivative-form",
        f"{_layer(ctx, l)}'s {name} derivative {text} is applied twice (dz = da f'(z) f'(z))",
        l, lambda da, z, a, x: da * form(z, a) ** 2,
    )  # fmt: skip
    f = _FORWARD[name]
    yield _Bug(
        "derivative-form",
        f"{_layer(ctx, l)}'s {name} derivative is evaluated at the activation a = {name}(z): "
        f"{name}'(a) where {name}'(z) = {text} is meant",
        l, lambda da, z, a, x: da * form(a, f(a)),
    )  # fmt: skip


def _delta_bugs(ctx):
    """The output delta of another cost: the squared error's (p - y) p (1 - p) under a
    cross-entropy on a sigmoid output."""
    if ctx.loss.name == "bce" and ctx.net.layers[-1].activation.name == "sigmoid":
        yield _Bug(
            "derivative-form",
            "the output delta is the squared error's (p - y) p (1 - p), under the "
            "cross-entropy cost whose delta is (p - y): look at the output layer's delta",
            delta=lambda a, y: (a - y) * a * (1 - a),
        )  # fmt: skip
    if ctx.loss.name == "bce-logits":
        sig = _FORWARD["sigmoid"]
        yield _Bug(
            "double-activation",
            "the output delta is sigmoid(sigmoid(z)) - y: the sigmoid applied to an output "
            "that already is a probability (bce-logits takes the logits z)",
            delta=lambda a, y: sig(sig(a)) - y,
        )  # fmt: skip
    plain = all(v is None or (np.isscalar(v) and v == 0) for v in ctx.loss.options.values())
    if ctx.loss.name == "ce" and plain:
        yield _Bug(
            "derivative-form",
            "the output delta is p, the softmax alone: the one-hot target is not subtracted "
            "(dz = p - y with y one-hot; the -1 at the target class is missing)",
            delta=lambda a, y: np.exp(_FORWARD["log_softmax"](a)),
        )  # fmt: skip


def _relu_masks(ctx, l: int):
    where = {
        "z >= 0 (1 at the kink z = 0, where torch takes 0)": lambda da, z, a, x: da * (z >= 0),
        "the layer's input x > 0, not z > 0": lambda da, z, a, x: (
            da * (x > 0) if x.shape == z.shape else da * np.nan
        ),
        "the upstream gradient da > 0, not z > 0": lambda da, z, a, x: da * (da > 0),
    }
    for text, fn in where.items():
        yield _Bug("kink-mask", f"{_layer(ctx, l)}'s relu mask is taken at {text}", l, fn)


def _target_bugs(ctx):
    Y = ctx.Y
    n = len(Y)
    if n < 2:
        return
    orders = {
        "reversed": np.arange(n)[::-1],
        "sorted": np.argsort(Y.reshape(n, -1)[:, 0], kind="stable"),
        "shifted by one sample": np.roll(np.arange(n), 1),
        "shifted by one sample the other way": np.roll(np.arange(n), -1),
    }
    for text, order in orders.items():
        if not np.array_equal(Y[order], Y):
            yield _Bug(
                "targets",
                f"scratch's targets are the batch's targets {text}: the targets were "
                "reordered (shuffled, sorted) on scratch's side only, not with the inputs",
                targets=Y[order],
            )  # fmt: skip
    if ctx.loss.task == "binary":
        yield _Bug("targets", "scratch's targets are flipped (1 - y)", targets=1 - Y)
    if ctx.loss.task == "multiclass":
        C = ctx.net.sizes[-1]
        yield _Bug(
            "targets",
            "scratch's labels are one class over (y + 1 mod C): an off-by-one in the labels",
            targets=(Y + 1) % C,
        )  # fmt: skip


def _plain_sgd(opt) -> bool:
    hyper = getattr(opt, "hyper", {})
    return getattr(opt, "name", None) == "sgd" and not (
        hyper.get("momentum") or hyper.get("weight_decay")
    )


def fits(s, g, g_ok, rel) -> bool:
    if g is None or g.shape != s.shape or not np.all(np.isfinite(g)):
        return False
    scale = max(np.linalg.norm(g_ok), 1e-300)
    apart = np.linalg.norm(g - g_ok) > 100 * rel * scale
    return apart and np.linalg.norm(s - g) <= rel * scale


def confirmed_causes(div, s: np.ndarray, t: np.ndarray, ctx) -> dict | None:
    """Every hypothesis whose recomputation of the divergent gradient equals scratch's, most
    likely first, as one diagnosis (None when none fits)."""
    if div.quantity == "loss":
        return _loss_targets(div, s, ctx)
    if div.quantity != "grad":
        return None
    if not s.any() and t.any():
        return {
            "cause": "gradient-missing",
            "explanation": f"scratch's {div.label} is zero everywhere while torch's is not: "
            "the gradient is never written (or written to a copy)",
        }
    if ctx.X.size * len(ctx.net.layers) > _BUDGET:
        return None  # some forty backward passes: too long for a batch this size
    key = f"layers.{div.layer}.{div.param}"
    right = _backprop(ctx, None)
    if right is None or key not in right:
        return None
    rel = 1e-9 if ctx.X.dtype == np.float64 else 1e-4
    found = []
    for bug in _hypotheses(ctx):
        with np.errstate(all="ignore"):
            g = _backprop(ctx, bug)
        if g is not None and bug.delta is not None:
            h = g[key]
            g = {key: h * (float(np.vdot(s, h)) / max(float(np.vdot(h, h)), 1e-300))}
        if g is not None and fits(s, g[key], right[key], rel):
            found.append(bug)
    if not found:
        return (
            _bias_total(div, s, right[key])
            or _bias_one_sample(div, s, right[f"dz.{div.layer}"], right[key])
            or _precision(div, s, t, ctx, right[key])
        )
    return _named(found, div.label)


def _loss_targets(div, s, ctx) -> dict | None:
    """The loss recomputed from torch's output with scratch's targets reordered."""
    out = ctx.torch_cache[-1][1].detach().numpy().astype(np.float64)
    fresh = scratch.LOSSES[ctx.loss.name](ctx.loss.reduction, **ctx.loss.options)
    right = float(fresh.forward(out, ctx.Y)[0])
    found = []
    for bug in _target_bugs(ctx):
        value = float(fresh.forward(out, bug.targets)[0])
        if abs(value - right) > 1e-6 * abs(right) and abs(float(s) - value) <= 1e-9 * abs(value):
            found.append(bug)
    return _named(found, div.label) if found else None


def _bias_total(div, s, right) -> dict | None:
    """A bias gradient summed over its units too: every element holds the layer's total."""
    total = float(right.sum())
    if div.param != "bias" or s.size < 2 or abs(total) < 1e-12 * np.abs(right).sum():
        return None
    if not np.allclose(s, total, rtol=1e-9, atol=0) or np.allclose(right, total, rtol=1e-6):
        return None
    return {
        "cause": "wrong-axis",
        "explanation": f"every element of scratch's {div.label} is the total over the layer's "
        "units: the bias gradient summed over every axis where the batch axis (axis=0) is "
        "meant",
    }


def _bias_one_sample(div, s, dz, right) -> dict | None:
    """A bias gradient that is one sample's dz: not summed over the batch."""
    if div.param != "bias" or len(dz) < 2 or dz.shape[1:] != s.shape:
        return None
    scale = max(float(np.linalg.norm(right)), 1e-300)
    for i, row in enumerate(dz):
        if (
            float(np.linalg.norm(row - right)) > 1e-6 * scale
            and float(np.linalg.norm(s - row)) <= 1e-9 * scale
        ):
            return {
                "cause": "not-summed",
                "explanation": f"scratch's {div.label} is sample {i}'s dz alone: the bias "
                "gradient is not summed over the batch (dz.sum(axis=0))",
            }
    return None


def _named(fits: list[_Bug], what: str) -> dict:
    first, rest = fits[0], fits[1:]
    words = first.words + "".join(f"; or, fitting the same numbers, {b.words}" for b in rest)
    out: dict = {"cause": first.cause, "explanation": f"scratch's {what} is recomputed exactly "
           f"when {words}"}  # fmt: skip
    if rest:
        out["also"] = [b.cause for b in rest]
    return out


def _precision(div, s, t, ctx, right) -> dict | None:
    """An error of float32 rounding's size in a float64 run: recompute the item with float32
    intermediates and compare the sizes of the two errors."""
    if ctx.X.dtype != np.float64:
        return None
    err = float(np.linalg.norm(s - t)) / max(float(np.linalg.norm(t)), 1e-300)
    if not 1e-11 < err < 1e-5:
        return None
    g32 = _backprop(ctx, None, np.float32)
    if g32 is None:
        return None
    key = f"layers.{div.layer}.{div.param}"
    err32 = float(np.linalg.norm(g32[key].astype(np.float64) - right)) / max(
        float(np.linalg.norm(right)), 1e-300
    )
    if not err32 / 30 <= err <= 30 * err32:
        return None
    return {
        "cause": "precision",
        "explanation": f"scratch's {div.label} is off by {err:.1e} relative, the size float32 "
        f"rounding leaves (recomputed with float32 intermediates: {err32:.1e}): a float32 "
        "array (or constant) somewhere in the float64 chain up to this gradient",
    }


def loss_ratio_cause(c: float, ctx) -> dict | None:
    """A constant ratio the squared error explains: its factor 2 missing, or the cross-entropy
    delta (p - y) used under the squared-error cost."""
    if ctx.loss.name != "mse":
        return None
    C = ctx.net.sizes[-1]
    n = len(ctx.X)
    per = {"mean": n * C, "sum": 1}[ctx.loss.reduction]
    if abs(c - 0.5) <= 1e-6 * 0.5:
        return {
            "cause": "derivative-form",
            "explanation": "scratch's output delta is half torch's: the factor 2 of "
            "d(p - y)^2 = 2 (p - y) is missing",
        }
    if per > 1 and abs(c - per / 2) <= 1e-6 * per:
        return {
            "cause": "derivative-form",
            "explanation": f"scratch's output delta is (p - y), the cross-entropy delta, where "
            f"the squared error's is 2 (p - y) / {per} (mean over N x C = {per})",
        }
    return None


def order_cause(div, s: np.ndarray, t: np.ndarray) -> dict | None:
    """Scratch's forward values are torch's rows in another order: the two sides see the
    samples (the batch) in different orders."""
    if div.quantity not in ("z", "a") or s.ndim != 2 or len(s) < 2:
        return None
    scale = max(np.abs(t).max(), 1e-300)
    near = np.abs(s[:, None, :] - t[None, :, :]).max(axis=2) <= 1e-12 * scale  # (N, N)
    one_to_one = np.all(near.sum(axis=0) == 1) and np.all(near.sum(axis=1) == 1)
    if not one_to_one or np.all(np.diag(near)):
        return None
    return {
        "cause": "data-order",
        "explanation": f"scratch's {div.label} holds torch's rows in another order: the "
        "samples (the batch order) differ between the two sides (an own shuffle, a "
        "permutation applied on one side only)",
    }
