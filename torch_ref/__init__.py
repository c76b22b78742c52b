"""nn-parity's PyTorch side: the mirror module, weights across both worlds, and the lockstep.

Names are loaded on first use (PEP 562), so that `nn_parity.torch_ref.pytest_plugin`, which
pytest imports in every run, and `nn-parity report`, which only draws, cost no torch import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .compare import TOLERANCES, Tolerance, assert_parity, tolerance
    from .engine import Divergence, LockstepResult, lockstep
    from .model import TorchMLP, torch_dtype, torch_loss
    from .weights import scratch_to_torch, torch_to_scratch

_WHERE = {
    "TOLERANCES": "compare",
    "Tolerance": "compare",
    "assert_parity": "compare",
    "tolerance": "compare",
    "Divergence": "engine",
    "LockstepResult": "engine",
    "lockstep": "engine",
    "TorchMLP": "model",
    "torch_dtype": "model",
    "torch_loss": "model",
    "scratch_to_torch": "weights",
    "torch_to_scratch": "weights",
}

__all__ = [
    "TOLERANCES",
    "Divergence",
    "LockstepResult",
    "Tolerance",
    "TorchMLP",
    "assert_parity",
    "lockstep",
    "scratch_to_torch",
    "tolerance",
    "torch_dtype",
    "torch_loss",
    "torch_to_scratch",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
