"""The user's own layered network (`adapt_layers`) and its torch `nn.Sequential` as the two sides
of a lockstep.

The torch side is `LayeredTorchSide` over `TorchSequential` of the spec's network, holding the
user's weights converted to torch's layout bit for bit (a transpose or reshape moves numbers, it
computes none). It is given X as (N, C, H, W); with layout NHWC, its flatten permutes to
(N, H, W, C) first, as the user's code flattens, and its 4-D layer outputs are reported as
(N, H, W, C): each layer's output is compared in the user's layout, each parameter in torch's
and reported at the user's index (`W1[2, 0, 1, 1]` as the user indexes it).

Each step reports, as `LayeredSide` does: the layer outputs the user's forward returned, the
output probabilities and the loss (when the user's code gives them), every gradient (returned,
or recovered from a fused plain-SGD step), nn-parity's optimizer state, every parameter; the
running statistics of the batchnorm layers `stats=` names, and the step's rate under a schedule.
Dropout of the user's own: the masks their code drew this step (user/layered_state.py) are
handed to torch's `GivenMask` through `use_masks`, as the dense path's are (loop.py `_masked`).
A mismatch is re-checked coarsely, as for `adapt`'s user code (recheck.py, `rerunnable`): the
step must repeat itself bit for bit, and the whole step from torch's parameters (and optimizer
state) must give torch's values within tolerance; only then is it drift (or saturation), and the
run resynchronises. A fused step with an optimizer of the user's own is never rerun, nor is a
step with the user's dropout masks (a rerun would draw new ones).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.engine.layered_side import (
    LayeredDescription,
    LayeredTorchSide,
    layered_keys,
    layered_order,
)
from nn_parity.torch_ref.engine.side import LR_KEY, Key, _state_values, active_state
from nn_parity.torch_ref.mirror.sequential import TorchSequential
from nn_parity.torch_ref.user.access import is_scalar
from nn_parity.torch_ref.user.layered import UserLayeredNetwork
from nn_parity.torch_ref.user.layered_state import (
    STATS,
    read_masks,
    read_stats,
    restore_stats,
    same_masks,
)
from nn_parity.torch_ref.user.network import UserCodeError
from torch import nn


class FlattenNHWC(nn.Module):
    """nn.Flatten of (N, C, H, W) in channels-last order: (N, H W C), as NHWC code flattens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x).flatten(1)


