"""Real hand-derivation bugs, each a small change to one instance, never to the shipped code."""

from __future__ import annotations

import numpy as np
from nn_parity import scratch
from nn_parity.scratch.losses import BCELoss, BCEWithLogitsLoss
from nn_parity.torch_ref.mirror.model import TorchMLP
from nn_parity.torch_ref.mutation.cases import (
    _activation,
    _adam_moments,
    _after_backward,
    _layer_backward,
    _loss,
    _optimizer_bug,
    _standard,
    _torch_weights,
    _update,
)


def missing_mean(case):
    class Sum(BCELoss):
        def _scale(self, dout):
            return dout

    _loss(case, Sum)


def mean_twice(case):
    class Twice(BCELoss):
        def _scale(self, dout):
            return dout / dout.size / dout.size

    _loss(case, Twice)


def transposed_weight_grad(case):
    def fn(layer, da, cache, need_dx):
        _, dx = _standard(layer, da, cache, need_dx)
        layer.dweight[...] = layer.dweight.T.copy()  # x^T dz instead of dz^T x
        return dx

    _layer_backward(case, 1, fn)


def sigmoid_derivative_at_z(case):
    _activation(case, 1, lambda da, z, a: da * (1 - z) * z)  # sigma'(z) = z (1 - z): at z


def tanh_derivative_from_z(case):
    _activation(case, 0, lambda da, z, a: da * (1 - z * z))  # 1 - z^2 instead of 1 - tanh^2


def derivative_dropped(case):
    _activation(case, 1, lambda da, z, a: da)  # dz = da: the layer's f' forgotten


def bias_not_summed(case):
    def fn(layer, da, cache, need_dx):
        dz, dx = _standard(layer, da, cache, need_dx)
        layer.dbias[...] = dz[0]  # the first sample's, not the sum over the batch
        return dx

    _layer_backward(case, 1, fn)


def bias_grad_missing(case):
    def fn(layer, da, cache, need_dx):
        _, dx = _standard(layer, da, cache, need_dx)
        layer.dbias[...] = 0
        return dx

    _layer_backward(case, 0, fn)


def update_sign(case):
    def rule(opt):
        opt.net.flat_params += opt.lr * opt.net.flat_grads

    _update(case, rule)


def lr_twice(case):
    def rule(opt):
        opt.net.flat_params -= opt.lr * (opt.lr * opt.net.flat_grads)

    _update(case, rule)


def weight_decay(case):
    def rule(opt):
        net = opt.net
        net.flat_params -= opt.lr * (net.flat_grads + 1e-4 * net.flat_params)

    _update(case, rule)


def momentum_left_in(case):
    velocity = np.zeros_like(case.net.flat_params)

    def rule(opt):
        velocity[...] = 0.9 * velocity + opt.net.flat_grads
        opt.net.flat_params -= opt.lr * velocity

    _update(case, rule)


def wrong_layer_cache(case):
    net = case.net

    def backward(dout, cache):
        da = dout
        for i in range(len(net.layers) - 1, -1, -1):
            c = cache[i - 1] if i == 1 else cache[i]  # layer 1 handed layer 0's cache
            da = net.layers[i].backward(da, c, need_dx=i > 0)
        return net.grads

    net.backward = backward


def grads_after_update(case):
    net, lr = case.net, case.lr

    def backward(dout, cache):
        da = dout
        for i in range(len(net.layers) - 1, -1, -1):
            layer = net.layers[i]
            x, z, a = cache[i]
            dz = layer.activation.backward(da, z, a)
            np.matmul(dz.T, x, out=layer.dweight)
            if layer.dbias is not None:
                dz.sum(axis=0, out=layer.dbias)
            da = dz @ (layer.weight - lr * layer.dweight)  # propagated through updated weights
        return net.grads

    net.backward = backward


def bce_clipped(case):
    class Clipped(BCELoss):
        def forward(self, out, y):
            p = np.clip(out, 1e-7, 1 - 1e-7)
            per_sample = -(y * np.log(p) + (1 - y) * np.log(1 - p))
            return self._reduce(per_sample), (p, y)

    _loss(case, Clipped)


