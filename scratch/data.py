"""The seed article's worked example: four students, hours of study and GPA -> pass (1) / fail (0).

The article's table and weights were pictures that did not survive into its text; the numbers
below are ours, chosen so that the first student reproduces every figure the text does give:

    z = 5.815  ->  sigmoid(z) = 0.99703  ->  BCE = -ln 0.99703 = 0.002978

(the article prints 0.003005, which is -ln 0.997: it rounded p to three places first).

The network is the article's 2-3-1: weighted sums in a hidden layer with no activation, then a
sigmoid on the output neuron.

Also here: the two-feature toy sets of the TensorFlow Playground the article points to (xor,
moons, circles), generated from one `np.random.Generator`.
"""

from __future__ import annotations

import numpy as np

from .network import MLP

__all__ = [
    "EXAM_ACTIVATIONS",
    "EXAM_SIZES",
    "circles",
    "exam",
    "exam_network",
    "exam_weights",
    "moons",
    "xor",
]

EXAM_SIZES = [2, 3, 1]
EXAM_ACTIVATIONS = ["identity", "sigmoid"]


def exam() -> tuple[np.ndarray, np.ndarray]:
    """X (4, 2): hours of study, GPA; y (4,): passed the exam."""
    X = np.array(
        [
            [4.0, 3.5],  # studied 4 h, GPA 3.5: passed
            [1.0, 2.0],
            [3.0, 3.0],
            [0.5, 1.5],
        ]
    )
    y = np.array([1.0, 0.0, 1.0, 0.0])
    return X, y


def exam_weights() -> list[tuple[list, list]]:
    """The hand-set weights, (W (out, in), b) per layer."""
    W1 = [[0.2, 0.5], [0.3, 0.4], [0.1, 0.6]]  # hidden: 3 weighted sums of (hours, GPA)
    b1 = [0.0, 0.0, 0.0]
    W2 = [[0.5, 0.7, 0.9]]  # output: a weighted sum of the three
    b2 = [0.47]
    return [(W1, b1), (W2, b2)]


def exam_network(dtype="float64") -> MLP:
    """The article's 2-3-1 network with the hand-set weights."""
    return MLP.from_weights(exam_weights(), EXAM_ACTIVATIONS, dtype=dtype)


def xor(n: int, rng: np.random.Generator, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Points in [-1, 1]^2; class 1 where the two coordinates have opposite signs."""
    X = rng.uniform(-1, 1, (n, 2))  # (N, 2)
    y = (X[:, 0] * X[:, 1] < 0).astype(np.float64)
    return X + noise * rng.standard_normal((n, 2)), y


def moons(n: int, rng: np.random.Generator, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles (as scikit-learn's make_moons draws them)."""
    n0 = n // 2
    t0 = rng.uniform(0, np.pi, n0)
    t1 = rng.uniform(0, np.pi, n - n0)
    X = np.concatenate(
        [np.stack([np.cos(t0), np.sin(t0)], 1), np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)]
    )  # (N, 2)
    y = np.concatenate([np.zeros(n0), np.ones(n - n0)])
    return X + noise * rng.standard_normal((n, 2)), y


def circles(
    n: int, rng: np.random.Generator, noise: float = 0.05, factor: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """A small circle (class 1) inside a large one (class 0)."""
    n0 = n // 2
    t = rng.uniform(0, 2 * np.pi, n)
    r = np.where(np.arange(n) < n0, 1.0, factor)
    X = np.stack([r * np.cos(t), r * np.sin(t)], 1)  # (N, 2)
    y = (np.arange(n) >= n0).astype(np.float64)
    return X + noise * rng.standard_normal((n, 2)), y
