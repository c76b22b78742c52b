"""Every catalogued bug in the three user styles is caught through `adapt` and located in the
user's own names; every equivalent rewriting passes. The wiring per style is what a user
writes: 5 to 7 lines, in the style's own calls."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity.torch_ref import adapt, check

from .helpers import make_data
from .user_code import class_style, dict_style, nielsen_style

LR = 0.5


def wire_dict(factory):
    p = factory()
    params = p.init_params((3, 5, 1), 0)
    return adapt(params, activations=["tanh", "sigmoid"], loss="bce",
                 forward=lambda X: p.forward(params, X),
                 grads=lambda X, y: p.loss_and_grads(params, X, y),
                 update=lambda grads, lr: p.sgd_step(params, grads, lr))  # fmt: skip


def wire_class(factory):
    nn = factory(3, 4, 1, seed=0)
    return adapt(nn, names=["W1", "b1", "W2", "b2"], activations=["sigmoid", "sigmoid"],
                 forward=lambda X: (nn.forward(X), vars(nn)),
                 loss_fn=lambda X, y: nn.compute_loss(y, nn.forward(X)),
                 step=lambda X, y, lr: nn.backward(X, y, lr))  # fmt: skip


def wire_nielsen(factory):
    net = factory([4, 4, 4, 1], seed=0)
    pairs = lambda X, y: list(zip(X[:, :, None], np.reshape(y, (-1, 1, 1))))  # noqa: E731
    return adapt(net, names=["weights", "biases"], activations=["sigmoid"] * 3,
                 forward=lambda X: np.hstack([net.feedforward(x[:, None]) for x in X]).T,
                 loss_fn=lambda X, y: net.total_cost(pairs(X, y)),
                 step=lambda X, y, lr: net.update_mini_batch(pairs(X, y), lr))  # fmt: skip


STYLES = {
    "dict": (dict_style, wire_dict, 3, lambda y: y),
    "class": (class_style, wire_class, 3, lambda y: y.reshape(-1, 1)),
    "nielsen": (nielsen_style, wire_nielsen, 4, lambda y: y),
}


def run(style: str, factory, steps: int):
    _, wire, d, labels = STYLES[style]
    X, y = make_data(8, d, seed=1)
    return check(wire(factory), X, labels(y), steps=steps, lr=LR)


def expected_label(where: str, kind: str) -> str:
    return {"grad": f"grad {where}", "param": f"param {where}", "loss": "loss"}.get(kind, where)


BUG_CASES = [
    pytest.param(style, name, id=f"{style}-{name}")
    for style, (module, *_) in STYLES.items()
    for name in module.BUGS
]
EQUIVALENT_CASES = [
    pytest.param(style, name, id=f"{style}-{name}")
    for style, (module, *_) in STYLES.items()
    for name in module.EQUIVALENTS
]


@pytest.mark.parametrize("style", list(STYLES))
def test_each_correct_style_passes_500_float64_steps(style):
    module = STYLES[style][0]
    factory = {
        "dict": lambda: module.program,
        "class": lambda: module.NeuralNetwork,
        "nielsen": lambda: module.Network,
    }[style]()
    result = run(style, factory, 500)
    assert result.passed, str(result.first_divergence)
    assert result.loss_scratch[-1] < result.loss_scratch[0]


@pytest.mark.parametrize("style,name", BUG_CASES)
def test_each_bug_is_caught_and_located_in_the_users_names(style, name):
    factory, where, kind, _ = STYLES[style][0].BUGS[name]
    div = run(style, factory, 5).first_divergence
    assert div is not None, f"{name} was not caught"
    assert div.label == expected_label(where, kind), str(div)
    assert div.step <= 2


@pytest.mark.parametrize("style,name", EQUIVALENT_CASES)
def test_each_equivalent_rewriting_passes(style, name):
    factory, _ = STYLES[style][0].EQUIVALENTS[name]
    result = run(style, factory, 100)
    assert result.passed, str(result.first_divergence)


def test_no_user_code_bug_gets_a_wrong_cause():
    from nn_parity.torch_ref.mutation.cause_score import CauseTable

    from .user_causes import STYLE_CAUSES, style_rows

    assert {r for r in STYLE_CAUSES} == {f"{s}-{n}" for s, n in (c.values for c in BUG_CASES)}
    table = CauseTable(style_rows())
    assert table.count("wrong") == 0, table.table()
    assert table.count("right") >= 0.7 * len(table.rows), table.table()