def relu_derivative_at_zero(case):
    for l in (0, 1):
        _activation(case, l, lambda da, z, a: np.where(z >= 0, da, 0))  # 1 at z = 0


def dx_transposed_weight(case):
    def fn(layer, da, cache, need_dx):
        dz, _ = _standard(layer, da, cache, False)
        return dz @ layer.weight.T if need_dx else None  # dz W^T instead of dz W

    _layer_backward(case, 1, fn)


def bce_grad_sign(case):
    class Flipped(BCELoss):
        def backward(self, cache):
            return -super().backward(cache)

    _loss(case, Flipped)


def logits_sigmoid_twice(case):
    class Twice(BCEWithLogitsLoss):
        def backward(self, cache):
            z, y = cache
            return self._scale(scratch.sigmoid(scratch.sigmoid(z)) - y)

    _loss(case, Twice)


def grads_accumulate(case):
    previous = np.zeros_like(case.net.flat_grads)

    def fn(net, grads, call):
        net.flat_grads += previous  # no zeroing between steps
        previous[...] = net.flat_grads

    _after_backward(case, fn)


def last_sample_dropped(case):
    def fn(layer, da, cache, need_dx):
        x, z, a = cache
        dz = layer.activation.backward(da, z, a)
        np.matmul(dz[:-1].T, x[:-1], out=layer.dweight)  # off by one in the batch slice
        if layer.dbias is not None:
            layer.dbias[...] = dz.sum(axis=0)
        return dz @ layer.weight if need_dx else None

    _layer_backward(case, 2, fn)


def softmax_no_max_shift(case):
    class Unshifted(type(case.loss)):  # type: ignore[misc]
        def forward(self, out, y):
            e = np.exp(out)  # overflows to inf once a logit passes ~709
            lp = np.log(e / e.sum(axis=1, keepdims=True))  # (N, C)
            value, wy, total = self._nll(lp, y)
            return float(value), (lp, y, wy, total)

    _loss(case, Unshifted)


def ce_grad_missing_target(case):
    class NoMinusOne(type(case.loss)):  # type: ignore[misc]
        def backward(self, cache):
            lp, y, _, _ = cache
            return np.exp(lp) / len(y)  # softmax(z) / N: the -1 at the target class left out

    _loss(case, NoMinusOne)


def one_hot_off_by_one(case):
    class Shifted(type(case.loss)):  # type: ignore[misc]
        def backward(self, cache):
            lp, y, wy, total = cache
            C = lp.shape[1]
            return super().backward((lp, (y + 1) % C, wy, total))  # one-hot built one class over

    _loss(case, Shifted)


def log_softmax_backward_elementwise(case):
    _activation(case, len(case.net.layers) - 1, lambda da, z, a: da)  # softmax term dropped


def mse_missing_two(case):
    class Half(type(case.loss)):  # type: ignore[misc]
        def backward(self, cache):
            return super().backward(cache) / 2  # d(y - t)^2 = 2 (y - t): the 2 forgotten

    _loss(case, Half)


def batch_mean_over_data_size(case):
    n_data = len(case.X)

    class OverN(type(case.loss)):  # type: ignore[misc]
        def backward(self, cache):
            batch = len(cache[1])  # a mini-batch's mean taken over the whole data set's size
            return super().backward(cache) * (batch / n_data)

    _loss(case, OverN)


def last_batch_dropped(case):
    full = case.net.forward

    class SkipsPartial(type(case.optimizer)):  # type: ignore[misc]
        def step(self, *args):
            if len(seen[-1]) == case_batch:  # the last, partial batch silently not applied
                super().step(*args)

    seen: list = []
    case_batch = 8

    def forward(X):
        seen.append(X)
        return full(X)

    case.net.forward = forward  # type: ignore[method-assign]
    opt = SkipsPartial.__new__(SkipsPartial)
    opt.__dict__.update(case.optimizer.__dict__)
    case.optimizer = opt


