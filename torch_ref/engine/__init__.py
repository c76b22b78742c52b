"""The lockstep: both sides trained on the same batches, compared after every step.

loop.py          the run loop: `lockstep`, `check`
setup.py         the scratch side, the torch side built from its description, the batch plan
side.py          the side protocol the loop uses, and the keys of what a step reports
scratch_side.py  the built-in network as a side;  torch_side.py  the torch module as one
items.py         what both sides report, in step order;  comparer.py  one pass per step
start.py         the starting state, compared bit for bit before step 0
recheck.py       the stage-wise re-check that tells rounding from a bug
findings.py      a divergence as found;  diagnosis.py  its likely cause
threads.py       the threading arrangement;  budget.py  what a run would need
"""

from nn_parity.torch_ref.engine.loop import check, lockstep
from nn_parity.torch_ref.engine.setup import run_length

__all__ = ["check", "lockstep", "run_length"]
