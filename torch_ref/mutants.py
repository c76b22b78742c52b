"""A catalogue of real hand-derivation bugs, to measure what the parity check catches.

Each mutant is a small, named change to the scratch side's backward pass, loss or update,
applied to one network instance (a swapped method or a subclass instance), never to the shipped
code. `score()` runs the lockstep on every mutant and reports whether it was caught, and whether
the first divergence sits at the step, quantity and layer where the bug lives.

    python -m nn_parity.torch_ref mutants          # the score table
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch.losses import BCELoss, BCEWithLogitsLoss

from .engine import LockstepResult, lockstep
from .model import TorchMLP

__all__ = ["MUTANTS", "Case", "Config", "Mutant", "Score", "make_case", "run_mutant", "score"]


@dataclass
class Case:
    """A network, its mirror, data and training settings, for one mutant to break."""

    net: scratch.MLP
    ref: TorchMLP | None
    X: np.ndarray
    y: np.ndarray
    loss: scratch.Loss
    lr: float
    steps: int
    optimizer: scratch.SGD


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...] = (5, 5, 5, 1)  # square hidden layers, so layout bugs keep shapes
    hidden: str = "tanh"
    loss: str = "bce"
    bias: bool = True
    n: int = 16
    lr: float = 0.5
    steps: int = 4
    weight_scale: float = 1.0
    seed: int = 3
    zero_unit: bool = False  # unit 0 of layer 0 gets zero weights: its z is exactly 0
    batch_size: int | None = None  # mini-batches (one seeded permutation per epoch)
    epochs: int | None = None
    optimizer: tuple = ()  # ("adam", {"betas": ...}): a stateful optimizer, by description


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str  # what the hand derivation got wrong
    expect: tuple[int, str, int | None]  # where the bug lives: (step, quantity, layer)
    apply: Callable[[Case], None]
    config: Config = field(default_factory=Config)


def make_case(cfg: Config) -> Case:
    rng = np.random.default_rng(cfg.seed)
    loss = scratch.get_loss(cfg.loss)
    acts = [cfg.hidden] * (len(cfg.sizes) - 2) + [loss.output_activation]
    net = scratch.MLP(cfg.sizes, acts, bias=cfg.bias, rng=rng, init="xavier_normal")
    net.flat_params *= cfg.weight_scale
    if cfg.zero_unit:
        net.layers[0].weight[0] = 0
    X = rng.standard_normal((cfg.n, cfg.sizes[0]))
    C = cfg.sizes[-1]
    if loss.task == "multiclass":  # the class of the largest of C noisy projections
        y = np.argmax(X[:, :C] + 0.5 * rng.standard_normal((cfg.n, C)), axis=1)
    elif loss.task == "regression":
        y = X[:, :C] + 0.1 * rng.standard_normal((cfg.n, C))
    else:
        y = (X[:, 0] + 0.5 * rng.standard_normal(cfg.n) > 0).astype(float)
    return Case(net, None, X, y, loss, cfg.lr, cfg.steps, _optimizer(net, cfg))


def _optimizer(net: scratch.MLP, cfg: Config):
    if not cfg.optimizer:
        return scratch.SGD(net, cfg.lr)
    name, hyper = cfg.optimizer
    return scratch.optim.get_optimizer(name, net, lr=cfg.lr, **hyper)


# --- building blocks: swap one method on one instance ----------------------------------------


def _layer_backward(case: Case, l: int, fn) -> None:
    """Replace layer l's backward with fn(layer, da, cache, need_dx) -> dx."""
    layer = case.net.layers[l]
    layer.backward = lambda da, cache, need_dx=True: fn(layer, da, cache, need_dx)  # type: ignore[method-assign]


def _activation(case: Case, l: int, backward) -> None:
    """Replace layer l's activation derivative: backward(da, z, a) -> dz."""
    base = case.net.layers[l].activation

    class Mutated(type(base)):  # type: ignore[misc]
        pass

    act = Mutated.__new__(Mutated)
    act.__dict__.update(base.__dict__)
    act.backward = backward  # type: ignore[method-assign]
    case.net.layers[l].activation = act


def _after_backward(case: Case, fn) -> None:
    """Run fn(net, grads, call_number) after every backward, to corrupt gradients."""
    net, backward, calls = case.net, case.net.backward, [0]

    def wrapped(dout, cache):
        grads = backward(dout, cache)
        fn(net, grads, calls[0])
        calls[0] += 1
        return grads

    net.backward = wrapped  # type: ignore[method-assign]