class UserLayeredSide:
    """The user's layered network through `adapt_layers`."""

    staged = False
    layered = True  # findings.py: located by layer, no MLP diagnosis

    def __init__(self, net: UserLayeredNetwork, opt_factory, lr: float, X_user, y_user):
        self.net, self.loss, self.lr, self.dtype = net, net.loss, lr, net.dtype
        self.seq = net.seq
        self.desc = LayeredDescription(net.seq)
        self.order = layered_order(net.seq)
        self.X_user, self.y_user = np.array(X_user), np.array(y_user)  # the user's own copies
        self.canon = net.get_params()
        for k, v in self.canon.items():  # the mirror's pattern at the user's weights
            np.copyto(self.seq.params[k.removeprefix("layers.")], v)
        for l in net.stats:  # and at the user's running statistics, if kept before a step
            mean_var = read_stats(net, l, missing_ok=True)
            for b, v in zip(STATS, mean_var or (), strict=False):
                np.copyto(self.seq.buffers[f"{l}.{b}"], v)
        self.opt_desc = opt_factory({k: v.copy() for k, v in self.canon.items()})
        self.opt = opt_factory(self.canon) if net.form == "grads" else None
        hyper = self.opt_desc.hyper
        plain = type(self.opt_desc) is scratch.SGD and not (
            hyper.get("momentum") or hyper.get("weight_decay") or self.opt_desc.schedule
        )
        self.recovered = net.form == "step" and plain
        # The coarse re-check (recheck.py): the whole step again from torch's parameters (and
        # nn-parity's optimizer state). A fused step with state of the user's own cannot be
        # set back, and is never rerun.
        self.rerunnable = (net.form == "grads" or plain) and not net.dropout
        # dropout of the user's own: the masks their code drew this step, by layer, for torch
        # to apply. A rerun would draw new ones, so such a step is never rerun.
        self.masks: dict[int, np.ndarray] = {}
        # nn-parity's update with a schedule: the step's rate compared per step, as user_side
        self.scheduled = self.opt is not None and self.opt.schedule is not None
        self.t = 0  # steps taken: the schedule's step
        self.grads_seen = net.form == "grads" or self.recovered
        self.state_names: tuple[str, ...] = ()
        self.stateful = False
        self.keys: list[Key] = []
        self.before: dict[str, np.ndarray] = {}
        self.after: dict[str, np.ndarray] = {}
        self.state_before: dict[str, dict[str, np.ndarray]] = {}
        self.stats_before: dict[int, tuple | None] = {}

    @property
    def params_before(self) -> dict[str, np.ndarray]:
        return self.before

    def get_params(self) -> dict[str, np.ndarray]:
        return self.net.get_params()

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        self.net.set_params(params)
        for k, v in self.canon.items():
            np.copyto(v, params[k])

    def step(self, X: np.ndarray, Y: np.ndarray, rows: Any = None) -> list:
        net = self.net
        self.X, self.Y = X, Y
        Xu = self.X_user if rows is None else self.X_user[rows]
        yu = self.y_user if rows is None else self.y_user[rows]
        self.before = net.get_params()
        self.state_before = self.opt.state_dict() if self.opt is not None else {}
        self.stats_before = {l: read_stats(net, l, missing_ok=True) for l in net.stats}
        outs: dict[int, np.ndarray] = {}
        prob, drawn = None, None
        if net.forward is not None:
            out, outs = net.call_forward(Xu)
            prob = np.asarray(self.loss.probabilities(out.astype(self.dtype, copy=False)))
            drawn = read_masks(net, len(Xu)) if net.dropout else None
        loss_value, grads, after = self._update(Xu, yu)
        if net.dropout:
            self.masks = self._step_masks(drawn, len(Xu))
        if all(np.array_equal(self.before[k], after[k]) for k in after):
            raise UserCodeError(
                f"{net.names['fn']} changed no parameter: it must update them in place "
                "(W -= lr * dW) or rebind them where nn-parity reads them"
            )
        self.loss_value = math.nan if loss_value is None else loss_value
        if not self.keys:
            self._set_keys(set(outs), prob is not None, loss_value is not None)
        found: dict[tuple, np.ndarray | None] = {("out", l, None): v for l, v in outs.items()}
        for l in net.stats:  # the running statistics the step left, as torch's buffers
            mean_var = read_stats(net, l)
            assert mean_var is not None
            found.update({("stat", l, b): v for b, v in zip(STATS, mean_var, strict=True)})
        found[("prob", len(self.seq.layers) - 1, None)] = prob
        found[("loss", None, None)] = np.asarray(self.loss_value, self.dtype)
        vals: list = [found[k[:3]] for k in self.keys if k[0] in ("out", "stat", "prob", "loss")]
        if self.grads_seen:
            vals += [np.asarray(grads[k], self.dtype) for k in self.order]
        if self.scheduled:
            assert self.opt is not None
            vals.append(np.asarray(self.opt.lr, self.dtype))
        if self.stateful:
            assert self.opt is not None
            vals += _state_values(self.opt.state_dict(), self.order, self.state_names)
        self.after = {k: np.array(after[k]) for k in self.order}
        self.t += 1
        return vals + [self.after[k] for k in self.order]

    def _step_masks(self, drawn, n: int) -> dict[int, np.ndarray]:
        """This step's dropout masks (keep-patterns, torch's layout), read after the step; the
        forward's, when it was called, must be the same (one forward per step is compared)."""
        masks = read_masks(self.net, n)
        l = None if drawn is None else same_masks(drawn, masks)
        if l is not None:
            names = self.net.names
            raise UserCodeError(
                f"{names['fn']} drew a new mask for dropout layer {l} after {names['forward']} "
                "had drawn one: nn-parity compares one forward per step; have it reuse the "
                "forward's pass (its backward on the forward's cache), or leave forward out"
            )
        return masks

    def _update(self, Xu, yu) -> tuple[float | None, dict, dict]:
        """(the loss the user's code returned, the gradients, the parameters after the step)."""
        net = self.net
        if net.form == "grads":
            returned, grads = net.call_grads(Xu, yu)
            now = net.get_params()
            changed = [k for k in now if not np.array_equal(now[k], self.canon[k])]
            if changed:  # applied twice in the user's own loop: theirs, then the optimizer's
                user = net.pmap.by_canonical[changed[0]].user
                raise UserCodeError(
                    f"{net.names['fn']} changed parameter {user!r}: a function that returns "
                    "gradients must leave the parameters alone (give the whole step as step=)"
                )
            assert self.opt is not None
            self.opt.schedule_to(self.t)  # torch's scheduler.step() after each earlier step
            self.opt.step({k: np.ascontiguousarray(g, self.dtype) for k, g in grads.items()})
            net.set_params(self.canon)
            return returned, grads, self.canon
        got = net.run("fn", Xu, yu, self.lr)
        after = net.get_params()
        grads = {k: (self.before[k] - after[k]) / self.lr for k in self.before}
        return (float(got) if is_scalar(got) else None), grads, after

    def _set_keys(self, outs: set[int], prob: bool, loss: bool) -> None:
        if self.opt is not None:
            self.state_names = active_state(self.opt.state_names, self.opt.state)
            self.stateful = bool(self.state_names)
        full = layered_keys(self.seq, self.order, self.state_names)
        wanted = {"out": lambda l: l in outs, "prob": lambda l: prob, "loss": lambda l: loss,
                  "stat": lambda l: l in self.net.stats,
                  "grad": lambda l: self.grads_seen}  # fmt: skip
        self.keys = [k for k in full if wanted.get(k[0], lambda l: True)(k[1])]
        if self.scheduled and LR_KEY not in self.keys:  # the rate after the gradients
            at = next(i for i, k in enumerate(self.keys) if k[0] in ("state", "param"))
            self.keys.insert(at, LR_KEY)

    def recovery_slack(self) -> dict[str, float]:
        """As `UserSide`'s: the rounding of (before - after) / lr, per parameter."""
        if not self.recovered:
            return {}
        eps = float(np.finfo(self.dtype).eps)
        return {
            k: 4 * eps * float(np.max(np.abs(self.before[k]) + np.abs(self.after[k]))) / self.lr
            for k in self.order
        }

    def rerun(self, params: Mapping[str, np.ndarray], X, Y, rows, state=None) -> list:
        """The step again, from `params` (and optimizer `state`), without keeping its result."""
        self.set_params(params)
        restore_stats(self.net, self.stats_before)  # the user's code advances them in forward
        self.t -= 1  # the same step again: the same rate
        if self.opt is not None and state is not None:
            self.opt.load_state_dict(state)
        return [np.array(v) for v in self.step(X, Y, rows)]

    def oracle(self):
        raise NotImplementedError("a layered network has no MLP oracle")  # findings: layered

    def checked(self) -> dict:
        """What this side let the engine check, for the record and the report."""
        net = self.net
        return {
            "side": repr(net),
            "gradients": f"returned by {net.names['fn']}"
            if net.form == "grads"
            else "recovered from your fused step as (before - after) / lr"
            if self.recovered
            else "not compared: a fused step with this optimizer implies none",
            "update": f"your {net.names['fn']}"
            if net.form == "step"
            else f"nn-parity's {type(self.opt).__name__}",
            "layout": net.pmap.describe(),
            "layout_decided_by": net.pmap.how,
        }


