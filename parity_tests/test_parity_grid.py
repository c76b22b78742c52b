"""One training step on both sides, compared quantity by quantity, over a grid of networks.

These checks drive scratch and torch by hand and compare with `assert_parity`, independently of
the lockstep engine, so that the engine is not the only judge of itself.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from nn_parity import scratch
from nn_parity.torch_ref import assert_parity, lockstep, torch_loss

from parity_tests.helpers import make_data, make_pair

HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "leaky_relu:0.2", "identity"]
DEPTHS = [1, 2, 3, 4]  # hidden layers
WIDTHS = [1, 3, 16, 64]
BATCHES = [1, 2, 7, 64, 512]


def grid():
    """Every activation x loss x dtype x bias, with depth, width and batch size cycling."""
    combos = itertools.product(HIDDEN, ["bce", "bce-logits"], ["float64", "float32"], [True, False])
    cycle = itertools.cycle(itertools.product(DEPTHS, WIDTHS, BATCHES))
    for (act, loss, dtype, bias), (depth, width, batch) in zip(combos, cycle):
        yield pytest.param(
            act,
            loss,
            dtype,
            bias,
            depth,
            width,
            batch,
            id=f"{act}-{loss}-{dtype}-{'bias' if bias else 'nobias'}-{depth}x{width}-N{batch}",
        )


def one_step(net, ref, X, y, loss_name, lr):
    loss_s = scratch.get_loss(loss_name)
    Y = y.reshape(-1, 1)
    out, cache = net.forward(X)
    L, lcache = loss_s.forward(out, Y)
    grads = {k: g.copy() for k, g in net.backward(loss_s.backward(lcache), cache).items()}
    scratch.SGD(net, lr).step()

    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    out_t, cache_t = ref.forward_cache(Xt)
    L_t = torch_loss(loss_s)(out_t, Yt)
    L_t.backward()
    torch.optim.SGD(ref.parameters(), lr=lr).step()
    return (cache, loss_s.probabilities(out), L, grads), (cache_t, out_t, L_t)


@pytest.mark.parametrize("act,loss,dtype,bias,depth,width,batch", list(grid()))
def test_one_step_parity(act, loss, dtype, bias, depth, width, batch):
    sizes = [5] + [width] * depth + [1]
    out_act = scratch.get_loss(loss).output_activation
    net, ref = make_pair(sizes, [act] * depth + [out_act], bias=bias, dtype=dtype, seed=batch)
    X, y = make_data(batch, 5, seed=depth, dtype=dtype)
    (cache, p, L, grads), (cache_t, out_t, L_t) = one_step(net, ref, X, y, loss, lr=0.1)

    for l, ((_, z, a), (z_t, a_t)) in enumerate(zip(cache, cache_t)):
        assert_parity(z, z_t, quantity="z", where=f" in layer {l}")
        assert_parity(a, a_t, quantity="a", where=f" in layer {l}")
    p_t = torch.sigmoid(out_t) if loss == "bce-logits" else out_t
    assert_parity(p, p_t, quantity="prob")
    assert_parity(np.asarray(L, dtype), L_t, quantity="loss")
    assert_parity(grads, {k: v.grad for k, v in ref.named_parameters()}, quantity="grad")
    assert_parity(net.params, dict(ref.named_parameters()), quantity="param")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["bce", "bce-logits"])
@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid"])
def test_lockstep_200_steps(act, loss, dtype):
    out_act = scratch.get_loss(loss).output_activation
    net, ref = make_pair([6, 16, 8, 1], [act, act, out_act], dtype=dtype, seed=3)
    X, y = make_data(128, 6, seed=4, dtype=dtype)
    result = lockstep(net, ref, X, y, steps=200, lr=0.2, loss=loss)
    assert result.passed, str(result.first_divergence)
    assert result.steps == 200
    assert result.loss_scratch[-1] < result.loss_scratch[0]
