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

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        X = self.input_scale * rng.standard_normal((self.n, self.sizes[0]))
        y = rng.integers(0, 2, self.n).astype(np.float64)
        return X.astype(self.dtype), y


def sizes_D_H_1(max_depth: int = 3, max_width: int = 16, max_inputs: int = 8):
    """[D, H_1, ..., H_k, 1] with 0 <= k <= max_depth hidden layers."""
    return st.tuples(
        st.integers(1, max_inputs),
        st.lists(st.integers(1, max_width), min_size=0, max_size=max_depth),
    ).map(lambda t: (t[0], *t[1], 1))


@st.composite
def net_configs(draw, dtypes=("float64", "float32")) -> NetConfig:
    sizes = draw(sizes_D_H_1())
    hidden = tuple(draw(st.sampled_from(HIDDEN)) for _ in sizes[1:-1])
    return NetConfig(
        sizes=sizes,
        hidden=hidden,
        loss=draw(st.sampled_from(["bce", "bce-logits"])),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes)),
        n=draw(st.integers(1, 64)),
        input_scale=draw(st.sampled_from([0.1, 1.0, 4.0])),
        lr=draw(st.sampled_from([1e-3, 0.05, 0.3])),
        init=draw(st.sampled_from(["xavier_uniform", "he_normal", "torch_default", "normal"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
