"""nn-parity's PyTorch side: the mirror module, weights across both worlds, and the lockstep.

The names below are imported on first use (PEP 562), so `nn-parity --help`, the data loaders
and the reports never pay for importing torch (about a second) unless they need it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the submodule that defines it
_EXPORTS = {
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

__all__ = [  # the keys of _EXPORTS, spelled out for linters and readers
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

if TYPE_CHECKING:
    from .compare import TOLERANCES, Tolerance, assert_parity, tolerance
    from .engine import Divergence, LockstepResult, lockstep
    from .model import TorchMLP, torch_dtype, torch_loss
    from .weights import scratch_to_torch, torch_to_scratch


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:  # submodules (`engine`, `threads`, ...) are found by the import system
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
