"""The threading arrangement: it restores the user's threads, picks the fastest, and never
changes a number."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from nn_parity.torch_ref import TorchMLP, lockstep
from nn_parity.torch_ref.engine import loop, threads
from nn_parity.torch_ref.engine.threads import ARRANGEMENTS, Arrangement, choose, schedule
from threadpoolctl import threadpool_info, threadpool_limits

from parity_tests.helpers import make_data, make_pair

# Settings no arrangement uses, so a setting left behind by one cannot pass for restored.
USER_THREADS = 3


def blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


@pytest.fixture
def user_threads():
    """The user's own settings for the rest of their program: 3 torch and 3 BLAS threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(USER_THREADS)
    try:
        with threadpool_limits(USER_THREADS, user_api="blas"):
            assert blas_threads() and set(blas_threads()) == {USER_THREADS}
            yield
    finally:
        torch.set_num_threads(before)


def assert_user_threads():
    __tracebackhide__ = True
    assert torch.get_num_threads() == USER_THREADS
    assert set(blas_threads()) == {USER_THREADS}


class Boom(Exception):
    pass


@pytest.mark.parametrize("arr", ARRANGEMENTS, ids=lambda a: a.name)
def test_an_arrangement_restores_the_users_threads(user_threads, arr):
    with arr.apply() as pair:
        assert pair(lambda: 1, lambda: 2) == (1, 2)
        if arr.torch_threads is not None:  # it did change them, so restoring is not vacuous
            assert torch.get_num_threads() == arr.torch_threads
            assert set(blas_threads()) == {arr.blas_threads}
    assert_user_threads()


@pytest.mark.parametrize("arr", ARRANGEMENTS, ids=lambda a: a.name)
def test_an_arrangement_restores_the_users_threads_after_an_exception(user_threads, arr):
    def fails():
        raise Boom

    with pytest.raises(Boom), arr.apply() as pair:
        pair(lambda: None, fails)  # in the worker thread, when concurrent
    assert_user_threads()


def test_the_worker_thread_runs_the_torch_side_beside_the_caller():
    import threading

    arr = next(a for a in ARRANGEMENTS if a.concurrent)
    with arr.apply() as pair:
        s, t = pair(threading.get_ident, threading.get_ident)
    assert s == threading.get_ident() and t != s


@pytest.mark.parametrize("leave", ["break", "exception", "end"])
def test_a_schedule_restores_the_users_threads_however_the_loop_ends(user_threads, leave):
    one_thread = [a for a in ARRANGEMENTS if a.torch_threads == 1]

    def loop():
        with schedule(one_thread, trial_steps=2) as pairs:
            for step, pair in zip(range(3), pairs):
                pair(lambda: None, lambda: None)
                assert torch.get_num_threads() == 1  # inside, the arrangement's
                if step == 1 and leave == "break":
                    break
                if step == 1 and leave == "exception":
                    raise Boom

    if leave == "exception":
        with pytest.raises(Boom):
            loop()
    else:
        loop()
    assert_user_threads()


def test_lockstep_restores_the_users_threads(user_threads):
    X, y = make_data(32, 3, seed=1)
    net, ref = make_pair([3, 4, 1], ["tanh", "sigmoid"], seed=2)
    assert lockstep(net, ref, X, y, steps=10).passed
    assert_user_threads()


# --- the choice, with a fake clock: a logic test, no real time is measured -----------------


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.active = ""  # the name of the fake arrangement applied

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Fake(Arrangement):
    """An arrangement whose step takes `cost` seconds on the fake clock; threads untouched."""

    cost: float = 0.0
    clock: FakeClock | None = None

    @contextmanager
    def apply(self):
        self.clock.active = self.name  # type: ignore[union-attr]

        def pair(f, g):
            self.clock.now += self.cost  # type: ignore[union-attr]
            return f(), g()

        yield pair


def fakes(costs, clock, **kw):
    return [Fake(f"fake {c}", cost=c, clock=clock, **kw) for c in costs]


@pytest.mark.parametrize("costs", [(3, 1, 2), (1, 2, 3), (3, 2, 1), (2, 2.5, 1.75)])
def test_choose_keeps_the_fastest_arrangement(costs):
    clock, ran = FakeClock(), []
    arrs = fakes(costs, clock)

    def step(pair):
        ran.append(pair(lambda: None, lambda: None))

    choice = choose(step, arrs, trial_steps=2, clock=clock, give_up=np.inf)
    assert choice.best.cost == min(costs)
    assert len(ran) == 2 * len(costs)  # each step ran once, and they were all real steps
    assert {a.cost: t for a, t in choice.times.items()} == {c: [c, c] for c in costs}


