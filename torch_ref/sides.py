"""The two sides of a lockstep, behind one small protocol.

A side takes one training step on a batch and reports what it computed, as values in the order of
its `keys`, one key per compared quantity:

    ("z", l, None, None)              layer l's pre-activation            forward
    ("a", l, None, None)              layer l's (hidden) activation
    ("prob", L-1, None, None)         the output probabilities
    ("loss", None, None, None)        the scalar loss                     loss
    ("grad", l, "weight", None)       a gradient, last layer first        backward
    ("param", l, "weight", None)      a parameter after the update        update
    ("state", l, "weight", "exp_avg") an optimizer buffer after the update

in canonical names and layout (`layers.{l}.weight` stored (out, in), like nn.Linear). The engine
compares the keys both sides report and records the ones only one side could.

Required of every side: `keys`, `step(batch)`, `params_before` (the parameters as the step found
them) and `set_params(params)`. Optional capabilities, each a flag the engine reads:

    staged       forward, loss, backward and update can each rerun on given inputs (the
                 built-in network): the stage-wise explanation of a mismatch
    rerunnable   the whole step can rerun from given parameters (user code): a coarser
                 explanation, "this step from torch's weights reproduces torch's"
    stateful     optimizer state can be read and set: compared and resynchronised
    recovered    gradients are recovered from a fused update, (before - after) / lr, and carry
                 that recovery's rounding, allowed for explicitly
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from nn_parity import scratch

from .adapter import UserCodeError, UserNetwork, is_scalar
from .model import torch_loss, torch_probabilities
from .optim import torch_optimizer, torch_state

__all__ = ["MLPSide", "TorchSide", "UserSide"]

Key = tuple[str, Any, Any, Any]


def forward_keys(n_layers: int, *, z: set[int], a: set[int], prob: bool, loss: bool) -> list[Key]:
    keys: list[Key] = []
    for l in range(n_layers):
        if l in z:
            keys.append(("z", l, None, None))
        if l in a and l < n_layers - 1:
            keys.append(("a", l, None, None))
    if prob:
        keys.append(("prob", n_layers - 1, None, None))
    if loss:
        keys.append(("loss", None, None, None))
    return keys


def update_keys(order: list[str], state_names: tuple[str, ...]) -> list[Key]:
    """Per parameter (in `order`: last layer first): the gradient, the optimizer's state, then
    the updated parameter, the order an update computes them in (Adam's moments before the
    step they scale)."""
    split = [(int(n.split(".")[1]), n.split(".")[2]) for n in order]
    keys: list[Key] = [("grad", l, p, None) for l, p in split]
    keys += [("state", l, p, b) for l, p in split for b in state_names]
    keys += [("param", l, p, None) for l, p in split]
    return keys


def active_state(names, state: Mapping[str, Mapping]) -> tuple[str, ...]:
    """The buffers an optimizer keeps with its settings (SGD without momentum keeps none), in
    its declared order, from its state after a step."""
    kept = set().union(*(set(s) for s in state.values())) if state else set()
    return tuple(b for b in names if b in kept)


def backward_order(desc: scratch.MLP) -> list[str]:
    """Parameter names last layer first, weight before bias: backward's order, where the first
    failing layer is the one the error entered."""
    return [
        f"layers.{l}.{p}"
        for l in range(len(desc.layers) - 1, -1, -1)
        for p in (("weight", "bias") if desc.bias else ("weight",))
    ]


def _state_values(state: Mapping[str, Mapping[str, np.ndarray]], order, names) -> list:
    return [np.asarray(state[n][b]) for n in order for b in names]


class MLPSide:
    """The built-in `scratch.MLP`: every capability."""

    staged = True
    rerunnable = False
    recovered = False

    def __init__(self, net: scratch.MLP, loss: scratch.Loss, opt, lr: float):
        self.net, self.desc, self.loss, self.opt, self.lr = net, net, loss, opt, lr
        self.dtype = net.dtype
        self.order = backward_order(net)
        self.state_names: tuple[str, ...] = ()
        self.stateful = False
        self.keys: list[Key] = []  # known after the first step, when the optimizer's state is
        self.flat_before = np.empty_like(net.flat_params)
        # views into the flat gradient and parameter buffers: stable across steps
        self.grad_views = [net.grads[k] for k in self.order]
        self.param_views = [net.params[k] for k in self.order]

    @property
    def params_before(self) -> dict[str, np.ndarray]:
        return self.net._views(self.flat_before)

    def get_params(self) -> dict[str, np.ndarray]:
        return self.net.params

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        for name, p in self.net.params.items():
            np.copyto(p, params[name])

    def step(self, X: np.ndarray, Y: np.ndarray, batch: Any = None) -> list:
        net = self.net
        self.X, self.Y = X, Y
        out, self.cache = net.forward(X)
        self.loss_value, self.lcache = self.loss.forward(out, Y)
        net.backward(self.loss.backward(self.lcache), self.cache)
        np.copyto(self.flat_before, net.flat_params)
        if self.stateful or not self.keys:  # for the explanation's update stage
            self.state_before = self.opt.state_dict()
        self.opt.step()
        if not self.keys:
            self._set_keys()
        vals = self.forward_values(self.cache, out, self.loss_value) + self.grad_views
        if self.stateful:
            vals += _state_values(self.opt.state, self.order, self.state_names)
        return vals + self.param_views

    def _set_keys(self) -> None:
        state = getattr(self.opt, "state", {})
        self.state_names = active_state(getattr(self.opt, "state_names", ()), state)
        self.stateful = bool(self.state_names)
        L = len(self.net.layers)
        every = set(range(L))
        self.keys = forward_keys(L, z=every, a=every, prob=True, loss=True) + update_keys(
            self.order, self.state_names
        )

    def forward_values(self, cache: list, out, loss_value: float) -> list:
        """The forward quantities in key order: z and hidden a per layer, prob, loss."""
        vals: list = []
        for l, (_, z, a) in enumerate(cache):
            vals.append(z)
            if l < len(cache) - 1:
                vals.append(a)
        vals.append(self.loss.probabilities(out))
        vals.append(np.asarray(loss_value, self.dtype))
        return vals

    def oracle(self) -> tuple[scratch.MLP, dict[str, np.ndarray], list]:
        """The network, the parameters the step started from, and its forward cache."""
        return self.net, self.params_before, self.cache


class UserSide:
    """A user's own network through `adapt`: the capabilities its style affords."""

    staged = False
    rerunnable = True

    def __init__(self, net: UserNetwork, opt_factory, lr: float, X_user, y_user):
        assert net.pmap is not None
        self.net, self.loss, self.lr = net, net.loss, lr
        self.dtype = net.dtype
        self.desc = net.description()
        self.order = backward_order(self.desc)
        # The user's code gets arrays of its own, never the ones torch reads or the caller's:
        # code that writes into its input would otherwise change torch's data too. What it
        # was given is checked after every step (`_check_inputs`).
        self.X_user, self.y_user = np.array(X_user), np.array(y_user)
        self._X_given, self._y_given = self.X_user.copy(), self.y_user.copy()
        # nn-parity applies the update to a canonical copy it writes back; the user's own
        # update or fused step updates their arrays, and the copy is read back. Either way
        # torch's optimizer is built from the one description, `opt_desc`.
        self.canon = net.get_params()
        self.opt_desc = opt_factory({k: v.copy() for k, v in self.canon.items()})
        self.opt = opt_factory(self.canon) if net.form == "grads" and net.update is None else None
        # (before - after) / lr is the gradient only for plain SGD; a fused Adam step's update
        # implies no gradient, and only the parameters are compared
        hyper = self.opt_desc.hyper
        plain = type(self.opt_desc) is scratch.SGD and not (
            hyper.get("momentum") or hyper.get("weight_decay")
        )
        self.recovered = net.form == "step" and plain
        self.grads_seen = net.form == "grads" or self.recovered
        # An update of the user's own with state (their momentum, their Adam) keeps that state
        # where nn-parity cannot set it: rerunning the step would advance it. Such a step is
        # never rerun; a mismatch in it is reported as it stands.
        users_update = net.form == "step" or net.update is not None
        self.rerunnable = not (users_update and not plain)
        self.state_names: tuple[str, ...] = ()
        self.stateful = False
        self.keys: list[Key] = []
        self.before: dict[str, np.ndarray] = {}
        self.cache_names: dict[tuple[str, int], str] = {}

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
        self.X, self.Y = X, Y
        Xu = self.X_user if rows is None else self.X_user[rows]
        yu = self.y_user if rows is None else self.y_user[rows]
        self.before = self.net.get_params()
        vals = self._step(X, Y, Xu, yu)
        _check_inputs(self.net, (Xu, yu), (self._X_given, self._y_given), rows)
        return vals

    def _step(self, X, Y, Xu, yu) -> list:
        net, lr = self.net, self.lr
        forward: list = []
        z: dict[int, np.ndarray] = {}
        a: dict[int, np.ndarray] = {}
        prob = None
        if net.forward is not None:
            out, cache = net.call_forward(Xu)
            z, a, self.cache_names = _layer_cache(cache, len(X), self.desc.sizes)
            prob = np.asarray(self.loss.probabilities(out.astype(self.dtype, copy=False)))
        loss_value = net.call_loss(Xu, yu) if net.loss_fn is not None else None
        if net.form == "grads":
            returned, grads = net.call_grads(Xu, yu)
            loss_value = returned if loss_value is None else loss_value
            if net.update is not None:
                net.run("update", net.last_raw_grads, lr)
                after = net.get_params()
            else:
                assert self.opt is not None
                _check_unchanged(net, self.canon)
                self.opt.step({k: np.ascontiguousarray(g, self.dtype) for k, g in grads.items()})
                net.set_params(self.canon)
                after = self.canon
        else:
            returned = net.run("fn", Xu, yu, lr)
            if loss_value is None and is_scalar(returned):  # a fused step's own loss
                loss_value = float(returned)
            after = net.get_params()
            grads = {k: (self.before[k] - after[k]) / lr for k in self.before}
        if net.form == "step" or net.update is not None:
            _check_changed(net, self.before, after)
        self.loss_value = math.nan if loss_value is None else loss_value
        if not self.keys and self.opt is not None:
            self.state_names = active_state(self.opt.state_names, self.opt.state)
            self.stateful = bool(self.state_names)
        if not self.keys:
            self.keys = forward_keys(
                len(self.desc.layers),
                z=set(z),
                a=set(a),
                prob=net.forward is not None,
                loss=loss_value is not None,
            ) + [k for k in update_keys(self.order, self.state_names)
                 if k[0] != "grad" or self.grads_seen]  # fmt: skip
        for q, l, _, _ in self.keys[: self._n_forward()]:
            if q == "z":
                forward.append(z[l])
            elif q == "a":
                forward.append(a[l])
            elif q == "prob":
                forward.append(prob)
            else:
                forward.append(np.asarray(loss_value, self.dtype))
        vals = forward
        if self.grads_seen:
            vals = vals + [np.asarray(grads[k], self.dtype) for k in self.order]
        if self.stateful:
            assert self.opt is not None
            vals += _state_values(self.opt.state_dict(), self.order, self.state_names)
        vals += [np.asarray(after[k]) for k in self.order]
        self.after = {k: np.array(after[k]) for k in self.order}
        return vals

    def _n_forward(self) -> int:
        return sum(1 for k in self.keys if k[0] in ("z", "a", "prob", "loss"))

    def recovery_slack(self) -> dict[str, float]:
        """Per parameter, how far (before - after) / lr can sit from the gradient the update
        used: the update's own rounding, about eps (|after| + |lr g|), divided by lr; twice
        that for the subtraction and the division. Zero where gradients are returned."""
        if not self.recovered:
            return {}
        eps = float(np.finfo(self.dtype).eps)
        return {
            k: 4 * eps * float(np.max(np.abs(self.before[k]) + np.abs(self.after[k]))) / self.lr
            for k in self.order
        }

    def oracle(self) -> tuple[scratch.MLP, dict[str, np.ndarray], list]:
        """The description (the network the user's claims to compute) at the parameters the
        step started from, and its forward cache."""
        self.desc.load_state_dict(self.before)
        _, cache = self.desc.forward(self.X)
        return self.desc, self.before, cache

    def rerun(self, params: Mapping[str, np.ndarray], X, Y, rows, state=None) -> list:
        """The step again, from `params` (and optimizer `state`), without keeping its result."""
        self.set_params(params)
        if self.opt is not None and state is not None:
            self.opt.load_state_dict(state)
        return [np.array(v) for v in self.step(X, Y, rows)]


