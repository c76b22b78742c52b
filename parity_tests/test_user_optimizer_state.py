"""A user's own optimizer with its state named in `adapt`: compared buffer by buffer with
torch's, a bug located at the buffer and step it first shows in, its cause named when a
recomputation of that buffer fits."""

from __future__ import annotations

import pytest
from nn_parity.torch_ref import adapt, check

from .helpers import make_data
from .user_code import dict_style
from .user_code.own_optimizers import BUGS, EQUIVALENTS, OPTIMIZERS, Adam

LR = 0.05


def run(cls, which: str, steps: int = 5):
    _, (name, options), state = OPTIMIZERS[which]
    params = dict_style.init_params((3, 5, 1), 0)
    opt = cls(LR, **_own(which, options))
    net = adapt(params, activations=["tanh", "sigmoid"], loss="bce",
                grads=lambda X, y: dict_style.loss_and_grads(params, X, y),
                update=lambda grads, lr: opt.step(params, grads),
                state=state, state_of=opt)  # fmt: skip
    X, y = make_data(8, 3, seed=1)
    return check(net, X, y, steps=steps, lr=LR, optimizer={"name": name, **options})


def _own(which, options) -> dict:
    """The user's constructor arguments for torch's options."""
    if which == "adam":
        return {"beta1": options["betas"][0], "beta2": options["betas"][1]}
    if which == "rmsprop":
        return {"alpha": options["alpha"]}
    return {"mu": options["momentum"], "dampening": options["dampening"]}


@pytest.mark.parametrize("which", list(OPTIMIZERS))
def test_each_correct_optimizer_passes_with_its_state_compared(which):
    result = run(OPTIMIZERS[which][0], which, steps=30)
    assert result.passed, str(result.first_divergence)
    assert any(it.quantity == "state" for it in result.items)


@pytest.mark.parametrize("name", list(EQUIVALENTS))
def test_an_equivalent_rewrite_passes(name):
    cls, which = EQUIVALENTS[name]
    assert run(cls, which, steps=30).passed


@pytest.mark.parametrize("name", list(BUGS))
def test_each_optimizer_bug_is_located_at_its_buffer_with_its_cause(name):
    cls, which, where, cause, _ = BUGS[name]
    div = run(cls, which).first_divergence
    assert div is not None, f"{name} went unnoticed"
    assert div.label == where, str(div)
    named = [div.diagnosis["cause"], *div.diagnosis.get("also", [])] if div.diagnosis else []
    # the cause, or both causes that fit the same numbers; "optimizer-state" (the buffer
    # differs, no recomputation fits) where no fingerprint is known
    assert cause in named, div.diagnosis


@pytest.mark.parametrize(
    "state,words",
    [({"momentum": "v"}, "not torch buffers"), ({"exp_avg": "nowhere"}, "nowhere")],
    ids=["not a buffer", "no such path"],
)
def test_a_state_that_names_nothing_is_refused_at_adapt(state, words):
    params = dict_style.init_params((3, 5, 1), 0)
    opt = Adam(LR)
    with pytest.raises(ValueError, match=words):
        adapt(params, activations=["tanh", "sigmoid"], loss="bce",
              grads=lambda X, y: dict_style.loss_and_grads(params, X, y),
              update=lambda grads, lr: opt.step(params, grads),
              state=state, state_of=opt)  # fmt: skip
