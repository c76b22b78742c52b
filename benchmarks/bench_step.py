"""What the lockstep costs against the ideal: the two bare training steps, measured in one run.

    python benchmarks/bench_step.py [--quick] [--repeats 5] [--each] [--json FILE]

For each network, batch and dtype it times, in blocks of R steps, interleaved and repeated:
  - a bare hand-written NumPy step (tanh hidden layers, sigmoid output, mean BCE, SGD), as a
    learner writes it, without nn-parity's scratch classes;
  - a bare torch eager step: nn.Sequential + nn.BCELoss + torch.optim.SGD, zero_grad, backward;
  - the lockstep: `lockstep(steps=R)`, both steps plus every comparison, from fresh weights,
    including choosing its threading arrangement on its first steps (torch_ref/engine/threads.py).
Each bare step is timed with the user's default threads and with one thread, and the faster
counts: the lockstep gets no threading advantage the bare loops do not also get (on a loaded
machine, default threads can make a bare step many times slower). Each repeat gives one ratio
lockstep / (bare NumPy + bare torch) from blocks measured side by side; the table shows the
median over repeats and their spread (min-max). Ratios, not seconds, are the result: on a
shared machine absolute times drift, ratios measured side by side much less.
`--each` also times the lockstep held in each arrangement, `threads.POOLED` included.
Then Adam on mini-batches (digits, cross-entropy): the scratch step against torch's foreach
Adam step, and the lockstep against the two, one thread each.
Last, conv nets on digits as 1x8x8 images (the issue's conv 8x3x3 -> relu -> max pool 2 ->
affine 10 on batches of 64, and conv 16x3x3 on batches of 256, SGD): the scratch `Sequential`
step against torch's eager step, and the lockstep (every layer's output compared) against the
two, one thread each. `--conv` runs only this last table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_wine  # bundled, no network
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nn_parity import scratch
from nn_parity.torch_ref import TorchMLP, lockstep
from nn_parity.torch_ref.engine import loop, threads


def random_data(n, d):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)), (rng.random(n) < 0.5).astype(np.float64)


def wine(_n, _d):
    X, target = load_wine(return_X_y=True)  # 178 x 13, three cultivars
    return X, (target == 0).astype(np.float64)  # cultivar 0 against the rest


def breast_cancer(_n, _d):
    return load_breast_cancer(return_X_y=True)  # 569 x 30


# (layer sizes, batch, data, in --quick)
CONFIGS = [
    ([2, 3, 1], 4, random_data, True),
    ([13, 10, 1], 178, wine, True),
    ([30, 32, 16, 1], 569, breast_cancer, True),
    ([784, 256, 128, 1], 256, random_data, True),
    ([1024, 2048, 2048, 1], 1024, random_data, False),
]
LR = 1e-3


def torch_ce_step_time(model, topt, X, y, batches) -> float:
    """Seconds per step of torch's eager cross-entropy step over the mini-batches."""
    ce = torch.nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    t0 = time.perf_counter()
    for rows in batches:
        idx = torch.from_numpy(rows)
        topt.zero_grad()
        ce(model(Xt[idx]), yt[idx]).backward()
        topt.step()
    return (time.perf_counter() - t0) / len(batches)


def setup(sizes, n, data, dtype):
    X, y = data(n, sizes[0])
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)  # standardised, as `run` does
    acts = ["tanh"] * (len(sizes) - 2) + ["sigmoid"]
    net = scratch.MLP(sizes, acts, dtype=dtype, rng=1)
    return net, X.astype(dtype), y.astype(dtype)


def numpy_steps(net, X, y, reps):
    """The bare NumPy step: forward, mean BCE, backward, SGD, written out by hand."""
    Ws = [net.params[f"layers.{l}.weight"].copy() for l in range(len(net.layers))]  # (out, in)
    bs = [net.params[f"layers.{l}.bias"].copy() for l in range(len(net.layers))]
    Y = y.reshape(-1, 1)  # (N, 1)
    N, L = len(X), len(Ws)
    t0 = time.perf_counter()
    for _ in range(reps):
        acts = [X]
        for W, b in zip(Ws[:-1], bs[:-1]):
            acts.append(np.tanh(acts[-1] @ W.T + b))  # (N, H)
        p = 1 / (1 + np.exp(-(acts[-1] @ Ws[-1].T + bs[-1])))  # (N, 1)
        _loss = -np.mean(Y * np.log(p) + (1 - Y) * np.log(1 - p))
        dz = (p - Y) / N  # (N, 1): the fused sigmoid + mean BCE gradient
        for l in range(L - 1, -1, -1):
            dW, db = dz.T @ acts[l], dz.sum(0)  # (out, in), (out,)
            if l:
                dz = (dz @ Ws[l]) * (1 - acts[l] ** 2)  # (N, in), through tanh
            Ws[l] -= LR * dW
            bs[l] -= LR * db
    return (time.perf_counter() - t0) / reps


