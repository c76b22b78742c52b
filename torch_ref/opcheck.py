"""Check one hand-derived op (a NumPy forward and backward) against torch's autograd, in one call.

    result = check_op(forward, backward, torch_ref, inputs={...}, params={...}, state={...})

- `forward(**arrays) -> (out, cache)` is called with the inputs, params and state by the user's
  own names (fresh copies every call: nothing of the caller's is modified). It may update the
  state arrays in place (batchnorm's running statistics) or return `(out, cache, new_state)`.
- `backward(dout, cache)` returns one gradient per float input and per param: a dict by name
  (`"x"` or `"dx"`), a tuple in the order inputs then params, or a bare array when there is one.
- `torch_ref` is a function of tensors, called with the inputs, params and state in that order
  (positionally, so `torch.sigmoid` works as it is), or an `nn.Module` called with the inputs
  in order, its parameters (and buffers, for state) taken from `params` and `state` through
  `names={"gamma": "weight", ...}` (default: the same name).
- `layouts={"W": "T", "x": "NHWC->NCHW"}` declares how a user's array is laid out against
  torch's; `out_layout` the same for the output. Arrays are transposed, never reshaped, and
  every index in the report is in the user's layout.

NaN and Inf anywhere are refused, and so are more than 1000 upstream gradients (with what they
would cost). Integer and bool inputs (labels, indices, masks) and the names in `no_grad` take
no gradient: they are passed through and not compared. The check then:

1. runs both forwards on the same inputs and compares the output and every state array;
2. feeds both backwards the same `upstream` seeded random upstream gradients (never ones
   alone: a bug that cancels under dout = 1 must not hide) and compares every gradient;
3. at the first element outside tolerance, computes the float64 central difference of
   L = sum(out * dout) through the torch reference (one-sided where the two sides of the
   element disagree: a relu kink, a max-pool tie; a mismatch that both sides explain as one
   of the two one-sided derivatives is a kink, listed in `kinks`, not a failure, when the
   elements tied at its value, moved together, agree too: see `_tie_mismatch`);
4. names the likely cause where the mismatch has a fingerprint (see `_fingerprint`).

Tolerances come from `compare.tolerance`: the output as "z" (as "loss" when it is a scalar),
state as "param", gradients as "grad", unless `tolerances={name: (rtol, atol)}` overrides an
item; docs/ops.md derives them for the gallery's ops.
"""

from __future__ import annotations

import copy
import html
import inspect
import itertools
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from nn_parity.scratch.validate import check_finite

from .compare import Mismatch, first_mismatch, tolerance
from .diagnose import _constant_ratio

__all__ = ["ItemResult", "OpCheckResult", "OpMismatch", "assert_op", "check_op", "parse_layout"]

_FLOATS = {np.dtype(np.float32), np.dtype(np.float64)}
_MAX_PROBES = 32  # finite-difference probes per item before a mismatch is reported unexplained
_MAX_UPSTREAM = 1000  # upstream gradients per check: each runs both forwards and backwards


# --- the result ---------------------------------------------------------------------------


@dataclass
class ItemResult:
    """One compared item, over every upstream gradient: its largest differences and verdict."""

    name: str  # "out", a state name, or an input or param name (its gradient)
    kind: str  # "output", "state" or "grad"
    max_abs: float  # largest |scratch - torch|
    max_rel: float  # largest normwise ||scratch - torch|| / ||torch||
    passed: bool
    rtol: float
    atol: float

    @property
    def label(self) -> str:
        return f"d{self.name}" if self.kind == "grad" else self.name

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "passed": self.passed,
        }


@dataclass
class OpMismatch:
    """The first element outside tolerance, in the user's names and layout."""

    name: str
    kind: str
    index: tuple[int, ...] | None  # None when the item failed as a whole (its dtype)
    scratch: float | None
    torch: float | None
    trial: int  # which upstream gradient (0-based); outputs and state fail on the first
    count: int = 0  # elements outside tolerance
    total: int = 0
    rtol: float = 0.0
    atol: float = 0.0
    fd: float | None = None  # float64 central difference (gradients only)
    fd_one_sided: tuple[float, float] | None = None  # (left, right) where the element is a kink
    fd_agrees_with: str | None = None  # "scratch", "torch", "both", "neither"
    cause: str | None = None
    explanation: str | None = None

    @property
    def label(self) -> str:
        what = {"grad": "d", "state": "state ", "output": ""}[self.kind]
        idx = "" if not self.index else "[" + ", ".join(map(str, self.index)) + "]"
        return f"{what}{self.name}{idx}"

    def __str__(self) -> str:
        if self.index is None:
            return f"{self.label}: {self.explanation}"
        lines = [
            f"{self.label}: scratch {self.scratch!r}, torch {self.torch!r}"
            + (f" (upstream gradient #{self.trial})" if self.kind == "grad" else ""),
            f"  {self.count} / {self.total} elements differ (rtol={self.rtol:.3g}, "
            f"atol={self.atol:.3g})",
        ]
        if self.fd_one_sided is not None:
            left, right = self.fd_one_sided
            lines.append(
                f"  finite differences: a kink, one-sided {left!r} (left) and {right!r} "
                f"(right): agrees with {self.fd_agrees_with}"
            )
        elif self.fd is not None:
            lines.append(f"  finite differences: {self.fd!r}: agrees with {self.fd_agrees_with}")
        if self.cause:
            lines.append(f"  likely cause ({self.cause}): {self.explanation}")
        return "\n".join(lines)


