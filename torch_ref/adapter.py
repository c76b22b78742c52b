"""User code as a lockstep side: a hand-written NumPy network, in its own names and layout.

A learner's network rarely looks like `scratch.MLP`. It keeps its parameters in a dict
(`params["W1"]`), in attributes (`self.W1`), or in lists (`self.weights[0]`); stores weights
(in, out) or (out, in) and biases (H,), (1, H) or (H, 1); and trains with a function that returns
gradients, one that returns the loss and gradients, or a fused step that updates the parameters
itself. `adapt` takes it as it is:

    net = adapt(params, activations=["sigmoid", "sigmoid"], loss="bce",
                grads=lambda X, y: my.loss_and_grads(params, X, y))

and works out which array is which layer's weight or bias, and in which layout, from the shapes
and the input width; where shapes cannot tell (a square layer), from a probe: the user's own
forward (or loss, or gradients) on a few rows of the data, compared with the description under
each candidate layout. Nothing is reshaped where a transpose is meant.

The engine compares in one canonical layout, `layers.{l}.weight` (out, in) and
`layers.{l}.bias` (out,), like `nn.Linear`; `ParamMap` carries each canonical name to the user's
name, transpose and bias shape both ways, for copying weights and for reporting a divergence as
`grad W1[3, 0]` in the user's own indexing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nn_parity import scratch
from nn_parity.scratch.activations import get_activation
from nn_parity.scratch.losses import check_output

__all__ = ["ParamMap", "UserNetwork", "adapt"]


@dataclass(frozen=True)
class Slot:
    """One user parameter and where it lives in the canonical layout."""

    user: str  # the user's name: "W1", "weights[0]", "params['W1']" is written "W1"
    canonical: str  # "layers.0.weight"
    transposed: bool  # stored (in, out): the canonical array is its transpose
    shape: tuple[int, ...]  # the user's shape

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        if self.canonical.endswith(".bias"):
            return a.reshape(-1)  # (H,), (1, H) and (H, 1) all hold the same H numbers
        return a.T if self.transposed else a

    def to_user(self, a: np.ndarray) -> np.ndarray:
        if self.canonical.endswith(".bias"):
            return np.asarray(a).reshape(self.shape)
        return np.asarray(a).T if self.transposed else np.asarray(a)

    def user_index(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """A canonical element index in the user's own indexing."""
        if self.canonical.endswith(".bias"):
            flat = index[0] if index else 0
            return tuple(int(i) for i in np.unravel_index(flat, self.shape)) if self.shape else ()
        return tuple(reversed(index)) if self.transposed else tuple(index)

    def describe(self) -> str:
        if self.canonical.endswith(".bias"):
            return f"{self.user} {self.shape} -> {self.canonical}"
        layout = "(in, out)" if self.transposed else "(out, in)"
        return f"{self.user} {self.shape} {layout} -> {self.canonical}"


@dataclass
class ParamMap:
    """The user's parameters in canonical names, both ways."""

    slots: list[Slot]
    sizes: list[int]  # [D, H_1, ..., C]
    bias: bool
    how: str = "shapes"  # "shapes" or "probe": what decided the layout

    @classmethod
    def of(cls, slots: list[Slot], width: int, how: str = "shapes") -> ParamMap:
        """The map for one assignment of the user's arrays, sizes read off its weights."""
        outs = [
            s.shape[1] if s.transposed else s.shape[0]
            for s in slots
            if s.canonical.endswith("weight")
        ]
        return cls(slots, [width, *outs], any(s.canonical.endswith("bias") for s in slots), how)

    @property
    def by_canonical(self) -> dict[str, Slot]:
        return {s.canonical: s for s in self.slots}

    @property
    def by_user(self) -> dict[str, Slot]:
        return {s.user: s for s in self.slots}

    def describe(self) -> list[str]:
        return [s.describe() for s in self.slots]


# --- reading and writing the user's parameters ------------------------------------------------


