"""scratch.sequential.Sequential and its torch mirror: weights both ways, one step's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.compare import tolerance
from nn_parity.torch_ref.mirror.sequential import (
    TorchSequential,
    scratch_to_torch,
    torch_to_scratch,
)

SPECS = {
    "conv": ("conv4x3,relu,pool2,flatten,affine10", (1, 8, 8)),
    "conv-bn-dropout": (
        "conv3x3p1,bn,tanh,pool2,flatten,dropout0.3,affine6,ln,sigmoid,affine3",
        (2, 6, 6),
    ),
    "dense-bn": ("affine7,bn,leaky_relu:0.1,dropout,affine2", (5,)),
    "strided": ("conv5x2s2p1,relu,pool3,flatten,affine4", (3, 9, 7)),
}


def _pair(name, dtype, seed=0):
    spec, shape = SPECS[name]
    net = sq.from_spec(spec, shape, dtype=dtype, rng=seed)
    return net, TorchSequential(net)


def _tensors(module):
    named = dict(module.named_parameters())
    named.update((k, v) for k, v in module.named_buffers() if "num_batches" not in k)
    return named


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(SPECS))
def test_weights_copy_scratch_to_torch_bit_for_bit(name, dtype):
    net, module = _pair(name, dtype)
    theirs = _tensors(module)
    assert set(theirs) == set(net.params) | set(net.buffers)
    for k, v in {**net.params, **net.buffers}.items():
        assert theirs[k].dtype == torch.float64 if dtype == "float64" else torch.float32
        np.testing.assert_array_equal(theirs[k].detach().numpy(), v, err_msg=k)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(SPECS))
def test_weights_copy_torch_to_scratch_bit_for_bit(name, dtype):
    net, module = _pair(name, dtype)
    with torch.no_grad():  # torch's weights set apart from the scratch ones
        for t in _tensors(module).values():
            t.copy_(torch.randn_like(t))
    torch_to_scratch(module, net)
    for k, t in _tensors(module).items():
        mine = {**net.params, **net.buffers}[k]
        assert mine.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(mine, t.detach().numpy(), err_msg=k)


def test_a_misfit_copy_is_refused_by_name():
    net, _ = _pair("conv", "float64")
    other = TorchSequential(sq.from_spec("conv4x3,relu,pool2,flatten,affine9", (1, 8, 8)))
    with pytest.raises(ValueError, match=r"4\.weight"):
        scratch_to_torch(net, other)


def _one_step(net, module, X, dout):
    """Both sides' layer outputs, gradients and running statistics after one forward+backward."""
    _, cache = net.forward(X)
    grads = net.backward(dout, cache)
    for i, layer in enumerate(net.layers):  # the same dropout mask on both sides
        if isinstance(layer, sq.Dropout) and layer.mask is not None:
            module[i].mask = torch.from_numpy(layer.mask)
    outs, x = [], torch.from_numpy(X)
    for m in module:
        x = m(x)
        outs.append(x)
    x.backward(torch.from_numpy(dout))
    mine = {f"out{i}": o for i, (o, _) in enumerate(cache)} | dict(grads) | dict(net.buffers)
    theirs = {f"out{i}": o.detach().numpy() for i, o in enumerate(outs)}
    theirs |= {k: p.grad.numpy() for k, p in module.named_parameters()}
    theirs |= {k: b.numpy() for k, b in module.named_buffers() if "num_batches" not in k}
    return mine, theirs


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(SPECS))
def test_one_step_agrees_with_torch(name, dtype, train):
    net, module = _pair(name, dtype)
    net.train(train)
    module.train(train)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6, *net.input_shape)).astype(dtype)
    dout = rng.normal(size=(6, *net.shapes[-1])).astype(dtype)
    mine, theirs = _one_step(net, module, X, dout)
    assert set(mine) == set(theirs)
    tol = tolerance("grad", dtype)
    for k in mine:
        assert mine[k].shape == theirs[k].shape and mine[k].dtype == theirs[k].dtype, k
        np.testing.assert_allclose(mine[k], theirs[k], rtol=tol.rtol, atol=tol.atol, err_msg=k)


def test_one_step_fails_on_a_flatten_that_reorders_channels():
    # the comparison can fail: channels last instead of first in the flattened vector
    net, module = _pair("conv", "float64")
    net.layers[3].forward = lambda x, p, train: (x.transpose(0, 2, 3, 1).reshape(len(x), -1),
                                                 x.shape)  # fmt: skip
    X = np.random.default_rng(0).normal(size=(4, 1, 8, 8))
    mine, theirs = _one_step(net, module, X, np.ones((4, 10)))
    np.testing.assert_allclose(mine["out2"], theirs["out2"], rtol=1e-13, atol=1e-13)
    assert not np.allclose(mine["out3"], theirs["out3"])


def test_eval_mode_leaves_running_statistics_alone():
    net, _ = _pair("conv-bn-dropout", "float64")
    net.eval()
    before = {k: v.copy() for k, v in net.buffers.items()}
    net.forward(np.ones((3, 2, 6, 6)))
    for k, v in net.buffers.items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize(
    "spec, shape, match",
    [
        ("affine10", (1, 8, 8), "does not fit"),
        ("conv4x9", (1, 8, 8), "at least 9x9"),
        ("conv4x3,pool8", (1, 8, 8), "at least 8x8"),
        ("conv4x3,softplus", (1, 8, 8), "unknown layer 'softplus'"),
        ("conv4x3,,relu", (1, 8, 8), "empty layer"),
        ("convAx3", (1, 8, 8), "not understood"),
        ("conv0x3", (1, 8, 8), "not understood"),
        ("conv4x3,pool0", (1, 8, 8), "not understood"),
        ("conv4x3s0", (1, 8, 8), "not understood"),
        ("ln", (1, 8, 8), "flatten first"),
    ],
)
def test_bad_specs_are_refused_with_the_layer_named(spec, shape, match):
    with pytest.raises(ValueError, match=match):
        sq.from_spec(spec, shape)
