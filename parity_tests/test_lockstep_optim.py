"""Optimizers with state in the lockstep: every buffer compared by name at every step."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import scratch
from nn_parity.torch_ref import TorchMLP, lockstep, tolerance

from .helpers import make_data

CONFIGS = {
    "sgd-momentum": ("sgd", {"momentum": 0.9}),
    "sgd-nesterov-wd": ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    "adam": ("adam", {}),
    "adam-amsgrad-l2": ("adam", {"amsgrad": True, "weight_decay": 0.01}),
    "adamw": ("adamw", {}),
    "rmsprop-centered-momentum": ("rmsprop", {"centered": True, "momentum": 0.5}),
    "adagrad": ("adagrad", {"lr_decay": 0.01}),
}


def pair(dtype="float64", seed=0):
    net = scratch.MLP([4, 6, 1], ["tanh", "sigmoid"], dtype=dtype, rng=seed)
    return net, TorchMLP.from_scratch(net)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_optimizer_passes_and_its_state_is_compared(name, dtype):
    X, y = make_data(32, 4, seed=1)
    net, ref = pair(dtype)
    opt, hyper = CONFIGS[name]
    result = lockstep(net, ref, X, y, steps=60, lr=0.01, optimizer={"name": opt, **hyper})
    assert result.passed, str(result.first_divergence)
    buffers = {it.buffer for it in result.items if it.quantity == "state"}
    amsgrad = {"max_exp_avg_sq"} if hyper.get("amsgrad") else set()
    expected = {
        "sgd": {"momentum_buffer"},
        "adam": {"step", "exp_avg", "exp_avg_sq"} | amsgrad,
        "adamw": {"step", "exp_avg", "exp_avg_sq"},
        "rmsprop": {"step", "square_avg", "momentum_buffer", "grad_avg"},
        "adagrad": {"step", "sum"},
    }[opt]  # fmt: skip
    assert buffers == expected


def nudge_state_at(opt, step: int, name: str, buffer: str, times: float) -> None:
    """After the optimizer's `step`-th update, move one element of one buffer by `times` the
    table's bound for it, atol + rtol |value|: a state bug that touches nothing else then."""
    calls = {"n": 0}
    original = opt.step

    def step_and_nudge(grads=None):
        original(grads)
        if calls["n"] == step:
            a = opt.state[name][buffer]
            tol = tolerance("state", a.dtype)
            a[(0,) * a.ndim] += times * (tol.atol + tol.rtol * abs(a[(0,) * a.ndim]))
        calls["n"] += 1

    opt.step = step_and_nudge


@pytest.mark.parametrize("buffer", ["exp_avg", "exp_avg_sq"])
def test_a_buffer_nudged_past_tolerance_is_reported_by_name(buffer):
    X, y = make_data(32, 4, seed=1)
    net, ref = pair()
    opt = scratch.Adam(net, lr=0.01)
    nudge_state_at(opt, 3, "layers.0.weight", buffer, 2.0)
    div = lockstep(net, ref, X, y, steps=10, lr=0.01, optimizer=opt).first_divergence
    assert div is not None and (div.step, div.quantity) == (3, "state")
    assert div.label == f"{buffer} layers.0.weight" and div.index == (0, 0)
    assert div.diagnosis["cause"] == "optimizer-state"


def test_the_same_nudge_within_tolerance_passes():
    X, y = make_data(32, 4, seed=1)
    net, ref = pair()
    opt = scratch.Adam(net, lr=0.01)
    nudge_state_at(opt, 3, "layers.0.weight", "exp_avg", 0.5)
    assert lockstep(net, ref, X, y, steps=10, lr=0.01, optimizer=opt).passed


def test_an_optimizer_without_a_torch_mirror_is_refused():
    X, y = make_data(8, 4, seed=1)
    net, ref = pair()

    class Mine:
        net = None

    opt = Mine()
    opt.net = net
    with pytest.raises(ValueError, match="optimizer Mine has no torch mirror"):
        lockstep(net, ref, X, y, steps=2, lr=0.1, optimizer=opt)


def test_mini_batches_follow_one_seeded_permutation_and_record_epoch_and_batch():
    X, y = make_data(20, 4, seed=1)
    net, ref = pair()
    result = lockstep(net, ref, X, y, lr=0.1, batch_size=8, epochs=3, seed=5)
    assert result.passed and result.steps == 9  # 8 + 8 + 4 per epoch
    assert list(result.epochs) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert list(result.batches) == [0, 1, 2] * 3
    dropped = lockstep(*pair(), X, y, lr=0.1, batch_size=8, epochs=3, drop_last=True)
    assert dropped.steps == 6


def test_a_batch_larger_than_the_data_is_refused():
    X, y = make_data(20, 4, seed=1)
    with pytest.raises(ValueError, match="batch_size 32 is larger than the data set"):
        lockstep(*pair(), X, y, lr=0.1, batch_size=32)


def test_a_long_float32_adam_run_on_real_data_does_not_cry_wolf():
    # Adam divides by sqrt(v) + eps and amplifies gradient rounding where v is small
    # (docs/optimizers.md); the lockstep judges each step from torch's state, so 1,000 steps of
    # float32 on wine (13 features, 3 classes, 178 samples) must pass.
    from nn_parity.torch_ref.frontends.datasets import load_dataset

    ds = load_dataset("wine")
    net = scratch.MLP([13, 10, 3], ["tanh", "identity"], dtype="float32", rng=0)
    result = lockstep(
        net, TorchMLP.from_scratch(net), ds.X.astype(np.float32), ds.y,
        steps=1000, lr=1e-3, loss="ce", optimizer="adam",
    )  # fmt: skip
    assert result.passed, str(result.first_divergence)
    assert result.loss_scratch[-1] < 0.2 * result.loss_scratch[0]
