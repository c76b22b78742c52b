"""Where the tolerance table comes from: the largest differences seen, in units of epsilon.

    python benchmarks/tolerance_survey.py

Runs unmutated locksteps over a spread of networks, data and lengths, in float64 and float32,
and prints per quantity the largest elementwise |scratch - torch| and the largest normwise
relative error, both divided by the dtype's machine epsilon. The table in torch_ref/compare.py
sets every tolerance as a multiple of epsilon above what this shows, and the same multiple for
both dtypes: docs/tolerances.md records a run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nn_parity import scratch
from nn_parity.torch_ref import TorchMLP, lockstep
from nn_parity.torch_ref.compare import QUANTITIES

# (sizes, batch, hidden activation, steps, learning rate)
RUNS = [
    ([2, 8, 8, 1], 4, "tanh", 1000, 0.5),
    ([30, 16, 1], 569, "relu", 500, 0.1),
    ([784, 256, 128, 1], 256, "relu", 50, 0.05),
    ([10, 64, 64, 64, 1], 512, "sigmoid", 300, 0.5),
    ([20, 32, 32, 1], 64, "tanh", 2000, 1.0),
]


def survey(dtype: str) -> dict[str, tuple[float, float]]:
    eps = np.finfo(dtype).eps
    worst = {q: (0.0, 0.0) for q in QUANTITIES}
    for sizes, n, act, steps, lr in RUNS:
        for loss_name in ("bce", "bce-logits"):
            loss = scratch.get_loss(loss_name)
            acts = [act] * (len(sizes) - 2) + [loss.output_activation]
            net = scratch.MLP(sizes, acts, rng=1, dtype=dtype)
            rng = np.random.default_rng(2)
            X = rng.standard_normal((n, sizes[0])).astype(dtype)
            y = (X[:, 0] + 0.3 * rng.standard_normal(n) > 0).astype(dtype)
            result = lockstep(net, TorchMLP.from_scratch(net), X, y, steps=steps, lr=lr, loss=loss)
            assert result.passed, result.first_divergence
            for k, item in enumerate(result.items):
                a, r = worst[item.quantity]
                worst[item.quantity] = (
                    max(a, result.max_abs[:, k].max() / eps),
                    max(r, result.rel_err[:, k].max() / eps),
                )
    return worst


def main() -> None:
    print(f"{'quantity':<8} {'dtype':<8} {'max |diff| / eps':>17} {'max normwise rel / eps':>23}")
    for dtype in ("float64", "float32"):
        for q, (a, r) in survey(dtype).items():
            print(f"{q:<8} {dtype:<8} {a:>17.0f} {r:>23.0f}")


if __name__ == "__main__":
    main()
