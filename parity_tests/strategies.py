"""Hypothesis strategies, named after what they draw (thinc's habit).

Data are drawn as seeds for one `np.random.Generator`, not element by element: a failing case
then shrinks to the smallest network and batch, and a seed reproduces it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "leaky_relu:0.3", "identity"]


@dataclass(frozen=True)
class NetConfig:
    sizes: tuple[int, ...]
    hidden: tuple[str, ...]
    loss: str
    bias: bool
    dtype: str
    n: int
    input_scale: float
    lr: float
    init: str
    seed: int
    optimizer: tuple = ("sgd", ())  # (name, ((option, value), ...))
    batch_size: int | None = None  # None: full batch
    conventions: tuple = ()  # the loss's declared conventions, ((option, value), ...)
    output: str | None = None  # the last activation, when not the loss's usual one

    @property
    def loss_options(self) -> dict:
        return dict(self.conventions)

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        X = self.input_scale * rng.standard_normal((self.n, self.sizes[0]))
        C = self.sizes[-1]
        if self.loss in ("ce", "nll"):
            y = rng.integers(0, C, self.n)  # class indices
        elif self.loss == "mse":
            y = rng.standard_normal((self.n, C))  # real-valued targets
        else:
            y = rng.integers(0, 2, self.n).astype(np.float64)
        return X.astype(self.dtype), y

    @property
    def optimizer_spec(self) -> dict:
        name, options = self.optimizer
        return {"name": name, **dict(options)}


def sizes_D_H_1(max_depth: int = 3, max_width: int = 16, max_inputs: int = 8):
    """[D, H_1, ..., H_k, 1] with 0 <= k <= max_depth hidden layers."""
    return st.tuples(
        st.integers(1, max_inputs),
        st.lists(st.integers(1, max_width), min_size=0, max_size=max_depth),
    ).map(lambda t: (t[0], *t[1], 1))


# Each optimizer with the options that change its update rule; lr comes from the config.
OPTIMIZERS = [
    ("sgd", ()),
    ("sgd", (("momentum", 0.9),)),
    ("sgd", (("momentum", 0.9), ("nesterov", True), ("weight_decay", 0.01))),
    ("sgd", (("momentum", 0.5), ("dampening", 0.3))),
    ("adam", ()),
    ("adam", (("amsgrad", True), ("weight_decay", 0.01))),
    ("adamw", ()),
    ("rmsprop", ()),
    ("rmsprop", (("momentum", 0.5), ("centered", True))),
    ("adagrad", (("lr_decay", 0.01),)),
]


# --- learning-rate schedules and per-parameter settings (docs/optimizers.md) -----------------
# Declared in the optimizer's description; the torch side is built from the same one.


def _warm_up(t: int) -> float:
    """A user's lambda: a linear warm-up over 3 steps, then 1/sqrt decay."""
    return (t + 1) / 3 if t < 3 else 1.0 / (t - 1) ** 0.5


OPTIMIZERS += [
    ("sgd", (("momentum", 0.9), ("weight_decay", 0.01), ("decay", "weights"))),
    ("adam", (("weight_decay", 0.01), ("decay", "weights"),
              ("schedule", {"name": "step", "step_size": 4, "gamma": 0.5}))),
    ("sgd", (("schedule", {"name": "inverse_time", "decay": 0.1}),)),
    ("adamw", (("schedule", {"name": "exponential", "gamma": 0.9}),)),
    ("rmsprop", (("schedule", {"name": "lambda", "fn": _warm_up}),)),
]  # fmt: skip


@st.composite
def net_configs(draw, dtypes=("float64", "float32")) -> NetConfig:
    """A network, its loss (binary, C classes or regression), optimizer, batches and data."""
    loss = draw(st.sampled_from(["bce", "bce-logits", "ce", "nll", "mse"]))
    sizes = draw(sizes_D_H_1())
    if loss in ("ce", "nll"):
        sizes = (*sizes[:-1], draw(st.integers(2, 6)))
    elif loss == "mse":
        sizes = (*sizes[:-1], draw(st.integers(1, 3)))
    hidden = tuple(draw(st.sampled_from(HIDDEN)) for _ in sizes[1:-1])
    n = draw(st.integers(1, 64))
    output = draw(st.sampled_from(OUTPUTS[loss]))
    return NetConfig(
        sizes=sizes,
        hidden=hidden,
        loss=loss,
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes)),
        n=n,
        input_scale=draw(st.sampled_from([0.1, 1.0, 4.0])),
        lr=draw(st.sampled_from([1e-3, 0.05, 0.3])),
        init=draw(st.sampled_from(["xavier_uniform", "he_normal", "torch_default", "normal"])),
        seed=draw(st.integers(0, 2**32 - 1)),
        optimizer=draw(st.sampled_from(OPTIMIZERS)),
        batch_size=draw(st.one_of(st.none(), st.integers(1, n))),
        conventions=draw(loss_conventions(loss)),
        output=output,
    )


# The last activations torch accepts before each loss, besides the usual one (None).
OUTPUTS = {
    "bce": [None],
    "bce-logits": [None, "tanh"],
    "ce": [None, "softmax", "tanh"],
    "nll": [None, "identity"],
    "mse": [None, "sigmoid", "tanh", "softmax"],
}