class _Access:
    """Reads and writes the user's arrays by name, afresh every time: a step may rebind them
    (Nielsen's `self.weights = [w - ... for ...]`)."""

    def __init__(self, params: Any, names: Sequence[str] | None):
        self.params = params
        if isinstance(params, Mapping):
            self.kind = "dict"
            keys = list(params) if names is None else list(names)
        elif isinstance(params, (list, tuple)):
            self.kind = "list"
            keys = [f"[{i}]" for i in range(len(params))] if names is None else list(names)
        else:
            self.kind = "object"
            keys = _discover(params) if names is None else list(names)
        self.names = self._expand(keys)

    def _expand(self, keys: list[str]) -> list[str]:
        """Lists of arrays (`weights`) become one name per element (`weights[0]`)."""
        names = []
        for k in keys:
            value = self._get_raw(k)
            if isinstance(value, (list, tuple)):
                names += [f"{k}[{i}]" for i in range(len(value))]
            else:
                names.append(k)
        return names

    def _get_raw(self, key: str) -> Any:
        """The value at a path: `W1`, `weights[0]`, `dense1.weights`, `layers[2].W`; a dict's
        own key first, dots and all."""
        if self.kind == "dict" and key in self.params:
            return self.params[key]
        container, last = self._parent(key)
        try:
            return container[last] if isinstance(last, int) else self._attr(container, last)
        except (KeyError, AttributeError, IndexError):
            where = "the parameter dict" if self.kind == "dict" else type(self.params).__name__
            raise ValueError(f"parameter {key!r} not found in {where}") from None

    def _parent(self, key: str) -> tuple[Any, str | int]:
        """The object holding the last step of a path, and that step."""
        steps: list[str | int] = []
        for part in key.split("."):
            m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", part)
            if m is None:
                raise ValueError(f"cannot read the parameter path {key!r}")
            if m.group(1):
                steps.append(m.group(1))
            steps += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
        node = self.params
        try:
            for step in steps[:-1]:
                node = node[step] if isinstance(step, int) else self._attr(node, step)
        except (KeyError, AttributeError, IndexError):
            where = "the parameter dict" if self.kind == "dict" else type(self.params).__name__
            raise ValueError(f"parameter {key!r} not found in {where}") from None
        return node, steps[-1]

    @staticmethod
    def _attr(node: Any, name: str) -> Any:
        return node[name] if isinstance(node, Mapping) else getattr(node, name)

    def get(self, name: str) -> np.ndarray:
        return self._get_raw(name)

    def read(self) -> dict[str, np.ndarray]:
        return {n: self.get(n) for n in self.names}

    def write(self, name: str, value: np.ndarray) -> None:
        """Into the user's existing array where it can (its identity kept), else rebinding."""
        current = self._get_raw(name)
        if (
            isinstance(current, np.ndarray)
            and current.shape == value.shape
            and current.flags.writeable
        ):
            np.copyto(current, value)
            return
        if self.kind == "dict" and name in self.params:
            self.params[name] = np.array(value)
            return
        container, last = self._parent(name)
        if isinstance(last, int) or isinstance(container, Mapping):
            container[last] = np.array(value)
        else:
            setattr(container, last, np.array(value))


def _discover(obj: Any) -> list[str]:
    """An object's float arrays and lists of float arrays, in the order it set them."""
    names = []
    for k, v in vars(obj).items():
        if k.startswith("_"):
            continue
        if _is_float_array(v) or (
            isinstance(v, (list, tuple)) and v and all(_is_float_array(e) for e in v)
        ):
            names.append(k)
    if not names:
        raise ValueError(
            f"found no float arrays among the attributes of {type(obj).__name__}; "
            "name its parameters with names=[...]"
        )
    return names


def _is_float_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind == "f"


# --- working out the layout --------------------------------------------------------------------


def _check_arrays(arrays: Mapping[str, Any]) -> np.dtype:
    dtypes = set()
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"parameter {name!r} is a {type(a).__name__}, not a NumPy array")
        if a.dtype.kind != "f":
            raise TypeError(
                f"parameter {name!r} has dtype {a.dtype}; expected float64 or float32 values"
            )
        if a.ndim not in (1, 2):
            raise ValueError(f"parameter {name!r} has shape {a.shape}; expected 1-D or 2-D")
        if not np.isfinite(a).all():
            raise ValueError(f"parameter {name!r} holds NaN or Inf")
        dtypes.add(a.dtype)
    if len(dtypes) != 1:
        raise TypeError(f"parameters mix dtypes {sorted(d.name for d in dtypes)}; use one")
    dtype = dtypes.pop()
    scratch.resolve_dtype(dtype)  # float64 or float32 only
    return dtype