@dataclass
class OpCheckResult:
    passed: bool
    items: list[ItemResult]
    first_mismatch: OpMismatch | None
    dtype: str
    upstream: int  # how many upstream gradients were fed to both backwards
    kinks: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    @property
    def table(self) -> list[dict]:
        """Per item: name, kind, max_abs, max_rel, passed."""
        return [it.as_dict() for it in self.items]

    def __repr__(self) -> str:
        if self.passed:
            return f"OpCheckResult(passed=True, {len(self.items)} items, {self.dtype})"
        m = self.first_mismatch
        assert m is not None
        cause = f" ({m.cause})" if m.cause else ""
        return f"OpCheckResult(passed=False, first_mismatch={m.label}{cause})"

    def __str__(self) -> str:
        n_bad = sum(not it.passed for it in self.items)
        head = (
            f"op check {'passed' if self.passed else 'FAILED'}: "
            f"{len(self.items) - n_bad} of {len(self.items)} items agree "
            f"({self.dtype}, {self.upstream} upstream gradients)"
        )
        width = max(len(it.label) for it in self.items) + 2
        rows = [f"  {'item':<{width}}{'kind':<8}{'max_abs':>10}  {'max_rel':>10}  passed"]
        for it in self.items:
            rows.append(
                f"  {it.label:<{width}}{it.kind:<8}{it.max_abs:>10.3g}  {it.max_rel:>10.3g}  "
                f"{'yes' if it.passed else 'NO'}"
            )
        out = [head, *rows]
        if self.kinks:
            out.append(
                f"  {len(self.kinks)} element(s) on a kink, both sides one-sided derivatives"
            )
        if self.first_mismatch is not None:
            out.append("first mismatch: " + str(self.first_mismatch))
        return "\n".join(out)

    def _repr_html_(self) -> str:
        e = html.escape
        verdict = "passed" if self.passed else "FAILED"
        color = "#1a7f37" if self.passed else "#cf222e"
        rows = "".join(
            f"<tr><td>{e(it.label)}</td><td>{e(it.kind)}</td><td>{it.max_abs:.3g}</td>"
            f"<td>{it.max_rel:.3g}</td><td>{'yes' if it.passed else 'NO'}</td></tr>"
            for it in self.items
        )
        first = (
            ""
            if self.first_mismatch is None
            else f"<pre>{e('first mismatch: ' + str(self.first_mismatch))}</pre>"
        )
        return (
            f"<div><b style='color:{color}'>op check {verdict}</b> "
            f"({e(self.dtype)}, {self.upstream} upstream gradients)"
            "<table><tr><th>item</th><th>kind</th><th>max_abs</th><th>max_rel</th>"
            f"<th>passed</th></tr>{rows}</table>{first}</div>"
        )


# --- layouts ------------------------------------------------------------------------------


def parse_layout(spec, ndim: int | None, name: str) -> tuple[int, ...]:
    """The axis permutation taking the user's array to torch's layout.

    `spec` is "T" (all axes reversed: a matrix transpose), a string "NHWC->NCHW" (the user's
    axes named on the left, torch's order on the right), or a tuple of axes for np.transpose.
    """
    if isinstance(spec, str) and spec == "T":
        if ndim is None:
            raise ValueError(f"layout 'T' for {name!r} needs the array's number of axes")
        return tuple(range(ndim))[::-1]
    if isinstance(spec, str):
        src, arrow, dst = spec.replace(" ", "").partition("->")
        if not arrow or sorted(src) != sorted(dst) or len(set(src)) != len(src):
            raise ValueError(
                f"layout for {name!r} must be 'T' or like 'NHWC->NCHW' (the same letters "
                f"on both sides), got {spec!r}"
            )
        perm = tuple(src.index(c) for c in dst)
    else:
        try:
            perm = tuple(int(a) for a in spec)
        except (TypeError, ValueError):
            raise TypeError(
                f"layout for {name!r} must be 'T', 'NHWC->NCHW' or a tuple of axes, got {spec!r}"
            ) from None
        if sorted(perm) != list(range(len(perm))):
            raise ValueError(f"layout for {name!r} must be a permutation of axes, got {spec!r}")
    if ndim is not None and len(perm) != ndim:
        raise ValueError(f"layout {spec!r} for {name!r} has {len(perm)} axes but {name} has {ndim}")
    return perm


# --- the two sides ------------------------------------------------------------------------


@dataclass
class _Spec:
    """Everything check_op validated, in one place."""

    forward: Callable
    backward: Callable
    torch_ref: Callable | torch.nn.Module
    arrays: dict[str, np.ndarray]  # inputs, params and state, the caller's (never written)
    inputs: list[str]
    params: list[str]
    state: list[str]
    grad_names: list[str]  # float inputs not in no_grad, then params
    dtype: np.dtype
    perms: dict  # user -> torch axes by name ("out": the output; "T": all axes reversed)
    module_names: dict[str, str]  # user param/state name -> module parameter/buffer name


def _perm(spec: _Spec, name: str, a: np.ndarray):
    perm = spec.perms.get(name)
    if perm is None:
        return None
    perm = tuple(range(a.ndim))[::-1] if perm == "T" else perm
    if len(perm) != a.ndim:
        raise ValueError(f"layout {perm} for {name!r} has {len(perm)} axes but {name} has {a.ndim}")
    return perm


def _to_torch(spec: _Spec, name: str, a: np.ndarray) -> np.ndarray:
    perm = _perm(spec, name, a)
    return a if perm is None else np.transpose(a, perm)