@st.composite
def loss_conventions(draw, loss: str) -> tuple:
    """A declared convention for the built-in network (docs/conventions.md): reduction, scale,
    for bce a clip, and an L2 term with its form, its n and the parameters it covers (every
    weight, every parameter, or the first layer's weight, which every network has).
    test_conventions.py sweeps the same on adapted code."""
    conv = {
        "reduction": draw(st.sampled_from(["mean", "samples", "sum"])),
        "scale": draw(st.sampled_from([1.0, 0.5, 2.0])),
    }
    if loss == "bce":
        conv["clip"] = draw(st.sampled_from([None, 1e-7]))
    conv["l2"] = draw(st.sampled_from([None, None, 0.01, 0.3]))
    if conv["l2"] is not None:
        conv["l2_form"] = draw(st.sampled_from(["half", "full"]))
        conv["l2_n"] = draw(st.sampled_from([1, 1, 16]))
        conv["l2_on"] = draw(st.sampled_from(["weights", "all", ("layers.0.weight",)]))
    defaults = (None, 1.0, "mean", 1, "half", "weights")
    return tuple((k, v) for k, v in conv.items() if not any(v is d or v == d for d in defaults))


# --- layered networks (scratch/sequential.py): specs drawn from the --layers grammar ----------

LAYERED_ACTS = ["relu", "leaky_relu", "leaky_relu:0.3", "tanh", "sigmoid"]
# the optimizers of the layered sweep: plain, momentum, adam, rmsprop, and schedules
LAYERED_OPTIMIZERS = [o for o in OPTIMIZERS if o[0] in ("sgd", "adam", "rmsprop")]


@dataclass(frozen=True)
class LayeredConfig:
    spec: str
    shape: tuple[int, ...]  # per sample: (C, H, W) images or (D,) features
    loss: str  # "ce" or "mse"
    dtype: str
    n: int
    input_scale: float
    lr: float
    seed: int
    train: bool
    optimizer: tuple = ("sgd", ())
    batch_size: int | None = None
    conventions: tuple = ()  # the loss's declared conventions, ((option, value), ...)

    @property
    def loss_options(self) -> dict:
        return dict(self.conventions)

    @property
    def outputs(self) -> int:
        return int(self.spec.rsplit("affine", 1)[1])

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        X = self.input_scale * rng.standard_normal((self.n, *self.shape))
        if self.loss == "ce":
            y = rng.integers(0, self.outputs, self.n)
        else:
            y = rng.standard_normal((self.n, self.outputs))
        return X.astype(self.dtype), y

    @property
    def optimizer_spec(self) -> dict:
        name, options = self.optimizer
        return {"name": name, **dict(options)}


@st.composite
def _image_layers(draw, shape) -> tuple[list[str], int]:
    """1-2 blocks of conv (kxk, stride, padding), an activation or not, bn or not, a pool
    or not, then flatten: the tokens and the flattened width."""
    c, h, w = shape
    tokens: list[str] = []
    for _ in range(draw(st.integers(1, 2))):
        f, k = draw(st.integers(1, 4)), draw(st.integers(1, min(3, h + 2)))
        pad = draw(st.integers(0, 1 if k > 1 else 0))
        s = draw(st.integers(1, 2))
        if k > min(h, w) + 2 * pad:
            break
        tokens.append(f"conv{f}x{k}" + (f"s{s}" if s > 1 else "") + (f"p{pad}" if pad else ""))
        c, h, w = f, (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        if draw(st.booleans()):
            tokens.append("bn")
        if draw(st.booleans()):
            tokens.append(draw(st.sampled_from(LAYERED_ACTS)))
        if min(h, w) >= 2 and draw(st.booleans()):
            tokens.append("pool2")
            h, w = h // 2, w // 2
    if not tokens:
        tokens, c = ["conv2x1"], 2
    return [*tokens, "flatten"], c * h * w


@st.composite
def layered_configs(draw, dtypes=("float64", "float32")) -> LayeredConfig:
    """A network of gallery layers: small images (1-3 channels, 4-8 px) through convs, or flat
    features; then affine blocks (ln, bn, dropout, activations) and the output affine; ce or
    mse with a declared convention (`loss_conventions`: scale, reduction, an L2 term; the
    first layer is a conv or an affine, so layers.0.weight is a weight); sgd, momentum, adam,
    rmsprop, schedules; float64 or float32; train or eval; batches."""
    if draw(st.booleans()):
        side = draw(st.integers(4, 8))
        shape: tuple[int, ...] = (draw(st.integers(1, 3)), side, side)
        tokens, _ = draw(_image_layers(shape))
    else:
        shape, tokens = (draw(st.integers(2, 8)),), []
    for _ in range(draw(st.integers(0, 2))):
        tokens.append(f"affine{draw(st.integers(1, 8))}")
        tokens += draw(st.lists(st.sampled_from(["ln", "bn", *LAYERED_ACTS]), max_size=2))
        if draw(st.booleans()):
            tokens.append(draw(st.sampled_from(["dropout0.2", "dropout0.5"])))
    loss = draw(st.sampled_from(["ce", "mse"]))
    tokens.append(f"affine{draw(st.integers(2, 5) if loss == 'ce' else st.integers(1, 3))}")
    train = draw(st.booleans())
    n = draw(st.integers(2, 32))
    batch = draw(st.one_of(st.none(), st.integers(2, n)))
    if batch is not None and n % batch == 1:  # a last batch of one: batchnorm cannot train on it
        batch = None
    return LayeredConfig(
        spec=",".join(tokens), shape=shape, loss=loss, dtype=draw(st.sampled_from(dtypes)),
        n=n, input_scale=draw(st.sampled_from([0.1, 1.0, 4.0])),
        lr=draw(st.sampled_from([1e-3, 0.05, 0.3])), seed=draw(st.integers(0, 2**32 - 1)),
        train=train, optimizer=draw(st.sampled_from(LAYERED_OPTIMIZERS)), batch_size=batch,
        conventions=draw(loss_conventions(loss)),
    )  # fmt: skip
