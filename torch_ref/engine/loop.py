"""The run loop: one training step on both sides, compared, explained or recorded.

From identical weights, a scratch side (the built-in network, or the user's own through
`adapt`) and a torch side take the same training steps on the same batches. After every step
each quantity both sides report is compared, in the order the step computes it:

    z[l], a[l]   every layer's pre-activation and (hidden) activation      forward
    prob         the output probabilities                                  forward
    loss         the scalar loss                                           loss
    grad ...     every parameter's gradient, last layer first              backward
    param ...    every parameter after the update, last layer first        update
    state ...    every optimizer buffer after the update (exp_avg W1, ...)  update

so the first failing (step, quantity, layer, index) is where the two first part: backward runs
from the last layer down, and an error made in one layer spreads to the layers below it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.torch_ref.engine import threads
from nn_parity.torch_ref.engine.ledger import Ledger
from nn_parity.torch_ref.engine.setup import prepare
from nn_parity.torch_ref.results import LockstepResult
from nn_parity.torch_ref.user.network import UserCodeError

# The threading arrangement is chosen per run from the run's own first steps (threads.py): which
# one is fastest depends on the CPU, the BLAS kernel, the sizes and the machine's load, so no
# fixed size threshold is right everywhere. A single arrangement here means no choice is made.
_ARRANGEMENTS: tuple[threads.Arrangement, ...] = threads.ARRANGEMENTS


_TRIAL_STEPS = 2  # per arrangement; min of 2 sets aside the first step's one-off costs


def _side_by_side() -> AbstractContextManager[threads.Schedule]:
    """Per step, a `pair(scratch_step, torch_step)`: the steps run in each arrangement in turn,
    then in the fastest; the trial steps are the run's own first steps."""
    return threads.schedule(_ARRANGEMENTS, _TRIAL_STEPS)


def lockstep(
    net,
    ref: torch.nn.Module | None,
    X: np.ndarray,
    y: np.ndarray,
    *,
    steps: int | None = None,
    lr: float = 0.1,
    loss: str | scratch.Loss | None = None,
    optimizer=None,
    batch_size: int | None = None,
    epochs: int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    resync: bool = False,
    stop_at_divergence: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LockstepResult:
    """Train `net` and `ref` side by side, comparing every quantity after every step.

    net        a `scratch.MLP`, or the user's own network adapted with `adapt(...)`
    ref        the torch module; None builds a `TorchMLP` from the network's description, at its
               weights. A module given for user code takes the user's weights, bit for bit; one
               given for the built-in network is used as it is (`TorchMLP.from_scratch(net)`
               copies the weights), so a test can set torch's copy apart on purpose.
    loss       for the built-in network: "bce" (default; the network ends in a sigmoid),
               "bce-logits", ... or a `scratch.Loss`; user code carries its own
    optimizer  None (plain SGD at `lr`), a name ("adam"), a dict {"name": "adam", "betas":
               (0.9, 0.999), ...}, or a scratch optimizer bound to `net`; torch's is built from
               the same description, never typed twice, and its state is compared by buffer
    steps      full-batch steps (default 100); with `batch_size`, mini-batches from one seeded
               permutation per epoch (`seed`, `shuffle`), `epochs` of them (default 1), the last
               partial batch kept unless `drop_last`; `steps` then caps the total
    resync     scratch takes torch's parameters (and optimizer state) after every step, so each
               step is judged from identical weights

    Both sides are trained in place. `progress(step)` is called after each step.
    """
    run = prepare(net, ref, X, y, steps=steps, lr=lr, loss=loss, optimizer=optimizer,
                  batch_size=batch_size, epochs=epochs, shuffle=shuffle, drop_last=drop_last,
                  seed=seed)  # fmt: skip
    ledger = Ledger(run, resync)
    start = {k: np.array(v) for k, v in run.sside.get_params().items()}
    # Overflow, NaN and log(0) are detected and reported as a blow-up, not warned about.
    with _side_by_side() as pairs, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step, (epoch, b, rows), pair in zip(range(run.steps), run.plan, pairs):
            mine, theirs = run.batch(rows)
            try:
                svals, tvals = (_masked if run.masked else _paired)(run, pair, mine, theirs)
            except UserCodeError as err:
                if step == 0:  # nothing compared yet: the user's code does not run as given
                    run.sside.set_params(start)  # and a refused call leaves their arrays alone
                    raise
                ledger.fault = {"step": step, "message": str(err)}  # what came before is kept
                break
            stop = ledger.record(step, (epoch, b), mine, svals, tvals)
            if progress is not None:
                progress(step)
            if stop or (ledger.first is not None and stop_at_divergence):
                break
    return ledger.result()


def _paired(run, pair, mine, theirs) -> tuple:
    return pair(lambda: run.sside.step(*mine), lambda: run.tside.step(*theirs))


def _masked(run, pair, mine, theirs) -> tuple:
    """Dropout drawn by the user's code: their step first, its forward drawing this step's
    masks; then torch's, applying them."""
    svals = run.sside.step(*mine)
    run.tside.use_masks(run.sside.masks)
    return svals, run.tside.step(*theirs)


def check(net, X: np.ndarray, y: np.ndarray, *, ref: torch.nn.Module | None = None, **options):
    """`lockstep` with the torch side built from the network's description: the one call for
    checking a network, yours (through `adapt`) or the built-in one. Options as `lockstep`."""
    return lockstep(net, ref, X, y, **options)