def _check_inputs(net: UserNetwork, given: tuple, pristine: tuple, rows) -> None:
    """The X and y handed to the user's code, as they were handed over: code that writes into
    its input trains on other data than it was given, which is a finding of its own."""
    for name, now, then in zip(("X", "y"), given, pristine):
        then = then if rows is None else then[rows]
        same = (now == then) | ((now != now) & (then != then))  # NaN where NaN was
        if not same.all():
            m = int(np.argmin(same.ravel()))
            at = [int(i) for i in np.unravel_index(m, now.shape)]
            yours = ", ".join(dict.fromkeys(n for n in net.names.values() if n))
            raise UserCodeError(
                f"your code ({yours}) modified {name} in place: {name}{at} was "
                f"{then.ravel()[m].item()!r}, now {now.ravel()[m].item()!r}; work on a copy "
                f"({name} = {name}.copy()) or out of place ({name} = {name} - ..., not -=)"
            )


def _check_changed(net: UserNetwork, before: Mapping, after: Mapping) -> None:
    """A step that leaves every parameter as it was has updated a copy, or nothing."""
    if all(np.array_equal(before[k], after[k]) for k in before):
        fn = net.names["fn"] if net.form == "step" else net.names["update"]
        raise UserCodeError(
            f"{fn} changed no parameter: it must update them in place (W -= lr * dW) or "
            "rebind them where nn-parity reads them (the dict, the attributes, the lists)"
        )


