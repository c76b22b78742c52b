"""nn-parity's PyTorch side: the mirror module, user code through `adapt`, the lockstep, the op
check, and weights across both worlds.

Names are loaded on first use (PEP 562), so that the pytest plugin, which
pytest imports in every run, and `nn-parity report`, which only draws, cost no torch import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .compare import TOLERANCES, Tolerance, assert_parity, tolerance
    from .engine import check, lockstep
    from .mirror.model import TorchMLP, torch_dtype, torch_loss
    from .mirror.weights import scratch_to_torch, torch_to_scratch
    from .opcheck import assert_op, check_op
    from .results import Divergence, LockstepResult
    from .user import UserNetwork, adapt
    from .user.layered import adapt_layers

# public name -> the module that defines it: the one list of the public surface
_WHERE = {
    "UserNetwork": "user",
    "adapt": "user",
    "adapt_layers": "user.layered",
    "TOLERANCES": "compare",
    "Tolerance": "compare",
    "assert_parity": "compare",
    "tolerance": "compare",
    "Divergence": "results",
    "LockstepResult": "results",
    "check": "engine",
    "lockstep": "engine",
    "TorchMLP": "mirror.model",
    "torch_dtype": "mirror.model",
    "torch_loss": "mirror.model",
    "assert_op": "opcheck",
    "check_op": "opcheck",
    "scratch_to_torch": "mirror.weights",
    "torch_to_scratch": "mirror.weights",
}

__all__ = [  # noqa: RUF022 (grouped by module, as _WHERE)
    "UserNetwork", "adapt", "adapt_layers",
    "TOLERANCES", "Tolerance", "assert_parity", "tolerance",
    "Divergence", "LockstepResult", "check", "lockstep",
    "TorchMLP", "torch_dtype", "torch_loss",
    "assert_op", "check_op",
    "scratch_to_torch", "torch_to_scratch",
]  # fmt: skip
assert set(__all__) == set(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
