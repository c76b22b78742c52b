"""nn-parity's PyTorch side: the mirror module, weights across both worlds, and the lockstep."""

from .adapter import UserNetwork, adapt
from .compare import TOLERANCES, Tolerance, assert_parity, tolerance
from .engine import Divergence, LockstepResult, check, lockstep
from .model import TorchMLP, torch_dtype, torch_loss
from .weights import scratch_to_torch, torch_to_scratch

__all__ = [
    "TOLERANCES",
    "Divergence",
    "LockstepResult",
    "Tolerance",
    "TorchMLP",
    "UserNetwork",
    "adapt",
    "assert_parity",
    "check",
    "lockstep",
    "scratch_to_torch",
    "tolerance",
    "torch_dtype",
    "torch_loss",
    "torch_to_scratch",
]