def _to_user(spec: _Spec, name: str, a: np.ndarray) -> np.ndarray:
    perm = _perm(spec, name, a)
    return a if perm is None else np.transpose(a, np.argsort(perm))


def _tensor(a: np.ndarray) -> torch.Tensor:
    if a.dtype.kind in "iu":  # indices and labels: torch indexes with int64
        a = a.astype(np.int64)
    return torch.from_numpy(np.array(a, order="C"))  # a copy: autograd never sees the caller's


def _run_torch(spec: _Spec, arrays: Mapping[str, np.ndarray], dout, need_grads: bool):
    """torch's output, gradients and state, all as float arrays in the user's layout."""
    tensors = {k: _tensor(_to_torch(spec, k, v)) for k, v in arrays.items()}
    grad_in = [k for k in spec.grad_names if k in spec.inputs]
    for k in grad_in:
        tensors[k].requires_grad_(True)
    ref = spec.torch_ref
    if isinstance(ref, torch.nn.Module):
        module = copy.deepcopy(ref).to(_tdtype(spec))
        named = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        with torch.no_grad():
            for k in spec.params + spec.state:
                target = named[spec.module_names[k]]
                if target.shape != tensors[k].shape:
                    raise ValueError(
                        f"{k!r} has shape {tuple(tensors[k].shape)} in torch's layout but "
                        f"{type(ref).__name__}.{spec.module_names[k]} has {tuple(target.shape)}"
                    )
                target.copy_(tensors[k])
        out = _call_ref(module, [tensors[k] for k in spec.inputs])
        grad_at = [tensors[k] for k in grad_in] + [named[spec.module_names[k]] for k in spec.params]
        state_t = {k: named[spec.module_names[k]] for k in spec.state}
    else:
        for k in spec.params:
            tensors[k].requires_grad_(True)
        out = _call_ref(ref, [tensors[k] for k in spec.inputs + spec.params + spec.state])
        grad_at = [tensors[k] for k in spec.grad_names]
        state_t = {k: tensors[k] for k in spec.state}
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the torch reference must return one tensor, got {type(out).__name__}")
    out_np = _to_user(spec, "out", out.detach().numpy())
    state = {k: _to_user(spec, k, v.detach().numpy().copy()) for k, v in state_t.items()}
    grads = {}
    if need_grads and spec.grad_names:
        if not out.requires_grad:
            raise ValueError(
                f"the torch reference is not differentiable in {spec.grad_names[0]!r}: its "
                "output has no autograd history (list inputs that take no gradient in no_grad)"
            )
        dout_t = torch.from_numpy(np.array(_to_torch(spec, "out", dout), order="C"))
        got = torch.autograd.grad(out, grad_at, grad_outputs=dout_t, allow_unused=True)
        for k, g in zip(spec.grad_names, got):
            if g is None:
                raise ValueError(
                    f"the torch reference is not differentiable in {k!r}: autograd gives it "
                    "no gradient (list it in no_grad if it takes none)"
                )
            grads[k] = _to_user(spec, k, g.numpy())
    return out_np, grads, state


def _call_ref(ref, args: list[torch.Tensor]):
    try:
        return ref(*args)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        shapes = ", ".join(str(tuple(a.shape)) for a in args)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"the torch reference failed on tensors of shapes {shapes} (torch's layout): "
            f"{type(e).__name__}: {first}"
        ) from e


def _tdtype(spec: _Spec) -> torch.dtype:
    return torch.float64 if spec.dtype == np.float64 else torch.float32


def _copies(spec: _Spec, dtype=None) -> dict[str, np.ndarray]:
    return {
        k: v.astype(dtype if (dtype is not None and v.dtype in _FLOATS) else v.dtype, copy=True)
        for k, v in spec.arrays.items()
    }


def _run_scratch(spec: _Spec, dout):
    arrays = _copies(spec)
    res = spec.forward(**arrays)
    if not isinstance(res, tuple) or len(res) not in (2, 3):
        raise TypeError(
            f"forward must return (out, cache) or (out, cache, new_state), got {_what(res)}"
        )
    out, cache = np.asarray(res[0]), res[1]
    state = {k: arrays[k] for k in spec.state}
    if len(res) == 3:
        if not isinstance(res[2], Mapping):
            raise TypeError(f"forward's third value must be a dict of state, got {_what(res[2])}")
        state.update({k: np.asarray(v) for k, v in res[2].items() if k in state})
    grads = None if dout is None else _grads(spec, spec.backward(dout, cache))
    return out, grads, state


def _what(x) -> str:
    if isinstance(x, tuple):
        return f"a tuple of {len(x)}"
    return type(x).__name__


