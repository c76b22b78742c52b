"""A `scratch.sequential.Sequential` and its torch `nn.Sequential` as the two sides of a lockstep.

Each step reports, in the order the step computes them:

    ("out", l, None, None)              layer l's output (every layer: conv, pool, flatten, ...)
    ("stat", l, "running_mean", None)   a batchnorm layer's running statistics, right after its
    ("stat", l, "running_var", None)    output (training mode updates them in forward; in eval
                                        mode they must stay as they were)
    ("prob", L-1, None, None), ("loss", None, None, None)
    ("grad" ...), ("state" ...), ("param" ...)   as for the built-in network

so the first failing item names the layer a bug entered at. Parameters take canonical names
`layers.{l}.weight` (the nn.Sequential's `{l}.weight`).

Dropout: one mask per step and layer, drawn by the scratch layer from its seeded generator and
handed to torch's `GivenMask` through a `MaskBank`. The two steps may run on two threads in
either order; the bank gives each side the k-th mask a layer drew, whichever side asked first.

A mismatch is re-checked stage by stage (engine/layered_recheck.py, through `recheck`): a relu
input or a max-pool tie within rounding (kink) or rounding carried in (drift) is explained and
the run resynchronises, batchnorm's running statistics included (`take_buffers`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch import sequential as sq
from nn_parity.scratch.conventions import l2_names
from nn_parity.torch_ref.engine.layered_recheck import explain_layered
from nn_parity.torch_ref.engine.scratch_side import add_penalty
from nn_parity.torch_ref.engine.side import Key, _state_values, active_state, update_keys
from nn_parity.torch_ref.engine.torch_side import TorchSide
from nn_parity.torch_ref.mirror.model import torch_loss, torch_probabilities
from nn_parity.torch_ref.mirror.optim import torch_optimizer, torch_scheduler
from nn_parity.torch_ref.mirror.sequential import GivenMask, TorchSequential

STATS = ("running_mean", "running_var")


def canonical(name: str) -> str:
    """`{l}.weight` (nn.Sequential's state dict) as `layers.{l}.weight`."""
    return f"layers.{name}"


def layered_order(net: sq.Sequential) -> list[str]:
    """Parameter names last layer first, weight before bias."""
    names = [canonical(k) for k in net.params]
    return sorted(names, key=lambda n: (-int(n.split(".")[1]), n.endswith("bias")))


def layered_keys(net: sq.Sequential, order: list[str], state_names, lr: bool = False) -> list[Key]:
    """Per layer its output (and batchnorm's statistics), prob, loss, then the update's keys;
    with `lr` (a schedule) the step's rate after the gradients."""
    keys: list[Key] = []
    for l, layer in enumerate(net.layers):
        keys.append(("out", l, None, None))
        if isinstance(layer, sq.BatchNorm):  # in eval mode too: they must stay as they are
            keys += [("stat", l, b, None) for b in STATS]
    keys += [("prob", len(net.layers) - 1, None, None), ("loss", None, None, None)]
    return keys + update_keys(order, state_names, lr=lr)


_NORMS = (sq.BatchNorm, sq.LayerNorm)


def l2_params(net: sq.Sequential, loss: scratch.Loss, params: Mapping) -> dict:
    """The parameters (canonical names) a declared L2 term is drawn from, the same for both
    sides: every one for l2_on="all" or names; for "weights", every affine and conv weight. A
    norm's gamma is `layers.K.weight` too (torch's name), but it is not a weight here: it is
    left out, as its beta and every bias are (docs/conventions.md)."""
    if loss.l2_on != "weights":
        return dict(params)
    norms = tuple(f"layers.{l}." for l, layer in enumerate(net.layers) if isinstance(layer, _NORMS))
    return {k: v for k, v in params.items() if not k.startswith(norms)}


def check_l2_on(net: sq.Sequential, loss: scratch.Loss) -> None:
    """A declared l2_on's names are parameters of the network (canonical names)."""
    if loss.l2 and not isinstance(loss.l2_on, str):
        l2_names(loss.l2_on, [canonical(k) for k in net.params])


class MaskBank:
    """The k-th mask each dropout layer drew, for both sides: drawn once, by the scratch
    layer's own generator, under a lock, and dropped once both sides have taken it."""

    def __init__(self, net: sq.Sequential):
        self.lock = threading.Lock()
        self.layers = {i: l for i, l in enumerate(net.layers) if isinstance(l, sq.Dropout)}
        self.draw = {i: l.next_mask for i, l in self.layers.items()}  # the layer's own draw
        self.masks: dict[int, list] = {i: [] for i in self.layers}
        self.taken = {side: dict.fromkeys(self.layers, 0) for side in ("scratch", "torch")}
        self.dropped = dict.fromkeys(self.layers, 0)
        for i, layer in self.layers.items():
            layer.next_mask = lambda shape, i=i: self.take("scratch", i, shape)

    def take(self, side: str, i: int, shape) -> np.ndarray:
        with self.lock:
            k = self.taken[side][i] - self.dropped[i]
            if k == len(self.masks[i]):
                self.masks[i].append(self.draw[i](shape))
            mask = self.masks[i][k]
            self.taken[side][i] += 1
            if min(t[i] for t in self.taken.values()) > self.dropped[i]:
                self.masks[i].pop(0)
                self.dropped[i] += 1
        if mask.shape != tuple(shape):
            raise RuntimeError(f"dropout mask of layer {i}: {mask.shape} drawn, {shape} asked")
        return mask


class LayeredSide:
    """The scratch side: a `Sequential`, its loss and its scratch optimizer."""

    staged = False
    rerunnable = False
    recovered = False
    layered = True  # findings.py: no MLP diagnosis

    def __init__(self, net: sq.Sequential, loss: scratch.Loss, opt_factory, lr: float):
        self.net, self.loss, self.lr = net, loss, lr
        self.desc = LayeredDescription(net)
        self.dtype = net.dtype
        self.order = layered_order(net)
        self.params = {canonical(k): v for k, v in net.params.items()}  # views
        self.grads = {canonical(k): v for k, v in net.grads.items()}  # views
        self.opt = self.opt_desc = opt_factory(self.params)
        self.bank = MaskBank(net)
        self.before = {k: v.copy() for k, v in self.params.items()}
        self.state_names: tuple[str, ...] = ()
        self.stateful = False
        self.scheduled = getattr(self.opt, "schedule", None) is not None  # rate compared per step
        self.keys: list[Key] = []

    @property
    def params_before(self) -> dict[str, np.ndarray]:
        return self.before

    def get_params(self) -> dict[str, np.ndarray]:
        return self.params

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        for name, p in self.params.items():
            np.copyto(p, params[name])

    def step(self, X: np.ndarray, Y: np.ndarray, batch: Any = None) -> list:
        net = self.net
        self.X, self.Y = X, Y
        self.buffers_before = {k: v.copy() for k, v in net.buffers.items()}  # for the re-check
        out, self.cache = net.forward(X)
        self.loss_value, lcache = self.loss.forward(out, Y)
        net.backward(self.loss.backward(lcache), self.cache)
        self.loss_value += self.penalize(self.params)
        for k, v in self.params.items():
            np.copyto(self.before[k], v)
        if self.stateful or not self.keys:  # for the re-check's update stage
            self.state_before = self.opt.state_dict()
        if self.keys:  # torch's scheduler.step() after the last step, before this one
            self.opt.schedule_step()
        self.opt.step(self.grads)
        if not self.keys:
            names = getattr(self.opt, "state_names", ())
            self.state_names = active_state(names, getattr(self.opt, "state", {}))
            self.stateful = bool(self.state_names)
            self.keys = layered_keys(net, self.order, self.state_names, self.scheduled)
        vals: list = []
        for l, (o, _) in enumerate(self.cache):
            vals.append(o)
            if isinstance(net.layers[l], sq.BatchNorm):
                vals += [net.buffers[f"{l}.{b}"] for b in STATS]
        vals += [self.loss.probabilities(out), np.asarray(self.loss_value, self.dtype)]
        vals += [self.grads[k] for k in self.order]
        if self.scheduled:
            vals.append(np.asarray(self.opt.lr, self.dtype))
        if self.stateful:
            vals += _state_values(self.opt.state, self.order, self.state_names)
        return vals + [self.params[k] for k in self.order]

    def penalize(self, params: Mapping[str, np.ndarray]) -> float:
        """The declared L2 term at `params`: its gradient added to the network's, its value
        returned (scratch_side.add_penalty over `l2_params`); 0.0 when none is declared."""
        return add_penalty(self.loss, l2_params(self.net, self.loss, params), self.grads)

    def l2_term(self, params: Mapping[str, np.ndarray]) -> tuple[float, dict]:
        """The declared L2 term's value and gradients at `params` (canonical names), for the
        re-check and the finite-difference verdict: what `penalize` adds."""
        return self.loss.penalty(l2_params(self.net, self.loss, params))

    def recovery_slack(self) -> dict[str, float]:
        return {}

    def oracle(self):
        return self.net, self.before, self.cache

    def masks(self) -> dict[int, np.ndarray]:
        """The step's dropout masks by layer (training only), from the layers' caches."""
        drop = [l for l, layer in enumerate(self.net.layers) if isinstance(layer, sq.Dropout)]
        return {l: self.cache[l][1] != 0 for l in drop if self.cache[l][1] is not None}

    def recheck(self, tside, items, within, svals, tvals):
        """recheck.explain's stage-wise re-check for this side (engine/layered_recheck.py)."""
        return explain_layered(self, tside, items, within, svals, tvals)

    def take_buffers(self, tside) -> None:
        """Resynchronising: torch's batchnorm running statistics, bit for bit."""
        for k, v in tside.stats_now().items():
            np.copyto(self.net.buffers[k], v)


def _np(t) -> np.ndarray:
    assert t is not None  # batchnorm keeps running statistics (track_running_stats)
    return t.numpy()


class LayeredTorchSide(TorchSide):
    """The torch side: the `nn.Sequential` mirror, its loss and torch.optim optimizer; every
    module's output recorded as the step runs, dropout given the scratch side's mask."""

    def __init__(self, ref: torch.nn.Sequential, sside: LayeredSide):
        self.ref, self.sside, self.order, self.loss = ref, sside, sside.order, sside.loss
        named = dict(ref.named_parameters())
        self.by_name = {canonical(k): v for k, v in named.items()}
        decayed = l2_params(sside.net, self.loss, self.by_name)  # the declared L2 term's
        self.loss_fn = torch_loss(self.loss, dtype=sside.dtype, params=decayed)
        self.opt_names = list(sside.opt.params)
        self.opt = torch_optimizer(sside.opt, {k: self.by_name[k] for k in self.opt_names})
        self.scheduler = torch_scheduler(sside.opt, self.opt)  # stepped after each opt.step()
        self.declared_state = tuple(getattr(sside.opt, "state_names", ()))
        self.state_views: list[np.ndarray] = []
        self.state_buffers: list[str] = []
        self.state_keep: list[np.ndarray] = []
        self.state_names: tuple[str, ...] = ()
        self.params = [self.by_name[k] for k in self.order]
        self.param_views = [p.detach().numpy() for p in self.params]
        self.params_before = [v.copy() for v in self.param_views]
        bns = [(l, m) for l, m in enumerate(ref) if isinstance(m, torch.nn.BatchNorm2d)]
        self.stats = {l: [_np(m.running_mean), _np(m.running_var)] for l, m in bns}
        self.masked = [l for l, m in enumerate(ref) if isinstance(m, GivenMask)]
        self.keys: list[Key] = []
        self.stepped = 0

    def stats_now(self) -> dict[str, np.ndarray]:
        """Batchnorm's running statistics by the scratch network's names ({l}.running_mean)."""
        return {f"{l}.{b}": v for l, pair in self.stats.items() for b, v in zip(STATS, pair)}

    def step(self, Xt: torch.Tensor, Yt: torch.Tensor) -> list:
        for p in self.params:
            p.grad = None
        self.stepped += 1
        self.stats_before = {k: v.copy() for k, v in self.stats_now().items()}  # the re-check's
        lr = self.opt.param_groups[0]["lr"]  # this step's rate, as the scheduler set it
        outs, x = [], Xt
        for l, m in enumerate(self.ref):
            if l in self.masked and m.training:
                m.mask = torch.from_numpy(self.sside.bank.take("torch", l, tuple(x.shape)))
            x = m(x)
            if x.requires_grad:  # torch's gradient at each output, for the re-check's backward
                x.retain_grad()
            outs.append(x)
        self.cache = [(o, o) for o in outs]  # (z, a) pairs for the ledger's blow-up report
        loss = self.loss_fn(x, Yt)
        loss.backward()
        for keep, now in zip(self.params_before, self.param_views, strict=True):
            np.copyto(keep, now)
        for keep, now in zip(self.state_keep, self.state_views, strict=True):
            np.copyto(keep, now)
        self.opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if not self.keys:
            self.state_names = active_state(self.declared_state, self.state())
            scheduled = self.scheduler is not None
            self.keys = layered_keys(self.sside.net, self.order, self.state_names, scheduled)
            self._view_state()
        vals: list = []
        for l, o in enumerate(outs):
            vals.append(o.detach().numpy())
            if l in self.stats:
                vals += self.stats[l]
        vals.append(torch_probabilities(self.loss, x.detach()).numpy())
        vals.append(loss.detach().numpy())
        self.loss_value = float(vals[-1])
        vals.extend(self.by_name[k].grad.numpy() for k in self.order)  # type: ignore[union-attr]
        if self.scheduler is not None:
            vals.append(np.asarray(lr, vals[-1].dtype))
        if self.state_names:
            pairs = zip(self.state_buffers, self.state_views, strict=True)
            vals += [np.asarray(v, np.float64) if b == "step" else v for b, v in pairs]
        return vals + self.param_views


class LayeredDescription:
    """The network as the run's configuration describes it: the layers, each layer's output
    width (flattened), the parameter count. No activations are listed: they name the layers
    the MLP's re-check examines for kinks; this side's re-check finds its own (its layers)."""

    bias = True
    activations: tuple = ()

    def __init__(self, net: sq.Sequential):
        self.layers = net.layers
        self.sizes = [int(np.prod(s)) for s in net.shapes]
        self.num_params = net.num_params
        self.words = [layer_words(layer) for layer in net.layers]  # the report's network line


def layer_words(layer) -> str:
    """A layer as the report names it: "conv 1->8 3x3", "maxpool 2", "affine 72->10", ..."""
    if isinstance(layer, sq.Conv2d):
        extra = (f" stride {layer.stride}" if layer.stride != 1 else "") + (
            f" pad {layer.padding}" if layer.padding else ""
        )
        return f"conv {layer.c}->{layer.f} {layer.k}x{layer.k}{extra}"
    if isinstance(layer, sq.MaxPool2d):
        return f"maxpool {layer.k}" + (f" stride {layer.stride}" if layer.stride != layer.k else "")
    named = {
        sq.Affine: lambda: f"affine {layer.d}->{layer.h}",
        sq.BatchNorm: lambda: f"batchnorm {layer.c}",
        sq.LayerNorm: lambda: f"layernorm {layer.d}",
        sq.Dropout: lambda: f"dropout {layer.p:g}",
        sq.Flatten: lambda: "flatten",
        sq.Act: lambda: layer.kind,
    }
    return named.get(type(layer), lambda: repr(layer))()


def layered_scratch_side(net: sq.Sequential, loss, opt_factory, lr, X, y):
    """(side, X, Y): X checked as (N, *input_shape) in the network's dtype, the labels in the
    loss's form (default cross-entropy on the flat output)."""
    Xa = np.asarray(X)
    if Xa.ndim < 2 or Xa.shape[1:] != net.input_shape:
        want = ", ".join(map(str, net.input_shape))
        raise ValueError(f"X must have shape (N, {want}) for this network, got {Xa.shape}")
    if not np.isfinite(Xa).all():
        raise ValueError("X holds NaN or Inf")
    loss_s = scratch.get_loss("ce" if loss is None else loss)
    width = net.shapes[-1]
    if len(width) != 1:
        raise ValueError(f"the network's output must be flat (N, C), got (N, {width}): flatten")
    Y = loss_s.targets(np.asarray(y), width[0], net.dtype)
    side = LayeredSide(net, loss_s, opt_factory, lr)
    return side, np.ascontiguousarray(Xa, dtype=net.dtype), Y


def layered_torch_side(ref, sside: LayeredSide) -> LayeredTorchSide:
    """The torch side: the mirror at the network's weights, or a given `ref` as it is."""
    return LayeredTorchSide(TorchSequential(sside.net) if ref is None else ref, sside)


__all__ = [
    "LayeredDescription",
    "LayeredSide",
    "LayeredTorchSide",
    "MaskBank",
    "check_l2_on",
    "l2_params",
    "layered_scratch_side",
    "layered_torch_side",
]