def torch_steps(net, X, y, reps):
    """The bare torch eager step, as the torch tutorials write it."""
    layers: list[torch.nn.Module] = []
    for l, layer in enumerate(net.layers):
        layers.append(torch.nn.Linear(layer.fan_in, layer.fan_out, dtype=torch.from_numpy(X).dtype))
        layers.append(torch.nn.Tanh() if l < len(net.layers) - 1 else torch.nn.Sigmoid())
    model = torch.nn.Sequential(*layers)
    loss, opt = torch.nn.BCELoss(), torch.optim.SGD(model.parameters(), lr=LR)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(y.reshape(-1, 1))
    t0 = time.perf_counter()
    for _ in range(reps):
        opt.zero_grad()
        loss(model(Xt), Yt).backward()
        opt.step()
    return (time.perf_counter() - t0) / reps


@contextmanager
def one_thread():
    held = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(held)


def best_threads(steps, *args):
    """The faster of the user's default threads and one thread."""
    default = steps(*args)
    with one_thread():
        return min(default, steps(*args))


@contextmanager
def watching_the_choice():
    """The lockstep's threads.Schedule, to read which arrangement it chose."""
    seen = []
    original = threads.schedule

    @contextmanager
    def spy(*args, **kwargs):
        with original(*args, **kwargs) as sched:
            seen.append(sched)
            yield sched

    threads.schedule = spy
    try:
        yield seen
    finally:
        threads.schedule = original


def lockstep_steps(sizes, n, data, dtype, reps, arrangements=None):
    net, X, y = setup(sizes, n, data, dtype)
    ref = TorchMLP.from_scratch(net)
    held = loop._ARRANGEMENTS
    if arrangements is not None:
        loop._ARRANGEMENTS = arrangements
    try:
        with watching_the_choice() as seen:
            t0 = time.perf_counter()
            result = lockstep(net, ref, X, y, steps=reps, lr=LR)
            elapsed = (time.perf_counter() - t0) / reps
    finally:
        loop._ARRANGEMENTS = held
    assert result.passed, result.first_divergence
    return elapsed, seen[0].choice


def measure(sizes, n, data, dtype, budget, repeats, each):
    net, X, y = setup(sizes, n, data, dtype)
    one = numpy_steps(net, X, y, 2) + torch_steps(net, X, y, 2)  # also warms both up
    lockstep_steps(sizes, n, data, dtype, 2)
    reps = max(50, min(2000, int(budget / one)))
    ratios, t_np, t_torch, t_lock, chosen = [], [], [], [], []
    for _ in range(repeats):
        a = best_threads(numpy_steps, net, X, y, reps)
        b = best_threads(torch_steps, net, X, y, reps)
        c, choice = lockstep_steps(sizes, n, data, dtype, reps)
        ratios.append(c / (a + b))
        t_np.append(a)
        t_torch.append(b)
        t_lock.append(c)
        chosen.append(choice.best.name)
    row = {
        "net": "-".join(map(str, sizes)),
        "batch": n,
        "dtype": dtype,
        "reps": reps,
        "numpy_ms": 1e3 * statistics.median(t_np),
        "torch_ms": 1e3 * statistics.median(t_torch),
        "lockstep_ms": 1e3 * statistics.median(t_lock),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "chosen": max(set(chosen), key=chosen.count),
    }
    if each:
        ideal = statistics.median(t_np) + statistics.median(t_torch)
        for arr in (*threads.ARRANGEMENTS, threads.POOLED):
            held = arr if arr.min_step == 0 else type(arr)(arr.name)  # held, never skipped
            t, _ = lockstep_steps(sizes, n, data, dtype, reps, (held,))
            row[f"held: {arr.name}"] = t / ideal
    return row