def _candidates(
    shapes: dict[str, tuple[int, ...]], width: int, layers: int, out_width: int | None
) -> list[list[Slot]]:
    """Every assignment of the arrays to layers that the shapes allow, in declaration order:
    weights, and biases, each taken in the order the user declared them (two zero biases of
    one size could otherwise trade layers, and no probe could tell)."""
    names = list(shapes)
    found: list[list[Slot]] = []

    def bias_for(h: int, used: set[str], last_b: int) -> list[tuple[int, str | None]]:
        opts: list[tuple[int, str | None]] = []
        for j, n in enumerate(names):
            s = shapes[n]
            if j < last_b or n in used:
                continue
            if math.prod(s) == h and (len(s) == 1 or 1 in s):
                opts.append((j, n))
        return [*opts, (last_b, None)]

    def search(
        l: int, w: int, used: set[str], slots: list[Slot], last_w: int, last_b: int = 0
    ) -> None:
        if l == layers:
            if len(used) == len(names):
                found.append(list(slots))
            return
        for i, n in enumerate(names):
            s = shapes[n]
            if n in used or len(s) != 2 or i < last_w:
                continue
            for transposed, (d, h) in ((False, (s[1], s[0])), (True, s)):
                if d != w:
                    continue
                if l == layers - 1 and out_width is not None and h != out_width:
                    continue
                for j, b in bias_for(h, used | {n}, last_b):
                    new = [Slot(n, f"layers.{l}.weight", transposed, s)]
                    if b is not None:
                        new.append(Slot(b, f"layers.{l}.bias", False, shapes[b]))
                    used_now = used | {n} | ({b} if b else set())
                    search(l + 1, h, used_now, slots + new, i + 1, j + (b is not None))

    search(0, width, set(), [], 0)
    # one bias per layer or none at all; a weight shaped (H, H) appears twice, once per layout
    unique, seen = [], set()
    for c in found:
        has_bias = {s.canonical.split(".")[1] for s in c if s.canonical.endswith("bias")}
        if has_bias and len(has_bias) != layers:
            continue
        key = tuple(c)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _role(name: str) -> str | None:
    """ "weight" or "bias" when the user's name says which, else None."""
    last = re.sub(r"\[\d+\]", "", name.split(".")[-1]).lower()
    if "bias" in last or re.fullmatch(r"b_?\d*|b_\w+", last):
        return "bias"
    if "weight" in last or "kernel" in last or re.fullmatch(r"w_?\d*|w_\w+", last):
        return "weight"
    return None


def _layout_error(shapes: dict[str, tuple[int, ...]], width: int, layers: int, out_width) -> str:
    """Name the first array that fits no layer of the chain D -> ... -> C."""
    chain = f"{layers} layers from {width} inputs" + (
        f" to {out_width} outputs" if out_width is not None else ""
    )
    weights = [n for n, s in shapes.items() if len(s) == 2 and _role(n) != "bias"]
    biases = [n for n, s in shapes.items() if _role(n) == "bias"]
    if all(_role(n) for n in shapes):  # the names say which is which: count them
        if len(weights) < layers:
            return (
                f"{layers} activations make {layers} layers, but the parameters hold "
                f"{len(weights)} weights ({', '.join(weights)}): a weight missing, or an "
                "activation too many?"
            )
        if len(weights) > layers:
            prefix = f"{layers} activations for {len(weights)} weights ({', '.join(weights)}): "
            return prefix + _left_over(shapes, weights, width, layers, chain)
        if biases and len(biases) != layers:
            return (
                f"the parameters hold {len(biases)} biases ({', '.join(biases)}) for {layers} "
                "layers: a bias missing or extra?"
            )
    return _left_over(shapes, weights, width, layers, chain)


