"""nn-parity's PyTorch side: the mirror module, weights across both worlds, and the lockstep."""

from .adapter import UserNetwork, adapt
from .compare import TOLERANCES, Tolerance, assert_parity, tolerance
from .engine import Divergence, LockstepResult, check, lockstep
from .model import TorchMLP, torch_dtype, torch_loss
from .opcheck import assert_op, check_op
from .weights import scratch_to_torch, torch_to_scratch

__all__ = [
    "TOLERANCES",
    "Divergence",
    "LockstepResult",
    "Tolerance",
    "TorchMLP",
    "UserNetwork",
    "adapt",
    "assert_op",
    "assert_parity",
    "check",
    "check_op",
    "lockstep",
    "scratch_to_torch",
    "tolerance",
    "torch_dtype",
    "torch_loss",
    "torch_to_scratch",
]
