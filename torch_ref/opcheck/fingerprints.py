"""What an op's mismatch looks like: finite differences, kinks and ties, and the likely cause."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from nn_parity.torch_ref.compare import Mismatch
from nn_parity.torch_ref.evidence import agreement
from nn_parity.torch_ref.evidence import constant_ratio as _constant_ratio
from nn_parity.torch_ref.opcheck.causes import recomputed_cause
from nn_parity.torch_ref.opcheck.results import OpMismatch
from nn_parity.torch_ref.opcheck.run import _copies, _run_torch
from nn_parity.torch_ref.opcheck.spec import _Spec

_MAX_PROBES = 32  # finite-difference probes per item before a mismatch is reported unexplained


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
    if kink:  # a subgradient: between the one-sided slopes (the tied set is checked jointly)
        lo, hi = min(left, right) - res, max(left, right) + res
        s_ok, t_ok = lo <= s <= hi, lo <= t <= hi
    else:
        s_ok, t_ok = abs(s - central) <= res, abs(t - central) <= res
    return central, ((left, right) if kink else None), agreement(s_ok, t_ok), kink


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
    if "dout" in ctx:
        recomputed = recomputed_cause(spec, m, s, ctx["dout"], ctx["t_out"])
        if recomputed is not None:
            return recomputed
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
