"""The one comparison helper, and the one table of tolerances.

Two values agree when, element by element,

    |scratch - torch| <= atol + rtol * |torch|

(torch's `assert_close` rule, with torch as the reference). rtol and atol are always set together:
a relative bound alone fails every gradient element that is near zero, an absolute one alone
fails every large pre-activation.

Besides pass/fail, every comparison reports the largest absolute difference and the normwise
relative error ||scratch - torch|| / ||torch|| of each quantity: the numbers the lockstep records
per step and the report draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "QUANTITIES",
    "TOLERANCES",
    "Mismatch",
    "Tolerance",
    "assert_parity",
    "compare_segments",
    "first_mismatch",
    "tolerance",
]

# The quantities compared at every step, in the order the step computes them.
QUANTITIES = ("z", "a", "out", "stat", "prob", "loss", "grad", "lr", "param", "state")


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    reason: str

    def as_dict(self) -> dict:
        return {"rtol": self.rtol, "atol": self.atol, "reason": self.reason}


_EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps)}

# How many units of machine epsilon each quantity may differ by, as (rtol, atol) multipliers.
# float64 sets the numbers; float32 uses the same multipliers of its own epsilon, because the two
# implementations run the same algorithm and their rounding differences scale with epsilon.
_ULPS: dict[str, tuple[float, float, str]] = {
    "z": (
        2**12,
        2**10,
        "x W^T + b: BLAS libraries sum the D products in different orders and torch adds b "
        "inside the GEMM (addmm); differences grow with D and, over many steps, with the "
        "weights' drift",
    ),
    "a": (2**12, 2**10, "f(z) on z that already differs, plus a few ulps from exp and tanh"),
    "out": (
        2**12,
        2**10,
        "a layer's output in a network of layers: conv2d and affine sum C KH KW (or D) products "
        "in different orders, as z; max pooling and flatten move values exactly; batchnorm and "
        "layernorm divide by a standard deviation, scaling what already differs by gamma / std",
    ),
    "stat": (
        2**12,
        2**10,
        "batchnorm's running mean and variance: per-channel means over N H W values, summed in "
        "different orders, averaged with momentum, so they carry earlier steps' differences",
    ),
    "prob": (2**12, 2**8, "the output activation, as for a"),
    "loss": (2**12, 2**8, "a mean of N logs: summation order differs (pairwise vs. blocked)"),
    "grad": (
        2**12,
        2**10,
        "dz^T x sums over the batch N; near-cancelling sums of large terms leave small "
        "gradients with an absolute, not relative, error",
    ),
    "lr": (
        4,
        2**-10,
        "a schedule's rate per step: both sides compute it from the same Python floats in "
        "torch's order (LambdaLR base * f(t); StepLR and ExponentialLR multiply the rate held "
        "by gamma), so it is expected exact; 4 ulps leave room for the cast to the dtype only "
        "(atol, a thousandth of an ulp of 1, for a rate of 0), while a schedule off by one step "
        "moves the rate by a factor (gamma, 1 + decay t)",
    ),
    "param": (
        2**12,
        2**8,
        "theta - lr * g: torch fuses the multiply-add (one rounding against two) and the "
        "parameters carry every earlier step's differences",
    ),
    "state": (
        2**12,
        2**10,
        "optimizer buffers are running sums of gradients (momentum, exp_avg) or of their "
        "squares (exp_avg_sq, sum): each carries the gradients' error, squares double its "
        "relative size, and the step count is exact",
    ),
}

TOLERANCES: dict[str, dict[str, Tolerance]] = {
    q: {dt: Tolerance(r * eps, a * eps, reason) for dt, eps in _EPS.items()}
    for q, (r, a, reason) in _ULPS.items()
}


def tolerance(quantity: str, dtype) -> Tolerance:
    """The table's entry for a quantity and a dtype."""
    name = np.dtype(dtype).name
    if quantity not in TOLERANCES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {QUANTITIES}")
    if name not in TOLERANCES[quantity]:
        raise ValueError(f"no tolerance for dtype {name}; expected one of {', '.join(_EPS)}")
    return TOLERANCES[quantity][name]


