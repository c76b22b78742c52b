"""A multilayer perceptron of any depth and width, with a hand-derived backward pass.

Forward, for layers l = 0 .. L-1 with a_{-1} = X (N, D):

    z_l = a_{l-1} W_l^T + b_l        (N, H_l)
    a_l = f_l(z_l)                   (N, H_l)

Backward, from dout = dL/da_{L-1} (N, C), for l = L-1 .. 0:

    dz_l     = da_l * f_l'(z_l)
    dW_l     = dz_l^T a_{l-1}
    db_l     = sum_n dz_l
    da_{l-1} = dz_l W_l

Parameters are named like the state dict of the torch mirror (`layers.0.weight`,
`layers.0.bias`, ...) and live in one flat buffer, as do their gradients: an update is one
vectorised operation and a snapshot one copy.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from .activations import Activation, get_activation
from .init import init_layer
from .layers import Dense
from .validate import check_finite, check_names

__all__ = ["DTYPES", "MLP", "resolve_dtype"]

DTYPES = {"float64": np.float64, "float32": np.float32}


def resolve_dtype(dtype) -> np.dtype:
    """np.float64 or np.float32, from a name or a dtype; anything else is refused."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return dt


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output size, got {sizes!r}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"layer sizes must be positive integers, got {s!r} in {sizes!r}")
    return [int(s) for s in sizes]


class MLP:
    """A from-scratch network: `forward(X) -> (out, cache)`, `backward(dout, cache) -> grads`.

    sizes:        [D, H_1, ..., C], e.g. [2, 3, 1]
    activations:  one per layer (len(sizes) - 1), names or Activation objects
    bias:         whether each layer has a bias
    dtype:        float64 (default) or float32
    init:         a scheme from `scratch.init.INITS`, drawn from `rng`
    rng:          an `np.random.Generator`, or an int seed for one
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activations: Sequence[str | Activation],
        *,
        bias: bool = True,
        dtype="float64",
        init: str = "xavier_uniform",
        rng: np.random.Generator | int = 0,
    ):
        self.sizes = _check_sizes(sizes)
        if isinstance(activations, (str, Activation)):
            raise TypeError(
                f"activations takes one per layer ({len(self.sizes) - 1}), "
                f"e.g. {['tanh'] * (len(self.sizes) - 2) + ['sigmoid']}, got {activations!r}"
            )
        acts = [get_activation(a) for a in activations]
        if len(acts) != len(self.sizes) - 1:
            raise ValueError(
                f"{len(self.sizes) - 1} layers in sizes {self.sizes} need "
                f"{len(self.sizes) - 1} activations, got {len(acts)}: {list(activations)!r}"
            )
        self.dtype = resolve_dtype(dtype)
        self.bias = bool(bias)

        shapes: dict[str, tuple[int, ...]] = {}
        for i, (d, h) in enumerate(itertools.pairwise(self.sizes)):
            shapes[f"layers.{i}.weight"] = (h, d)
            if self.bias:
                shapes[f"layers.{i}.bias"] = (h,)
        self.shapes = shapes
        total = sum(int(np.prod(s)) for s in shapes.values())
        self.flat_params = np.zeros(total, self.dtype)
        self.flat_grads = np.zeros(total, self.dtype)
        self.params = self._views(self.flat_params)
        self.grads = self._views(self.flat_grads)

        self.layers = [
            Dense(
                self.params[f"layers.{i}.weight"],
                self.params.get(f"layers.{i}.bias"),
                act,
                self.grads[f"layers.{i}.weight"],
                self.grads.get(f"layers.{i}.bias"),
            )
            for i, act in enumerate(acts)
        ]
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        for layer in self.layers:
            init_layer(init, rng, layer.weight, layer.bias)

    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        views, start = {}, 0
        for name, shape in self.shapes.items():
            size = int(np.prod(shape))
            views[name] = flat[start : start + size].reshape(shape)
            start += size
        return views

    @classmethod
    def from_weights(
        cls,
        weights: Sequence[tuple[Sequence, Sequence | None]],
        activations: Sequence[str | Activation],
        *,
        dtype="float64",
    ) -> MLP:
        """A network holding the given values: one `(W, b)` per layer, W shaped (out, in).

        Pass b = None on every layer for a network without biases.
        """
        Ws = [np.asarray(W, dtype=np.float64) for W, _ in weights]
        for i, W in enumerate(Ws):
            if W.ndim != 2:
                raise ValueError(f"layer {i} weight must be 2-D (out, in), got shape {W.shape}")
        sizes = [Ws[0].shape[1]] + [W.shape[0] for W in Ws]
        has_bias = {b is not None for _, b in weights}
        if len(has_bias) != 1:
            raise ValueError("give a bias on every layer or on none")
        net = cls(sizes, activations, bias=has_bias.pop(), dtype=dtype, init="uniform")
        state = {}
        for i, (w, b) in enumerate(weights):
            state[f"layers.{i}.weight"] = np.asarray(w, dtype=np.float64)
            if b is not None:
                state[f"layers.{i}.bias"] = np.asarray(b, dtype=np.float64)
        net.load_state_dict(state)
        return net

    # --- the math -------------------------------------------------------------------------

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, list[tuple]]:
        """The output (N, C) and a cache of every layer's `(input, z, a)`."""
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(
                f"input must have shape (N, {self.sizes[0]}) for sizes {self.sizes}, got {X.shape}"
            )
        cache = []
        a = X
        for layer in self.layers:
            a, layer_cache = layer.forward(a)  # (N, H_l)
            cache.append(layer_cache)
        return a, cache

    def backward(self, dout: np.ndarray, cache: list[tuple]) -> dict[str, np.ndarray]:
        """Gradients of every parameter, given dout = dL/d(output) (N, C).

        The returned arrays are views into `flat_grads`, overwritten by the next backward.
        """
        da: np.ndarray | None = dout
        for i in range(len(self.layers) - 1, -1, -1):
            assert da is not None  # every layer but the first returns dx
            da = self.layers[i].backward(da, cache[i], need_dx=i > 0)
        return self.grads

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.forward(X)[0]

    # --- weights in and out ---------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, by name."""
        return {name: p.copy() for name, p in self.params.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray], *, finite: bool = True) -> None:
        """Copy values in, refusing missing, unexpected or mis-shaped entries by name, and NaN
        or inf (a network cannot start from them) unless `finite=False` (a trained network's
        state after a blow-up, copied as it is)."""
        check_names(self.params, state, what=f"state dict does not fit {self!r}")
        for name, p in self.params.items():
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(f"{name}: expected shape {p.shape}, got {value.shape}")
            if not np.issubdtype(value.dtype, np.floating):
                raise TypeError(f"{name}: expected floating-point values, got {value.dtype}")
            if finite:
                check_finite(value, name)
        for name, p in self.params.items():
            p[...] = state[name]

    @property
    def activations(self) -> list[Activation]:
        return [layer.activation for layer in self.layers]

    @property
    def num_params(self) -> int:
        return self.flat_params.size

    def __repr__(self) -> str:
        acts = ",".join(a.name for a in self.activations)
        return (
            f"MLP({'-'.join(map(str, self.sizes))}, {acts}, "
            f"bias={self.bias}, dtype={self.dtype.name})"
        )