def _check_unchanged(net: UserNetwork, params: Mapping[str, np.ndarray]) -> None:
    """A function that returns gradients must leave the parameters as it found them; one that
    also updates them would be applied twice in the user's own loop."""
    for s in net.pmap.slots if net.pmap else ():
        if not np.array_equal(s.to_canonical(net.access.get(s.user)), params[s.canonical]):
            raise UserCodeError(
                f"{net.names['fn']} changed parameter {s.user!r}: a function that returns "
                "gradients must leave the parameters alone (give the update as update= or "
                "the whole step as step=)"
            )


def _layer_cache(cache: Mapping, n: int, sizes: list[int]) -> tuple[dict, dict, dict]:
    """z and a per layer from the user's cache names: z1, a1, z_2, Z3, ... (1-based when no 0
    appears). Column-per-sample arrays (H, N) are turned to (N, H)."""
    import re

    found: dict[str, dict[int, np.ndarray]] = {"z": {}, "a": {}}
    keys: dict[tuple[str, int], str] = {}
    for key, value in cache.items():
        m = re.fullmatch(r"([zZaA])_?(\d+)", str(key))
        if m and isinstance(value, np.ndarray):
            found[m.group(1).lower()][int(m.group(2))] = value
            keys[(m.group(1).lower(), int(m.group(2)))] = str(key)
    base = 0 if 0 in found["z"] or 0 in found["a"] else 1
    out: dict[str, dict[int, np.ndarray]] = {"z": {}, "a": {}}
    names: dict[tuple[str, int], str] = {}
    for q, by in found.items():
        for i, v in by.items():
            l = i - base
            if not 0 <= l < len(sizes) - 1:
                continue
            h = sizes[l + 1]
            if v.shape == (n, h):
                out[q][l] = v
            elif v.shape == (h, n):
                out[q][l] = v.T
            else:
                continue
            names[(q, l)] = keys[(q, i)]
    return out["z"], out["a"], names