def _grads(spec: _Spec, got) -> dict[str, np.ndarray]:
    """The backward's gradients by name, checked for count, names and shapes."""
    names = spec.grad_names
    expected = f"one per float input and param: {', '.join(names)}"
    if isinstance(got, Mapping):
        grads = {}
        for key, g in got.items():
            name = key if key in names else key[1:] if key[:1] == "d" and key[1:] in names else None
            if name is None:
                hint = (
                    " (it takes no gradient)"
                    if key in spec.arrays or key[1:] in spec.arrays
                    else ""
                )
                raise ValueError(
                    f"backward returned a gradient for {key!r}{hint}; expected {expected}"
                )
            grads[name] = g
        missing = [n for n in names if n not in grads]
        if missing:
            raise ValueError(
                f"backward returned no gradient for {missing[0]!r}; expected {expected}"
            )
    else:
        seq = [got] if isinstance(got, np.ndarray) or np.isscalar(got) else got
        if not isinstance(seq, Sequence) and not isinstance(seq, list):
            raise TypeError(f"backward must return a dict, a tuple or an array, got {_what(got)}")
        if len(seq) != len(names):
            n = len(seq)
            raise ValueError(f"backward returned {n} gradient{'s' * (n != 1)}; expected {expected}")
        grads = dict(zip(names, seq))
    out = {}
    for name in names:
        g = grads[name]
        if g is None:
            raise ValueError(f"backward returned None for {name!r}; expected {expected}")
        g = np.asarray(g)
        if g.shape != spec.arrays[name].shape:
            raise ValueError(
                f"backward's gradient for {name!r} has shape {g.shape} but {name} has shape "
                f"{spec.arrays[name].shape}"
            )
        out[name] = g
    return out


# --- validation ---------------------------------------------------------------------------


def _validate(
    forward, backward, torch_ref, inputs, params, state, names, layouts, out_layout, no_grad
) -> _Spec:
    if not callable(forward) or not callable(backward):
        bad = "forward" if not callable(forward) else "backward"
        raise TypeError(
            f"{bad} must be callable, got {_what(forward if bad == 'forward' else backward)}"
        )
    if not (isinstance(torch_ref, torch.nn.Module) or callable(torch_ref)):
        raise TypeError(
            f"torch_ref must be a function of tensors or an nn.Module, got {_what(torch_ref)}"
        )
    groups = {"input": inputs, "param": params or {}, "state": state or {}}
    for what, group in groups.items():
        if not isinstance(group, Mapping):
            raise TypeError(f"{what}s must be a dict of name -> array, got {_what(group)}")
    if not inputs:
        raise ValueError("inputs must name at least one array, got none")
    arrays: dict[str, np.ndarray] = {}
    for what, group in groups.items():
        for k, v in group.items():
            if k in arrays:
                raise ValueError(f"{k!r} is named twice (in inputs, params or state)")
            if k == "out":
                raise ValueError("'out' names the output; call the array something else")
            if isinstance(v, torch.Tensor):
                raise TypeError(f"{what} {k!r} must be a NumPy array, got a torch tensor")
            if not isinstance(v, np.ndarray):
                raise TypeError(f"{what} {k!r} must be a NumPy array, got {_what(v)}")
            if v.dtype.kind not in "fiub" or (v.dtype.kind == "f" and v.dtype not in _FLOATS):
                raise TypeError(
                    f"{what} {k!r} has dtype {v.dtype}; expected float32 or float64 "
                    "(or integers/bool for an input that takes no gradient)"
                )
            if what != "input" and v.dtype not in _FLOATS:
                raise TypeError(
                    f"{what} {k!r} has dtype {v.dtype} but a {what} "
                    f"{'takes a gradient' if what == 'param' else 'is compared as floats'}: "
                    "expected float32 or float64"
                )
            # NaN against NaN would fail a correct op, and Inf misplace it
            check_finite(v, k, f"{what} {k!r}")
            arrays[k] = v
    no_grad = (no_grad,) if isinstance(no_grad, str) else tuple(no_grad)
    for k in no_grad:
        if k not in inputs:
            raise ValueError(f"no_grad names {k!r}, which is not an input ({', '.join(inputs)})")
    floats = {k: v.dtype for k, v in arrays.items() if v.dtype in _FLOATS}
    if not floats:
        raise TypeError("no float array among the inputs and params: nothing to differentiate")
    if len(set(floats.values())) > 1:
        (k1, d1), (k2, d2) = next(
            (a, b) for a, b in itertools.combinations(floats.items(), 2) if a[1] != b[1]
        )
        raise ValueError(f"inputs mix dtypes: {k1!r} is {d1} but {k2!r} is {d2}")
    grad_names = [k for k in inputs if arrays[k].dtype in _FLOATS and k not in no_grad]
    grad_names += list(params or {})
    perms: dict[str, tuple[int, ...] | str] = {}
    for k, lay in (layouts or {}).items():
        if k not in arrays:
            raise ValueError(f"layouts names {k!r}, which is not an input, param or state")
        perms[k] = parse_layout(lay, arrays[k].ndim, k)
    if out_layout is not None:  # the output's ndim is known only after a forward: "T" waits
        perms["out"] = "T" if out_layout == "T" else parse_layout(out_layout, None, "out")
    module_names: dict[str, str] = {}
    if isinstance(torch_ref, torch.nn.Module):
        module_names = _map_module(torch_ref, list(params or {}), list(state or {}), names or {})
    elif names:
        raise ValueError("names maps params to an nn.Module's; torch_ref is a function")
    sig_error = _signature_error(forward, arrays)
    if sig_error:
        raise TypeError(sig_error)
    return _Spec(
        forward, backward, torch_ref, arrays, list(inputs), list(params or {}),
        list(state or {}), grad_names, next(iter(floats.values())), perms, module_names,
    )  # fmt: skip


def _signature_error(fn, arrays) -> str | None:
    try:
        inspect.signature(fn).bind(**arrays)
    except TypeError as e:
        return f"forward cannot take the arrays {', '.join(arrays)} by name: {e}"
    except ValueError:  # builtins without a signature: let the call speak
        return None
    return None