def _update(case: Case, rule) -> None:
    """Replace the optimiser's step with rule(opt)."""

    class Mutated(scratch.SGD):
        def step(self):
            rule(self)

    case.optimizer = Mutated(case.net, case.lr)


def _loss(case: Case, cls) -> None:
    case.loss = cls(case.loss.reduction)


# --- the bugs ----------------------------------------------------------------------------------


def _standard(layer, da, cache, need_dx):
    x, z, a = cache
    dz = layer.activation.backward(da, z, a)
    np.matmul(dz.T, x, out=layer.dweight)
    if layer.dbias is not None:
        layer.dbias[...] = dz.sum(axis=0)
    return dz, (dz @ layer.weight if need_dx else None)


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


# --- many classes, regression, mini-batches ----------------------------------------------------


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


# --- optimizers with state: each a subclass changing one line of torch's definition ----------


def _optimizer_bug(case, update) -> None:
    """Swap the per-parameter update of the case's optimizer for `update(opt, p, g, state)`."""
    base = type(case.optimizer)

    class Mutated(base):  # type: ignore[misc,valid-type]
        def _flat_state(self):
            return None  # per parameter, through the mutated _update

        def _update(self, p, g, state):
            update(self, p, g, state)

    case.optimizer = Mutated(case.net, **case.optimizer.hyper)


def _adam_moments(opt, p, g, state):
    beta1, beta2 = opt.betas
    opt._start(state, p, "exp_avg", "exp_avg_sq")
    state["step"] += 1
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m += (1 - beta1) * (g - m)
    v *= beta2
    v += (1 - beta2) * g * g
    return beta1, beta2, m, v, float(state["step"])


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


# --- the two sides set apart before the first step: no step can explain these ---------------
#
# The torch copy is made (run_mutant) before each of these changes it, so a re-check that
# started scratch from torch's weights would reproduce torch's numbers and call the difference
# drift: only the comparison of the starting state catches them.


def _torch_weights(case: Case, change) -> None:
    """change(params) edits torch's copy of the weights, by canonical name, in place."""
    assert case.ref is not None
    with torch.no_grad():
        change({k: v.detach() for k, v in case.ref.named_parameters()})


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


