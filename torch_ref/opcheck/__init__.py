"""The op check: one hand-derived op (a NumPy forward and backward) against torch's autograd.

check.py         `check_op`, `assert_op`: the orchestration
spec.py          inputs, parameters, layouts and tolerances, checked before anything runs
run.py           running both sides: the user's forward and backward, torch's autograd
fingerprints.py  finite differences, kinks and ties, and the likely cause of a mismatch
results.py       the verdict per item and the first mismatch
"""

from nn_parity.torch_ref.opcheck.check import assert_op, check_op
from nn_parity.torch_ref.opcheck.results import ItemResult, OpCheckResult, OpMismatch

__all__ = ["ItemResult", "OpCheckResult", "OpMismatch", "assert_op", "check_op"]
