"""The built-in `scratch.MLP` as a lockstep side: every capability."""

from __future__ import annotations

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


def add_penalty(loss: scratch.Loss, params: Mapping[str, np.ndarray], grads) -> float:
    """The declared L2 term at `params` (scratch's `penalty`, docs/conventions.md): its gradient
    added in place to `grads` (by the same names), its value returned; 0.0 when none is
    declared. The one place a scratch side adds it (the built-in MLP, a layered network)."""
    value, terms = loss.penalty(params)
    for name, g in terms.items():
        grads[name] += g
    return value


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
        self.scheduled = False  # the optimizer has a schedule: its rate is compared per step
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
        self.loss_value += self.penalize(net.params)
        np.copyto(self.flat_before, net.flat_params)
        if self.stateful or not self.keys:  # for the explanation's update stage
            self.state_before = self.opt.state_dict()
        if self.keys:  # torch's scheduler.step() after the last step, before this one: the
            self.opt.schedule_step()  # rate stays the step's own for an explanation's rerun
        self.opt.step()
        if not self.keys:
            self._set_keys()
        vals = self.forward_values(self.cache, out, self.loss_value) + self.grad_views
        if self.scheduled:
            vals.append(np.asarray(self.opt.lr, self.dtype))
        if self.stateful:
            vals += _state_values(self.opt.state, self.order, self.state_names)
        return vals + self.param_views

    def penalize(self, params: Mapping[str, np.ndarray]) -> float:
        """The declared L2 term at `params` (docs/conventions.md): its gradient added to the
        network's, its value returned; 0.0 when none is declared."""
        return add_penalty(self.loss, params, self.net.grads)

    def _set_keys(self) -> None:
        state = getattr(self.opt, "state", {})
        self.state_names = active_state(getattr(self.opt, "state_names", ()), state)
        self.stateful = bool(self.state_names)
        self.scheduled = getattr(self.opt, "schedule", None) is not None
        L = len(self.net.layers)
        every = set(range(L))
        self.keys = forward_keys(L, z=every, a=every, prob=True, loss=True) + update_keys(
            self.order, self.state_names, lr=self.scheduled
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

    def recovery_slack(self) -> dict[str, float]:
        """Nothing to allow for: the built-in network returns its gradients."""
        return {}

    def oracle(self) -> tuple[scratch.MLP, dict[str, np.ndarray], list]:
        """The network, the parameters the step started from, and its forward cache."""
        return self.net, self.params_before, self.cache
