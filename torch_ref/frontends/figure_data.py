"""The numbers the CLI's figures need beyond the record: the decision boundary and a gradient
slice."""

from __future__ import annotations

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch.gradcheck import loss_fn, numerical_gradient
from nn_parity.torch_ref.mirror.model import TorchMLP, torch_loss, torch_probabilities
from nn_parity.torch_ref.record import _predicted


def gradient_slice(
    net: scratch.MLP, ref: TorchMLP, loss: scratch.Loss, X: np.ndarray, Y: np.ndarray
) -> dict:
    """Figure 4's data: the loss along one weight, and each side's slope there, at step 0.

    The weight is the first layer's entry with the steepest scratch gradient. Neither network's
    parameters change.
    """
    name = "layers.0.weight"
    Xd = X.astype(net.dtype)
    Yd = Y.astype(net.dtype) if Y.dtype.kind == "f" else Y  # class indices stay integers
    out, cache = net.forward(Xd)
    _, lcache = loss.forward(out, Yd)
    g_s = net.backward(loss.backward(lcache), cache)[name].copy()
    g_s += loss.penalty(net.params)[1].get(name, 0)  # a declared L2 term's, as the lockstep's
    ref.zero_grad(set_to_none=True)
    fn = torch_loss(loss, dtype=net.dtype, params=dict(ref.named_parameters()))
    fn(ref(torch.from_numpy(Xd)), torch.from_numpy(Yd)).backward()
    grad_t = dict(ref.named_parameters())[name].grad
    assert grad_t is not None
    g_t = grad_t.detach().numpy().copy()
    ref.zero_grad(set_to_none=True)
    oracle = scratch.MLP(net.sizes, net.activations, bias=net.bias, dtype="float64")
    oracle.flat_params[...] = net.flat_params
    return _slice(oracle, name, g_s, g_t, loss, X, Y)


def _slice(oracle, name: str, g_s, g_t, loss: scratch.Loss, X, Y, points: int = 81) -> dict:
    """The loss of the float64 `oracle` along the entry of parameter `name` where the scratch
    gradient `g_s` is steepest (at `points` values, 21 for big nets), its finite-difference
    slope there, and both sides' slopes."""
    index = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(g_s)), g_s.shape))
    Y64 = Y.astype(np.float64) if Y.dtype.kind == "f" else Y
    f = loss_fn(oracle, type(loss)(loss.reduction, **loss.options), X.astype(np.float64), Y64)
    fd = float(numerical_gradient(f, oracle.params[name], [index])[index])
    w = oracle.params[name]
    w0 = float(w[index])
    span = max(1.0, 2 * abs(w0))
    points = points if X.shape[0] * oracle.num_params < 10**7 else 21  # big nets: fewer
    ws = np.linspace(w0 - span, w0 + span, points)
    losses = np.empty_like(ws)
    for k, value in enumerate(ws):
        w[index] = value
        losses[k] = f()
    w[index] = w0
    summary = {
        "param": name,
        "index": list(index),
        "value": w0,
        "loss": f(),
        "grad_scratch": float(g_s[index]),
        "grad_torch": float(g_t[index]),
        "grad_fd": fd,
    }
    return {"summary": {"gradient_slice": summary}, "arrays": {"slice_w": ws, "slice_loss": losses}}


