"""Step-time ratios measured in one run: scratch vs torch eager, and lockstep vs the two steps.

    python benchmarks/bench_step.py [--quick] [--json FILE]

For each network and dtype it times, interleaved and repeated, the best of several blocks of:
  - one scratch training step (forward, loss, backward, SGD update),
  - one torch training step (zero_grad, forward, loss, backward, optim.SGD step),
  - one lockstep iteration (both steps plus every comparison), via `lockstep(steps=R)`,
and prints scratch/torch and lockstep/(scratch + torch). Ratios, not seconds, are the result:
this machine's absolute times are noisy, ratios measured side by side much less so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nn_parity import scratch
from nn_parity.torch_ref import TorchMLP, lockstep

CONFIGS = [
    ([2, 3, 1], 4),
    ([30, 16, 1], 569),
    ([784, 256, 128, 1], 256),
    ([1024, 2048, 2048, 1], 1024),
]


def setup(sizes, n, dtype):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = (rng.random(n) < 0.5).astype(dtype)
    acts = ["tanh"] * (len(sizes) - 2) + ["sigmoid"]
    net = scratch.MLP(sizes, acts, dtype=dtype, rng=1)
    return net, TorchMLP.from_scratch(net), X, y


def scratch_steps(net, X, y, reps):
    loss, opt, Y = scratch.BCELoss(), scratch.SGD(net, 1e-3), y.reshape(-1, 1)
    t0 = time.perf_counter()
    for _ in range(reps):
        out, cache = net.forward(X)
        _, lcache = loss.forward(out, Y)
        net.backward(loss.backward(lcache), cache)
        opt.step()
    return (time.perf_counter() - t0) / reps


def torch_steps(ref, X, y, reps):
    loss, opt = torch.nn.BCELoss(), torch.optim.SGD(ref.parameters(), lr=1e-3)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(y.reshape(-1, 1))
    t0 = time.perf_counter()
    for _ in range(reps):
        opt.zero_grad()
        loss(ref(Xt), Yt).backward()
        opt.step()
    return (time.perf_counter() - t0) / reps


def lockstep_steps(net, ref, X, y, reps):
    t0 = time.perf_counter()
    result = lockstep(net, ref, X, y, steps=reps, lr=1e-3)
    elapsed = (time.perf_counter() - t0) / reps
    assert result.passed, result.first_divergence
    return elapsed


def measure(sizes, n, dtype, budget):
    net, ref, X, y = setup(sizes, n, dtype)
    one = scratch_steps(net, X, y, 1) + torch_steps(ref, X, y, 1)  # also warms up
    reps = max(1, min(2000, int(budget / one)))
    best = {"scratch": np.inf, "torch": np.inf, "lockstep": np.inf}
    for _ in range(3):
        best["scratch"] = min(best["scratch"], scratch_steps(net, X, y, reps))
        best["torch"] = min(best["torch"], torch_steps(ref, X, y, reps))
        net, ref, X, y = setup(sizes, n, dtype)  # lockstep from identical weights
        best["lockstep"] = min(best["lockstep"], lockstep_steps(net, ref, X, y, reps))
    return {
        "net": "-".join(map(str, sizes)),
        "batch": n,
        "dtype": dtype,
        "reps": reps,
        "scratch_over_torch": best["scratch"] / best["torch"],
        "lockstep_over_both": best["lockstep"] / (best["scratch"] + best["torch"]),
        "torch_over_scratch": best["torch"] / best["scratch"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1024-2048-2048-1 network")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per timed block")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    threads = torch.get_num_threads()
    print(f"numpy {np.__version__}, torch {torch.__version__}, torch threads {threads}")
    head = ("network", "batch", "dtype", "scratch/torch", "torch/scratch", "lockstep/(s+t)")
    print(f"{head[0]:>22} {head[1]:>5} {head[2]:>7} {head[3]:>13} {head[4]:>13} {head[5]:>14}")
    rows = []
    for sizes, n in CONFIGS[:-1] if args.quick else CONFIGS:
        for dtype in ("float64", "float32"):
            row = measure(sizes, n, dtype, args.budget)
            rows.append(row)
            print(
                f"{row['net']:>22} {n:>5} {dtype:>7} {row['scratch_over_torch']:>13.2f} "
                f"{row['torch_over_scratch']:>13.2f} {row['lockstep_over_both']:>14.2f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