def own_shuffle(case):
    full = case.net.forward
    rng = np.random.default_rng(99)

    def forward(X):  # the scratch side draws its own batch order
        return full(X[rng.permutation(len(X))])

    case.net.forward = forward  # type: ignore[method-assign]


def adam_no_bias_correction(case):
    def update(opt, p, g, state):
        _, _, m, v, _ = _adam_moments(opt, p, g, state)
        p -= opt.lr * m / (np.sqrt(v) + opt.eps)  # m and v used raw, not m_hat and v_hat

    _optimizer_bug(case, update)


def adam_eps_inside_sqrt(case):
    def update(opt, p, g, state):
        beta1, beta2, m, v, t = _adam_moments(opt, p, g, state)
        p -= opt.lr / (1 - beta1**t) * m / np.sqrt(v / (1 - beta2**t) + opt.eps)

    _optimizer_bug(case, update)


def adamw_decay_as_l2(case):
    base = scratch.Adam._update

    def update(opt, p, g, state):
        opt.decoupled = False  # AdamW's decay added to the gradient, through the moments
        base(opt, p, g, state)

    _optimizer_bug(case, update)


def adam_l2_decoupled(case):
    base = scratch.Adam._update

    def update(opt, p, g, state):
        opt.decoupled = True  # Adam's L2 applied as AdamW's decoupled decay
        base(opt, p, g, state)

    _optimizer_bug(case, update)


def momentum_buffer_from_zero(case):
    def update(opt, p, g, state):
        buf = state.setdefault("momentum_buffer", np.zeros_like(p))  # torch starts it at g
        buf *= opt.momentum
        buf += (1 - opt.dampening) * g
        p -= opt.lr * buf

    _optimizer_bug(case, update)


def nesterov_twice(case):
    def update(opt, p, g, state):
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = np.array(g, copy=True)
        else:
            buf *= opt.momentum
            buf += g
        p -= opt.lr * (g + 2 * opt.momentum * buf)  # the look-ahead added twice

    _optimizer_bug(case, update)


def rmsprop_sqrt_forgotten(case):
    def update(opt, p, g, state):
        opt._start(state, p, "square_avg")
        state["step"] += 1
        s = state["square_avg"]
        s *= opt.alpha
        s += (1 - opt.alpha) * g * g
        p -= opt.lr * g / (s + opt.eps)  # divides by the mean square, not its root

    _optimizer_bug(case, update)


def torch_reinitialised(case):
    """torch's module keeps an initialisation of its own (another seed), not scratch's."""
    other = scratch.MLP(list(case.net.sizes), case.net.activations, rng=99, init="xavier_normal")
    case.ref = TorchMLP.from_scratch(other)


def torch_weight_scaled(case):
    _torch_weights(case, lambda p: p["layers.1.weight"][2, 3].mul_(1.5))


def torch_bias_zeroed(case):
    case.net.layers[0].bias[...] = 0.1  # the initialisation leaves biases at 0
    case.ref = TorchMLP.from_scratch(case.net)
    _torch_weights(case, lambda p: p["layers.0.bias"].zero_())


def optimizer_state_carried_in(case):
    """scratch's Adam already stepped once (another run's moments), torch's fresh."""
    net = case.net
    keep = net.state_dict()
    net.backward(np.ones((len(case.X), 1)), net.forward(case.X)[1])
    case.optimizer.step()
    net.load_state_dict(keep)


def hidden_activation_differs(case):
    """torch's first layer has no activation where scratch's has a relu: with every z of that
    layer positive at step 0 the two compute the same numbers, until a z turns negative."""
    net = case.net
    z0 = net.forward(case.X)[1][0][1]  # (N, H)
    net.layers[0].bias[...] += np.maximum(0.05 - z0.min(axis=0), 0)  # every z0 >= 0.05
    other = scratch.MLP(list(net.sizes), ["identity", *net.activations[1:]])
    other.load_state_dict(net.state_dict())
    case.ref = TorchMLP.from_scratch(other)
