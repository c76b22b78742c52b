"""A network of gallery layers in sequence, NCHW, with the backward pass written out.

Each layer is a thin wrapper round a pair of scratch/ops.py:

    Affine(D, H)               out = x W^T + b                     nn.Linear(D, H)
    Act(kind)                  out = f(x)                          nn.ReLU(), nn.Tanh(), ...
    Conv2d(C, F, K, s, pad)    cross-correlation                   nn.Conv2d(C, F, K, s, pad)
    MaxPool2d(K, s)            window max                          nn.MaxPool2d(K, s)
    BatchNorm(C, momentum)     per channel; training: batch        nn.BatchNorm1d/2d(C)
                               statistics, running ones updated;
                               eval: the running statistics
    LayerNorm(D)               over the last axis                  nn.LayerNorm(D)
    Dropout(p)                 training: x * mask / (1 - p), the   a module that applies the
                               mask drawn from the network's       same mask (the lockstep's)
                               seeded generator; eval: identity
    Flatten()                  (N, C, H, W) -> (N, C H W)          nn.Flatten()

Parameters and buffers are named as the state dict of the torch `nn.Sequential` of the matching
modules names them: `{i}.weight`, `{i}.bias`, `{i}.running_mean`, `{i}.running_var`.

Forward keeps every layer's output and cache: `forward(X) -> (out, cache)`, cache a list of
(out_l, cache_l). Backward runs the list in reverse: `backward(dout, cache) -> grads`, each
layer's `backward(dout_l, cache_l) -> (dx, {name: grad})`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from . import ops
from .activations import get_activation

__all__ = [
    "Act",
    "Affine",
    "BatchNorm",
    "Conv2d",
    "Dropout",
    "Flatten",
    "LayerNorm",
    "MaxPool2d",
    "Sequential",
]


def _fail(shape, expected: str):
    raise ValueError(f"expects {expected}, got per-sample input shape {tuple(shape)}")


_FLAT = "a flat (D,) input (flatten first for images)"


class Affine:
    def __init__(self, d: int, h: int):
        self.d, self.h = d, h
        self.shapes = {"weight": (h, d), "bias": (h,)}

    def out_shape(self, shape):
        if tuple(shape) != (self.d,):
            _fail(shape, _FLAT if self.d < 0 else f"({self.d},) (flatten first for images)")
        return (self.h,)

    def forward(self, x, p, train):
        return ops.affine_forward(x, p["weight"], p["bias"])

    def backward(self, dout, cache):
        dx, dW, db = ops.affine_backward(dout, cache)
        return dx, {"weight": dW, "bias": db}

    def __repr__(self):
        return f"Affine({self.d} -> {self.h})"


class Act:
    shapes: ClassVar[dict[str, tuple]] = {}

    def __init__(self, kind: str):
        self.kind = get_activation(kind).name

    def out_shape(self, shape):
        return tuple(shape)

    def forward(self, x, p, train):
        return ops.activation_forward(x, self.kind)

    def backward(self, dout, cache):
        return ops.activation_backward(dout, cache), {}

    def __repr__(self):
        return f"Act({self.kind})"


class Conv2d:
    def __init__(self, c: int, f: int, k: int, stride: int = 1, padding: int = 0):
        self.c, self.f, self.k, self.stride, self.padding = c, f, k, stride, padding
        self.shapes = {"weight": (f, c, k, k), "bias": (f,)}

    def out_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.c:
            _fail(shape, "(C, H, W) images" if self.c < 0 else f"({self.c}, H, W)")
        h, w = (n + 2 * self.padding for n in shape[1:])
        if self.k > min(h, w):
            _fail(shape, f"an image at least {self.k}x{self.k} (after padding)")
        return (self.f, (h - self.k) // self.stride + 1, (w - self.k) // self.stride + 1)

    def forward(self, x, p, train):
        return ops.conv2d_forward(x, p["weight"], p["bias"], self.stride, self.padding)

    def backward(self, dout, cache):
        dx, dW, db = ops.conv2d_backward(dout, cache)
        return dx, {"weight": dW, "bias": db}

    def __repr__(self):
        k, s, pad = self.k, self.stride, self.padding
        return f"Conv2d({self.c} -> {self.f}, {k}x{k}, stride {s}, pad {pad})"


class MaxPool2d:
    shapes: ClassVar[dict[str, tuple]] = {}

    def __init__(self, k: int, stride: int | None = None):
        self.k, self.stride = k, k if stride is None else stride

    def out_shape(self, shape):
        if len(shape) != 3:
            _fail(shape, "(C, H, W)")
        if self.k > min(shape[1:]):
            _fail(shape, f"an image at least {self.k}x{self.k}")
        return (shape[0], *((n - self.k) // self.stride + 1 for n in shape[1:]))

    def forward(self, x, p, train):
        return ops.maxpool2d_forward(x, self.k, self.stride)

    def backward(self, dout, cache):
        return ops.maxpool2d_backward(dout, cache), {}

    def __repr__(self):
        return f"MaxPool2d({self.k}, stride {self.stride})"


class BatchNorm:
    """Training: the gallery's batchnorm (batch statistics; the running ones updated in place).
    Eval, as torch computes it: scale = gamma / sqrt(running_var + eps), out = x scale +
    (beta - running_mean scale); dx = dout scale, dgamma = sum dout xhat, dbeta = sum dout."""

    buffers = ("running_mean", "running_var")

    def __init__(self, c: int, momentum: float = 0.1, eps: float = 1e-5):
        self.c, self.momentum, self.eps = c, momentum, eps
        self.shapes = {"weight": (c,), "bias": (c,)}

    def out_shape(self, shape):
        if len(shape) not in (1, 3) or shape[0] != self.c:
            _fail(shape, f"({self.c},) or ({self.c}, H, W)")
        return tuple(shape)

    def forward(self, x, p, train):
        if train:
            return ops.batchnorm_forward(x, p["weight"], p["bias"], p["running_mean"],
                                         p["running_var"], self.momentum, self.eps)  # fmt: skip
        shape = (1, self.c) + (1,) * (x.ndim - 2)
        inv_std = (1 / np.sqrt(p["running_var"] + self.eps)).reshape(shape)  # (1, C, 1, 1)
        scale = inv_std * p["weight"].reshape(shape)  # (1, C, 1, 1)
        shift = p["bias"].reshape(shape) - p["running_mean"].reshape(shape) * scale
        xhat = (x - p["running_mean"].reshape(shape)) * inv_std  # x's shape
        return x * scale + shift, ("eval", xhat, scale)

    def backward(self, dout, cache):
        if isinstance(cache[0], str):  # ("eval", xhat, scale)
            _, xhat, scale = cache
            axes = (0, *range(2, dout.ndim))
            return dout * scale, {
                "weight": (dout * xhat).sum(axis=axes),
                "bias": dout.sum(axis=axes),
            }
        dx, dgamma, dbeta = ops.batchnorm_backward(dout, cache)
        return dx, {"weight": dgamma, "bias": dbeta}

    def __repr__(self):
        return f"BatchNorm({self.c}, momentum {self.momentum})"


class LayerNorm:
    def __init__(self, d: int, eps: float = 1e-5):
        self.d, self.eps = d, eps
        self.shapes = {"weight": (d,), "bias": (d,)}

    def out_shape(self, shape):
        if tuple(shape) != (self.d,):
            _fail(shape, _FLAT if self.d < 0 else f"({self.d},) (flatten first for images)")
        return tuple(shape)

    def forward(self, x, p, train):
        return ops.layernorm_forward(x, p["weight"], p["bias"], self.eps)

    def backward(self, dout, cache):
        dx, dgamma, dbeta = ops.layernorm_backward(dout, cache)
        return dx, {"weight": dgamma, "bias": dbeta}

    def __repr__(self):
        return f"LayerNorm({self.d})"


class Dropout:
    """The mask (True: keep) is drawn in forward from the network's generator and kept in the
    cache and in `self.mask`, where the torch side reads it: one mask per step, shared."""

    shapes: ClassVar[dict[str, tuple]] = {}

    def __init__(self, p: float = 0.5):
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p, self.rng = p, np.random.default_rng(0)
        self.mask: np.ndarray | None = None

    def out_shape(self, shape):
        return tuple(shape)

    def forward(self, x, p, train):
        if not train:
            self.mask = None
            return x, None
        self.mask = self.next_mask(x.shape)
        return ops.dropout_forward(x, self.mask, self.p)

    def next_mask(self, shape) -> np.ndarray:
        """The next mask from this layer's generator: keep with probability 1 - p."""
        return self.rng.random(shape) >= self.p  # (N, ...) bool

    def backward(self, dout, cache):
        return (dout if cache is None else ops.dropout_backward(dout, cache)), {}

    def __repr__(self):
        return f"Dropout({self.p})"


