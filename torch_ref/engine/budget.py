"""Memory a run needs, estimated before anything is allocated: a run this machine cannot hold
is refused in one line that says how much it would need and how much is available, never met
as a MemoryError part-way through.

The estimates are upper bounds of the run's large allocations: the per-step records (one
max error, relative error and verdict per compared item and step, see `engine.lockstep`) and
the network (both sides' parameters, gradients, optimizer state and activations).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import pairwise

__all__ = ["available_memory", "check_network", "check_steps", "human_bytes"]

RECORD_BYTES = 8 + 8 + 1  # per step and item: max_abs, rel_err (float64), within (bool)
STEP_BYTES = 2 * 8 + 2 * 8  # per step: both losses (float64), its epoch and batch (int64)
# per layer: z, a, and for its weight and bias a gradient, the value and up to 4 state buffers
ITEMS_PER_LAYER = 2 + 2 * (2 + 4)
PARAM_COPIES = 10  # both sides' values and gradients, optimizer state, the step's snapshot
UNIT_COPIES = 8  # per sample and unit: z, a and their gradients, on both sides


def available_memory() -> int:
    """Bytes of memory available now (Linux's MemAvailable, else the free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63  # unknown: no bound


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _check(need: int, what: str, why: str) -> None:
    have = available_memory()
    if need > have:
        raise ValueError(
            f"{what} would need about {human_bytes(need)} of memory {why}; "
            f"{human_bytes(have)} is available"
        )


def check_steps(steps: int, n_layers: int) -> None:
    """Refuse a run whose per-step records (steps x compared items) do not fit in memory."""
    items = ITEMS_PER_LAYER * n_layers + 2  # and the output probability and the loss
    need = steps * (STEP_BYTES + RECORD_BYTES * items)
    _check(need, f"a run of {steps} steps", "for its per-step records")


def check_network(sizes: Sequence[int], samples: int, itemsize: int) -> None:
    """Refuse a network of these layer sizes that does not fit in memory with its data."""
    params = sum((a + 1) * b for a, b in pairwise(sizes))
    need = itemsize * (PARAM_COPIES * params + UNIT_COPIES * samples * sum(sizes))
    _check(need, f"a network of {params} parameters", f"for training on {samples} samples")