def _dtype_of(by_name: dict):
    return next(iter(by_name.values())).detach().numpy().dtype


class TorchSide:
    """The torch side: an `nn.Module` whose Linear layers map one to one onto the canonical
    parameters, its loss, and the torch.optim optimizer built from the scratch one's
    description. `TorchMLP` reports z and a from its own forward; any other module through
    forward hooks on its Linear layers."""

    def __init__(self, ref: torch.nn.Module, by_name: dict, loss: scratch.Loss, opt_desc, order):
        self.ref, self.by_name, self.order = ref, by_name, order
        self.loss = loss
        self.loss_fn = torch_loss(loss, dtype=_dtype_of(by_name))
        self.opt_names = list(opt_desc.params)  # the torch optimizer's parameter order
        self.opt = torch_optimizer(opt_desc, {k: by_name[k] for k in self.opt_names})
        self.declared_state = tuple(getattr(opt_desc, "state_names", ()))
        self.state_views: list[np.ndarray] = []
        self.state_buffers: list[str] = []
        self.state_keep: list[np.ndarray] = []
        self.state_names: tuple[str, ...] = ()
        self.params = [by_name[k] for k in order]
        # updated in place by the optimiser: views made once serve every step
        self.param_views = [by_name[k].detach().numpy() for k in order]
        self.params_before = [v.copy() for v in self.param_views]
        self.linears = [m for m in ref.modules() if isinstance(m, torch.nn.Linear)]
        self.hooked = not hasattr(ref, "forward_cache")
        self.keys: list[Key] = []  # known after the first step, when the optimizer's state is
        self.stepped = 0
        if self.hooked:
            self._z: list = [None] * len(self.linears)
            self._x: list = [None] * len(self.linears)
            for l, lin in enumerate(self.linears):
                lin.register_forward_hook(self._hook(l))

    def _hook(self, l: int):
        def record(module, inputs, output):
            self._x[l], self._z[l] = inputs[0], output

        return record

    def forward_cache(self, X: torch.Tensor) -> tuple[torch.Tensor, list]:
        if not self.hooked:
            return self.ref.forward_cache(X)  # type: ignore[operator]
        out = self.ref(X)
        a = [*self._x[1:], out]
        return out, list(zip(self._z, a))

    def step(self, Xt: torch.Tensor, Yt: torch.Tensor) -> list:
        # What opt.zero_grad() does, without its profiler scaffolding: on a small net that
        # costs more than the rest of the comparison.
        for p in self.params:
            p.grad = None
        self.stepped += 1
        out, self.cache = self.forward_cache(Xt)
        try:
            loss = self.loss_fn(out, Yt)
        except RuntimeError:
            if bool(torch.isfinite(out).all()):
                raise
            # BCELoss refuses NaN input; the lockstep reports where the NaN came from
            loss = torch.tensor(math.nan, dtype=out.dtype)
            for p in self.params:
                p.grad = torch.zeros_like(p)
        else:
            loss.backward()
            for keep, now in zip(self.params_before, self.param_views):
                np.copyto(keep, now)
            # for the update stage of an explanation: the state as this step found it
            for keep, now in zip(self.state_keep, self.state_views):
                np.copyto(keep, now)
            self.opt.step()
        if not self.keys:
            self.state_names = active_state(self.declared_state, self.state())
            L = len(self.linears)
            every = set(range(L))
            self.keys = forward_keys(L, z=every, a=every, prob=True, loss=True) + update_keys(
                self.order, self.state_names
            )
            self._view_state()
        last = len(self.cache) - 1
        vals: list = []
        for l, (z, a) in enumerate(self.cache):
            vals.append(z.detach().numpy())
            if l < last:
                vals.append(a.detach().numpy())
        out = out.detach()
        vals.append(torch_probabilities(self.loss, out).numpy())
        vals.append(loss.detach().numpy())
        self.loss_value = float(vals[-1])
        vals.extend(self.by_name[k].grad.numpy() for k in self.order)  # type: ignore[union-attr]
        if self.state_names:
            vals = vals + [np.asarray(v, np.float64) if b == "step" else v
                           for b, v in zip(self.state_buffers, self.state_views)]  # fmt: skip
        return vals + self.param_views

    def _view_state(self) -> None:
        """NumPy views of torch's state tensors, which its optimizers update in place: made
        once, they serve every later step (like the parameters'), and `state_keep` holds their
        values as each step found them. `state_before` reads that as a dict."""
        self.state_views, self.state_buffers = [], []
        for k in self.order:
            state = self.opt.state[self.by_name[k]]
            for b in self.state_names:
                self.state_views.append(state[b].detach().numpy())
                self.state_buffers.append(b)
        self.state_keep = [v.copy() for v in self.state_views]

    def state_before(self) -> dict[str, dict[str, np.ndarray]]:
        """The optimizer state as the last step found it ({} per parameter before its first
        step, which is when torch creates it), in `torch_state`'s layout."""
        if self.stepped == 1:  # the first step: torch had no state yet
            return {k: {} for k in self.order}
        out: dict[str, dict[str, np.ndarray]] = {k: {} for k in self.order}
        it = iter(zip(self.state_buffers, self.state_keep))
        for k in self.order:
            for _ in self.state_names:
                b, v = next(it)
                out[k][b] = np.asarray(v, np.float64) if b == "step" else v.copy()
        return out

    def state(self) -> dict[str, dict[str, np.ndarray]]:
        return torch_state(self.opt, self.opt_names)

    def params_now(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy() for k, v in self.by_name.items()}