def _map_module(module, params, state, names) -> dict[str, str]:
    have_p = dict(module.named_parameters())
    have_b = dict(module.named_buffers())
    kind = type(module).__name__
    for k in names:
        if k not in params and k not in state:
            raise ValueError(f"names maps {k!r}, which is neither a param nor state")
    mapping = {k: names.get(k, k) for k in params + state}
    for k in params:
        if mapping[k] not in have_p:
            raise ValueError(
                f"param {k!r} maps to no parameter of {kind} (it has {', '.join(have_p)}); "
                f"map it with names={{{k!r}: ...}}"
            )
    for k in state:
        if mapping[k] not in have_b:
            raise ValueError(
                f"state {k!r} maps to no buffer of {kind} (it has {', '.join(have_b)}); "
                f"map it with names={{{k!r}: ...}}"
            )
    mapped = {mapping[k] for k in params}
    for p in have_p:
        if p not in mapped:
            raise ValueError(
                f"{kind}'s parameter {p!r} has no counterpart in params; add it, or map one "
                f"with names={{'yours': {p!r}}}"
            )
    return mapping


# --- the finite-difference verdict --------------------------------------------------------


def _fd_probe(spec: _Spec, name: str, index, dout, s: float, t: float):
    """Central (or, at a kink, one-sided) float64 differences of L = sum(out * dout) in one
    element, through the torch reference. Returns (fd, one_sided or None, agrees_with, kink)."""
    h = 1e-6 * max(1.0, abs(float(spec.arrays[name][index])))
    left, right = _fd_slopes(spec, name, index, dout, h)
    central = (left + right) / 2
    # a float64 central difference is good to about 1e-8 relative here; a float32 gradient
    # carries its own rounding, about 1e-6 relative, and more where sums cancel
    res = (1e-6 if spec.dtype == np.float64 else 1e-3) * max(abs(central), abs(t), 1e-3)
    kink = abs(right - left) > 1e-3 * max(abs(right), abs(left), 1e-3)
    if kink:
        s_ok = min(abs(s - left), abs(s - right)) <= res
        t_ok = min(abs(t - left), abs(t - right)) <= res
    else:
        s_ok, t_ok = abs(s - central) <= res, abs(t - central) <= res
    verdict = {(True, True): "both", (True, False): "scratch", (False, True): "torch"}.get(
        (s_ok, t_ok), "neither"
    )
    return central, ((left, right) if kink else None), verdict, kink


def _fd_slopes(spec: _Spec, name: str, where, dout, h: float) -> tuple[float, float]:
    """The left and right float64 differences of L = sum(out * dout), through the torch
    reference, when the elements `where` (an index or a mask) of `name` move together by h."""
    base = _copies(spec, np.float64)
    d64 = np.asarray(dout, dtype=np.float64)
    f64 = _Spec(**{**spec.__dict__, "dtype": np.dtype(np.float64)})

    def loss(delta: float) -> float:
        arrays = {k: v.copy() for k, v in base.items()}
        arrays[name][where] += delta
        out, _, _ = _run_torch(f64, arrays, None, need_grads=False)
        return float(np.sum(out * d64))

    up, mid, down = loss(h), loss(0.0), loss(-h)
    return (mid - down) / h, (up - mid) / h


# --- likely causes ------------------------------------------------------------------------

_OUTPUT_FORM = {  # f'(x) written from the output y = f(x): applied to x by mistake
    "sigmoid": (lambda v: v * (1 - v), "a (1 - a)"),
    "tanh": (lambda v: 1 - v * v, "1 - a^2"),
    "exp": (lambda v: v, "a"),
}


def _elementwise_kind(ref) -> str | None:
    if isinstance(ref, torch.nn.Sigmoid) or ref in (torch.sigmoid, torch.special.expit):
        return "sigmoid"
    if isinstance(ref, torch.nn.Tanh) or ref is torch.tanh:
        return "tanh"
    if ref is torch.exp:
        return "exp"
    return None


def _sizes(spec: _Spec, out_shape) -> set[int]:
    """Products of axis sizes a reduction could have divided by (or forgotten to): every
    subset of the axes of the output and of each array."""
    shapes = [tuple(out_shape)] + [spec.arrays[k].shape for k in spec.inputs + spec.params]
    prods = set()
    for shape in shapes:
        dims = [d for d in shape if d > 1][:6]
        for r in range(1, len(dims) + 1):
            for combo in itertools.combinations(dims, r):
                prods.add(math.prod(combo))
    return prods


