"""The torch side of an optimiser: torch.optim built from the scratch optimiser's description,
and torch's state read and written in scratch's layout.

    torch_optimizer(opt, torch_params)       torch.optim.<opt.torch_name>(..., **opt.hyper), with
                                             a parameter group per parameter when their
                                             settings differ (`opt.settings()`)
    torch_scheduler(opt, torch_opt)          torch.optim.lr_scheduler for `opt.schedule`, or None
    torch_state(torch_opt, names)            {name: {buffer: ndarray}}, step as a 0-d float64
    set_torch_state(torch_opt, names, st)    the reverse, for a resync from scratch's state

`names` lists the parameter names in the order the torch optimiser holds its parameters (the
order of `torch_params` given to `torch_optimizer`, which is the order of `opt.params`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from nn_parity.scratch.optim import Optimizer
from nn_parity.torch_ref.mirror.weights import check_fit

__all__ = ["set_torch_state", "torch_optimizer", "torch_scheduler", "torch_state"]


def torch_optimizer(
    opt: Optimizer, torch_params: Mapping[str, torch.nn.Parameter], *, foreach: bool = False
) -> torch.optim.Optimizer:
    """torch's optimiser with the scratch optimiser's hyper-parameters, over the same names.

    foreach=False selects torch's single-tensor loop, the one the scratch side follows
    operation by operation (and torch's default for CPU tensors).
    """
    if not isinstance(opt, Optimizer):
        raise TypeError(f"opt must be a scratch optimiser, got {type(opt).__name__}")
    check_fit(opt.params, torch_params, dtypes=False)
    cls = getattr(torch.optim, opt.torch_name)
    if not opt.overrides:
        return cls([torch_params[name] for name in opt.params], **opt.hyper, foreach=foreach)
    # one group per parameter, in the parameters' order (which `torch_state` reads them in)
    groups = [
        {"params": [torch_params[name]], **settings} for name, settings in opt.settings().items()
    ]
    return cls(groups, **opt.hyper, foreach=foreach)


def torch_scheduler(opt: Optimizer, torch_opt: torch.optim.Optimizer):
    """torch's lr_scheduler for the scratch optimizer's schedule, or None without one. Made
    now, it sets the first step's rate (LambdaLR: base * fn(0)); step it after each
    `torch_opt.step()`."""
    sched = opt.schedule
    if sched is None:
        return None
    L = torch.optim.lr_scheduler
    if sched.name == "step":
        return L.StepLR(torch_opt, step_size=sched.step_size, gamma=sched.gamma)
    if sched.name == "exponential":
        return L.ExponentialLR(torch_opt, gamma=sched.gamma)
    if sched.name == "inverse_time":
        decay = sched.decay
        return L.LambdaLR(torch_opt, lambda t: 1 / (1 + decay * t))
    return L.LambdaLR(torch_opt, sched.fn)


def _params(torch_opt: torch.optim.Optimizer, names) -> dict[str, torch.Tensor]:
    params = [p for group in torch_opt.param_groups for p in group["params"]]
    names = list(names)
    if len(names) != len(params):
        raise ValueError(f"{len(names)} names for the torch optimiser's {len(params)} parameters")
    return dict(zip(names, params, strict=True))


def torch_state(torch_opt: torch.optim.Optimizer, names) -> dict[str, dict[str, np.ndarray]]:
    """Copies of torch's optimiser state by parameter name and buffer name, as NumPy arrays.

    `step` becomes a 0-d float64 array (torch keeps a 0-d float tensor of its default dtype;
    a count below 2^24 is exact in either). A parameter torch has not stepped has {}.
    """
    out = {}
    for name, p in _params(torch_opt, names).items():
        state = torch_opt.state.get(p, {})
        out[name] = {
            b: (np.array(float(v), np.float64) if b == "step" else v.detach().cpu().numpy().copy())
            for b, v in state.items()
            if v is not None
        }
    return out


def _step_dtype() -> torch.dtype:
    # torch.optim.optimizer._get_scalar_dtype, for a step made outside torch's first step
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


@torch.no_grad()
def set_torch_state(
    torch_opt: torch.optim.Optimizer, names, state: Mapping[str, Mapping[str, np.ndarray]]
) -> None:
    """Write scratch-layout state into torch's optimiser (into its tensors where they exist).

    A parameter given {} loses its torch state, so its next step is a first step again.
    """
    params = _params(torch_opt, names)
    missing = [k for k in params if k not in state]
    extra = [k for k in state if k not in params]
    if missing or extra:
        raise ValueError(
            f"optimiser state does not fit the parameters: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}"
        )
    for name, p in params.items():
        for b, value in state[name].items():
            shape = () if b == "step" else tuple(p.shape)
            if np.shape(value) != shape:
                raise ValueError(f"{b} of {name!r}: expected shape {shape}, got {np.shape(value)}")
        if not state[name] and isinstance(torch_opt, torch.optim.Adagrad):
            raise ValueError(
                f"Adagrad's state of {name!r} cannot be emptied: torch makes it at construction "
                "and never again; give step and sum"
            )
    for name, p in params.items():
        old = torch_opt.state.get(p, {})
        new = {}
        for b, value in state[name].items():
            if b == "step":
                # torch's own dtype for the count (float32 unless the default dtype is float64)
                dtype = old["step"].dtype if "step" in old else _step_dtype()
                new[b] = torch.tensor(float(value), dtype=dtype)
            elif b in old and old[b] is not None:
                old[b].copy_(torch.as_tensor(np.asarray(value)))
                new[b] = old[b]
            else:
                new[b] = torch.tensor(np.asarray(value), dtype=p.dtype)
        if new:
            torch_opt.state[p] = new
        else:
            torch_opt.state.pop(p, None)
