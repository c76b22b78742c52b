"""The cases mutants break: a network, its mirror, data and training settings, and the building
blocks that swap one method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.torch_ref.mirror.model import TorchMLP


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


def _standard(layer, da, cache, need_dx):
    x, z, a = cache
    dz = layer.activation.backward(da, z, a)
    np.matmul(dz.T, x, out=layer.dweight)
    if layer.dbias is not None:
        layer.dbias[...] = dz.sum(axis=0)
    return dz, (dz @ layer.weight if need_dx else None)


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


def _torch_weights(case: Case, change) -> None:
    """change(params) edits torch's copy of the weights, by canonical name, in place."""
    assert case.ref is not None
    with torch.no_grad():
        change({k: v.detach() for k, v in case.ref.named_parameters()})