def _fingerprint(spec: _Spec, m: OpMismatch, s, t, ctx: dict) -> tuple[str, str] | None:
    """The mark a known class of bug leaves on the whole item (`s`, `t`: user layout, float64).

    reduction   scratch = k t or t / k, k a product of the op's axis sizes (a missing or
                doubled 1/N)
    sign, scale scratch = -t, or c t for another constant c
    layout      scratch is torch's with axes permuted (a transpose) or a kernel flipped
    wrong-point the elementwise derivative evaluated at the output f(x) instead of at x, or
                its output form (sigmoid: a (1 - a)) applied to x
    variance    biased where torch uses the unbiased variance, or the reverse
    misplaced   torch's values, at other positions (an index or offset error)
    wrong-axis  the same total as torch's, spread differently: a sum over the wrong axis
    """
    what = f"scratch's {m.label.split('[')[0]}"
    c = _constant_ratio(s, t) if s.size > 1 or m.kind != "grad" else None
    if c is not None:
        k = round(c) if c > 1 else round(1 / c) if 0 < c < 1 else None
        if k and k > 1 and abs((c if c > 1 else 1 / c) - k) <= 1e-6 * k and k in ctx["sizes"]:
            if c > 1:
                return (
                    "reduction",
                    f"{what} is {k} times torch's: a missing 1/N, a sum where a mean is "
                    f"meant (N = {k})",
                )
            return (
                "reduction",
                f"{what} is 1/{k} of torch's: 1/N once too often, a mean where a sum is "
                f"meant or 1/N applied twice (N = {k})",
            )
        if abs(c + 1) <= 1e-6:
            return "sign", f"{what} is -1 times torch's: a sign error"
        return "scale", f"{what} is {c:.6g} times torch's everywhere: a constant factor"
    close = lambda a, b: a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-12)  # noqa: E731
    if s.ndim >= 2:
        for perm in itertools.permutations(range(s.ndim)):
            if perm != tuple(range(s.ndim)) and close(s, np.transpose(t, perm)):
                word = "the transpose" if s.ndim == 2 else f"torch's with axes permuted {perm}"
                return "layout", f"{what} is {word} of torch's (a transpose where none is meant)"
        if s.ndim == 4 and close(s, t[..., ::-1, ::-1]):
            return (
                "layout",
                f"{what} is torch's with the kernel flipped (convolution vs correlation)",
            )
    if m.kind == "grad" and ctx.get("wrong_point") is not None:
        for candidate, words in ctx["wrong_point"]:
            if close(s, candidate):
                return "wrong-point", f"{what} {words}"
    var = _variance_cause(spec, m, s, t, ctx)
    if var is not None:
        return var
    if t.size > 1 and np.allclose(
        np.sort(s, axis=None), np.sort(t, axis=None), rtol=1e-9, atol=1e-12
    ):
        return "misplaced", (
            f"{what} holds torch's values at other positions: an index or offset error"
        )
    ts = float(t.sum())
    if (
        t.size > 1
        and abs(ts) > 1e-3 * float(np.abs(t).sum())
        and abs(float(s.sum()) - ts) <= (1e-9 * float(np.abs(t).sum()))
    ):
        return "wrong-axis", (
            f"{what} has torch's total but spreads it differently over its elements: "
            "a sum over the wrong axis"
        )
    return None