class UserLayeredTorchSide(LayeredTorchSide):
    """`LayeredTorchSide` over the spec's mirror; 4-D layer outputs reported in NHWC when the
    user's code holds its images so."""

    def __init__(self, ref: nn.Sequential, sside: UserLayeredSide):
        shim = SimpleNamespace(order=sside.order, loss=sside.loss, dtype=sside.dtype,
                               opt=sside.opt_desc, net=sside.seq, bank=self)  # fmt: skip
        super().__init__(ref, shim)  # type: ignore[arg-type]
        self.nhwc = sside.net.layout == "NHWC"
        self.masks: dict[int, np.ndarray] = {}

    def use_masks(self, masks: dict[int, np.ndarray]) -> None:
        """The dropout masks the user's code drew for the coming step, by layer (keep-patterns
        in torch's layout), as `TorchSide.use_masks` takes the dense path's."""
        self.masks = masks

    def take(self, side: str, l: int, shape) -> np.ndarray:
        """As `MaskBank.take`, for the `GivenMask` of layer l: the user's mask of this step."""
        if l not in self.masks:
            raise RuntimeError(f"no dropout mask given for layer {l} this step")
        return self.masks[l]

    def step(self, Xt: torch.Tensor, Yt: torch.Tensor) -> list:
        vals = super().step(Xt, Yt)
        if self.nhwc:
            for i, (q, _, _, _) in enumerate(self.keys):
                if q == "out" and vals[i].ndim == 4:
                    vals[i] = vals[i].transpose(0, 2, 3, 1)
        return vals


