"""The torch side of a lockstep: an `nn.Module`, its loss and its torch.optim optimizer."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.torch_ref.engine.side import Key, active_state, forward_keys, update_keys
from nn_parity.torch_ref.mirror.model import torch_loss, torch_probabilities
from nn_parity.torch_ref.mirror.optim import torch_optimizer, torch_scheduler, torch_state


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
        self.loss_fn = torch_loss(loss, dtype=_dtype_of(by_name), params=by_name)
        self.opt_names = list(opt_desc.params)  # the torch optimizer's parameter order
        self.opt = torch_optimizer(opt_desc, {k: by_name[k] for k in self.opt_names})
        self.scheduler = torch_scheduler(opt_desc, self.opt)  # stepped after each opt.step()
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
        self.masks: dict[int, torch.Tensor] = {}  # this step's dropout masks, by layer
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
            if self.masks:
                return self.ref.forward_cache(X, masks=self.masks)  # type: ignore[operator]
            return self.ref.forward_cache(X)  # type: ignore[operator]
        out = self.ref(X)
        a = [*self._x[1:], out]
        return out, list(zip(self._z, a))

    def use_masks(self, masks: dict[int, np.ndarray]) -> None:
        """The dropout masks the user's forward drew for the coming step, by layer."""
        self.masks = {l: torch.from_numpy(np.ascontiguousarray(m)) for l, m in masks.items()}

    def step(self, Xt: torch.Tensor, Yt: torch.Tensor) -> list:
        # What opt.zero_grad() does, without its profiler scaffolding: on a small net that
        # costs more than the rest of the comparison.
        for p in self.params:
            p.grad = None
        self.stepped += 1
        lr = self.opt.param_groups[0]["lr"]  # this step's rate, as the scheduler set it
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
        if self.scheduler is not None:
            with warnings.catch_warnings():  # after a NaN loss torch's optimizer did not step
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        if not self.keys:
            self.state_names = active_state(self.declared_state, self.state())
            L = len(self.linears)
            every = set(range(L))
            self.keys = forward_keys(L, z=every, a=every, prob=True, loss=True) + update_keys(
                self.order, self.state_names, lr=self.scheduler is not None
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
        if self.scheduler is not None:
            vals.append(np.asarray(lr, vals[-1].dtype))
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
