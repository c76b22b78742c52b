"""A schedule that parts is named from the numbers (torch_ref/engine/schedule_causes.py):
scratch's rate is torch's one step later or earlier, the base rate still, torch's at the epoch,
or torch's form with another constant. Planted in scratch's own schedule (its rate compared as
`lr`, and asked at the next steps too) and in user code written in a book's style, whose rate
is fitted from its update. A correct schedule, and a difference no schedule makes, are not
named."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import scratch
from nn_parity.scratch.optim import Schedule, get_optimizer
from nn_parity.torch_ref import TorchMLP, adapt, lockstep

from .helpers import make_data
from .test_schedules import SCHEDULES
from .user_code import decay_style


def _planted(name: str, bug: str):
    """Scratch's copy of the schedule wrong in one way (torch's is built from the spec)."""
    X, y = make_data(32, 4, seed=1)
    net = scratch.MLP([4, 6, 1], ["tanh", "sigmoid"], rng=0)
    opt = get_optimizer("sgd", net, lr=0.05, schedule=SCHEDULES[name][0])
    right = opt.schedule.lr
    if bug == "late":
        opt.schedule.lr = lambda base, t: right(base, max(t - 1, 0))
    elif bug == "early":
        opt.schedule.lr = lambda base, t: right(base, t + 1)
    elif bug == "never":
        opt.schedule.lr = lambda base, t: base
    else:  # another constant
        spec = opt.schedule.describe()
        key = "decay" if name == "inverse_time" else "gamma"
        other = Schedule({**spec, key: spec[key] * (1.5 if key == "decay" else 0.9)})
        opt.schedule.lr = other.lr
    return lockstep(net, TorchMLP.from_scratch(net), X, y, steps=10, optimizer=opt)


WORDS = {
    "late": "your schedule runs a step late",
    "early": "you step the schedule before the update (torch steps it after)",
    "never": "your schedule never moves",
    "constant": "a different constant",
}
CASES = [(n, b) for n in ("inverse_time", "step", "exponential", "lambda") for b in WORDS]
CASES.remove(("lambda", "constant"))  # a user's function has no constant to refit


@pytest.mark.parametrize("name,bug", CASES, ids=[f"{n}-{b}" for n, b in CASES])
def test_a_planted_schedule_bug_is_named_by_what_the_rates_show(name, bug):
    div = _planted(name, bug).first_divergence
    assert div is not None and div.label == "lr", str(div)
    assert div.diagnosis["cause"] == "schedule", div.diagnosis
    assert WORDS[bug] in div.diagnosis["explanation"], div.diagnosis
    others = [w for b, w in WORDS.items() if b != bug]
    assert not any(w in div.diagnosis["explanation"] for w in others), div.diagnosis


def test_a_rate_no_schedule_gives_is_not_named():
    X, y = make_data(32, 4, seed=1)
    net = scratch.MLP([4, 6, 1], ["tanh", "sigmoid"], rng=0)
    opt = get_optimizer("sgd", net, lr=0.05, schedule=SCHEDULES["inverse_time"][0])
    right = opt.schedule.lr
    opt.schedule.lr = lambda base, t: right(base, t) * (1 + 0.01 * (-1) ** t)  # wobbles
    div = lockstep(net, TorchMLP.from_scratch(net), X, y, steps=10, optimizer=opt)
    div = div.first_divergence
    assert div is not None and div.label == "lr", str(div)
    assert (div.diagnosis or {}).get("cause") != "schedule", div.diagnosis


# --- user code: the book's inverse-time decay, lr / (1 + decay * iterations) -----------------

DECLARED = {"name": "sgd", "schedule": {"name": "inverse_time", "decay": 0.05}}


def _book_run(cls, batch_size=None):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(float)
    model = cls(2, 6, seed=0, learning_rate=0.5, decay=0.05)
    net = adapt(model, names=decay_style.PATHS, activations=["tanh", "sigmoid"],
                grads=model.loss_and_grads, update=model.update, forward=model.forward)  # fmt: skip
    epochs = 3 if batch_size else None
    return lockstep(
        net, None, X, y, steps=12, lr=0.5, optimizer=DECLARED, batch_size=batch_size, epochs=epochs
    )


@pytest.mark.parametrize("bug", list(decay_style.BUGS))
def test_the_books_schedule_bugs_are_named_in_its_terms(bug):
    cls, where, kind, step = decay_style.BUGS[bug]
    div = _book_run(cls).first_divergence
    assert div is not None and (div.step, div.label) == (step, f"{kind} {where}"), str(div)
    assert div.diagnosis["cause"] == "schedule", div.diagnosis
    assert decay_style.CAUSES[bug] in div.diagnosis["explanation"], div.diagnosis


def test_the_books_schedule_stepped_per_epoch_is_named_among_what_fits():
    div = _book_run(decay_style.DecayPerEpoch, batch_size=8).first_divergence
    assert div is not None and div.step == 1 and div.label == "param dense2.weights", str(div)
    words = div.diagnosis["explanation"]
    assert "you step the schedule once per epoch" in words, words
    assert "runs a step late" in words  # at step 1 of epoch 0, both give the base rate


@pytest.mark.parametrize("cls", [decay_style.Model, *decay_style.EQUIVALENTS.values()])
def test_a_correct_schedule_is_not_named(cls):
    result = _book_run(cls, batch_size=8)
    assert result.passed, str(result.first_divergence)


def test_an_update_that_is_no_rate_times_the_gradient_is_not_named_a_schedule(monkeypatch):
    # the book's update with one element of dense2's step doubled: no one rate fits it
    def update(self, layer):
        step = self.current_learning_rate * layer.dweights
        if layer.weights.shape[1] == 1:
            step[0, 0] *= 2
        layer.weights -= step
        layer.biases -= self.current_learning_rate * layer.dbiases

    monkeypatch.setattr(decay_style.OptimizerSGD, "update_params", update)
    div = _book_run(decay_style.Model).first_divergence
    assert div is not None and div.label == "param dense2.weights", str(div)
    assert (div.diagnosis or {}).get("cause") != "schedule", div.diagnosis