def adam_minibatch(dtype: str, epochs: int = 3) -> dict:
    """Digits (64-32-10, cross-entropy) with Adam on mini-batches of 32: the scratch side's step
    (nn-parity's MLP and scratch.Adam) against torch's eager step with its foreach Adam, and the
    lockstep against the two, each over the same `epochs` passes."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(dtype)
    net = scratch.MLP([64, 32, 10], ["tanh", "identity"], dtype=dtype, rng=1)
    loss = scratch.get_loss("ce")
    order = np.random.default_rng(0).permutation(len(X))
    batches = [order[k : k + 32] for k in range(0, len(X), 32)] * epochs

    s_net = scratch.MLP([64, 32, 10], ["tanh", "identity"], dtype=dtype, rng=1)
    opt = scratch.Adam(s_net, lr=LR)
    t0 = time.perf_counter()
    for rows in batches:
        out, cache = s_net.forward(X[rows])
        _, lc = loss.forward(out, y[rows])
        s_net.backward(loss.backward(lc), cache)
        opt.step()
    t_scratch = (time.perf_counter() - t0) / len(batches)

    model = TorchMLP.from_scratch(net)
    topt = torch.optim.Adam(model.parameters(), lr=LR, foreach=True)
    t_torch = torch_ce_step_time(model, topt, X, y, batches)

    t0 = time.perf_counter()
    result = lockstep(
        net, TorchMLP.from_scratch(net), X, y, lr=LR, loss="ce", optimizer="adam",
        batch_size=32, epochs=epochs,
    )  # fmt: skip
    t_lock = (time.perf_counter() - t0) / len(batches)
    assert result.passed, result.first_divergence
    return {
        "dtype": dtype,
        "scratch_ms": 1e3 * t_scratch,
        "torch_ms": 1e3 * t_torch,
        "lockstep_ms": 1e3 * t_lock,
        "scratch/torch": t_scratch / t_torch,
        "ratio": t_lock / (t_scratch + t_torch),
    }


CONV_SPEC = "conv8x3,relu,pool2,flatten,affine10"
# (spec, batch size, epochs): the net, and a wider conv on larger batches
CONV_NETS = (
    (CONV_SPEC, 64, 4),
    ("conv16x3,relu,pool2,flatten,affine10", 256, 8),
)


def conv_digits(dtype: str, epochs: int = 2, spec: str = CONV_SPEC, batch: int = 64) -> dict:
    """The conv net of `spec` on digits (1x8x8), batches of `batch`, SGD: the scratch step,
    torch's eager step and the lockstep, each over the same `epochs` passes."""
    from nn_parity.scratch.sequential import from_spec
    from nn_parity.torch_ref.mirror.sequential import TorchSequential
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8).astype(dtype)  # (N, 1, 8, 8)
    loss = scratch.get_loss("ce")
    Y = loss.targets(y, 10, dtype)
    order = np.random.default_rng(0).permutation(len(X))
    batches = [order[k : k + batch] for k in range(0, len(X), batch)] * epochs

    s_net = from_spec(spec, (1, 8, 8), dtype=dtype, rng=1)
    params = {f"layers.{k}": v for k, v in s_net.params.items()}
    grads = {f"layers.{k}": v for k, v in s_net.grads.items()}
    opt = scratch.SGD(params, lr=LR)
    t0 = time.perf_counter()
    for rows in batches:
        out, cache = s_net.forward(X[rows])
        _, lc = loss.forward(out, Y[rows])
        s_net.backward(loss.backward(lc), cache)
        opt.step(grads)
    t_scratch = (time.perf_counter() - t0) / len(batches)

    model = TorchSequential(from_spec(spec, (1, 8, 8), dtype=dtype, rng=1))
    topt = torch.optim.SGD(model.parameters(), lr=LR)
    t_torch = torch_ce_step_time(model, topt, X, y, batches)

    net = from_spec(spec, (1, 8, 8), dtype=dtype, rng=1)
    t0 = time.perf_counter()
    result = lockstep(net, None, X, y, lr=LR, loss="ce", batch_size=batch, epochs=epochs)
    t_lock = (time.perf_counter() - t0) / len(batches)
    assert result.passed, result.first_divergence
    return {
        "dtype": dtype,
        "scratch_ms": 1e3 * t_scratch,
        "torch_ms": 1e3 * t_torch,
        "lockstep_ms": 1e3 * t_lock,
        "scratch/torch": t_scratch / t_torch,
        "lockstep/scratch": t_lock / t_scratch,
        "lockstep/torch": t_lock / t_torch,
        "ratio": t_lock / (t_scratch + t_torch),
    }


