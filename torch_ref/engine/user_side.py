"""A user's own network as a lockstep side: the capabilities its style affords."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from nn_parity import scratch
from nn_parity.torch_ref.engine.side import (
    Key,
    _state_values,
    active_state,
    backward_order,
    forward_keys,
    update_keys,
)
from nn_parity.torch_ref.user.access import is_scalar
from nn_parity.torch_ref.user.network import UserCodeError, UserNetwork


class UserSide:
    """A user's own network through `adapt`: the capabilities its style affords."""

    staged = False
    rerunnable = True

    def __init__(self, net: UserNetwork, opt_factory, lr: float, X_user, y_user):
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
        # with a schedule the rate changes per step: parameters compared, not (before - after) / lr
        plain = type(self.opt_desc) is scratch.SGD and not (
            hyper.get("momentum") or hyper.get("weight_decay") or self.opt_desc.schedule
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
        # nn-parity's update with a schedule: its rate is compared per step (the user's own
        # update keeps its rate to itself, and is seen through the parameters it moves)
        self.scheduled = self.opt is not None and self.opt.schedule is not None
        self.t = 0  # steps taken: the schedule's step
        self.keys: list[Key] = []
        self.before: dict[str, np.ndarray] = {}
        self.cache_names: dict[tuple[str, int], str] = {}
        # dropout of the user's own: the masks their forward drew this step, by layer, for
        # torch to apply. A rerun would draw new ones, so such a step is never rerun.
        self.masks: dict[int, np.ndarray] = {}
        if net.dropout:
            self.rerunnable = False

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
        self.t += 1
        return vals

    def _step(self, X, Y, Xu, yu) -> list:
        net = self.net
        z: dict[int, np.ndarray] = {}
        a: dict[int, np.ndarray] = {}
        prob = None
        if net.forward is not None:
            out, cache = net.call_forward(Xu)
            z, a, self.cache_names = _layer_cache(cache, len(X), self.desc.sizes)
            if net.dropout:
                self.masks = _dropout_masks(net, cache, len(X), self.desc.sizes, self.dtype)
            prob = np.asarray(self.loss.probabilities(out.astype(self.dtype, copy=False)))
        loss_value = net.call_loss(Xu, yu) if net.loss_fn is not None else None
        returned, grads, after = self._update(Xu, yu)
        if loss_value is None:
            loss_value = returned
        if net.form == "step" or net.update is not None:
            _check_changed(net, self.before, after)
        self.loss_value = math.nan if loss_value is None else loss_value
        if not self.keys:
            self._set_keys(z, a, loss_value is not None)
        forward = {"z": z, "a": a}
        vals: list = []
        for q, l, _, _ in self.keys[: self._n_forward()]:
            if q in forward:
                vals.append(forward[q][l])
            else:
                vals.append(prob if q == "prob" else np.asarray(loss_value, self.dtype))
        if self.grads_seen:
            vals += [np.asarray(grads[k], self.dtype) for k in self.order]
        if self.scheduled:
            assert self.opt is not None
            vals.append(np.asarray(self.opt.lr, self.dtype))
        if self.stateful:  # nn-parity's optimizer's state, or the user's own, by path
            state = self.opt.state_dict() if self.opt is not None else None
            state = state or net.get_state(self.state_names)
            vals += _state_values(state, self.order, self.state_names)
        vals += [np.asarray(after[k]) for k in self.order]
        self.after = {k: np.array(after[k]) for k in self.order}
        return vals

    def _update(self, Xu, yu) -> tuple[float | None, dict, dict]:
        """The user's gradients and update (or their fused step): (the loss their code
        returned, the gradients, the parameters after the step)."""
        net, lr = self.net, self.lr
        if net.form == "grads":
            returned, grads = net.call_grads(Xu, yu)
            if net.update is not None:
                net.run("update", net.last_raw_grads, lr)
                return returned, grads, net.get_params()
            assert self.opt is not None
            _check_unchanged(net, self.canon)
            self.opt.schedule_to(self.t)
            if self.stateful or not self.keys:  # the state the step started from: the
                self.state_before = self.opt.state_dict()  # re-check repeats the step from it
            self.opt.step({k: np.ascontiguousarray(g, self.dtype) for k, g in grads.items()})
            net.set_params(self.canon)
            return returned, grads, self.canon
        got = net.run("fn", Xu, yu, lr)
        after = net.get_params()
        grads = {k: (self.before[k] - after[k]) / lr for k in self.before}
        return (float(got) if is_scalar(got) else None), grads, after  # a fused step's loss

    def _set_keys(self, z: dict, a: dict, loss: bool) -> None:
        """What this style reports, known from the first step."""
        if self.opt is not None:
            self.state_names = active_state(self.opt.state_names, self.opt.state)
            self.stateful = bool(self.state_names)
        elif self.net.state_paths:  # the user's own optimizer, its state named in `adapt`
            declared = self.opt_desc.state_names
            self.state_names = tuple(b for b in declared if b in self.net.state_paths)
            self.stateful = bool(self.state_names)
        self.keys = forward_keys(
            len(self.desc.layers), z=set(z), a=set(a), prob=self.net.forward is not None,
            loss=loss,
        ) + [k for k in update_keys(self.order, self.state_names, lr=self.scheduled)
             if k[0] != "grad" or self.grads_seen]  # fmt: skip

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
        self.t -= 1  # the same step again: the same rate
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
    base = _base(cache)
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


def _base(cache: Mapping) -> int:
    """0 when the cache names a layer 0 (z0, a_0), else 1: the user's layers' first index."""
    import re

    return 0 if any(re.fullmatch(r"[zZaA]_?0", str(k)) for k in cache) else 1


def _dropout_masks(net: UserNetwork, cache: Mapping, n: int, sizes: list[int], dtype) -> dict:
    """The masks the user's forward drew this step, by layer index, as (N, H) arrays in the
    network's dtype: `dropout={"a1": "mask1"}` names the activation and the cache entry."""
    import re

    fname, hidden = net.names["forward"], len(sizes) - 2
    out = {}
    for act, name in net.dropout.items():
        m = re.fullmatch(r"[aA]_?(\d+)", act)
        assert m is not None  # checked by adapt
        l = int(m.group(1)) - _base(cache)
        if not 0 <= l < hidden:
            raise ValueError(
                f"dropout names {act!r}, which is not a hidden layer's activation: this "
                f"{'-'.join(map(str, sizes))} network has {hidden} hidden layer(s), "
                "and torch applies a mask after a hidden layer only"
            )
        if name not in cache:
            raise UserCodeError(
                f"{fname} returned no {name!r} in its cache, the mask dropout= names for "
                f"{act!r} (cache keys: {', '.join(map(str, cache)) or 'none'})"
            )
        mask, h = np.asarray(cache[name]), sizes[l + 1]
        if mask.shape not in ((n, h), (h, n)):
            raise UserCodeError(
                f"{fname} returned {name!r} of shape {mask.shape}; the mask on {act!r} must "
                f"be ({n}, {h}) (or ({h}, {n}), a column per sample) for {n} samples and {h} "
                "units"
            )
        out[l] = np.array(mask if mask.shape == (n, h) else mask.T, dtype=dtype)
    return out