def _left_over(shapes, weights: list[str], width: int, layers: int, chain: str) -> str:
    """Walk the chain of weights from the input width; name the first that does not fit."""
    used: list[str] = []
    w = width
    for n, s in shapes.items():
        if len(s) != 2 or n not in weights:
            continue
        if len(used) == layers:
            return (
                f"parameter {n!r} of shape {s} is left over: the {chain} use "
                f"{', '.join(used)} (an extra parameter?)"
            )
        if w not in s:
            return (
                f"parameter {n!r} of shape {s} fits no layer of {chain}: the next takes {w} inputs"
            )
        used.append(n)
        w = s[1] if s[0] == w else s[0]
    return (
        f"the parameters {', '.join(f'{n} {s}' for n, s in shapes.items())} do not form {chain} "
        "(a missing or extra parameter?)"
    )


# --- the adapted network -----------------------------------------------------------------------


@dataclass
class UserNetwork:
    """A user's network, adapted. Build it with `adapt`."""

    access: _Access
    activations: list
    loss: scratch.Loss
    form: str  # "grads" or "step"
    fn: Callable
    update: Callable | None
    forward: Callable | None
    loss_fn: Callable | None
    dtype: np.dtype
    pmap: ParamMap | None = None
    layout: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # fn name per role, for messages
    last_raw_grads: Any = None  # the gradients as the user's function returned them

    # --- the parameters in canonical layout ---
    def get_params(self) -> dict[str, np.ndarray]:
        """Copies of the user's parameters, canonical names and layout, in the user's dtype."""
        assert self.pmap is not None
        return {
            s.canonical: np.array(s.to_canonical(self.access.get(s.user)), dtype=self.dtype)
            for s in self.pmap.slots
        }

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        assert self.pmap is not None
        for s in self.pmap.slots:
            self.access.write(s.user, s.to_user(np.asarray(params[s.canonical], self.dtype)))

    def description(self) -> scratch.MLP:
        """The built-in network the user's claims to compute, holding the user's values."""
        assert self.pmap is not None
        desc = scratch.MLP(self.pmap.sizes, self.activations, bias=self.pmap.bias, dtype=self.dtype)
        desc.load_state_dict(self.get_params())
        return desc

    # --- calling the user's functions, with messages that name them ---
    def call_forward(self, X: np.ndarray) -> tuple[np.ndarray, dict]:
        assert self.forward is not None
        got = self.run("forward", X)
        cache: dict = {}
        if isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], Mapping):
            got, cache = got
            # copies: a fused step may overwrite the arrays the cache holds (self.a1 *= ...)
            cache = {k: np.array(v) for k, v in cache.items() if isinstance(v, np.ndarray)}
        elif isinstance(got, tuple):
            got = got[0]
        out = np.array(got)
        assert self.pmap is not None, "the layout is resolved before the first forward"
        n, c = len(X), self.pmap.sizes[-1]
        if out.shape == (c, n) and c != n:
            out = out.T  # column-per-sample code (Nielsen's feedforward)
        if out.shape != (n, c) and not (c == 1 and out.shape == (n,)):
            raise UserCodeError(
                f"{self.names['forward']} returned shape {out.shape}; expected ({n}, {c}) "
                f"for {n} samples and {c} outputs"
            )
        return out.reshape(n, c), dict(cache)

    def call_grads(
        self, X: np.ndarray, Y: np.ndarray
    ) -> tuple[float | None, dict[str, np.ndarray]]:
        """The user's loss (if returned) and gradients, in canonical names and layout."""
        got = self.run("fn", X, Y)
        loss = None
        if isinstance(got, tuple) and len(got) == 2 and is_scalar(got[0]):
            # a NaN or Inf loss is a finding the lockstep reports at its step, not an error
            loss, got = float(got[0]), got[1]
        self.last_raw_grads = got
        return loss, self._grads_by_slot(got)

    def run(self, role: str, *args: Any) -> Any:
        """Call one of the user's functions; an exception inside it is theirs to read, so it
        comes back in one line naming the function and where in their file it was raised."""
        fn = {"fn": self.fn, "forward": self.forward, "loss_fn": self.loss_fn,
              "update": self.update}[role]  # fmt: skip
        try:
            return fn(*args)  # type: ignore[misc]
        except Exception as err:
            raise UserCodeError(
                f"{self.names[role]} raised {type(err).__name__}: {err}{_where(err)}"
            ) from err
        except SystemExit as err:  # sys.exit() in user code ends nothing but its own call
            raise UserCodeError(
                f"{self.names[role]} called sys.exit({err.code!r}){_where(err)}"
            ) from err

    def call_loss(self, X: np.ndarray, y: Any) -> float:
        value = self.run("loss_fn", X, y)
        if not is_scalar(value) and not (isinstance(value, np.ndarray) and value.size == 1):
            raise UserCodeError(
                f"{self.names['loss_fn']} returned {type(value).__name__} of shape "
                f"{np.shape(value)}; expected one number"
            )
        return float(np.asarray(value).reshape(()))

    def _grads_by_slot(self, got: Any) -> dict[str, np.ndarray]:
        assert self.pmap is not None
        fname = self.names["fn"]
        slots = self.pmap.slots
        if isinstance(got, Mapping):
            out = {}
            for s in slots:
                u = s.user
                for key in (u, "d" + u, "d" + u.capitalize(), "grad_" + u, u + "_grad", "d_" + u):
                    if key in got:
                        out[s.canonical] = self._grad(got[key], s)
                        break
                else:
                    raise UserCodeError(
                        f"{fname} returned no gradient for parameter {s.user!r} "
                        f"(keys: {sorted(map(str, got))})"
                    )
            return out
        flat = list(_flatten(got))
        order = [self.pmap.by_user[n] for n in self.access.names]
        if len(flat) != len(order):
            seq = isinstance(got, (list, tuple))
            kinds = ", ".join(type(e).__name__ for e in got) if seq else ""
            raise UserCodeError(
                f"{fname} returned a {type(got).__name__} ({kinds}) holding {len(flat)} values; "
                f"expected {len(order)} gradients, one per parameter "
                f"({', '.join(self.access.names)}), or a tuple (loss, gradients)"
            )
        return {s.canonical: self._grad(g, s) for s, g in zip(order, flat)}

    def _grad(self, g: Any, s: Slot) -> np.ndarray:
        g = np.asarray(g)
        if g.shape != s.shape:
            raise UserCodeError(
                f"{self.names['fn']} returned a gradient of shape {g.shape} for {s.user!r}, "
                f"whose shape is {s.shape}"
            )
        if g.dtype != self.dtype:  # a narrower float somewhere in the chain is a finding
            raise UserCodeError(
                f"{self.names['fn']} returned a {g.dtype} gradient for {s.user!r}, whose "
                f"parameters are {self.dtype}: compute it in {self.dtype} (a {g.dtype} array "
                "or literal somewhere in the backward pass narrows it)"
            )
        return s.to_canonical(g)

    def __repr__(self) -> str:
        sizes = "-".join(map(str, self.pmap.sizes)) if self.pmap else "?"
        return (
            f"UserNetwork({sizes}, {','.join(a.name for a in self.activations)}, "
            f"loss={self.loss.name}, {self.form}={self.names['fn']})"
        )