def print_conv(rows: list, repeats: int = 3) -> None:
    """The conv table: per net and dtype the median over `repeats` runs of each time and ratio
    (the machine may be shared: one run can be several times slower than the next)."""
    print(f"\nConv nets on digits (1x8x8), SGD, one thread each, median of {repeats}")
    head = f"{'net':>22} {'batch':>5} {'dtype':>7} {'scratch ms':>10} {'torch ms':>9} "
    print(head + f"{'scratch/torch':>13} {'lockstep ms':>11} {'/scratch':>8} {'/torch':>7} "
          f"{'/(scratch+torch)':>16}")  # fmt: skip
    for spec, batch, epochs in CONV_NETS:
        net = spec.split(",")[0] + " -> pool2 -> aff10"
        for dtype in ("float64", "float32"):
            with one_thread():
                conv_digits(dtype, 1, spec, batch)  # warm-up
                runs = [conv_digits(dtype, epochs, spec, batch) for _ in range(repeats)]
            c = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "dtype"}
            rows.append({"conv_digits": {"spec": spec, "batch": batch, "dtype": dtype, **c}})
            print(
                f"{net:>22} {batch:>5} {dtype:>7} {c['scratch_ms']:>10.3f} "
                f"{c['torch_ms']:>9.3f} {c['scratch/torch']:>13.2f} {c['lockstep_ms']:>11.3f} "
                f"{c['lockstep/scratch']:>8.2f} {c['lockstep/torch']:>7.2f} {c['ratio']:>16.2f}",
                flush=True,
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1024-2048-2048-1 network")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per size and dtype")
    parser.add_argument(
        "--each", action="store_true", help="also time the lockstep held in each arrangement"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--conv", action="store_true", help="only the conv net on digits")
    args = parser.parse_args(argv)
    if args.conv:
        rows: list = []
        print_conv(rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return

    print(
        f"numpy {np.__version__}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}; ratio = lockstep / (bare numpy + bare torch), "
        f"median [min-max] of {args.repeats}"
    )
    head = f"{'network':>18} {'batch':>5} {'dtype':>7} {'numpy ms':>9} {'torch ms':>9} "
    head += f"{'lockstep ms':>11} {'ratio':>5} {'spread':>11}  chosen"
    print(head)
    rows = []
    for sizes, n, data, quick in CONFIGS:
        if args.quick and not quick:
            continue
        for dtype in ("float64", "float32"):
            row = measure(sizes, n, data, dtype, args.budget, args.repeats, args.each)
            rows.append(row)
            line = (
                f"{row['net']:>18} {n:>5} {dtype:>7} {row['numpy_ms']:>9.3f} "
                f"{row['torch_ms']:>9.3f} {row['lockstep_ms']:>11.3f} {row['ratio']:>5.2f} "
                f"{row['ratio_min']:>5.2f}-{row['ratio_max']:<5.2f}  {row['chosen']}"
            )
            held = [f"{k[6:]} {v:.2f}" for k, v in row.items() if k.startswith("held: ")]
            print(line + (f"\n{'':>18} held: " + "; ".join(held) if held else ""), flush=True)
    print("\nAdam on mini-batches: digits 64-32-10 x 32, cross-entropy, 3 epochs (171 steps)")
    print(f"{'dtype':>7} {'scratch ms':>10} {'torch ms':>9} {'scratch/torch':>13} "
          f"{'lockstep ms':>11} {'lockstep/(scratch+torch)':>24}")  # fmt: skip
    for dtype in ("float64", "float32"):
        with one_thread():
            a = adam_minibatch(dtype)
        rows.append({"adam_minibatch": a})
        print(
            f"{dtype:>7} {a['scratch_ms']:>10.3f} {a['torch_ms']:>9.3f} "
            f"{a['scratch/torch']:>13.2f} {a['lockstep_ms']:>11.3f} {a['ratio']:>24.2f}",
            flush=True,
        )
    print_conv(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