def _variance_cause(spec, m, s, t, ctx):
    x = ctx.get("x64")
    if x is None or x.ndim < 2:
        return None
    what = f"scratch's {m.label.split('[')[0]}"
    if m.kind == "state" and s.ndim == 1 and x.shape[1] == s.size:
        axes = (0, *range(2, x.ndim))
        n = x.size // x.shape[1]
        vb = x.var(axis=axes)  # (C,)
        vu = vb * n / (n - 1)
        s0 = spec.arrays[m.name].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            mom = np.median((t - s0) / (vu - s0))
        if np.isfinite(mom) and np.allclose(s, (1 - mom) * s0 + mom * vb, rtol=1e-6, atol=1e-12):
            return "variance", (
                f"{what} takes the biased batch variance (/M); torch's running variance is "
                f"unbiased (/(M - 1), M = {n})"
            )
        return None
    if m.kind != "output" or s.shape != x.shape:
        return None
    groupings = {  # batch norm: a channel's values; layer norm: a row's
        "channel": lambda a: np.moveaxis(a, 1, 0).reshape(a.shape[1], -1),
        "row": lambda a: a.reshape(-1, a.shape[-1]),
    }
    for group in groupings.values():
        sg, tg = group(s), group(t)  # (groups, M)
        n = sg.shape[1]
        if n < 2:
            continue
        sc = sg - sg.mean(axis=1, keepdims=True)
        tc = tg - tg.mean(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.linalg.norm(sc, axis=1) / np.linalg.norm(tc, axis=1)  # (groups,)
        if not np.all(np.isfinite(k)) or not np.allclose(sc, k[:, None] * tc, rtol=1e-6, atol=1e-9):
            continue
        r = math.sqrt(n / (n - 1))  # unbiased over biased standard deviation
        if np.allclose(k, 1 / r, rtol=1e-3):
            return "variance", (
                f"{what} normalises with the unbiased variance (/(M - 1), M = {n}); the "
                "reference with the biased one (/M)"
            )
        if np.allclose(k, r, rtol=1e-3):
            return "variance", (
                f"{what} normalises with the biased variance (/M, M = {n}); the reference "
                "with the unbiased one (/(M - 1))"
            )
    return None


def _wrong_point_candidates(spec: _Spec, m: OpMismatch, out_user, dout) -> list | None:
    """For a one-input elementwise op: dout times the derivative at the output, and dout times
    the derivative's output form applied to the input."""
    if m.kind != "grad" or len(spec.grad_names) != 1 or spec.params:
        return None
    name = m.name
    x = spec.arrays[name].astype(np.float64)
    if x.shape != np.shape(out_user):
        return None
    d64 = np.asarray(dout, dtype=np.float64)
    f64 = _Spec(**{**spec.__dict__, "dtype": np.dtype(np.float64)})
    cands = []
    arrays = {**_copies(spec, np.float64), name: np.asarray(out_user, dtype=np.float64)}
    try:
        _, g, _ = _run_torch(f64, arrays, np.ones_like(x), need_grads=True)
        cands.append((d64 * g[name], "uses the derivative at the output f(x) instead of at x"))
    except (RuntimeError, ValueError):
        pass
    kind = _elementwise_kind(spec.torch_ref)
    if kind is not None:
        form, text = _OUTPUT_FORM[kind]
        cands.append(
            (
                d64 * form(x),
                f"applies the output form of {kind}' ({text}) to the input x instead of to a",
            )
        )
    return cands


# --- the one call -------------------------------------------------------------------------


def check_op(
    forward: Callable,
    backward: Callable,
    torch_ref,
    *,
    inputs: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray] | None = None,
    state: Mapping[str, np.ndarray] | None = None,
    names: Mapping[str, str] | None = None,
    layouts: Mapping[str, object] | None = None,
    out_layout=None,
    no_grad: Sequence[str] | str = (),
    upstream: int = 3,
    seed: int = 0,
    tolerances: Mapping[str, tuple[float, float]] | None = None,
) -> OpCheckResult:
    """Compare a hand-written forward and backward with torch's; see the module docstring."""
    spec = _validate(
        forward, backward, torch_ref, inputs, params, state, names, layouts, out_layout, no_grad
    )
    for what, n, low in (("upstream", upstream, 1), ("seed", seed, 0)):
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < low:
            kind = "a positive integer" if low else "an integer >= 0"
            raise ValueError(f"{what} must be {kind}, got {n!r}")
    upstream = int(upstream)
    tolerances = dict(tolerances or {})
    for k, pair in tolerances.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"tolerances[{k!r}] must be (rtol, atol), together, got {pair!r}")
        if not all(_finite_number(v) and v >= 0 for v in pair):  # inf would excuse anything
            raise ValueError(f"tolerances[{k!r}] must be two finite numbers >= 0, got {pair!r}")
        if k not in spec.arrays and k != "out":
            raise ValueError(
                f"tolerances names {k!r}, which is not an item ({', '.join(spec.arrays)}, out)"
            )
    # shapes first, without a backward: mismatched forwards are bad input, not a finding
    started = time.perf_counter()
    s_out, _, _ = _run_scratch(spec, None)
    t_out, _, _ = _run_torch(spec, _copies(spec), None, need_grads=False)
    if s_out.shape != t_out.shape:
        raise ValueError(
            f"forward's output has shape {s_out.shape} but the torch reference's has "
            f"{t_out.shape} (in your layout){_layout_hint(spec)}"
        )
    _check_upstream(upstream, time.perf_counter() - started)

    order = [("out", "output"), *((k, "state") for k in spec.state)]
    order += [(k, "grad") for k in spec.grad_names]
    max_abs = dict.fromkeys(spec.arrays.keys() | {"out"}, 0.0)
    max_rel = dict(max_abs)
    first: OpMismatch | None = None
    kinks: list[tuple[str, tuple[int, ...]]] = []
    tols = {k: _tol(k, kind, t_out.shape, spec.dtype, tolerances) for k, kind in order}
    # (position in order, trial, mismatch, scratch's and torch's values, dout, torch's output)
    failures: list[tuple] = []
    failed: set[int] = set()  # positions in order that have failed
    for trial, dout in enumerate(_upstream_gradients(seed, upstream, t_out.shape, spec.dtype)):
        s_out, s_grads, s_state = _run_scratch(spec, dout)
        t_out, t_grads, t_state = _run_torch(spec, _copies(spec), dout, need_grads=True)
        values = {"out": (s_out, t_out), **{k: (s_state[k], t_state[k]) for k in spec.state}}
        values.update({k: (s_grads[k], t_grads[k]) for k in spec.grad_names})
        for pos, (name, kind) in enumerate(order):
            s, t = values[name]
            if s.shape != t.shape:  # state the forward replaced with another shape
                raise ValueError(
                    f"state {name!r} has shape {s.shape} after the forward; torch's has {t.shape}"
                )
            rtol, atol = tols[name]
            s64, t64 = s.astype(np.float64), t.astype(np.float64)
            max_abs[name] = max(max_abs[name], float(np.abs(s64 - t64).max(initial=0.0)))
            nt, nd = float(np.linalg.norm(t64)), float(np.linalg.norm(s64 - t64))
            max_rel[name] = max(max_rel[name], nd / nt if nt else (0.0 if nd == 0 else math.inf))
            if pos in failed:  # an item's first failure is kept: bounded memory, no more probes
                continue
            if s.dtype != t.dtype and s.ndim > 0:  # a 0-d loss may come back as a Python float
                why = f"dtype {s.dtype} (scratch) != {t.dtype} (torch)"
                mism = OpMismatch(name, kind, None, None, None, trial, explanation=why)
                mism.cause = "dtype"
                failures.append((pos, trial, mism, None, None, dout, t_out))
                failed.add(pos)
                continue
            mm = first_mismatch(s64, t64, rtol, atol)
            if mm is None:
                continue
            found = _first_unexplained(
                spec, name, kind, s64, t64, mm, rtol, atol, dout, trial, kinks
            )
            if found is not None:
                failures.append((pos, trial, found, s64, t64, dout, t_out))
                failed.add(pos)
    items = [
        ItemResult(k, kind, max_abs[k], max_rel[k], pos not in failed, *tols[k])
        for pos, (k, kind) in enumerate(order)
    ]
    if failures:
        _, _, first, s64, t64, dout, t_out = min(failures, key=lambda f: (f[0], f[1]))
        if s64 is not None:
            ctx = {
                "sizes": _sizes(spec, t_out.shape),
                "x64": _main_input(spec),
                "wrong_point": _wrong_point_candidates(spec, first, t_out, dout),
            }
            cause = None if first.cause else _fingerprint(spec, first, s64, t64, ctx)
            if cause is not None:
                first.cause, first.explanation = cause
    return OpCheckResult(
        passed=not failures,
        items=items,
        first_mismatch=first,
        dtype=spec.dtype.name,
        upstream=upstream,
        kinks=sorted(set(kinks)),
    )


