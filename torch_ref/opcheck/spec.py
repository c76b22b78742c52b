"""An op check's inputs, parameters, layouts and tolerances, checked before anything runs."""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from nn_parity.scratch.validate import check_finite
from nn_parity.torch_ref.compare import tolerance

_FLOATS = {np.dtype(np.float32), np.dtype(np.float64)}


_MAX_UPSTREAM = 1000  # upstream gradients per check: each runs both forwards and backwards


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


def _validate(
    forward, backward, torch_ref, inputs, params, state, names, layouts, out_layout, no_grad
) -> _Spec:
    """check_op's arguments, all checked before anything runs, so bad input costs no op call."""
    _check_callables(forward, backward, torch_ref)
    params, state = params or {}, state or {}
    arrays = _arrays({"input": inputs, "param": params, "state": state})
    no_grad = (no_grad,) if isinstance(no_grad, str) else tuple(no_grad)
    for k in no_grad:
        if k not in inputs:
            raise ValueError(f"no_grad names {k!r}, which is not an input ({', '.join(inputs)})")
    dtype = _common_float_dtype(arrays)
    grad_names = [k for k in inputs if arrays[k].dtype in _FLOATS and k not in no_grad]
    grad_names += list(params)
    perms = _perms(arrays, layouts or {}, out_layout)
    module_names: dict[str, str] = {}
    if isinstance(torch_ref, torch.nn.Module):
        module_names = _map_module(torch_ref, list(params), list(state), names or {})
    elif names:
        raise ValueError("names maps params to an nn.Module's; torch_ref is a function")
    sig_error = _signature_error(forward, arrays)
    if sig_error:
        raise TypeError(sig_error)
    return _Spec(
        forward, backward, torch_ref, arrays, list(inputs), list(params), list(state),
        grad_names, dtype, perms, module_names,
    )  # fmt: skip


def _check_callables(forward, backward, torch_ref) -> None:
    """The three things check_op calls, checked first: a wrong argument order shows here."""
    if not callable(forward) or not callable(backward):
        bad = "forward" if not callable(forward) else "backward"
        raise TypeError(
            f"{bad} must be callable, got {_what(forward if bad == 'forward' else backward)}"
        )
    if not (isinstance(torch_ref, torch.nn.Module) or callable(torch_ref)):
        raise TypeError(
            f"torch_ref must be a function of tensors or an nn.Module, got {_what(torch_ref)}"
        )


def _arrays(groups: dict[str, Mapping]) -> dict[str, np.ndarray]:
    """Inputs, params and state in one dict by name, each array checked for what its role needs."""
    for what, group in groups.items():
        if not isinstance(group, Mapping):
            raise TypeError(f"{what}s must be a dict of name -> array, got {_what(group)}")
    if not groups["input"]:
        raise ValueError("inputs must name at least one array, got none")
    arrays: dict[str, np.ndarray] = {}
    for what, group in groups.items():
        for k, v in group.items():
            if k in arrays:
                raise ValueError(f"{k!r} is named twice (in inputs, params or state)")
            _check_array(what, k, v)
            arrays[k] = v
    return arrays


def _check_array(what: str, k: str, v) -> None:
    """One array: a finite NumPy array of a dtype both sides compute in, under a free name."""
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


def _common_float_dtype(arrays: dict[str, np.ndarray]) -> np.dtype:
    """The one float dtype of the arrays: both sides then compute, and are judged, in it."""
    floats = {k: v.dtype for k, v in arrays.items() if v.dtype in _FLOATS}
    if not floats:
        raise TypeError("no float array among the inputs and params: nothing to differentiate")
    if len(set(floats.values())) > 1:
        (k1, d1), (k2, d2) = next(
            (a, b) for a, b in itertools.combinations(floats.items(), 2) if a[1] != b[1]
        )
        raise ValueError(f"inputs mix dtypes: {k1!r} is {d1} but {k2!r} is {d2}")
    return next(iter(floats.values()))


def _perms(arrays: dict[str, np.ndarray], layouts: Mapping, out_layout) -> dict:
    """Each declared layout as an axis permutation, so the two sides are compared axis by axis."""
    perms: dict[str, tuple[int, ...] | str] = {}
    for k, lay in layouts.items():
        if k not in arrays:
            raise ValueError(f"layouts names {k!r}, which is not an input, param or state")
        perms[k] = parse_layout(lay, arrays[k].ndim, k)
    if out_layout is not None:  # the output's ndim is known only after a forward: "T" waits
        perms["out"] = "T" if out_layout == "T" else parse_layout(out_layout, None, "out")
    return perms


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


def keepdims_fit(a: tuple, b: tuple) -> bool:
    """Shapes that differ only by axes of size 1, as `keepdims=True` leaves them (dgamma
    (1, D) for gamma (D,), a running mean (1, D)): the same values in the same order, so they
    are compared as values. Any other difference is a different array."""
    return tuple(d for d in a if d != 1) == tuple(d for d in b if d != 1)


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


def _what(x) -> str:
    if isinstance(x, tuple):
        return f"a tuple of {len(x)}"
    return type(x).__name__
