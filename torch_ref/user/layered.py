"""`adapt_layers`: the user's own layered network (conv, pool, affine, ...) as a lockstep side.

The architecture is declared with the spec grammar of `--layers` (`scratch.sequential.from_spec`,
the one grammar): "conv8x3,relu,pool2,flatten,affine10". The user's arrays are matched, in their
order (a dict's insertion order, or `names=`), to the spec's parametrised layers in order, each
layer's weight then its bias (batchnorm and layernorm: gamma then beta):

    conv weight      (F, C, KH, KW) as torch stores it, or (KH, KW, C, F) as NHWC code does
    affine weight    (out, in) as nn.Linear, or (in, out) as most NumPy code (x @ W)
    bias, gamma,     (n,), (1, n) or (n, 1): the same n numbers
    beta

Where the shape cannot tell (a square affine weight; a conv whose F, C and K are equal),
`weights={"W2": "in,out"}` (or "out,in", "F,C,KH,KW", "KH,KW,C,F") settles it, and the refusal
says which line to add.

layout="NCHW" (CS231n's) or "NHWC" (channels last): X and the per-layer outputs are compared as
the user's code holds them. In NHWC, a flatten after a conv reads (H, W, C) in that order, a
different vector from torch's nn.Flatten on (C, H, W): the torch mirror flattens in the user's
order (it permutes to (N, H, W, C) before flattening), so the affine weights after it mean the
same thing on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nn_parity import scratch
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.user.access import _Access, _flatten, is_scalar
from nn_parity.torch_ref.user.layered_state import check_dropout, check_stats
from nn_parity.torch_ref.user.layout import ParamMap, Slot
from nn_parity.torch_ref.user.network import UserCodeError, _fn_name

LAYOUTS = ("NCHW", "NHWC")
# declared forms -> the permutation taking the user's array to the canonical one
_FORMS = {
    "out,in": (0, 1),
    "in,out": (1, 0),
    "F,C,KH,KW": (0, 1, 2, 3),
    "KH,KW,C,F": (3, 2, 0, 1),
}
_NAMED = {(0, 1): "(out, in)", (1, 0): "(in, out)", (0, 1, 2, 3): "(F, C, KH, KW)",
          (3, 2, 0, 1): "(KH, KW, C, F)"}  # fmt: skip


@dataclass(frozen=True)
class LayerSlot(Slot):
    """A user parameter of a layered network: a weight stored in an axis order of its own
    (`perm` takes the user's array to the canonical one) or a vector of any 1-by-n shape."""

    perm: tuple[int, ...] = ()  # () for a bias, gamma or beta: the same n numbers, any shape

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        return a.reshape(-1) if not self.perm else a.transpose(self.perm)

    def to_user(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        return a.reshape(self.shape) if not self.perm else a.transpose(np.argsort(self.perm))

    def user_index(self, index: tuple[int, ...]) -> tuple[int, ...]:
        if not self.perm:
            flat = index[0] if index else 0
            return tuple(int(i) for i in np.unravel_index(flat, self.shape))
        user = [0] * len(index)
        for canon_axis, user_axis in enumerate(self.perm):
            user[user_axis] = int(index[canon_axis])
        return tuple(user)

    def describe(self) -> str:
        form = f" {_NAMED[self.perm]}" if self.perm else ""
        return f"{self.user} {self.shape}{form} -> {self.canonical}"


@dataclass
class UserLayeredNetwork:
    """A user's layered network, adapted. Build it with `adapt_layers`."""

    access: _Access
    seq: sq.Sequential  # the spec's network in canonical layout: the torch mirror's pattern
    spec: str
    input_shape: tuple[int, ...]  # per sample, as the user's X holds it
    layout: str
    loss: scratch.Loss
    form: str  # "grads" or "step"
    fn: Callable
    forward: Callable | None
    dtype: np.dtype
    pmap: ParamMap
    names: dict[str, str] = field(default_factory=dict)  # fn name per role, for messages
    dropout: dict[int, Any] = field(default_factory=dict)  # layer -> its mask's path or function
    stats: dict[int, Any] = field(default_factory=dict)  # batchnorm layer -> its running stats
    training: bool = True  # False: the user's code runs in eval (test) mode, torch's mirror too
    last_raw_grads: Any = None

    @property
    def param_map(self) -> ParamMap:
        return self.pmap

    def get_params(self) -> dict[str, np.ndarray]:
        """Copies of the user's parameters, canonical names and layout, in the user's dtype."""
        return {
            s.canonical: np.array(s.to_canonical(self.access.get(s.user)), dtype=self.dtype)
            for s in self.pmap.slots
        }

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        for s in self.pmap.slots:
            self.access.write(s.user, s.to_user(np.asarray(params[s.canonical], self.dtype)))

    def to_canonical_x(self, X: np.ndarray) -> np.ndarray:
        """The user's X as torch takes it: (N, C, H, W) from NHWC, else as it is."""
        return X.transpose(0, 3, 1, 2) if self.layout == "NHWC" and X.ndim == 4 else X

    def run(self, role: str, *args: Any) -> Any:
        """One of the user's functions, an exception inside it reported in one line."""
        from nn_parity.torch_ref.user.network import _where

        fn = {"fn": self.fn, "forward": self.forward}[role]
        try:
            return fn(*args)  # type: ignore[misc]
        except Exception as err:
            raise UserCodeError(
                f"{self.names[role]} raised {type(err).__name__}: {err}{_where(err)}"
            ) from err

    def call_forward(self, X: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """The output (N, classes) and the layer outputs the forward returned, by layer index:
        `forward(X) -> out`, `-> (out, outs)` with one array per spec layer, or `-> (out,
        {layer index: array})` for some of them."""
        got = self.run("forward", X)
        outs: Any = {}
        if isinstance(got, tuple):
            got, outs = got if len(got) == 2 else (got[0], {})
        n, width = len(X), self.seq.shapes[-1]
        out = np.array(got)
        if out.shape != (n, *width):
            raise UserCodeError(
                f"{self.names['forward']} returned shape {out.shape}; expected "
                f"{(n, *width)} for {n} samples and the spec's output {width}"
            )
        return out, self._layer_outputs(outs)

    def _layer_outputs(self, outs: Any) -> dict[int, np.ndarray]:
        L, fname = len(self.seq.layers), self.names["forward"]
        if isinstance(outs, Mapping):
            bad = [k for k in outs if not isinstance(k, (int, np.integer)) or not 0 <= k < L]
            if bad:
                raise UserCodeError(
                    f"{fname} returned layer outputs keyed {bad}; keys must be layer indices "
                    f"0..{L - 1} of the spec {self.spec!r}"
                )
            return {int(k): np.array(v) for k, v in outs.items()}
        outs = list(outs)
        if len(outs) != L:
            raise UserCodeError(
                f"{fname} returned {len(outs)} layer outputs; the spec {self.spec!r} has {L} "
                "layers: return one per layer (a list), or a dict {layer index: output}"
            )
        return {l: np.array(v) for l, v in enumerate(outs)}

    def call_grads(self, X: np.ndarray, y: Any) -> tuple[float | None, dict[str, np.ndarray]]:
        """The user's loss (if returned) and gradients, in canonical names and layout."""
        got = self.run("fn", X, y)
        loss = None
        if isinstance(got, tuple) and len(got) == 2 and is_scalar(got[0]):
            loss, got = float(got[0]), got[1]
        self.last_raw_grads = got
        slots, fname = self.pmap.slots, self.names["fn"]
        if isinstance(got, Mapping):
            raw = {}
            for s in slots:
                keys = (s.user, "d" + s.user, "d" + s.user.capitalize(), "grad_" + s.user)
                key = next((k for k in keys if k in got), None)
                if key is None:
                    raise UserCodeError(
                        f"{fname} returned no gradient for parameter {s.user!r} "
                        f"(keys: {sorted(map(str, got))})"
                    )
                raw[s.user] = got[key]
        else:
            flat = list(_flatten(got))
            if len(flat) != len(slots):
                raise UserCodeError(
                    f"{fname} returned {len(flat)} values; expected {len(slots)} gradients, "
                    f"one per parameter ({', '.join(s.user for s in slots)})"
                )
            raw = {s.user: g for s, g in zip(slots, flat, strict=True)}
        return loss, {s.canonical: self._grad(raw[s.user], s) for s in slots}

    def _grad(self, g: Any, s: Slot) -> np.ndarray:
        g = np.asarray(g)
        if g.shape != s.shape or g.dtype != self.dtype:
            raise UserCodeError(
                f"{self.names['fn']} returned a gradient {g.shape} {g.dtype} for {s.user!r}, "
                f"which is {s.shape} {self.dtype}"
            )
        return s.to_canonical(g)

    def __repr__(self) -> str:
        return (
            f"UserLayeredNetwork({self.spec!r}, {self.layout}, input {self.input_shape}, "
            f"loss={self.loss.name}, {self.form}={self.names['fn']})"
        )


def adapt_layers(
    params: Any,
    layers: str | Sequence[str],
    input_shape: Sequence[int],
    *,
    loss: str | scratch.Loss = "ce",
    grads: Callable | None = None,
    step: Callable | None = None,
    forward: Callable | None = None,
    names: Sequence[str] | None = None,
    layout: str = "NCHW",
    weights: Mapping[str, str] | None = None,
    dropout: Mapping[int, str | Callable] | None = None,
    stats: Mapping[int, str | Callable] | None = None,
    training: bool = True,
) -> UserLayeredNetwork:
    """Adapt a hand-written NumPy network of layers (conv, pool, affine, norms, activations) for
    the lockstep, without subclassing anything.

    params       the parameters: a dict of arrays, an object whose attributes hold them, or a
                 list; taken in order (or `names`'s order: "W1", "layers[0].W", ...), each
                 spec layer with parameters taking its weight, then its bias
    layers       the architecture, in `--layers`'s grammar: "conv8x3,relu,pool2,flatten,affine10"
    input_shape  one sample's shape as your X holds it: (C, H, W) for NCHW, (H, W, C) for NHWC
    loss         "ce" (softmax cross-entropy on the last layer's scores; default), "mse", ...
    grads        `grads(X, y) -> grads` or `-> (loss, grads)` (CS231n's `model.loss(X, y)`): by
                 parameter name (W1 or dW1) or in the parameters' order; nn-parity updates
    step         or a fused `step(X, y, lr)` updating the parameters itself (its loss, if it
                 returns one, is compared); with plain SGD the gradient is recovered as
                 (before - after) / lr, with that recovery's rounding allowed for
    forward      optional `forward(X) -> scores`, `-> (scores, outs)` with `outs` a list of one
                 array per spec layer, or `-> (scores, {layer index: array})`: each layer's
                 output, in your layout, compared with torch's at every step
    layout       "NCHW" or "NHWC": how X and the images between layers are held
    weights      where a shape cannot tell: {"W2": "in,out" | "out,in" | "F,C,KH,KW" |
                 "KH,KW,C,F"}
    dropout      for each dropout layer of the spec, by index, where your code keeps the mask
                 it drew this step: a path ("layers[3].mask") or a function `() -> mask`
                 (user/layered_state.py); torch applies the same mask
    stats        for each batchnorm layer whose running statistics your code keeps, where:
                 a path ("layers[1]") or a function (`lambda: model.bn_params[0]`) to a dict
                 or object with running_mean and running_var; compared with torch's each step
    training     False when your functions run the network in eval (test) mode: batchnorm
                 normalising by the running statistics (which must stay as they are), dropout
                 off (no masks read); torch's mirror in eval mode too

    Divergences are reported in your names and layout: `grad W1[2, 1, 0, 3]` indexes W1 as
    you store it.
    """
    if (grads is None) == (step is None):
        raise ValueError("give exactly one of grads=(X, y) -> grads and step=(X, y, lr)")
    for role, f in (("grads", grads), ("step", step), ("forward", forward)):
        if f is not None and not callable(f):
            raise TypeError(f"{role} must be a function, got {type(f).__name__} {f!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not known; expected 'NCHW' or 'NHWC'")
    shape = _input_shape(input_shape, layout)
    spec = layers if isinstance(layers, str) else ",".join(layers)
    access = _Access(params, names)
    arrays = access.read()
    dtype = _check_arrays(arrays)
    try:
        seq = sq.from_spec(spec, shape, dtype=dtype, rng=0)
    except ValueError as err:
        if layout != "NHWC" or len(shape) != 3:
            raise
        raise ValueError(
            f"{err} (your input_shape {tuple(input_shape)} read as (H, W, C) for layout NHWC, "
            f"shapes here (C, H, W))"
        ) from None
    if not isinstance(training, bool):
        raise TypeError(f"training must be True or False, got {training!r}")
    seq.train(training)
    masks = check_dropout(dropout, seq, spec) if training else {}
    kept = check_stats(stats, seq, spec)
    slots = match_params(arrays, seq, spec, dict(weights or {}))
    fn = grads if grads is not None else step
    assert fn is not None
    net = UserLayeredNetwork(
        access=access, seq=seq, spec=spec, input_shape=tuple(int(n) for n in input_shape),
        layout=layout, loss=scratch.get_loss(loss), form="grads" if grads else "step", fn=fn,
        forward=forward, dtype=dtype, names={"fn": _fn_name(fn), "forward":
        _fn_name(forward) if forward else ""},
        pmap=ParamMap(slots, [math.prod(s) for s in seq.shapes], True,
                      "declared" if weights else "shapes"), dropout=masks, stats=kept,
        training=training,
    )  # fmt: skip
    return net


def _input_shape(input_shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """The spec's (C, H, W) (or (D,)) from the user's per-sample shape."""
    try:
        shape = tuple(int(n) for n in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be a tuple of sizes, got {input_shape!r}") from None
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(
            f"input_shape {input_shape!r}: one sample's shape, (C, H, W) for NCHW, (H, W, C) "
            "for NHWC, or (D,)"
        )
    return (shape[2], shape[0], shape[1]) if layout == "NHWC" and len(shape) == 3 else shape


def _check_arrays(arrays: Mapping[str, Any]) -> np.dtype:
    dtypes = set()
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            what = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise TypeError(f"parameter {name!r} is {what}; expected a float64 or float32 array")
        if not np.isfinite(a).all():
            raise ValueError(f"parameter {name!r} holds NaN or Inf")
        dtypes.add(a.dtype)
    if len(dtypes) != 1:
        raise TypeError(f"parameters mix dtypes {sorted(d.name for d in dtypes)}; use one")
    dtype = dtypes.pop()
    scratch.resolve_dtype(dtype)
    return dtype


def _stored(canon: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a canonical `canon` array has when stored in the user's axis order `perm`."""
    return tuple(int(canon[i]) for i in np.argsort(perm))


def _forms(canon: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The permutations a weight of canonical shape `canon` may be stored in."""
    return [(0, 1), (1, 0)] if len(canon) == 2 else [(0, 1, 2, 3), (3, 2, 0, 1)]


def _slot_for(user: str, shape, canon_name: str, canon, declared: str | None, spec_at: str):
    """One user array as the parameter `canon_name` of canonical shape `canon`, or a refusal."""
    if len(canon) == 1:  # bias, gamma, beta: (n,), (1, n), (n, 1)
        if declared is not None:
            raise ValueError(f"weights[{user!r}] declares a layout for a vector parameter")
        if math.prod(shape) == canon[0] and (len(shape) == 1 or (len(shape) == 2 and 1 in shape)):
            return LayerSlot(user, canon_name, False, tuple(shape))
        raise ValueError(
            f"parameter {user!r} of shape {tuple(shape)} does not fit the "
            f"{canon_name.rsplit('.', 1)[1]} of {spec_at}: expected ({canon[0]},), "
            f"(1, {canon[0]}) or ({canon[0]}, 1)"
        )
    forms = _forms(canon)
    fits = [p for p in forms if _stored(canon, p) == shape]
    if declared is not None:
        perm = _FORMS.get(declared)
        if perm not in forms:
            choices = " or ".join(repr(k) for k, v in _FORMS.items() if v in forms)
            raise ValueError(f"weights[{user!r}] = {declared!r}; expected {choices}")
        fits = [perm] if perm in fits else []
    if not fits:
        expected = " or ".join(str(_stored(canon, p)) + " " + _NAMED[p] for p in forms)
        raise ValueError(
            f"parameter {user!r} of shape {tuple(shape)} does not fit the weight of {spec_at}: "
            f"expected {expected}"
        )
    if len(fits) > 1 and fits[0] != fits[1]:
        a, b = (k for k, v in _FORMS.items() if v in fits)
        raise ValueError(
            f"parameter {user!r} of shape {tuple(shape)} could be stored {_NAMED[fits[0]]} or "
            f"{_NAMED[fits[1]]}: declare which, weights={{{user!r}: {a!r}}} (or {b!r})"
        )
    return LayerSlot(user, canon_name, fits[0] != tuple(range(len(canon))), shape, fits[0])


def match_params(
    arrays: Mapping[str, np.ndarray], seq: sq.Sequential, spec: str, weights: dict[str, str]
) -> list[LayerSlot]:
    """The user's arrays, in order, as the spec's parameters in order (each layer's weight,
    then its bias), each stored as its shape (or `weights`) says."""
    tokens = spec.split(",")
    wanted = [(f"layers.{k}", v.shape) for k, v in seq.params.items()]
    users = list(arrays)
    unknown = [k for k in weights if k not in arrays]
    if unknown:
        raise ValueError(f"weights names {unknown[0]!r}, not a parameter ({', '.join(users)})")
    if len(users) != len(wanted):
        parts = ", ".join(f"{tokens[int(n.split('.')[1])].strip()} {n.rsplit('.', 1)[1]}"
                          for n, _ in wanted)  # fmt: skip
        few = "too few" if len(users) < len(wanted) else "too many"
        raise ValueError(
            f"{few} parameters: the spec {spec!r} has {len(wanted)} ({parts}), you gave "
            f"{len(users)} ({', '.join(users)})"
        )
    slots = []
    for user, (canon_name, canon) in zip(users, wanted, strict=True):
        l = int(canon_name.split(".")[1])
        at = f"layer {l} ({tokens[l].strip()!r})"
        shape = tuple(np.shape(arrays[user]))
        try:
            slots.append(_slot_for(user, shape, canon_name, canon, weights.get(user), at))
        except ValueError as err:
            other = next((u for u in users if u != user and _fits(arrays[u], canon)), None)
            if other is None or user in weights:
                raise
            raise ValueError(
                f"{err}; {other!r} would fit there: parameters are taken in order, each "
                f"layer's weight then its bias; give names=[...] in that order"
            ) from None
    return slots


def _fits(a: np.ndarray, canon: tuple[int, ...]) -> bool:
    """Whether an array of this shape could hold a parameter of canonical shape `canon`."""
    try:
        _slot_for("?", tuple(np.shape(a)), "layers.0.x", canon, None, "?")
    except ValueError as err:
        return "could be stored" in str(err)  # fits two ways: it fits
    return True


__all__ = ["LayerSlot", "UserLayeredNetwork", "adapt_layers", "match_params"]