def _finite_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _check_upstream(upstream: int, forwards_seconds: float) -> None:
    """Refuse more upstream gradients than _MAX_UPSTREAM, saying what they would cost: each
    runs both forwards and both backwards (timed here as twice the two forwards)."""
    if upstream <= _MAX_UPSTREAM:
        return
    hours = 2 * forwards_seconds * upstream / 3600
    raise ValueError(
        f"upstream must be at most {_MAX_UPSTREAM}, got {upstream}: each runs both forwards "
        f"and backwards, about {hours:.3g} hours for this op here"
    )


def _upstream_gradients(seed: int, upstream: int, shape, dtype):
    """The seeded upstream gradients, one at a time (never all held at once)."""
    rng = np.random.default_rng(seed)
    for _ in range(upstream):
        if shape == ():  # a loss: a random scale of either sign, away from 0 and 1
            d = rng.uniform(0.5, 2.0) * rng.choice([-1.0, 1.0])
            yield np.asarray(d if abs(d - 1) > 0.05 else 1.5, dtype=dtype)
        else:
            yield rng.standard_normal(shape).astype(dtype)


def _main_input(spec: _Spec):
    """The first float input, float64, in the user's layout (for the variance fingerprint)."""
    for k in spec.inputs:
        if spec.arrays[k].dtype in _FLOATS:
            return spec.arrays[k].astype(np.float64)
    return None


def _layout_hint(spec: _Spec) -> str:
    return (
        "" if spec.perms else "; declare layouts=/out_layout= if the two lay axes out differently"
    )


def _tol(name, kind, out_shape, dtype, overrides) -> tuple[float, float]:
    if name in overrides:
        return overrides[name]
    quantity = {"output": "loss" if out_shape == () else "z", "state": "param", "grad": "grad"}[
        kind
    ]
    tol = tolerance(quantity, dtype)
    return tol.rtol, tol.atol


def _first_unexplained(
    spec, name, kind, s, t, mm: Mismatch, rtol, atol, dout, trial, kinks
) -> OpMismatch | None:
    """The first failing element that is not a kink both sides explain, or None.

    Kinks are excused one element at a time, then jointly: the elements tied at one value
    must share out a gradient that moving them together gives (see `_tie_mismatch`)."""
    bad = ~(np.abs(s - t) <= atol + rtol * np.abs(t))
    flat = np.flatnonzero(bad.ravel())
    excused: list[OpMismatch] = []
    for n_probe, f in enumerate(flat):
        index = tuple(int(i) for i in np.unravel_index(f, s.shape)) if s.shape else ()
        sv, tv = float(s[index]), float(t[index])
        m = OpMismatch(name, kind, index, sv, tv, trial, mm.count, mm.total, rtol, atol)
        if kind != "grad" or n_probe >= _MAX_PROBES:
            return m
        m.fd, one_sided, m.fd_agrees_with, kink = _fd_probe(spec, name, index, dout, sv, tv)
        if not (kink and m.fd_agrees_with == "both"):
            m.fd_one_sided = one_sided
            return m
        excused.append(m)
    by_value: dict[float, OpMismatch] = {}  # each tied value's first excused element
    for m in excused:
        by_value.setdefault(float(spec.arrays[name][m.index]), m)
    for value, m in by_value.items():
        tie = _tie_mismatch(spec, name, value, s, t, dout, m)
        if tie is not None:
            return tie
    kinks.extend((name, m.index) for m in excused)
    return None


def _tie_mismatch(spec, name, value, s, t, dout, m: OpMismatch) -> OpMismatch | None:
    """`m`, failed, when the elements of `name` equal to `value` (a max-pool window's tied
    maxima, relu's zeros) do not, together, give one of the two one-sided slopes of moving
    them all at once. Element by element, a backward that sends a window's gradient to every
    tied maximum gives each one a one-sided slope; the window's sum is k times torch's."""
    tied = spec.arrays[name] == value
    left, right = _fd_slopes(spec, name, tied, dout, 1e-6 * max(1.0, abs(value)))
    ss, ts = float(s[tied].sum()), float(t[tied].sum())
    res = (1e-6 if spec.dtype == np.float64 else 1e-3) * max(
        float(np.abs(s[tied]).sum()), float(np.abs(t[tied]).sum()), abs(left), abs(right), 1e-3
    )
    s_ok, t_ok = (min(abs(v - left), abs(v - right)) <= res for v in (ss, ts))
    if s_ok:
        return None
    m.fd_agrees_with = "torch" if t_ok else "neither"
    m.fd_one_sided = None if abs(left - right) <= res else (left, right)  # smooth together?
    m.fd = (left + right) / 2
    m.cause = "tie"
    m.explanation = (
        f"the {int(tied.sum())} elements of {name} equal to {value!r} (a tie) have gradients "
        f"summing to {ss!r} in scratch, {ts!r} in torch; moving them together gives "
        f"{left!r} (left) or {right!r} (right): a tie's gradient goes to one of the tied "
        "elements, not to each"
    )
    return m


def assert_op(*args, **kwargs) -> OpCheckResult:
    """`check_op`, for pytest: raises AssertionError with the full report when it fails."""
    __tracebackhide__ = True
    result = check_op(*args, **kwargs)
    if not result.passed:
        raise AssertionError(str(result))
    return result