class UserCodeError(ValueError):
    """A fault in the user's own code while it runs: an exception raised inside their function
    (reported with where it happened, `sys.exit` included) or a value it returned that breaks
    the contract (a gradient of the wrong shape, dtype or key, a forward of the wrong shape).
    The lockstep keeps what was computed before it (`LockstepResult.fault`)."""


def _where(err: BaseException) -> str:
    """' (at file.py:12)': the deepest frame of the traceback outside libraries and nn-parity."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    ours = ("site-packages", "/torch_ref/", "/scratch/")
    mine = [f for f in frames if not any(part in f.filename for part in ours)]
    if not mine:
        return ""
    f = mine[-1]
    return f" (at {f.filename.rsplit('/', 1)[-1]}:{f.lineno}: {f.line})" if f.line else ""


def is_scalar(x: Any) -> bool:
    return isinstance(x, (float, int, np.floating, np.integer)) or (
        isinstance(x, np.ndarray) and x.ndim == 0
    )


def _flatten(x: Any):
    if isinstance(x, (list, tuple)):
        for e in x:
            yield from _flatten(e)
    else:
        yield x


def _fn_name(fn: Callable) -> str:
    name = (getattr(fn, "__qualname__", None) or repr(fn)).split("<locals>.")[-1]
    return "your lambda" if name == "<lambda>" else name


def adapt(
    params: Any,
    *,
    activations: Sequence[str],
    loss: str | scratch.Loss = "bce",
    grads: Callable | None = None,
    step: Callable | None = None,
    update: Callable | None = None,
    forward: Callable | None = None,
    loss_fn: Callable | None = None,
    names: Sequence[str] | None = None,
    layout: Mapping[str, str] | None = None,
) -> UserNetwork:
    """Adapt a hand-written NumPy network for the lockstep, without subclassing anything.

    params       the parameters: a dict of arrays, an object whose attributes hold them (or
                 lists of them), or a list; `names` picks which keys or attributes, in order
    activations  one per layer, as in `scratch.MLP` ("sigmoid", "tanh", "relu", ...)
    loss         the loss the network trains on ("bce", "bce-logits", ...), mean reduction
    grads        `grads(X, y) -> grads` or `-> (loss, grads)`: gradients by parameter name (or
                 in the parameters' order); nn-parity applies the update, `theta -= lr * g`,
                 unless `update(grads, lr)` (yours, taking the grads as you returned them) is
                 given
    step         or a fused `step(X, y, lr)` that updates the parameters itself; the gradient
                 compared is then the one the update implies, (before - after) / lr, with that
                 recovery's rounding allowed for explicitly
    forward      optional `forward(X) -> out` or `-> (out, cache)`: the network output (what
                 the loss takes: probabilities for bce, logits for bce-logits), with z1, a1, ...
                 in `cache` compared layer by layer; nn-parity calls it before each step, as a
                 training loop does
    loss_fn      optional `loss_fn(X, y) -> float`: your own loss at the parameters the step
                 starts from, compared with torch's (a fused step shows no loss otherwise)
    layout       settles what neither shapes nor a probe can: {"W1": "in,out" or "out,in"}

    X and y reach your functions as you pass them to `lockstep` (rows of them, with mini-batches):
    y keeps its shape, (N,) or (N, 1), and dtype. A fused step may return the loss it computed;
    it is then compared. Parameters at paths: `names=["[0].weights", "dense1.biases"]` reads a
    list's elements' and objects' attributes.
    """
    if (grads is None) == (step is None):
        raise ValueError("give exactly one of grads=(X, y) -> grads and step=(X, y, lr)")
    if update is not None and grads is None:
        raise ValueError("update= goes with grads=; a fused step= updates by itself")
    roles = (("grads", grads), ("step", step), ("update", update), ("forward", forward),
             ("loss_fn", loss_fn))  # fmt: skip
    for role, fn in roles:
        if fn is not None and not callable(fn):
            raise TypeError(f"{role} must be a function, got {type(fn).__name__} {fn!r}")
    acts = [get_activation(a) for a in activations]
    access = _Access(params, names)
    loss_s = scratch.get_loss(loss)
    if acts:
        check_output(loss_s, acts[-1].name)
    fn = grads if grads is not None else step
    assert fn is not None
    arrays = access.read()
    dtype = _check_arrays(arrays)
    net = UserNetwork(
        access=access,
        activations=acts,
        loss=loss_s,
        form="grads" if grads is not None else "step",
        fn=fn,
        update=update,
        forward=forward,
        loss_fn=loss_fn,
        dtype=dtype,
        layout=dict(layout or {}),
        names={
            "fn": _fn_name(fn),
            "forward": _fn_name(forward) if forward else "",
            "update": _fn_name(update) if update else "",
            "loss_fn": _fn_name(loss_fn) if loss_fn else "",
        },
    )
    for key, value in net.layout.items():
        if key not in arrays:
            raise ValueError(
                f"layout names {key!r}, which is not a parameter ({', '.join(arrays)})"
            )
        if value not in ("in,out", "out,in"):
            raise ValueError(f"layout[{key!r}] = {value!r}; expected 'in,out' or 'out,in'")
    return net


def resolve_layout(net: UserNetwork, X: np.ndarray, Y: np.ndarray, out_width: int | None) -> None:
    """Decide `net.pmap` from the shapes, the input width and, where they cannot tell, a probe.

    The user's arrays are left exactly as they were found, whatever the probe runs.
    """
    arrays = net.access.read()
    shapes = {n: tuple(a.shape) for n, a in arrays.items()}
    layers = len(net.activations)
    cands = _candidates(shapes, X.shape[1], layers, out_width)
    for key, value in net.layout.items():
        cands = [
            c for c in cands if all(s.transposed == (value == "in,out") for s in c if s.user == key)
        ]
    if not cands:
        raise ValueError(_layout_error(shapes, X.shape[1], layers, out_width))
    # names settle what shapes leave open: `biases` (5, 1) is no weight, `W2` (1, 5) no bias
    named = [
        c for c in cands if all(_role(s.user) in (None, s.canonical.split(".")[-1]) for s in c)
    ]
    cands = named or cands
    if len(cands) > 1:
        net.pmap = ParamMap.of(_probe(net, cands, X, Y), X.shape[1], "probe")
    else:
        net.pmap = ParamMap.of(cands[0], X.shape[1])


def _probe(net: UserNetwork, cands: list[list[Slot]], X: np.ndarray, Y: np.ndarray) -> list[Slot]:
    """The candidate layout under which the description reproduces the user's own numbers: its
    forward's output, else its gradients. A fused step is never probed: it would move the
    user's own optimizer state (their momentum, their step count), which nothing restores."""
    if net.forward is None and net.form == "step":
        hint = _square_hint(cands)
        raise ValueError(
            f"cannot tell how parameter {hint!r} is stored from shapes alone; give forward= "
            f"(nn-parity probes it) or layout={{{hint!r}: 'in,out'}} (x @ W) or "
            f"layout={{{hint!r}: 'out,in'}} (W @ x)"
        )
    rows = slice(0, min(len(X), 16))
    Xp, Yp = X[rows], Y[rows]
    saved = {n: np.array(a) for n, a in net.access.read().items()}
    errors = []
    try:
        for cand in cands:
            net.pmap = ParamMap.of(cand, X.shape[1])
            desc = net.description()
            out_d, cache_d = desc.forward(Xp.astype(desc.dtype))
            if net.forward is not None:
                mine, _ = net.call_forward(Xp)
                ref = out_d
            else:
                _, lc = net.loss.forward(out_d, net.loss.targets(Yp, out_d.shape[1], desc.dtype))
                ref_g = desc.backward(net.loss.backward(lc), cache_d)
                _, g = net.call_grads(Xp, Yp)
                mine = np.concatenate([np.ravel(g[k]) for k in ref_g])
                ref = np.concatenate([np.ravel(ref_g[k]) for k in ref_g])
            errors.append(
                float(np.linalg.norm(np.ravel(mine) - np.ravel(ref)))
                / max(float(np.linalg.norm(ref)), 1e-300)
            )
    finally:
        for n, a in saved.items():
            net.access.write(n, a)
        net.pmap = None
    order = np.argsort(errors)
    best = int(order[0])
    runner_up = errors[int(order[1])]
    if (errors[best] < 1e-6 and runner_up > 1e-6) or errors[best] * 100 < runner_up:
        return cands[best]
    hint = _square_hint(cands)
    raise ValueError(
        f"cannot tell how parameter {hint!r} is stored: its shape fits both layouts and the "
        f"probe could not decide; pass layout={{{hint!r}: 'in,out'}} (x @ W) "
        f"or layout={{{hint!r}: 'out,in'}} (W @ x)"
    )


def _square_hint(cands: list[list[Slot]]) -> str:
    """The parameter whose layout the candidates disagree on: a square one, as a rule."""
    square = sorted(
        {s.user for c in cands for s in c if len(s.shape) == 2 and s.shape[0] == s.shape[1]}
    )
    return square[0] if square else cands[0][0].user
