"""The layered catalogue: bugs that live between the layers of a `scratch.sequential` network,
each with where the lockstep must catch it (step, quantity, layer).

Each bug is planted in the scratch network after its torch mirror is built at the same weights,
so torch keeps the correct computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from nn_parity.scratch import ops
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.mutation.score import Score


@dataclass(frozen=True)
class LayeredMutant:
    name: str
    description: str
    expected: tuple[int, str, int]  # (step, quantity, layer) of the first divergence
    spec: str
    plant: Callable[[sq.Sequential], None]
    train: bool = True


def _wrong_layer_cache(net: sq.Sequential) -> None:
    """Layer 3's backward (the second relu) given layer 1's cache (the first relu's)."""
    backward = net.backward

    def swapped(dout, cache):
        cache = list(cache)
        cache[3] = (cache[3][0], cache[1][1])
        return backward(dout, cache)

    net.backward = swapped  # type: ignore[method-assign]


def _flatten_channels_last(net: sq.Sequential) -> None:
    """Flatten (layer 3) in (N, H, W, C) order: torch's nn.Flatten keeps channels slowest."""

    def forward(x, p, train):
        return x.transpose(0, 2, 3, 1).reshape(len(x), -1), x.shape

    net.layers[3].forward = forward  # type: ignore[method-assign]


def _running_stats_in_eval(net: sq.Sequential) -> None:
    """Batchnorm (layer 1) normalises by its running statistics in eval mode, as it should,
    but also folds the batch's statistics into them, as only training mode does."""
    layer = net.layers[1]
    forward = layer.forward

    def leaky(x, p, train):
        out = forward(x, p, train)
        ops.batchnorm_forward(x, p["weight"], p["bias"], p["running_mean"], p["running_var"],
                              layer.momentum, layer.eps)  # fmt: skip
        return out

    layer.forward = leaky  # type: ignore[method-assign]


def _mask_redrawn_in_backward(net: sq.Sequential) -> None:
    """Dropout (layer 3) draws a fresh mask in backward instead of using its forward's."""
    layer = net.layers[3]

    def backward(dout, cache):
        mask = layer.rng.random(dout.shape) >= layer.p
        return ops.dropout_backward(dout, mask / (1 - layer.p)), {}

    layer.backward = backward  # type: ignore[method-assign]


TWO_CONVS = "conv4x3p1,relu,conv4x3p1,relu,pool2,flatten,affine10"

LAYERED_MUTANTS: list[LayeredMutant] = [
    LayeredMutant(
        "cache-from-wrong-layer",
        "the second relu's backward reads the first relu's cache (same shape, other layer)",
        (0, "grad", 2),
        TWO_CONVS,
        _wrong_layer_cache,
    ),
    LayeredMutant(
        "flatten-channels-last",
        "flatten reorders (C, H, W) as (H, W, C): the affine layer after it sees other inputs",
        (0, "out", 3),
        "conv3x3,relu,pool2,flatten,affine10",
        _flatten_channels_last,
    ),
    LayeredMutant(
        "running-stats-in-eval",
        "batchnorm in eval mode updates its running statistics from the batch",
        (0, "stat", 1),
        "conv4x3,bn,relu,pool2,flatten,affine10",
        _running_stats_in_eval,
        train=False,
    ),
    LayeredMutant(
        "dropout-mask-redrawn-in-backward",
        "dropout's backward draws a new mask instead of reusing the forward's",
        (0, "grad", 1),
        "flatten,affine32,relu,dropout0.5,affine10",
        _mask_redrawn_in_backward,
    ),
]


def layered_data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random 1x8x8 images and labels of 10 classes."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(n, 1, 8, 8)), rng.integers(0, 10, size=n)


def run_layered_mutant(m: LayeredMutant, *, plant: bool = True, dtype="float64", steps=3):
    """The lockstep of the mutant's network with the bug planted (or not: the control)."""
    from nn_parity.torch_ref.engine.loop import lockstep
    from nn_parity.torch_ref.mirror.sequential import TorchSequential

    net = sq.from_spec(m.spec, (1, 8, 8), dtype=dtype, rng=0).train(m.train)
    ref = TorchSequential(net)
    if plant:
        m.plant(net)
    X, y = layered_data()
    return lockstep(net, ref, X, y, steps=steps, lr=0.1, loss="ce", batch_size=32)


def caught_where(result) -> tuple[int, str, int | None] | None:
    d = result.first_divergence
    return None if d is None else (d.step, d.quantity, d.layer)


def layered_score() -> Score:
    """The layered catalogue as `nn-parity mutants` prints it: caught, and located at the
    (step, quantity, layer) where the bug lives."""
    rows = []
    for m in LAYERED_MUTANTS:
        result = run_layered_mutant(m)
        d = result.first_divergence
        rows.append({
            "name": m.name,
            "caught": d is not None,
            "located": caught_where(result) == m.expected,
            "where": "-" if d is None else f"step {d.step}, {d.label}",
            "expect": m.expected,
        })  # fmt: skip
    return Score(rows, width=32)
