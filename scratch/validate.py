"""Checks on user data, shared by the network, the lockstep and the loaders.

Each failure raises ValueError or TypeError with a message that names the offending value and
what was expected, before any of it reaches NumPy arithmetic.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_xy"]


def check_xy(X, y, *, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """X as a finite (N, D) float array and y as an (N,) array of 0/1 labels.

    y may also be given as (N, 1). `width`, when given, is the D the network expects.
    """
    X = _numeric(X, "X")
    y = _numeric(y, "y")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError("X holds no samples (shape (0, ...)); need at least one")
    if X.shape[1] == 0:
        raise ValueError(f"X holds no features (shape {X.shape})")
    if width is not None and X.shape[1] != width:
        raise ValueError(f"X has {X.shape[1]} features but the network's input layer takes {width}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (samples,) or (samples, 1), got shape {y.shape}")
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
    _finite(X, "X")
    _finite(y, "y")
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
        raise ValueError(
            f"binary cross-entropy needs labels 0 or 1; y[{bad[0]}] = {float(y[bad[0]])} "
            f"({bad.size} label(s) outside {{0, 1}})"
        )
    return X, y


def _numeric(a, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        raise TypeError(f"{name} must be a NumPy array, got a torch tensor; pass {name}.numpy()")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise ValueError(f"{name} is not a rectangular array: {err}") from None
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == bool
    ):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _finite(a: np.ndarray, name: str) -> None:
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(
            f"{name} holds a non-finite value: {name}{list(where)} = {float(a[where])}"
        )
