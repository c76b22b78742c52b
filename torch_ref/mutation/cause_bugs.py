"""Bugs whose cause a recomputation can confirm, and correct rewrites of the same code that must
pass with no cause: a derivative written another valid way is not a bug."""

from __future__ import annotations

import numpy as np
from nn_parity.torch_ref.mutation.cases import _activation, _layer_backward, _loss, _update

# --- bugs --------------------------------------------------------------------------------------


def sigmoid_derivative_for_tanh(case):
    _activation(case, 0, lambda da, z, a: da * a * (1 - a))  # the sigmoid's a (1 - a)


def relu_mask_on_input(case):
    def fn(layer, da, cache, need_dx):
        x, _, _ = cache
        dz = da * (x > 0)  # the mask of the layer's input, not of its own z
        np.matmul(dz.T, x, out=layer.dweight)
        if layer.dbias is not None:
            layer.dbias[...] = dz.sum(axis=0)
        return dz @ layer.weight if need_dx else None

    _layer_backward(case, 1, fn)


def ce_delta_under_mse(case):
    class CrossEntropyDelta(type(case.loss)):  # type: ignore[misc]
        def backward(self, cache):
            o, t = cache
            return o - t  # (p - y): the cross-entropy delta, not 2 (p - y) / (N C)

    _loss(case, CrossEntropyDelta)


def float32_in_chain(case):
    def backward(da, z, a):
        return (da * (1 - a * a)).astype(np.float32).astype(np.float64)  # a float32 temporary

    _activation(case, 1, backward)


def targets_sorted(case):
    class Sorted(type(case.loss)):  # type: ignore[misc]
        def forward(self, out, y):
            order = np.argsort(y.reshape(len(y), -1)[:, 0], kind="stable")
            return super().forward(out, y[order])  # sorted here, not with the inputs

    _loss(case, Sorted)


def bias_never_updated(case):
    def rule(opt):
        kept = opt.net.layers[1].bias.copy()
        opt.net.flat_params -= opt.lr * opt.net.flat_grads
        opt.net.layers[1].bias[...] = kept  # the update written to a copy

    _update(case, rule)


# --- correct rewrites --------------------------------------------------------------------------


def tanh_derivative_as_sech(case):
    _activation(case, 0, lambda da, z, a: da / np.cosh(z) ** 2)


def sigmoid_derivative_from_z(case):
    _activation(case, 1, lambda da, z, a: da * np.exp(-z) / (1 + np.exp(-z)) ** 2)


def relu_mask_from_output(case):
    _activation(case, 0, lambda da, z, a: da * (a > 0))


def mse_delta_written_out(case):
    class Written(type(case.loss)):  # type: ignore[misc]
        def backward(self, cache):
            o, t = cache
            return 2 * (o - t) / (o.shape[0] * o.shape[1])

    _loss(case, Written)


def weight_gradient_by_einsum(case):
    def fn(layer, da, cache, need_dx):
        x, z, a = cache
        dz = layer.activation.backward(da, z, a)
        layer.dweight[...] = np.einsum("nh,nd->hd", dz, x)
        if layer.dbias is not None:
            layer.dbias[...] = np.einsum("nh->h", dz)
        return dz @ layer.weight if need_dx else None

    _layer_backward(case, 1, fn)
