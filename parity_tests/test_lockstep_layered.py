"""The lockstep over a network of gallery layers: every layer's output, every gradient and
update, batchnorm's running statistics, dropout with one shared mask per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.engine.loop import lockstep
from nn_parity.torch_ref.mirror.sequential import TorchSequential

CONV = "conv8x3,relu,pool2,flatten,affine10"
FULL = "conv4x3p1,bn,tanh,pool2,flatten,dropout0.2,affine16,ln,relu,affine10"


def _images(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, 1, 8, 8))
    y = rng.integers(0, 10, size=n)
    return X, y


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", [CONV, FULL], ids=["conv", "full"])
def test_a_correct_layered_network_passes(spec, dtype, train):
    net = sq.from_spec(spec, (1, 8, 8), dtype=dtype, rng=1).train(train)
    X, y = _images()
    r = lockstep(net, None, X, y, steps=6, lr=0.1, loss="ce", batch_size=32)
    assert r.passed, r.first_divergence
    labels = r.labels
    assert [f"out[{l}]" for l in range(len(net.layers))] == [x for x in labels if "out[" in x]
    assert ("stat layers.1.running_mean" in labels) == (spec == FULL)
    if dtype == "float64":  # near machine precision
        assert max(v["max_abs"] for v in r.worst().values()) < 1e-12


def test_adam_state_is_compared_for_a_layered_network():
    net = sq.from_spec(CONV, (1, 8, 8), rng=2)
    X, y = _images()
    r = lockstep(net, None, X, y, steps=3, lr=0.01, loss="ce", optimizer="adam")
    assert r.passed, r.first_divergence
    assert "exp_avg layers.0.weight" in r.labels


def test_torch_weights_set_apart_are_a_start_divergence():
    net = sq.from_spec(CONV, (1, 8, 8), rng=0)
    ref = TorchSequential(net)
    with torch.no_grad():
        ref[0].weight[1, 0, 2, 2] += 1e-9
    r = lockstep(net, ref, *_images(), steps=2, lr=0.1, loss="ce")
    assert not r.passed
    assert r.first_divergence.quantity == "start"
    assert r.first_divergence.label.endswith("layers.0.weight")


def test_a_wrong_layer_is_located_at_its_output():
    # a flatten that puts channels last: the pool's output agrees, the flatten's does not
    net = sq.from_spec("conv3x3,relu,pool2,flatten,affine10", (1, 8, 8), rng=0)
    ref = TorchSequential(net)
    net.layers[3].forward = lambda x, p, train: (
        x.transpose(0, 2, 3, 1).reshape(len(x), -1),
        x.shape,
    )
    r = lockstep(net, ref, *_images(), steps=2, lr=0.1, loss="ce")
    d = r.first_divergence
    assert (d.step, d.quantity, d.layer) == (0, "out", 3), d


def test_one_dropout_mask_per_step_is_shared():
    net = sq.from_spec("flatten,dropout0.5,affine10", (1, 8, 8), rng=0)
    X, y = _images()
    r = lockstep(net, None, X, y, steps=4, lr=0.1, loss="ce", batch_size=32)
    assert r.passed, r.first_divergence
    # and the check can fail: torch given a mask of its own every step
    net = sq.from_spec("flatten,dropout0.5,affine10", (1, 8, 8), rng=0)
    ref = TorchSequential(net)
    other = np.random.default_rng(99)
    ref[1].forward = lambda x: x * (torch.from_numpy(other.random(tuple(x.shape)) >= 0.5) / 0.5)
    r = lockstep(net, ref, X, y, steps=2, lr=0.1, loss="ce")
    d = r.first_divergence
    assert (d.step, d.quantity, d.layer) == (0, "out", 1), d


def test_images_of_the_wrong_shape_are_refused():
    net = sq.from_spec(CONV, (1, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\)"):
        lockstep(net, None, np.zeros((4, 64)), np.zeros(4, int), steps=1, loss="ce")


# --- a schedule on a layered network: the rate compared per step -----------------------------

STEP_SCHEDULE = {"name": "sgd", "schedule": {"name": "step", "step_size": 2, "gamma": 0.5}}


def test_a_schedule_on_a_layered_network_is_followed_and_compared():
    net = sq.from_spec(CONV, (1, 8, 8), rng=3)
    X, y = _images()
    r = lockstep(net, None, X, y, steps=5, lr=0.1, loss="ce", optimizer=STEP_SCHEDULE)
    assert r.passed, r.first_divergence
    k = r.labels.index("lr")
    assert r.within[:, k].all()
    # the rate halves every 2 steps on both sides: 0.1, 0.1, 0.05, 0.05, 0.025
    net2 = sq.from_spec(CONV, (1, 8, 8), rng=3)
    const = lockstep(net2, None, X, y, steps=5, lr=0.1, loss="ce")
    assert const.passed and "lr" not in const.labels
    assert r.loss_scratch[:2].tolist() == const.loss_scratch[:2].tolist()
    assert r.loss_scratch[3] != const.loss_scratch[3]  # the halved rate moved the weights less


def test_a_schedule_that_differs_between_the_sides_is_caught_at_lr(monkeypatch):
    from nn_parity.torch_ref.engine import layered_side

    def other_gamma(opt, torch_opt):  # torch's scheduler with gamma 0.25 against scratch's 0.5
        return torch.optim.lr_scheduler.StepLR(torch_opt, step_size=2, gamma=0.25)

    monkeypatch.setattr(layered_side, "torch_scheduler", other_gamma)
    net = sq.from_spec(CONV, (1, 8, 8), rng=3)
    r = lockstep(net, None, *_images(), steps=5, lr=0.1, loss="ce", optimizer=STEP_SCHEDULE)
    d = r.first_divergence
    assert d is not None and (d.step, d.quantity) == (2, "lr"), d
