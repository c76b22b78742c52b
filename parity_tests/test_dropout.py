"""Dropout inside the user's own network: the masks their forward draws, applied by torch too."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity.torch_ref import adapt, check

from .user_code import dropout_style as ds


def data(n=32, d=4, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + 0.5 * X[:, 1] * X[:, 2] > 0).astype(float)
    return X, y


def wire(forward=ds.forward, backward=ds.backward, declared=True):
    """The user's loop as nn-parity runs it: their forward, then their backward on its cache."""
    params, rng = ds.init_params([4, 8, 1], seed=0)
    last = {}

    def fwd(X):
        probs, last["cache"] = forward(params, X, rng)
        return probs, last["cache"]

    def grads(X, y):
        return backward(params, last["cache"], X, y, rng)

    return adapt(
        params,
        activations=["relu", "sigmoid"],
        forward=fwd,
        grads=grads,
        dropout={"a1": "mask1"} if declared else None,
    )


def test_the_fixture_passes_as_written_once_its_dropout_is_declared():
    X, y = data()
    result = check(wire(), X, y, steps=200, lr=0.1)
    assert result.passed, str(result.first_divergence)
    assert result.loss_torch[-20:].mean() < result.loss_torch[:20].mean()  # it learns


def test_mini_batches_take_the_masks_of_their_own_rows():
    X, y = data()
    result = check(wire(), X, y, lr=0.1, batch_size=8, epochs=3)
    assert result.passed, str(result.first_divergence)


def test_undeclared_dropout_is_seen_at_the_masked_activation():
    X, y = data()
    div = check(wire(declared=False), X, y, steps=3, lr=0.1).first_divergence
    assert div is not None and div.step == 0 and div.label == "a1", str(div)


@pytest.mark.parametrize("name", list(ds.BUGS))
def test_each_planted_bug_is_caught_and_located_in_the_users_names(name):
    replaced, where, kind, _ = ds.BUGS[name]
    X, y = data()
    div = check(wire(**replaced), X, y, steps=5, lr=0.1).first_divergence
    assert div is not None, f"{name} was not caught"
    expected = f"grad {where}" if kind == "grad" else where
    assert div.step == 0 and div.label == expected, str(div)


def test_a_mask_is_the_forwards_own_never_redrawn_by_nn_parity():
    """A rerun would draw other masks: a dropout step is reported as it stands."""
    X, y = data()
    net = wire(backward=ds.backward_mask_redrawn)
    result = check(net, X, y, steps=2, lr=0.1)
    assert result.first_divergence is not None
    assert result.first_divergence.label == "grad W1"


def test_finite_differences_do_not_judge_without_the_masks():
    X, y = data()
    div = check(wire(backward=ds.backward_mask_redrawn), X, y, steps=2, lr=0.1).first_divergence
    assert div is not None and div.fd_agrees_with.startswith("undecided"), str(div)


def test_a_column_per_sample_mask_is_read_as_its_rows():
    """Code with samples in columns caches a1 and mask1 as (H, N)."""

    def forward_columns(params, X, rng):
        probs, cache = ds.forward(params, X, rng)
        return probs.T, {k: v.T for k, v in cache.items()}

    def backward_columns(params, cache, X, y, rng):
        return ds.backward(params, {k: v.T for k, v in cache.items()}, X, y, rng)

    X, y = data()
    result = check(wire(forward_columns, backward_columns), X, y, steps=50, lr=0.1)
    assert result.passed, str(result.first_divergence)