class Flatten:
    shapes: ClassVar[dict[str, tuple]] = {}

    def out_shape(self, shape):
        return (math.prod(shape),)

    def forward(self, x, p, train):
        return x.reshape(len(x), -1), x.shape  # (N, C H W), row-major: channel slowest

    def backward(self, dout, cache):
        return dout.reshape(cache), {}

    def __repr__(self):
        return "Flatten()"


class Sequential:
    """Gallery layers in sequence over inputs of per-sample shape `input_shape` ((C, H, W) for
    images, (D,) for features). Weights drawn as torch's defaults draw them (Linear and Conv2d:
    W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norms: gamma 1, beta 0; running mean 0, var 1)
    from `rng`; dropout masks from their own generator seeded `rng`'s seed + 1 (int seeds)."""

    def __init__(self, layers: Sequence, input_shape, *, dtype="float64", rng=0):
        from .network import resolve_dtype

        self.layers, self.input_shape = list(layers), tuple(int(n) for n in input_shape)
        self.dtype = resolve_dtype(dtype)
        self.training = True
        self.shapes = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                self.shapes.append(layer.out_shape(self.shapes[-1]))
            except ValueError as err:
                raise ValueError(f"layer {i} {layer!r} does not fit its input: {err}") from None
        seed = rng if isinstance(rng, (int, np.integer)) else None
        gen = np.random.default_rng(rng) if seed is not None else rng
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            self._init_layer(i, layer, gen)
            if isinstance(layer, Dropout):
                layer.rng = np.random.default_rng(None if seed is None else seed + 1 + i)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def _init_layer(self, i: int, layer, gen) -> None:
        dt = self.dtype
        if isinstance(layer, (Affine, Conv2d)):
            w_shape = layer.shapes["weight"]
            bound = 1 / math.sqrt(math.prod(w_shape[1:]))
            self.params[f"{i}.weight"] = gen.uniform(-bound, bound, size=w_shape).astype(dt)
            self.params[f"{i}.bias"] = gen.uniform(-bound, bound, size=w_shape[0]).astype(dt)
        elif layer.shapes:
            self.params[f"{i}.weight"] = np.ones(layer.shapes["weight"], dt)
            self.params[f"{i}.bias"] = np.zeros(layer.shapes["bias"], dt)
        if isinstance(layer, BatchNorm):
            self.buffers[f"{i}.running_mean"] = np.zeros(layer.c, dt)
            self.buffers[f"{i}.running_var"] = np.ones(layer.c, dt)

    def train(self, mode: bool = True) -> Sequential:
        self.training = mode
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    def layer_params(self, i: int) -> dict[str, np.ndarray]:
        """Layer i's parameters and buffers by their short names (weight, running_mean, ...)."""
        prefix = f"{i}."
        both = {**self.params, **self.buffers}
        return {k[len(prefix) :]: v for k, v in both.items() if k.startswith(prefix)}

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, list]:
        """The output and, per layer, (its output, its cache)."""
        if X.shape[1:] != self.input_shape:
            want = ", ".join(map(str, self.input_shape))
            raise ValueError(f"expected inputs of shape (N, {want}), got {X.shape}")
        cache = []
        for i, layer in enumerate(self.layers):
            X, c = layer.forward(X, self.layer_params(i), self.training)
            cache.append((X, c))
        return X, cache

    def backward(self, dout: np.ndarray, cache: list) -> dict[str, np.ndarray]:
        """Every parameter's gradient, written into `self.grads` (and returned)."""
        for i in range(len(self.layers) - 1, -1, -1):
            dout, grads = self.layers[i].backward(dout, cache[i][1])
            for name, g in grads.items():
                np.copyto(self.grads[f"{i}.{name}"], g)
        return self.grads

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self.layers))
        return f"Sequential({inner}; input {self.input_shape}, {self.dtype.name})"