def compare_segments(
    s: np.ndarray,
    t: np.ndarray,
    starts: np.ndarray,
    rtol: np.ndarray,
    atol: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compare flat arrays made of consecutive segments, one segment per quantity.

    Returns per segment: the largest |s - t|, the normwise relative error ||s - t|| / ||t||
    (0 when both are zero, inf when only t is) and whether every element is within tolerance.
    NaN anywhere in a segment counts as a mismatch.
    """
    d = np.subtract(s, t)  # (total,)
    np.abs(d, out=d)
    if len(starts) == 1:
        max_abs = np.array([d.max()])
        diff_sq = np.array([np.dot(d, d)])
        ref_sq = np.array([np.dot(t, t)])
    else:
        max_abs = np.maximum.reduceat(d, starts)
        sq = d * d
        diff_sq = np.add.reduceat(sq, starts)
        np.multiply(t, t, out=sq)
        ref_sq = np.add.reduceat(sq, starts)
    if ref_sq.all():
        rel = np.sqrt(diff_sq / ref_sq)
    else:  # a quantity that is exactly zero on the torch side
        rel = np.where(diff_sq == 0, 0.0, np.inf)
        np.sqrt(np.divide(diff_sq, ref_sq, out=rel, where=ref_sq > 0), out=rel)
    ok = max_abs <= atol  # cheap pass: no element can fail its bound
    if not ok.all():
        ends = np.append(starts[1:], len(d))
        for k in np.flatnonzero(~ok):
            seg = slice(starts[k], ends[k])
            ok[k] = bool(np.all(d[seg] <= atol[k] + rtol[k] * np.abs(t[seg])))
    return max_abs, rel, ok


@dataclass
class Mismatch:
    """Where one quantity fails its tolerance."""

    index: tuple[int, ...]  # the first failing element
    scratch: float
    torch: float
    count: int  # how many elements fail
    total: int
    max_abs: float
    max_rel: float  # elementwise, over the failing elements


def first_mismatch(s: np.ndarray, t: np.ndarray, rtol: float, atol: float) -> Mismatch | None:
    """The first element (row-major) outside |s - t| <= atol + rtol |t|, or None."""
    s, t = np.asarray(s, dtype=np.float64), np.asarray(t, dtype=np.float64)
    diff = np.abs(s - t)
    bad = ~(diff <= atol + rtol * np.abs(t))  # NaN fails
    count = int(bad.sum())
    if not count:
        return None
    flat = int(np.argmax(bad.ravel()))
    index = tuple(int(i) for i in np.unravel_index(flat, s.shape)) if s.shape else ()
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = diff[bad] / np.abs(t[bad])
    return Mismatch(
        index=index,
        scratch=float(s.ravel()[flat]),
        torch=float(t.ravel()[flat]),
        count=count,
        total=int(s.size),
        max_abs=float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan"),
        max_rel=float(np.nanmax(rel)) if np.isfinite(rel).any() else float("inf"),
    )


def describe(name: str, m: Mismatch, rtol: float, atol: float) -> str:
    """A message in the layout of torch.testing.assert_close's."""
    return (
        f"{name}: {m.count} / {m.total} elements differ "
        f"(rtol={rtol:.3g}, atol={atol:.3g}).\n"
        f"  first at index {m.index}: scratch {m.scratch!r}, torch {m.torch!r}\n"
        f"  greatest absolute difference: {m.max_abs:.6g}\n"
        f"  greatest relative difference: {m.max_rel:.6g}"
    )


def assert_parity(
    actual: Mapping[str, np.ndarray] | np.ndarray,
    expected: Mapping[str, np.ndarray] | np.ndarray,
    *,
    quantity: str,
    dtype=None,
    rtol: float | None = None,
    atol: float | None = None,
    where: str = "",
) -> None:
    """Assert that scratch values (`actual`) match torch's (`expected`), for pytest.

    Dicts are compared key by key and a failure names the key. Shapes and dtypes are checked
    before values. The tolerance comes from the table unless rtol and atol are both given.
    """
    __tracebackhide__ = True
    if (rtol is None) != (atol is None):
        raise ValueError("set rtol and atol together, or neither")
    if where and where[0].isalnum():  # "step 0" reads "grad[layers.0.weight], step 0"
        where = f", {where}"
    if not isinstance(actual, Mapping):
        actual, expected = {"": np.asarray(actual)}, {"": expected}  # type: ignore[dict-item]
    assert isinstance(expected, Mapping)
    if set(actual) != set(expected):
        raise AssertionError(
            f"{quantity}{where}: keys differ: scratch only {sorted(set(actual) - set(expected))}, "
            f"torch only {sorted(set(expected) - set(actual))}"
        )
    for key in actual:
        a = np.asarray(actual[key])
        e = _numpy(expected[key])
        name = f"{quantity}{f'[{key}]' if key else ''}{where}"
        if a.shape != e.shape:
            raise AssertionError(f"{name}: shape {a.shape} (scratch) != {e.shape} (torch)")
        if a.dtype != e.dtype:
            raise AssertionError(f"{name}: dtype {a.dtype} (scratch) != {e.dtype} (torch)")
        if rtol is None or atol is None:
            tol = tolerance(quantity, dtype if dtype is not None else a.dtype)
            r, at = tol.rtol, tol.atol
        else:
            r, at = rtol, atol
        m = first_mismatch(a, e, r, at)
        if m is not None:
            raise AssertionError(describe(name, m, r, at))


def _numpy(x) -> np.ndarray:
    """A torch tensor or array-like as a NumPy array, without importing torch here."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def segment_starts(sizes: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