def boundary(net, ref, loss: scratch.Loss, X: np.ndarray, when: str, grid=100) -> dict:
    """P(class 1) of both networks over a grid spanning two-feature data; over C classes, the
    class each network predicts (and `boundary_classes` = C). `net` a scratch.MLP and `ref` its
    TorchMLP, or a layered network and its nn.Sequential (`layered_boundary`)."""
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = 0.15 * (hi - lo) + 1e-9
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid)
    xx, yy = np.meshgrid(gx, gy)  # (G, G), row i at gy[i]
    P = np.stack([xx.ravel(), yy.ravel()], 1).astype(net.dtype)  # (G*G, 2)
    with np.errstate(over="ignore", invalid="ignore"):  # a blown-up run draws as NaN
        p_s = loss.probabilities(net.forward(P)[0])  # (G*G, C)
    with torch.no_grad():
        p_t = torch_probabilities(loss, ref(torch.from_numpy(P))).numpy()  # (G*G, C)
    extra = {}
    if loss.task == "multiclass":
        extra["boundary_classes"] = np.array(p_s.shape[1])  # C
        p_s, p_t = (_predicted(p) for p in (p_s, p_t))
    p_s, p_t = p_s.reshape(grid, grid), p_t.reshape(grid, grid)
    return {
        **extra,
        "X": X,
        "grid_x": gx,
        "grid_y": gy,
        f"boundary_{when}_scratch": p_s.astype(np.float64),
        f"boundary_{when}_torch": p_t.astype(np.float64),
    }


def layered_boundary(net, loss: scratch.Loss, X: np.ndarray, when: str) -> dict:
    """`boundary` for a network of layers, as it predicts: in evaluation mode (dropout off,
    batchnorm on its running statistics), on a copy, so the run's network, its dropout
    generators and its mode stay untouched."""
    import copy

    from nn_parity.torch_ref.mirror.sequential import TorchSequential

    probe = copy.deepcopy(net).eval()
    return boundary(probe, TorchSequential(probe).eval(), loss, X, when)


def _layered_l2_by_name(net, loss: scratch.Loss) -> scratch.Loss:
    """The loss with its L2 term's parameters named as the network's own ("0.weight"), the
    ones the lockstep decays (engine/layered_side.py: `l2_params`; a norm's gamma is no weight)."""
    from nn_parity.torch_ref.engine.layered_side import l2_params

    if not loss.l2:
        return loss
    canon = {f"layers.{k}": v for k, v in net.params.items()}
    names = tuple(k.removeprefix("layers.") for k in loss.penalty(l2_params(net, loss, canon))[1])
    return type(loss)(loss.reduction, **{**loss.options, "l2_on": names})


def layered_gradient_slice(net, loss: scratch.Loss, X: np.ndarray, Y: np.ndarray) -> dict:
    """`gradient_slice` for a network of layers without dropout (whose loss would change with
    every mask), in training mode as its first step computes it, along its first weight. On
    copies: the run's network, its running statistics and its mode stay untouched."""
    import copy

    from nn_parity.torch_ref.mirror.sequential import TorchSequential

    name = next(iter(net.params))  # the first layer's weight
    ref = TorchSequential(net).train()  # built before any forward moves a running statistic
    probe = copy.deepcopy(net).train()
    Xd = X.astype(net.dtype)
    Yd = Y.astype(net.dtype) if Y.dtype.kind == "f" else Y  # class indices stay integers
    loss = _layered_l2_by_name(net, loss)
    out, cache = probe.forward(Xd)
    _, lcache = loss.forward(out, Yd)
    g_s = probe.backward(loss.backward(lcache), cache)[name].copy()
    g_s += loss.penalty(probe.params)[1].get(name, 0)  # a declared L2 term's, as the lockstep's
    fn = torch_loss(loss, dtype=net.dtype, params=dict(ref.named_parameters()))
    fn(ref(torch.from_numpy(Xd)), torch.from_numpy(Yd)).backward()
    grad_t = dict(ref.named_parameters())[name].grad
    assert grad_t is not None
    oracle = copy.deepcopy(net).train()
    oracle.dtype = np.dtype(np.float64)
    for store in (oracle.params, oracle.buffers):
        for k, v in store.items():
            store[k] = v.astype(np.float64)
    # 21 points: a conv or batchnorm forward over the whole data set costs far more than its
    # parameter count suggests
    return _slice(oracle, name, g_s, grad_t.numpy().copy(), loss, X, Y, points=21)