MUTANTS: list[Mutant] = [
    Mutant(
        "missing-1/N",
        "mean reduction, but the 1/N factor left out of dL/dp",
        (0, "grad", 2),
        missing_mean,
    ),
    Mutant(
        "1/N-twice",
        "the 1/N factor applied in the loss and again in the gradient",
        (0, "grad", 2),
        mean_twice,
    ),
    Mutant(
        "dW-transposed",
        "dW = x^T dz: a missing transpose in a weight gradient",
        (0, "grad", 1),
        transposed_weight_grad,
    ),
    Mutant(
        "sigmoid'-at-z",
        "the sigmoid derivative a(1 - a) evaluated at z",
        (0, "grad", 1),
        sigmoid_derivative_at_z,
        Config(hidden="sigmoid"),
    ),
    Mutant(
        "tanh'-at-z",
        "the tanh derivative 1 - a^2 evaluated at z",
        (0, "grad", 0),
        tanh_derivative_from_z,
    ),
    Mutant(
        "f'-dropped",
        "one layer's activation derivative left out",
        (0, "grad", 1),
        derivative_dropped,
    ),
    Mutant(
        "db-not-summed",
        "the bias gradient of one sample, not summed over the batch",
        (0, "grad", 1),
        bias_not_summed,
    ),
    Mutant(
        "db-missing",
        "the bias gradient never written (left at zero)",
        (0, "grad", 0),
        bias_grad_missing,
    ),
    Mutant(
        "update-sign", "theta + lr * g: a sign error in the update", (0, "param", 2), update_sign
    ),
    Mutant("lr-twice", "the learning rate applied twice", (0, "param", 2), lr_twice),
    Mutant(
        "weight-decay",
        "an L2 term slipped into the plain SGD update",
        (0, "param", 2),
        weight_decay,
    ),
    Mutant("momentum", "a velocity buffer left in plain SGD", (1, "param", 2), momentum_left_in),
    Mutant(
        "wrong-cache",
        "layer 1's backward handed layer 0's cache",
        (0, "grad", 1),
        wrong_layer_cache,
    ),
    Mutant(
        "updated-weights",
        "gradients propagated through weights already updated",
        (0, "grad", 1),
        grads_after_update,
    ),
    Mutant(
        "bce-clip-1e-7",
        "BCE with p clipped to [1e-7, 1 - 1e-7], not torch's log clamp at -100",
        (0, "loss", None),
        bce_clipped,
        Config(weight_scale=12.0),
    ),
    Mutant(
        "relu'(0)=1",
        "the relu derivative taken as 1 at exactly z = 0",
        (0, "grad", 0),
        relu_derivative_at_zero,
        Config(hidden="relu", bias=False, zero_unit=True),
    ),
    Mutant(
        "dx-transposed",
        "dx = dz W^T: the wrong weight layout passing the gradient down",
        (0, "grad", 0),
        dx_transposed_weight,
    ),
    Mutant("bce-grad-sign", "dL/dp with its sign flipped", (0, "grad", 2), bce_grad_sign),
    Mutant(
        "sigmoid-twice",
        "bce-logits gradient sigmoid(sigmoid(z)) - y",
        (0, "grad", 2),
        logits_sigmoid_twice,
        Config(loss="bce-logits"),
    ),
    Mutant(
        "no-zero-grad",
        "gradients accumulated across steps, never reset",
        (1, "grad", 2),
        grads_accumulate,
    ),
    Mutant(
        "softmax-no-max-shift",
        "softmax computed as e^z / sum e^z, without the max shift: inf at logits ~1000",
        (0, "loss", None),
        softmax_no_max_shift,
        Config(sizes=(5, 5, 5, 3), loss="ce", weight_scale=300.0),
    ),
    Mutant(
        "ce-grad-missing-1",
        "softmax cross-entropy gradient without the -1 at the target class",
        (0, "grad", 2),
        ce_grad_missing_target,
        Config(sizes=(5, 5, 5, 3), loss="ce"),
    ),
    Mutant(
        "one-hot-off-by-one",
        "the one-hot labels built one class over in the gradient",
        (0, "grad", 2),
        one_hot_off_by_one,
        Config(sizes=(5, 5, 5, 3), loss="ce"),
    ),
    Mutant(
        "log-softmax'-dropped",
        "log-softmax's backward taken as the identity: the softmax term missing",
        (0, "grad", 2),
        log_softmax_backward_elementwise,
        Config(sizes=(5, 5, 5, 3), loss="nll"),
    ),
    Mutant(
        "mse-missing-2",
        "the factor 2 of d(y - t)^2 left out",
        (0, "grad", 2),
        mse_missing_two,
        Config(sizes=(5, 5, 5, 2), loss="mse"),
    ),
    Mutant(
        "batch-mean-over-N",
        "a mini-batch's mean taken over the whole data set's size",
        (0, "grad", 2),
        batch_mean_over_data_size,
        Config(sizes=(5, 5, 5, 3), loss="ce", n=20, batch_size=8, epochs=2),
    ),
    Mutant(
        "last-batch-dropped",
        "each epoch's last, partial mini-batch silently not applied",
        (2, "param", 2),
        last_batch_dropped,
        Config(sizes=(5, 5, 5, 3), loss="ce", n=20, batch_size=8, epochs=2),
    ),
    Mutant(
        "own-shuffle",
        "the scratch side draws its own batch order instead of the shared one",
        (0, "z", 0),
        own_shuffle,
        Config(sizes=(5, 5, 5, 3), loss="ce", n=20, batch_size=8, epochs=2),
    ),
    Mutant(
        "adam-no-bias-correction",
        "Adam stepping with m and v, not the bias-corrected m_hat and v_hat",
        (0, "param", 2),
        adam_no_bias_correction,
        Config(optimizer=("adam", {}), lr=0.01),
    ),
    Mutant(
        "adam-eps-inside-sqrt",
        "Adam's eps inside the square root: sqrt(v_hat + eps)",
        (0, "param", 2),
        adam_eps_inside_sqrt,
        Config(optimizer=("adam", {}), lr=0.01),
    ),
    Mutant(
        "adamw-decay-as-l2",
        "AdamW's decoupled decay added to the gradient instead (Adam's L2)",
        (0, "state", 2),
        adamw_decay_as_l2,
        Config(optimizer=("adamw", {"weight_decay": 0.1}), lr=0.01),
    ),
    Mutant(
        "adam-l2-as-decoupled",
        "Adam's L2 weight decay applied as AdamW's decoupled decay",
        (0, "state", 2),
        adam_l2_decoupled,
        Config(optimizer=("adam", {"weight_decay": 0.1}), lr=0.01),
    ),
    Mutant(
        "momentum-from-zero",
        "the momentum buffer started at zero, not at the first gradient (torch's)",
        (0, "state", 2),
        momentum_buffer_from_zero,
        Config(optimizer=("sgd", {"momentum": 0.9, "dampening": 0.5})),
    ),
    Mutant(
        "nesterov-twice",
        "Nesterov's look-ahead mu * b added twice",
        (0, "param", 2),
        nesterov_twice,
        Config(optimizer=("sgd", {"momentum": 0.9, "nesterov": True})),
    ),
    Mutant(
        "rmsprop-no-sqrt",
        "RMSprop dividing by the running mean square, not its square root",
        (0, "param", 2),
        rmsprop_sqrt_forgotten,
        Config(optimizer=("rmsprop", {}), lr=0.01),
    ),
    Mutant(
        "torch-reinitialised",
        "torch's module keeps its own initialisation instead of scratch's weights",
        (0, "start", 0),
        torch_reinitialised,
    ),
    Mutant(
        "torch-weight-scaled",
        "one weight of torch's copy scaled by 1.5 before training",
        (0, "start", 1),
        torch_weight_scaled,
    ),
    Mutant(
        "torch-bias-zeroed",
        "torch's copy of a bias zeroed before training",
        (0, "start", 0),
        torch_bias_zeroed,
    ),
    Mutant(
        "adam-state-carried-in",
        "scratch's Adam starts with another run's moments, torch's fresh",
        (0, "start", 0),
        optimizer_state_carried_in,
        Config(optimizer=("adam", {}), lr=0.01),
    ),
    Mutant(
        "torch-activation-differs",
        "torch's layer 0 has no activation where scratch's has a relu: equal until a z < 0",
        (1, "a", 0),
        hidden_activation_differs,
        Config(hidden="relu", steps=30),
    ),
    Mutant(
        "last-sample-dropped",
        "an off-by-one slice drops a sample from dW",
        (0, "grad", 2),
        last_sample_dropped,
    ),
]