def test_choose_times_the_whole_step_not_only_the_pair():
    clock = FakeClock()
    after_pair = {"fake 1": 5.0, "fake 2": 0.0}  # e.g. the comparisons, slower in one of them

    def step(pair):
        pair(lambda: None, lambda: None)
        clock.now += after_pair[clock.active]

    choice = choose(step, fakes((1, 2), clock), trial_steps=2, clock=clock, give_up=np.inf)
    assert choice.best.name == "fake 2"


def test_a_trial_far_slower_than_the_best_so_far_is_cut_short():
    clock = FakeClock()
    arrs = fakes((1, 10, 1.5), clock)
    choice = choose(lambda pair: pair(lambda: None, lambda: None), arrs, 3, clock, give_up=2.0)
    assert [len(t) for t in choice.times.values()] == [3, 1, 3]
    assert choice.best.cost == 1


def test_an_arrangement_is_skipped_when_steps_are_too_short_for_it():
    clock = FakeClock()
    short, pooled = fakes((1,), clock)[0], Fake("pooled", cost=0.5, clock=clock, min_step=2.0)
    choice = choose(lambda pair: pair(lambda: None, lambda: None), [short, pooled], 2, clock)
    assert choice.skipped == [pooled] and choice.best is short
    long_ = Fake("long", cost=4, clock=clock)
    choice = choose(lambda pair: pair(lambda: None, lambda: None), [long_, pooled], 2, clock)
    assert choice.skipped == [] and choice.best is pooled


def test_a_schedule_goes_on_in_the_chosen_arrangement():
    clock = FakeClock()
    arrs = fakes((1, 3, 2), clock)
    with schedule(arrs, trial_steps=2, clock=clock) as pairs:
        for _, pair in zip(range(20), pairs):
            pair(lambda: None, lambda: None)
    trials = [len(t) for t in pairs.choice.times.values()]
    assert trials == [2, 1, 2]  # 3 took more than twice the fastest before it: cut after one
    assert clock.now == 1 + 1 + 3 + 2 + 2 + (20 - 5) * 1
    assert pairs.chosen and pairs.choice.best.cost == 1


@pytest.mark.parametrize("bad", [{"arrangements": []}, {"trial_steps": 0}])
def test_a_schedule_refuses_nothing_to_try(bad):
    kw = {"arrangements": ARRANGEMENTS, "trial_steps": 2, **bad}
    with pytest.raises(ValueError, match=r"arrangement|trial_steps"), schedule(**kw):
        pass


# --- the numbers do not depend on the arrangement -------------------------------------------


def run_in(arrangements, monkeypatch, dtype="float64"):
    # Big enough that MKL's GEMMs and torch's reductions split across threads when allowed.
    X, y = make_data(1024, 64, seed=3, dtype=dtype)
    net, ref = make_pair([64, 256, 256, 1], ["tanh", "tanh", "sigmoid"], seed=4, dtype=dtype)
    monkeypatch.setattr(loop, "_ARRANGEMENTS", tuple(arrangements))
    result = lockstep(net, ref, X, y, steps=8, lr=0.5)
    return result, net, ref


def test_a_run_is_bitwise_the_same_in_every_arrangement(user_threads, monkeypatch):
    # Two threads per pool where the user's are kept, so the pooled arrangement does split work.
    torch.set_num_threads(2)
    with threadpool_limits(2, user_api="blas"):
        runs = {a.name: run_in([a], monkeypatch) for a in ARRANGEMENTS}
        runs["chosen per run"] = run_in(ARRANGEMENTS, monkeypatch)
    torch.set_num_threads(USER_THREADS)
    first, net0, ref0 = runs.pop(ARRANGEMENTS[0].name)
    assert first.passed
    for name, (result, net, ref) in runs.items():
        for field in ("max_abs", "rel_err", "loss_scratch", "loss_torch"):
            assert np.array_equal(getattr(result, field), getattr(first, field)), (name, field)
        assert np.array_equal(net.flat_params, net0.flat_params), name
        for (k, p), p0 in zip(ref.named_parameters(), ref0.parameters()):
            assert torch.equal(p, p0), (name, k)


def test_the_bitwise_check_sees_a_changed_number(monkeypatch):
    # The comparison above can fail: one ulp in one weight of one run is seen.
    a, net_a, _ = run_in(ARRANGEMENTS[:1], monkeypatch)
    X, y = make_data(1024, 64, seed=3)
    net, _ = make_pair([64, 256, 256, 1], ["tanh", "tanh", "sigmoid"], seed=4)
    w = net.params["layers.0.weight"]
    w[0, 0] = np.nextafter(w[0, 0], np.inf)
    ref = TorchMLP.from_scratch(net)
    b = lockstep(net, ref, X, y, steps=8, lr=0.5)
    assert not np.array_equal(b.loss_scratch, a.loss_scratch)
    assert not np.array_equal(net.flat_params, net_a.flat_params)


def test_threads_module_is_what_the_engine_uses():
    assert loop._ARRANGEMENTS == threads.ARRANGEMENTS
