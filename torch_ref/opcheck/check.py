"""`check_op`: one hand-derived op against torch's autograd, in one call.

In order: the arguments are checked before anything runs; one forward on each side, without a
backward, settles the output's shape; each upstream gradient then runs both sides and compares
every item; the first failure is explained last, once.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

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
    _Spec,
    _tol,
    _validate,
    keepdims_fit,
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
    upstream, overrides = _run_options(spec, upstream, seed, tolerances)
    out_shape = _forward_shape(spec, upstream)
    found = _Findings.start(spec, out_shape, overrides)
    for trial, dout in enumerate(_upstream_gradients(seed, upstream, out_shape, spec.dtype)):
        _compare_trial(spec, found, trial, dout)
    return OpCheckResult(
        passed=not found.failures,
        items=found.items(),
        first_mismatch=_first_failure(spec, found.failures),
        dtype=spec.dtype.name,
        upstream=upstream,
        kinks=sorted(set(found.kinks)),
    )


def _run_options(spec: _Spec, upstream, seed, tolerances) -> tuple[int, dict]:
    """upstream, seed and tolerances checked up front, so a typo fails before any op runs."""
    for what, n, low in (("upstream", upstream, 1), ("seed", seed, 0)):
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < low:
            kind = "a positive integer" if low else "an integer >= 0"
            raise ValueError(f"{what} must be {kind}, got {n!r}")
    overrides = dict(tolerances or {})
    for k, pair in overrides.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"tolerances[{k!r}] must be (rtol, atol), together, got {pair!r}")
        if not all(_finite_number(v) and v >= 0 for v in pair):  # inf would excuse anything
            raise ValueError(f"tolerances[{k!r}] must be two finite numbers >= 0, got {pair!r}")
        if k not in spec.arrays and k != "out":
            raise ValueError(
                f"tolerances names {k!r}, which is not an item ({', '.join(spec.arrays)}, out)"
            )
    return int(upstream), overrides


def _forward_shape(spec: _Spec, upstream: int) -> tuple[int, ...]:
    """The output's shape, from forwards alone: mismatched forwards are bad input, not a finding."""
    started = time.perf_counter()
    s_out, _, _ = _run_scratch(spec, None)
    t_out, _, _ = _run_torch(spec, _copies(spec), None, need_grads=False)
    if s_out.shape != t_out.shape:
        raise ValueError(
            f"forward's output has shape {s_out.shape} but the torch reference's has "
            f"{t_out.shape} (in your layout){_layout_hint(spec)}"
        )
    _check_upstream(upstream, time.perf_counter() - started)
    return t_out.shape


@dataclass
class _Findings:
    """What the trials found so far, per item, in the order the report lists the items."""

    order: list[tuple[str, str]]  # (item, kind): the output, then state, then gradients
    tols: dict[str, tuple[float, float]]  # (rtol, atol) per item
    max_abs: dict[str, float]
    max_rel: dict[str, float]
    # (position in order, trial, mismatch, scratch's and torch's values, dout, torch's output)
    failures: list[tuple] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)  # positions in order that have failed
    kinks: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    @classmethod
    def start(cls, spec: _Spec, out_shape, overrides: dict) -> _Findings:
        """Nothing found yet; each item's tolerance is fixed once, before the first trial."""
        order = [("out", "output"), *((k, "state") for k in spec.state)]
        order += [(k, "grad") for k in spec.grad_names]
        tols = {k: _tol(k, kind, out_shape, spec.dtype, overrides) for k, kind in order}
        max_abs = dict.fromkeys(spec.arrays.keys() | {"out"}, 0.0)
        return cls(order, tols, max_abs, dict(max_abs))

    def widen(self, name: str, s64: np.ndarray, t64: np.ndarray) -> None:
        """Fold one trial into the item's largest errors, which the table shows even on a pass."""
        self.max_abs[name] = max(self.max_abs[name], float(np.abs(s64 - t64).max(initial=0.0)))
        nt, nd = float(np.linalg.norm(t64)), float(np.linalg.norm(s64 - t64))
        rel = nd / nt if nt else (0.0 if nd == 0 else math.inf)
        self.max_rel[name] = max(self.max_rel[name], rel)

    def items(self) -> list[ItemResult]:
        """The verdict per item, in report order."""
        return [
            ItemResult(
                k, kind, self.max_abs[k], self.max_rel[k], pos not in self.failed, *self.tols[k]
            )
            for pos, (k, kind) in enumerate(self.order)
        ]