def run_mutant(mutant: Mutant, **lockstep_kwargs) -> LockstepResult:
    case = make_case(mutant.config)
    case.ref = TorchMLP.from_scratch(case.net)  # mirrors the correct weights, before any bug
    mutant.apply(case)
    cfg = mutant.config
    return lockstep(
        case.net, case.ref, case.X, case.y, steps=case.steps, lr=case.lr, loss=case.loss,
        optimizer=case.optimizer, batch_size=cfg.batch_size, epochs=cfg.epochs, **lockstep_kwargs,
    )  # fmt: skip


@dataclass
class Score:
    """Rows of {name, caught, located, where}: the table `nn-parity mutants` prints, for the
    network catalogue here and the op catalogue (`op_mutants`) alike."""

    rows: list[dict]
    where: str = "first divergence"  # the last column's heading
    width: int = 24  # of the name column

    @property
    def caught(self) -> int:
        return sum(r["caught"] for r in self.rows)

    @property
    def located(self) -> int:
        return sum(r["located"] for r in self.rows)

    def table(self) -> str:
        w = self.width
        lines = [f"{'mutant':<{w}} {'caught':<7} {'located':<8} {self.where}"]
        for r in self.rows:
            lines.append(
                f"{r['name']:<{w}} {'yes' if r['caught'] else 'NO':<7} "
                f"{'yes' if r['located'] else 'NO':<8} {r['where']}"
            )
        n = len(self.rows)
        lines.append(
            f"caught {self.caught}/{n} ({100 * self.caught / n:.0f}%), "
            f"located {self.located}/{n} ({100 * self.located / n:.0f}%)"
        )
        return "\n".join(lines)


def score(mutants: list[Mutant] | None = None) -> Score:
    rows = []
    for m in mutants or MUTANTS:
        div = run_mutant(m).first_divergence
        where = "-" if div is None else f"step {div.step}, {div.label}"
        got = None if div is None else (div.step, div.quantity, div.layer)
        diagnosis = getattr(div, "diagnosis", None) if div is not None else None
        rows.append(
            {
                "name": m.name,
                "caught": div is not None,
                "located": got == m.expect,
                "where": where + (f" ({diagnosis['cause']})" if diagnosis else ""),
                "expect": m.expect,
            }
        )
    return Score(rows)