def user_layered_scratch_side(net: UserLayeredNetwork, loss, opt_factory, lr, X, y):
    """(side, X as torch takes it, Y): X checked against the adapted input shape, in the user's
    layout; the labels in the loss's form."""
    if loss is not None and scratch.get_loss(loss).name != net.loss.name:
        raise ValueError(
            f"loss {scratch.get_loss(loss).name!r} given, but the network was adapted with "
            f"loss {net.loss.name!r}"
        )
    Xa = np.asarray(X)
    if Xa.ndim < 2 or Xa.shape[1:] != net.input_shape:
        want = ", ".join(map(str, net.input_shape))
        raise ValueError(
            f"X has shape {Xa.shape}; this network was adapted for ({'N, ' + want}) in layout "
            f"{net.layout} (input_shape={net.input_shape})"
        )
    if Xa.dtype.kind not in "fiu" or not np.isfinite(Xa).all():
        raise ValueError("X must hold finite numbers")
    if getattr(opt_factory({"probe": np.zeros(1)}), "schedule", None) is not None and (
        net.form == "step"
    ):
        raise ValueError(
            "a learning-rate schedule with a fused step=: your step takes one rate; give "
            "grads= and nn-parity's update follows the schedule"
        )
    width = net.seq.shapes[-1]
    if len(width) != 1:
        raise ValueError(f"the network's output must be flat (N, C), got (N, {width}): flatten")
    Y = net.loss.targets(np.asarray(y), width[0], net.dtype)
    side = UserLayeredSide(net, opt_factory, lr, Xa, np.asarray(y))
    Xc = np.ascontiguousarray(net.to_canonical_x(Xa), dtype=net.dtype)
    return side, Xc, Y


def user_layered_torch_side(ref, sside: UserLayeredSide) -> UserLayeredTorchSide:
    """The torch side: the spec's mirror at the user's weights (a flatten in the user's order)."""
    if ref is None:
        ref = TorchSequential(sside.seq)
        if sside.net.layout == "NHWC":
            for i, layer in enumerate(sside.seq.layers):
                if isinstance(layer, sq.Flatten):
                    ref[i] = FlattenNHWC()
    return UserLayeredTorchSide(ref, sside)


__all__ = [
    "FlattenNHWC",
    "UserLayeredSide",
    "UserLayeredTorchSide",
    "user_layered_scratch_side",
    "user_layered_torch_side",
]