_TOKEN = re.compile(r"(conv|pool|affine|dropout|bn|ln|flatten)(.*)")
_CONV = re.compile(r"(\d+)x(\d+)(?:s(\d+))?(?:p(\d+))?")


def _layer_of(token: str, shape) -> Any:
    """One layer from a spec token, given its per-sample input shape (a size the shape cannot
    give is -1, for `out_shape` to refuse with the shape it was given)."""
    name = token.strip().lower()
    m = _TOKEN.fullmatch(name)
    if m is None:
        try:
            return Act(token.strip())
        except ValueError:
            raise ValueError(
                f"unknown layer {token.strip()!r}; expected one of {SPEC_HELP}"
            ) from None
    head, num = m.groups()
    first = shape[0] if shape else -1
    if head == "conv" and (c := _CONV.fullmatch(num)):  # conv8x3s2p1: 8 3x3 filters, s 2, pad 1
        f, k, s, pad = (int(v) if v else d for v, d in zip(c.groups(), (0, 0, 1, 0), strict=True))
        if min(f, k, s) >= 1:
            return Conv2d(first if len(shape) == 3 else -1, f, k, s, pad)
    if head == "pool" and num.isdigit() and int(num) >= 1:
        return MaxPool2d(int(num))
    if head == "affine" and num.isdigit() and int(num) >= 1:
        return Affine(first if len(shape) == 1 else -1, int(num))
    if head == "dropout" and re.fullmatch(r"(0?\.\d+|0)?", num):
        return Dropout(float(num) if num else 0.5)
    if (head, num) == ("bn", ""):
        return BatchNorm(first)
    if (head, num) == ("ln", ""):
        return LayerNorm(first if len(shape) == 1 else -1)
    if (head, num) == ("flatten", ""):
        return Flatten()
    raise ValueError(f"layer {token.strip()!r} is not understood; expected one of {SPEC_HELP}")


SPEC_HELP = (
    "conv<F>x<K>[s<S>][p<P>], pool<K>, affine<H>, bn, ln, dropout[<p>], flatten, "
    "or an activation (relu, tanh, sigmoid, leaky_relu[:slope], identity)"
)


def from_spec(spec: str | Sequence[str], input_shape, **options) -> Sequential:
    """A `Sequential` from a spec such as "conv8x3,relu,pool2,flatten,affine10"."""
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    if not tokens or not all(t.strip() for t in tokens):
        raise ValueError(f"empty layer in spec {spec!r}; expected layers separated by commas")
    layers, shape = [], tuple(input_shape)
    for i, token in enumerate(tokens):
        layer = _layer_of(token, shape)
        try:
            shape = layer.out_shape(shape)
        except ValueError as err:
            raise ValueError(
                f"layer {i} ({token.strip()!r}) does not fit its input: {err}"
            ) from None
        layers.append(layer)
    return Sequential(layers, input_shape, **options)
