"""A learning-rate schedule with `adapt_layers` (grads=): nn-parity's update follows it on the
user's side, the step's rate reported after the gradients, a rerun keeping its step's rate.
Torch's layered mirror steps the same lr_scheduler, so the run compares the rate per step.
A fused step= with a schedule is refused (row 526)."""

from __future__ import annotations

import pytest
import torch
from nn_parity.torch_ref import lockstep
from nn_parity.torch_ref.engine import layered_side
from nn_parity.torch_ref.engine.setup import _optimizer_factory
from nn_parity.torch_ref.engine.side import LR_KEY
from nn_parity.torch_ref.engine.user_layered_side import user_layered_scratch_side

from .test_user_layered import build, digits

SCHEDULE = {"name": "sgd", "schedule": {"name": "inverse_time", "decay": 0.5}}


def test_the_users_side_follows_the_schedule_step_by_step():
    X, y = digits(32)
    opt = _optimizer_factory(SCHEDULE, 0.1)
    side, Xc, Y = user_layered_scratch_side(build("cs231n"), None, opt, 0.1, X, y)
    rates = []
    for _ in range(3):
        vals = side.step(Xc, Y)
        rates.append(float(vals[side.keys.index(LR_KEY)]))
    assert rates == [0.1 / (1 + 0.5 * t) for t in range(3)]
    grads = [i for i, k in enumerate(side.keys) if k[0] == "grad"]
    assert side.keys.index(LR_KEY) == grads[-1] + 1  # after the gradients, as torch's side
    again = side.rerun(side.get_params(), Xc, Y, None)
    assert float(again[side.keys.index(LR_KEY)]) == rates[-1]  # the same step's rate


def test_a_constant_rate_reports_none():
    X, y = digits(32)
    opt = _optimizer_factory("sgd", 0.1)
    side, Xc, Y = user_layered_scratch_side(build("cs231n"), None, opt, 0.1, X, y)
    side.step(Xc, Y)
    assert LR_KEY not in side.keys


def test_a_fused_step_with_a_schedule_is_refused():
    X, y = digits(32)
    opt = _optimizer_factory(SCHEDULE, 0.1)
    with pytest.raises(ValueError, match="a learning-rate schedule with a fused step="):
        user_layered_scratch_side(build("cs231n", form="step"), None, opt, 0.1, X, y)


def test_a_schedule_runs_in_lockstep_and_one_that_differs_is_caught_at_lr(monkeypatch):
    X, y = digits(64)
    r = lockstep(build("cs231n"), None, X, y, steps=6, lr=0.1, loss="ce", optimizer=SCHEDULE)
    assert r.passed, r.first_divergence
    assert "lr" in r.labels

    def other_decay(opt, torch_opt):  # torch's inverse-time decay 0.25 against scratch's 0.5
        return torch.optim.lr_scheduler.LambdaLR(torch_opt, lambda t: 1 / (1 + 0.25 * t))

    monkeypatch.setattr(layered_side, "torch_scheduler", other_decay)
    r = lockstep(build("cs231n"), None, X, y, steps=6, lr=0.1, loss="ce", optimizer=SCHEDULE)
    assert not r.passed
    assert (r.first_divergence.step, r.first_divergence.label) == (1, "lr")
