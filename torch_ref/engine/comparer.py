"""The per-step comparison: items packed into one buffer per side and compared in one pass."""

from __future__ import annotations

import numpy as np
from nn_parity.torch_ref.compare import (
    segment_starts,
    tolerance,
)
from nn_parity.torch_ref.results import Item

# Quantities this small are packed into one buffer per side and compared in one pass, which
# saves a dozen NumPy calls per step on small nets; larger ones are compared where they lie.
_PACK_LIMIT = 1 << 16


class _Group:
    """Consecutive items compared together, packed into one buffer per side when small."""

    def __init__(self, idx: list[int], items: list[Item], dtype: np.dtype):
        self.idx = idx
        self.slice = slice(idx[0], idx[-1] + 1)
        sizes = [items[i].size for i in idx]  # the loss, shape (), has size 1
        self.starts = segment_starts(sizes)
        tols = [tolerance(items[i].quantity, dtype) for i in idx]
        self.rtol = np.array([t.rtol for t in tols])
        self.atol = np.array([t.atol for t in tols])
        self.packed = len(idx) > 1
        if self.packed:
            self.sbuf = np.empty(sum(sizes), dtype)
            self.tbuf = np.empty(sum(sizes), dtype)

    def flat(self, svals: list, tvals: list) -> tuple[np.ndarray, np.ndarray]:
        if not self.packed:
            i = self.idx[0]
            return np.ravel(svals[i]), np.ravel(tvals[i])
        # axis=None flattens each input as it copies: no ravel per item
        np.concatenate([svals[i] for i in self.idx], axis=None, out=self.sbuf)
        np.concatenate([tvals[i] for i in self.idx], axis=None, out=self.tbuf)
        return self.sbuf, self.tbuf


def _groups(items: list[Item], dtype: np.dtype) -> list[_Group]:
    groups: list[list[int]] = [[]]
    filled = 0
    for i, it in enumerate(items):
        if filled + it.size > _PACK_LIMIT:  # a large item, or a full group: start a new one
            groups.append([])
            filled = 0
        groups[-1].append(i)
        filled += it.size
    return [_Group(g, items, dtype) for g in groups if g]


def _slack_for(g: _Group, items: list[Item], slack: dict[str, float]) -> np.ndarray:
    return np.array(
        [slack.get(items[i].name or "", 0.0) if items[i].quantity == "grad" else 0.0 for i in g.idx]
    )


def _check_dtypes(items: list[Item], svals: list, tvals: list) -> None:
    """Dtypes are compared before values: packing into one buffer would cast silently."""
    for it, sv, tv in zip(items, svals, tvals):
        s_dt, t_dt = np.asarray(sv).dtype, _np(tv).dtype
        if s_dt != t_dt:
            raise TypeError(f"{it.label}: scratch computes it in {s_dt}, torch in {t_dt}")


def _np(t) -> np.ndarray:
    """A tensor or an array, as an array (a view of a CPU tensor's storage)."""
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