def _compare_trial(spec: _Spec, found: _Findings, trial: int, dout) -> None:
    """Run both sides under one upstream gradient and compare every item against torch's."""
    s_out, s_grads, s_state = _run_scratch(spec, dout)
    t_out, t_grads, t_state = _run_torch(spec, _copies(spec), dout, need_grads=True)
    values = {"out": (s_out, t_out), **{k: (s_state[k], t_state[k]) for k in spec.state}}
    values.update({k: (s_grads[k], t_grads[k]) for k in spec.grad_names})
    for pos, (name, kind) in enumerate(found.order):
        s, t = values[name]
        if s.shape != t.shape:  # state the forward replaced with another shape
            if not keepdims_fit(s.shape, t.shape):
                raise ValueError(
                    f"{kind} {name!r} has shape {s.shape} after the forward; torch's has {t.shape}"
                )
            t = t.reshape(s.shape)  # size-1 axes keepdims left: the same values, compared
        s64, t64 = s.astype(np.float64), t.astype(np.float64)
        found.widen(name, s64, t64)
        if pos in found.failed:  # an item's first failure is kept: bounded memory, no more probes
            continue
        failure = _dtype_failure(name, kind, s, t, trial)
        if failure is None:
            failure = _value_failure(spec, found, name, kind, s64, t64, trial, dout)
        if failure is not None:
            found.failures.append((pos, trial, *failure, dout, t_out))
            found.failed.add(pos)


def _dtype_failure(name: str, kind: str, s, t, trial: int) -> tuple | None:
    """A dtype that differs from torch's fails the item whatever the values say."""
    if s.dtype == t.dtype or s.ndim == 0:  # a 0-d loss may come back as a Python float
        return None
    why = f"dtype {s.dtype} (scratch) != {t.dtype} (torch)"
    mism = OpMismatch(name, kind, None, None, None, trial, explanation=why)
    mism.cause = "dtype"
    return mism, None, None  # no values: the cause is known, nothing to fingerprint


def _value_failure(spec: _Spec, found: _Findings, name, kind, s64, t64, trial, dout):
    """A value past the item's tolerance that no kink or tie explains, with both sides' values."""
    rtol, atol = found.tols[name]
    mm = first_mismatch(s64, t64, rtol, atol)
    if mm is None:
        return None
    mism = _first_unexplained(spec, name, kind, s64, t64, mm, rtol, atol, dout, trial, found.kinks)
    return None if mism is None else (mism, s64, t64)


def _first_failure(spec: _Spec, failures: list[tuple]) -> OpMismatch | None:
    """The failure the report leads with (earliest item, then trial), with its likely cause."""
    if not failures:
        return None
    _, _, first, s64, t64, dout, t_out = min(failures, key=lambda f: (f[0], f[1]))
    if s64 is not None:  # fingerprinted once, for this failure only: the probes cost forwards
        ctx = {
            "sizes": _sizes(spec, t_out.shape),
            "x64": _main_input(spec),
            "wrong_point": _wrong_point_candidates(spec, first, t_out, dout),
            "dout": dout,
            "t_out": t_out,
        }
        cause = None if first.cause else _fingerprint(spec, first, s64, t64, ctx)
        if cause is not None:
            first.cause, first.explanation = cause
    return first


def assert_op(*args, **kwargs) -> OpCheckResult:
    """`check_op`, for pytest: raises AssertionError with the full report when it fails."""
    __tracebackhide__ = True
    result = check_op(*args, **kwargs)
    if not result.passed:
        raise AssertionError(str(result))
    return result
