"""Evidence both checks weigh: the lockstep and the op check name a likely cause from the same
fingerprints, and read a finite-difference verdict the same way.

A fingerprint tests an explanation against the numbers: it is named only when it fits within
rounding, and a number that fits none gets no cause.
"""

from __future__ import annotations

import numpy as np


def constant_ratio(s: np.ndarray, t: np.ndarray) -> float | None:
    """The c with s = c t elementwise, to 1e-6, if there is one (and it is not 1)."""
    scale = max(np.abs(t).max(), np.abs(s).max(), 1e-300)
    mask = np.abs(t) > 1e-9 * scale
    if not mask.any() or np.any(np.abs(s[~mask]) > 1e-9 * scale):
        return None  # where torch's is zero, scratch's must be too
    r = s[mask] / t[mask]
    c = float(np.median(r))
    if c != 0 and not near(c, 1) and np.all(np.abs(r - c) <= 1e-6 * abs(c)):
        return c
    return None


def near(x: float, target: float, rel: float = 1e-6) -> bool:
    return abs(x - target) <= rel * abs(target)


def agreement(scratch_agrees: bool, torch_agrees: bool) -> str:
    """The finite-difference verdict in words both checks report: which side the finite
    difference agrees with, "scratch", "torch", "both" or "neither"."""
    return {(True, True): "both", (True, False): "scratch", (False, True): "torch"}.get(
        (scratch_agrees, torch_agrees), "neither"
    )
