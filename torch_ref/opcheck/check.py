"""`check_op`: one hand-derived op against torch's autograd, in one call."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from nn_parity.torch_ref.compare import first_mismatch
from nn_parity.torch_ref.opcheck.fingerprints import (
    _fingerprint,
    _first_unexplained,
    _sizes,
    _wrong_point_candidates,
)
from nn_parity.torch_ref.opcheck.results import ItemResult, OpCheckResult, OpMismatch
from nn_parity.torch_ref.opcheck.run import _copies, _run_scratch, _run_torch, _upstream_gradients
from nn_parity.torch_ref.opcheck.spec import (
    _check_upstream,
    _finite_number,
    _layout_hint,
    _main_input,
    _tol,
    _validate,
)


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


def assert_op(*args, **kwargs) -> OpCheckResult:
    """`check_op`, for pytest: raises AssertionError with the full report when it fails."""
    __tracebackhide__ = True
    result = check_op(*args, **kwargs)
    if not result.passed:
        raise AssertionError(str(result))
    return result
