"""How the lockstep lays out its two steps on threads, chosen per run from what the run measures.

A lockstep step runs a NumPy step (OpenBLAS, its own pthread pool) and a torch step (MKL and
ATen on an OpenMP team). Run one after the other with both pools at their default size, the
pools can contend: one library's idle workers spin on the cores while the other's team wants
them. How much depends on the CPU, the BLAS kernel, the sizes and what else the machine runs:
at 30-32-16-1 x 569 one quiet AMD machine measured 9.8 ms a step interleaved against 3.3 ms
with one BLAS thread, and a loaded 2-core Intel machine 120 ms against 1.6; at 784-256-128-1 x
256 running the torch step in a worker thread beside the scratch step, one thread each, was
the fastest. No fixed size threshold is right everywhere, so `choose` times a few real steps
in each `Arrangement` and keeps the fastest.

    with schedule(ARRANGEMENTS, trial_steps=2) as pairs:   # a loop that owns its steps
        for step, pair in zip(range(steps), pairs):
            svals, tvals = pair(scratch_step, torch_step)

    choice = choose(one_step, ARRANGEMENTS, trial_steps=2)  # a step given as a callable
    with choice.best.apply() as pair:
        ... one_step(pair) for the remaining steps

The trial steps are real steps of the run, each run once: nothing is repeated or undone. What
choosing costs is the time the trial steps spend in the slower arrangement: `trial_steps *
(t_slow - t_best)`, or one step's worth where `give_up` cuts a trial short. With the two
default arrangements, measured at most about one step's worth (they differed by 5-60% a step
at the sizes in benchmarks/bench_step.py): about 1% of a 100-step run, or less.

The arrangement changes where threads compute, never what: with float64 a run gives the same
numbers, bit for bit, whichever default arrangement it ran in, or when the choice was made
mid-run (parity_tests/test_threads.py). That holds because both run torch on one thread:
torch's MKL, given two, splits the inner dimension of some products and rounds differently
(measured: `g.T @ a` for (1024, 1) and (1024, 256) operands differs between 1 and 2 threads,
while OpenBLAS under NumPy gave the same bits for every product measured). `POOLED`, which
keeps the user's thread counts, is therefore not among the defaults.

Each arrangement restores the caller's `torch.get_num_threads()` and threadpoolctl limits when
it ends, also when the step raises.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from threadpoolctl import threadpool_limits

__all__ = [
    "ARRANGEMENTS",
    "POOLED",
    "Arrangement",
    "Choice",
    "Pair",
    "Schedule",
    "choose",
    "schedule",
]

# pair(scratch_step, torch_step) -> (scratch_step(), torch_step()), however they are laid out
Pair = Callable[[Callable[[], Any], Callable[[], Any]], tuple[Any, Any]]


def _interleaved(f: Callable[[], Any], g: Callable[[], Any]) -> tuple[Any, Any]:
    return f(), g()


@dataclass(frozen=True)
class Arrangement:
    """Where the torch step runs and how many threads each library may use.

    `concurrent`: the torch step runs in a worker thread while the scratch step runs in the
    caller's. `torch_threads` / `blas_threads`: the size of torch's intra-op pool and of every
    BLAS pool threadpoolctl finds (OpenBLAS under NumPy), or None to leave the user's setting.
    `min_step`: in `schedule`, tried only when the fastest step measured before it took at
    least this many seconds (a step with too little work to split across threads).
    """

    name: str
    concurrent: bool = False
    torch_threads: int | None = None
    blas_threads: int | None = None
    min_step: float = 0.0

    @contextmanager
    def apply(self) -> Iterator[Pair]:
        """Set this arrangement's threads and yield its `pair`; restore the caller's after."""
        threads = torch.get_num_threads()
        try:
            with ExitStack() as stack:
                if self.torch_threads is not None:
                    torch.set_num_threads(self.torch_threads)
                if self.blas_threads is not None:
                    stack.enter_context(threadpool_limits(self.blas_threads, user_api="blas"))
                if not self.concurrent:
                    yield _interleaved
                    return
                pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="torch"))

                def side_by_side(f: Callable[[], Any], g: Callable[[], Any]) -> tuple[Any, Any]:
                    pending = pool.submit(g)
                    return f(), pending.result()

                yield side_by_side
        finally:
            torch.set_num_threads(threads)


# Each library on one thread: the pools cannot contend (no idle worker spins on a core the
# other library wants), and torch computes the same numbers in both, so the choice between
# them is a matter of time only. With more threads, torch's MKL splits the inner dimension of
# some products (a (1, 1024) @ (1024, 256) gradient, say) and rounds differently, so a run would
# give different numbers depending on which arrangement its timing picked.
ARRANGEMENTS: tuple[Arrangement, ...] = (
    Arrangement("interleaved, one thread each", torch_threads=1, blas_threads=1),
    Arrangement("concurrent, one thread each", concurrent=True, torch_threads=1, blas_threads=1),
)

# Both libraries with the user's own threads, one after the other: faster than one thread each
# only with more cores than two and steps long enough to split, and its numbers depend on
# torch's thread count (above). With pools that contend, one step here cost 80 one-thread
# steps at 30-32-16-1 x 569 on a loaded 2-core machine (130 ms against 1.6), so `min_step` keeps
# it for steps of 10 ms and more, and it goes last, where `give_up` can cut it after one step.
POOLED = Arrangement("interleaved, the user's threads", min_step=10e-3)


@dataclass
class Choice:
    """What `choose` or `schedule` measured: seconds per trial step, by arrangement."""

    times: dict[Arrangement, list[float]] = field(default_factory=dict)
    skipped: list[Arrangement] = field(default_factory=list)  # steps too short for them

    @property
    def best(self) -> Arrangement:
        """The arrangement with the fastest trial step. A step is only ever slowed by what
        else runs on the machine, so the fastest of a few measures each arrangement best."""
        if not self.times:
            raise ValueError("no arrangement has been timed yet")
        return min(self.times, key=lambda a: min(self.times[a]))

    def fastest(self) -> float:
        """The fastest step measured so far, in seconds (inf before any)."""
        return min((min(t) for t in self.times.values() if t), default=math.inf)

    def summary(self) -> str:
        return "; ".join(
            f"{a.name}: {1e3 * statistics.median(t):.3g} ms/step (median of {len(t)})"
            for a, t in self.times.items()
        )


@contextmanager
def schedule(
    arrangements: Sequence[Arrangement] = ARRANGEMENTS,
    trial_steps: int = 2,
    clock: Callable[[], float] = time.perf_counter,
    give_up: float = 2.0,
) -> Iterator[Schedule]:
    """An endless iterator of `pair`s, one per step: `trial_steps` steps in each arrangement,
    then every later step in the fastest. An arrangement whose step takes more than `give_up`
    times the fastest step before it is given up after that step. A step is timed from the
    `pair` being handed out to the next one being asked for, so it includes whatever the caller
    does with the step (the lockstep's comparisons). Leaving the block, by the end of the loop,
    `break` or an exception, restores the caller's thread settings; `.choice` keeps the
    measurements."""
    if not arrangements:
        raise ValueError("schedule needs at least one arrangement, got none")
    if trial_steps < 1:
        raise ValueError(f"trial_steps must be at least 1, got {trial_steps}")
    sched = Schedule(list(arrangements), trial_steps, clock, give_up)
    try:
        yield sched
    finally:
        sched.close()


class Schedule:
    """The steps' `pair`s, as `schedule` hands them out; `.choice` holds what was measured."""

    def __init__(self, arrangements: list[Arrangement], trial_steps: int, clock, give_up: float):
        self.choice = Choice()
        self.chosen = False  # True from the first step in the chosen arrangement on
        self._gen = self._pairs(arrangements, trial_steps, clock, give_up)

    def __iter__(self) -> Iterator[Pair]:
        return self._gen

    def close(self) -> None:
        self._gen.close()  # runs the active arrangement's exit: the caller's threads are back

    def _pairs(self, arrangements, trial_steps, clock, give_up) -> Generator[Pair, None, None]:
        with ExitStack() as active:
            current: Arrangement | None = None
            pair: Pair = _interleaved

            def use(arr: Arrangement) -> None:
                nonlocal current, pair
                if arr is not current:  # the last one tried, if fastest, stays as it is
                    active.close()
                    pair = active.enter_context(arr.apply())
                    current = arr

            for arr in arrangements:
                fastest = self.choice.fastest()
                if fastest < arr.min_step:
                    self.choice.skipped.append(arr)
                    continue
                use(arr)
                times = self.choice.times.setdefault(arr, [])
                for _ in range(trial_steps):
                    start = clock()
                    yield pair
                    times.append(clock() - start)
                    if times[-1] > give_up * fastest:
                        break  # clearly slower already: another trial step would only cost
            use(self.choice.best)
            self.chosen = True
            while True:
                yield pair


def choose(
    step: Callable[[Pair], object],
    arrangements: Sequence[Arrangement] = ARRANGEMENTS,
    trial_steps: int = 2,
    clock: Callable[[], float] = time.perf_counter,
    give_up: float = 2.0,
) -> Choice:
    """Run `step(pair)` `trial_steps` times in each arrangement (fewer, or none, where
    `schedule` cuts trials short) and return the measurements; `.best` is the fastest. `step`
    runs one real step of the caller's run: the steps count, and the caller goes on from there
    in `choice.best.apply()`; what `step` returns is ignored. The caller's thread settings are
    restored before `choose` returns."""
    with schedule(arrangements, trial_steps, clock, give_up) as pairs:
        for pair in pairs:
            if pairs.chosen:
                break
            step(pair)
        return pairs.choice
