"""Optimisers with state, written to torch.optim's definitions (torch 2.13, single-tensor path).

For each parameter theta with gradient g (all element-wise; lr, the betas, eps, ... are scalars):

    SGD       g <- g + wd theta                                   (L2, into the gradient)
              b <- g at the first step, else  mu b + (1 - dampening) g
              d <- g + mu b  (nesterov)  or  b                    (d = g without momentum)
              theta <- theta - lr d

    Adam      t <- t + 1;  g <- g + wd theta                      (L2, Adam only)
    AdamW     theta <- theta (1 - lr wd)                          (decoupled, AdamW only)
              m <- m + (1 - beta1)(g - m)                         (lerp, = beta1 m + (1-beta1) g)
              v <- beta2 v + (1 - beta2) g^2
              vmax <- max(vmax, v)    and use vmax for v below    (amsgrad)
              theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    RMSprop   t <- t + 1;  g <- g + wd theta
              s <- alpha s + (1 - alpha) g^2
              a <- a + (1 - alpha)(g - a);  r <- sqrt(s - a^2)    (centered)
                                            r <- sqrt(s)          (otherwise)
              b <- mu b + g / (r + eps);  theta <- theta - lr b   (momentum > 0; b starts at 0)
              theta <- theta - lr g / (r + eps)                   (otherwise)

    Adagrad   t <- t + 1;  g <- g + wd theta
              S <- S + g^2                                        (S starts at init_acc)
              theta <- theta - lr / (1 + (t - 1) lr_decay) * g / (sqrt(S) + eps)

The NumPy code below follows torch's order of operations term by term (where torch multiplies
first and divides second, so does this), so the two sides differ only where torch's CPU kernels
round differently: they fuse multiply-adds (add with alpha, addcmul, lerp: one rounding where
NumPy has two) and their vectorised sqrt is not always correctly rounded. docs/optimizers.md
lists each difference, its size, and the tolerance derived from it.

The state of each parameter is a dict of arrays named as torch names them (`momentum_buffer`,
`exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`, `square_avg`, `grad_avg`, `sum`) and `step`, a 0-d
float64 array, as torch keeps its step count in a 0-d float tensor. A buffer exists from the
step at which torch creates it (the first step; Adagrad's at construction), so the two sides'
state dicts have the same keys at every point.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping

import numpy as np

from .network import MLP
from .validate import check_names

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSprop",
    "Schedule",
    "check_lr",
    "get_optimizer",
]


def check_lr(lr) -> float:
    """A learning rate must be a finite number > 0."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating, np.integer)):
        raise TypeError(f"learning rate must be a number, got {type(lr).__name__} {lr!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a finite number > 0, got {lr!r}")
    return float(lr)


def _number(name: str, value, lo: float, hi: float | None = None, *, hi_open=False) -> float:
    """`value` as a float in [lo, hi] (or [lo, hi) with hi_open); a one-line error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if not math.isfinite(v) or v < lo or above:
        span = f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number {span}, got {value!r}")
    return v


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _betas(value) -> tuple[float, float]:
    try:
        b1, b2 = value
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {value!r}") from None
    return _number("betas[0]", b1, 0.0, 1.0, hi_open=True), _number(
        "betas[1]", b2, 0.0, 1.0, hi_open=True
    )


def _check_params(params) -> dict[str, np.ndarray]:
    if isinstance(params, MLP):
        return params.params
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a scratch.MLP or a dict name -> ndarray, got {type(params).__name__}"
        )
    if not params:
        raise ValueError("params is empty: an optimiser needs at least one parameter")
    for name, p in params.items():
        if not isinstance(p, np.ndarray):
            raise TypeError(
                f"parameter {name!r} must be a NumPy array (it is updated in place), "
                f"got {type(p).__name__}"
            )
        if p.dtype not in (np.float32, np.float64):
            raise TypeError(f"parameter {name!r} must be float32 or float64, got {p.dtype}")
        if not p.flags.writeable:
            raise ValueError(f"parameter {name!r} is read-only; it must be updated in place")
    return dict(params)


class Optimizer:
    """What every optimiser shares: parameters, gradients, state by name, torch's keywords.

    params  a dict name -> ndarray, updated in place (views into a flat buffer are fine: the
            arrays are never rebound), or a `scratch.MLP` (then `net.params`, and `net.grads`
            when `step()` is called without gradients).
    """

    name = ""
    torch_name = ""
    state_names: tuple[str, ...] = ()
    schedule: Schedule | None = None  # the learning rate per step, as torch's lr_scheduler

    def __init__(self, params, lr: float):
        self.net = params if isinstance(params, MLP) else None
        self.params = _check_params(params)
        self.lr = self.base_lr = check_lr(lr)
        self.scheduled = 0  # schedule steps taken: torch's scheduler.last_epoch
        # per parameter, settings of its own (set by get_optimizer, never mutated here)
        self.overrides: dict[str, dict] = {}
        self.state: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.params}
        self._flat: dict[str, np.ndarray] = {}  # a network's state buffers, flat
        self._flat_views: dict[str, dict[str, np.ndarray]] = {}

    @property
    def hyper(self) -> dict:
        """torch.optim's keyword arguments for this optimiser: the one description of it."""
        raise NotImplementedError

    def step(self, grads: Mapping[str, np.ndarray] | None = None) -> None:
        """Update every parameter in place from `grads` (default: the network's gradients)."""
        if grads is None:
            if self.net is None:
                raise TypeError(
                    f"{type(self).__name__}.step() needs grads: the optimiser holds a dict of "
                    "arrays, not a network"
                )
            flat = self._flat_state()
            if flat is not None:
                self._flat_step(flat)
                return
            grads = self.net.grads
        else:
            self._check_grads(grads)
        for name, p in self.params.items():
            if name in self.overrides:
                with self._settings(self.overrides[name]):
                    self._update(p, grads[name], self.state[name])
            else:
                self._update(p, grads[name], self.state[name])

    # --- per-parameter settings and the learning-rate schedule ----------------------------

    @contextlib.contextmanager
    def _settings(self, over: Mapping):
        """One parameter's own settings (torch's parameter group), for its update only."""
        kept = {k: getattr(self, k) for k in over}
        for k, v in over.items():
            setattr(self, k, v)
        try:
            yield
        finally:
            for k, v in kept.items():
                setattr(self, k, v)

    def settings(self) -> dict[str, dict]:
        """Each parameter's torch keyword arguments: the shared ones with its own on top."""
        hyper = self.hyper
        return {name: {**hyper, **self.overrides.get(name, {})} for name in self.params}

    def schedule_step(self) -> float:
        """torch's `scheduler.step()` after an optimizer step: the next step's learning rate."""
        return self.schedule_to(self.scheduled + 1)

    def schedule_to(self, t: int) -> float:
        """The learning rate of step t (0 for the first step), set for the next `step()`."""
        if self.schedule is not None:
            self.scheduled = t
            self.lr = self.schedule.lr(self.base_lr, t)
        return self.lr

    # --- a network's parameters in one flat buffer: one update for all of them ---------------
    #
    # Every update is element-wise with scalars that depend on the step count only, so when
    # all parameters share a step count, updating the network's flat buffers at once gives the
    # same numbers, bit for bit, as the loop over parameters (a test checks it). The state then
    # lives in flat buffers too, and each parameter's state holds views into them.

    def _flat_state(self) -> dict[str, np.ndarray] | None:
        """The state as flat buffers, or None when the parameters' states have come apart."""
        if self.overrides:  # parameters with settings of their own: the loop, per parameter
            return None
        states = list(self.state.values())
        keys = set(states[0])
        if any(set(st) != keys for st in states):
            return None
        steps = {float(st["step"]) for st in states} if "step" in keys else set()
        if len(steps) > 1:
            return None
        buffers = sorted(keys - {"step"})
        views = self._flat_views
        if any(
            b not in views or st[b] is not views[b][n]
            for b in buffers
            for n, st in self.state.items()
        ):
            # first flat step, or arrays replaced since: gather them once into flat buffers
            flat = {b: np.concatenate([st[b].ravel() for st in states]) for b in buffers}
            self._adopt(flat)
        state = {b: self._flat[b] for b in buffers}
        if steps:
            state["step"] = np.array(steps.pop())
        return state

    def _flat_step(self, state: dict[str, np.ndarray]) -> None:
        net = self.net
        assert net is not None
        self._update(net.flat_params, net.flat_grads, state)
        self._adopt({b: v for b, v in state.items() if b != "step"})
        if "step" in state:
            for st in self.state.values():
                if "step" in st:
                    st["step"][...] = state["step"]
                else:
                    st["step"] = state["step"].copy()

    def _adopt(self, flat: dict[str, np.ndarray]) -> None:
        """Make each parameter's state views into the flat buffers `flat`."""
        net = self.net
        assert net is not None
        for b, buf in flat.items():
            if self._flat.get(b) is not buf:
                self._flat[b] = buf
                self._flat_views[b] = net._views(buf)
                for n, st in self.state.items():
                    st[b] = self._flat_views[b][n]

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _check_grads(self, grads) -> None:
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads must be a dict name -> ndarray, got {type(grads).__name__}")
        check_names(self.params, grads, what="grads do not fit the parameters")
        for name, p in self.params.items():
            g = grads[name]
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grad {name!r} must be a NumPy array, got {type(g).__name__}")
            if g.shape != p.shape:
                raise ValueError(f"grad {name!r}: expected shape {p.shape}, got {g.shape}")
            if g.dtype != p.dtype:
                # torch refuses a gradient of another dtype too; NumPy would silently mix
                raise TypeError(f"grad {name!r}: expected dtype {p.dtype}, got {g.dtype}")

    def _start(self, state: dict, p: np.ndarray, *buffers: str) -> None:
        """torch's lazy state: step 0 and zeroed buffers, made at a parameter's first step."""
        if not state:
            state["step"] = np.zeros((), np.float64)
            for b in buffers:
                state[b] = np.zeros_like(p)

    # --- state in and out -----------------------------------------------------------------

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """Copies of the state: {parameter name: {buffer name: array}}, torch's names."""
        return {n: {b: v.copy() for b, v in s.items()} for n, s in self.state.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Copy state in (into the existing arrays where they exist), refusing misfits by name.

        A parameter given an empty dict returns to its state before its first step.
        """
        missing = [k for k in self.params if k not in state]
        extra = [k for k in state if k not in self.params]
        if missing or extra:
            raise ValueError(
                f"optimiser state does not fit the parameters: missing {missing or 'none'}, "
                f"unexpected {extra or 'none'}"
            )
        for name, p in self.params.items():
            if not isinstance(state[name], Mapping):
                raise TypeError(
                    f"state of {name!r} must be a dict buffer name -> array, "
                    f"got {type(state[name]).__name__}"
                )
            unknown = [b for b in state[name] if b not in self.state_names]
            if unknown:
                raise ValueError(
                    f"{self.name} state of {name!r}: unknown buffer(s) {unknown}; "
                    f"expected {list(self.state_names)}"
                )
            for b, value in state[name].items():
                if not np.issubdtype(np.asarray(value).dtype, np.floating):
                    raise TypeError(
                        f"{b} of {name!r}: expected floating-point values, got {value!r}"
                    )
                shape = () if b == "step" else p.shape
                if np.shape(value) != shape:
                    raise ValueError(
                        f"{b} of {name!r}: expected shape {shape}, got {np.shape(value)}"
                    )
        for name, p in self.params.items():
            mine = self.state[name]
            new = {}
            for b, value in state[name].items():
                dtype = np.float64 if b == "step" else p.dtype
                if b in mine:
                    mine[b][...] = value
                    new[b] = mine[b]
                else:
                    new[b] = np.array(value, dtype=dtype)
            mine.clear()
            mine.update(new)

    def __repr__(self) -> str:
        hyper = self.hyper
        shown = {k: v for k, v in hyper.items() if k == "lr" or v != self._defaults().get(k)}
        return f"{self.torch_name}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def _defaults(cls) -> dict:
        sig = inspect.signature(cls.__init__)
        return {
            k: p.default
            for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty
        }


class SGD(Optimizer):
    """Stochastic gradient descent with torch's momentum, dampening, Nesterov and L2 decay.

    torch's first step sets the momentum buffer to the gradient itself (not to (1 - dampening)
    times it, and not to zero), and its Nesterov step is g + mu b on the new buffer. Sutskever's
    form keeps a velocity v <- mu v - lr g and steps theta <- theta + v: the same trajectory for
    a constant lr, but the buffer holds -lr times torch's.
    """

    name, torch_name = "sgd", "SGD"
    state_names = ("momentum_buffer",)

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        self.momentum = _number("momentum", momentum, 0.0)
        self.dampening = _number("dampening", dampening, 0.0, 1.0)
        self.nesterov = _flag("nesterov", nesterov)
        self.weight_decay = _number("weight_decay", weight_decay, 0.0)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                f"nesterov needs momentum > 0 and dampening 0 (torch's rule), got "
                f"momentum={momentum!r}, dampening={dampening!r}"
            )

    @property
    def hyper(self) -> dict:
        return {
            "lr": self.base_lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def step(self, grads: Mapping[str, np.ndarray] | None = None) -> None:
        """theta <- theta - lr d for every parameter (see the class docstring for d)."""
        net = self.net
        plain = self.momentum == 0 and self.weight_decay == 0 and not self.overrides
        if grads is None and net is not None and plain:
            # plain SGD on a network: one vectorised operation over the flat buffer
            net.flat_params -= self.lr * net.flat_grads
            return
        super().step(grads)

    def _update(self, p, g, state) -> None:
        if self.weight_decay != 0:
            g = g + self.weight_decay * p  # torch: grad.add(param, alpha=wd), a new array
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, copy=True)  # b_1 = g
            else:
                buf *= self.momentum
                if self.dampening == 0:
                    buf += g
                else:
                    buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) as torch defines it: bias-corrected, eps outside the square root.

    torch divides by sqrt(v) / sqrt(1 - beta2^t) + eps, which is the paper's
    sqrt(v_hat) + eps, and multiplies m by lr / (1 - beta1^t). The bias corrections are
    computed in Python floats (double precision) from the step count, as torch's are.
    weight_decay is L2 (added to the gradient, so it passes through the moments); AdamW
    decouples it.
    """

    name, torch_name = "adam", "Adam"
    state_names = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    decoupled = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ):
        super().__init__(params, lr)
        self.betas = _betas(betas)
        self.eps = _number("eps", eps, 0.0)
        self.weight_decay = _number("weight_decay", weight_decay, 0.0)
        self.amsgrad = _flag("amsgrad", amsgrad)

    @property
    def hyper(self) -> dict:
        return {
            "lr": self.base_lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "amsgrad": self.amsgrad,
        }

    def _update(self, p, g, state) -> None:
        beta1, beta2 = self.betas
        lr, wd = self.lr, self.weight_decay
        buffers = ["exp_avg", "exp_avg_sq"] + ["max_exp_avg_sq"] * self.amsgrad
        self._start(state, p, *buffers)
        state["step"] += 1
        if wd != 0:
            if self.decoupled:
                p *= 1 - lr * wd
            else:
                g = g + wd * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        _lerp(m, g, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * g * g  # torch: addcmul(g, g, value=1 - beta2), (value * g) * g
        if self.amsgrad:
            v = np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        t = float(state["step"])
        step_size = lr / (1 - beta1**t)
        denom = np.sqrt(v) / (1 - beta2**t) ** 0.5  # (...) ** 0.5, as torch writes it
        denom += self.eps
        p += -step_size * m / denom  # torch: addcdiv(m, denom, value=-step_size)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): theta <- theta (1 - lr wd) first,
    outside the moments, where Adam adds wd theta to the gradient. torch's decay is scaled by
    lr (the paper's by a separate schedule multiplier)."""

    name, torch_name = "adamw", "AdamW"
    decoupled = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """RMSprop as torch defines it: eps added after the square root (Hinton's slides put it
    inside), the momentum buffer started at zero and fed g / (r + eps), and the centered
    form dividing by the running standard deviation sqrt(s - a^2) instead of the RMS."""

    name, torch_name = "rmsprop", "RMSprop"
    state_names = ("step", "square_avg", "momentum_buffer", "grad_avg")

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ):
        super().__init__(params, lr)
        # torch only asks alpha >= 0; above 1 the average s can turn negative and sqrt(s) NaN
        self.alpha = _number("alpha", alpha, 0.0, 1.0)
        self.eps = _number("eps", eps, 0.0)
        self.weight_decay = _number("weight_decay", weight_decay, 0.0)
        self.momentum = _number("momentum", momentum, 0.0)
        self.centered = _flag("centered", centered)

    @property
    def hyper(self) -> dict:
        return {
            "lr": self.base_lr,
            "alpha": self.alpha,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "momentum": self.momentum,
            "centered": self.centered,
        }

    def _update(self, p, g, state) -> None:
        alpha = self.alpha
        buffers = ["square_avg"]
        buffers += ["momentum_buffer"] * (self.momentum > 0) + ["grad_avg"] * self.centered
        self._start(state, p, *buffers)
        state["step"] += 1
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        s = state["square_avg"]
        s *= alpha
        s += (1 - alpha) * g * g
        if self.centered:
            a = state["grad_avg"]
            _lerp(a, g, 1 - alpha)
            # torch: square_avg.addcmul(a, a, value=-1).sqrt_(). s - a^2 can round below 0
            # when the gradient barely varies: NaN then, silently, as in torch
            with np.errstate(invalid="ignore"):
                r = np.sqrt(s - a * a)
        else:
            r = np.sqrt(s)
        r += self.eps
        if self.momentum > 0:
            b = state["momentum_buffer"]
            b *= self.momentum
            b += g / r  # torch: addcdiv_(g, r), value 1
            p -= self.lr * b
        else:
            p += -self.lr * g / r


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.) as torch defines it: eps after the square root, the sum started
    at initial_accumulator_value, lr decayed as lr / (1 + (t - 1) lr_decay). Its state exists
    from construction (torch makes it in __init__, not at the first step)."""

    name, torch_name = "adagrad", "Adagrad"
    state_names = ("step", "sum")

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ):
        super().__init__(params, lr)
        self.lr_decay = _number("lr_decay", lr_decay, 0.0)
        self.weight_decay = _number("weight_decay", weight_decay, 0.0)
        self.initial_accumulator_value = _number(
            "initial_accumulator_value", initial_accumulator_value, 0.0
        )
        self.eps = _number("eps", eps, 0.0)
        for name, p in self.params.items():
            self._start(self.state[name], p)

    @property
    def hyper(self) -> dict:
        return {
            "lr": self.base_lr,
            "lr_decay": self.lr_decay,
            "weight_decay": self.weight_decay,
            "initial_accumulator_value": self.initial_accumulator_value,
            "eps": self.eps,
        }

    def _start(self, state: dict, p: np.ndarray, *buffers: str) -> None:
        # at construction, and again after a load of an empty state
        if not state:
            state["step"] = np.zeros((), np.float64)
            state["sum"] = np.full_like(p, self.initial_accumulator_value)

    def _update(self, p, g, state) -> None:
        self._start(state, p)
        state["step"] += 1
        t = float(state["step"])
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        clr = self.lr / (1 + (t - 1) * self.lr_decay)
        S = state["sum"]
        S += g * g
        std = np.sqrt(S)
        std += self.eps
        p += -clr * g / std


def _lerp(start: np.ndarray, end: np.ndarray, weight: float) -> None:
    """start <- start + weight (end - start), in place, in torch's two forms.

    torch.lerp computes start + w (end - start) for |w| < 0.5 and end - (end - start)(1 - w)
    otherwise, so that w = 1 returns end exactly; the weight is rounded to the array's dtype
    first.
    """
    w = start.dtype.type(weight)
    if abs(w) < 0.5:
        start += w * (end - start)
    else:
        start[...] = end - (end - start) * (1 - w)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad)
}


SCHEDULES = {
    "inverse_time": ("decay",),
    "step": ("step_size", "gamma"),
    "exponential": ("gamma",),
    "lambda": ("fn",),
}


class Schedule:
    """A learning rate per step, by torch.optim.lr_scheduler's rules (torch 2.13).

    t counts the scheduler's steps (torch's `last_epoch`): 0 for the first optimizer step,
    whose rate is set when the scheduler is made, then one more after each optimizer step.

        inverse_time  lr_t = base * (1 / (1 + decay t))     LambdaLR(lambda t: 1 / (1 + decay t))
        lambda        lr_t = base * fn(t)                   LambdaLR(fn): fn(0) applies at once
        step          lr_t = lr_{t-1} * gamma when t % step_size == 0, t > 0       StepLR
        exponential   lr_t = lr_{t-1} * gamma for t > 0                            ExponentialLR

    StepLR and ExponentialLR are chainable: torch multiplies the rate it holds by gamma (not
    base * gamma^k), and so does this, so the two sequences are the same floats.
    """

    def __init__(self, spec):
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise TypeError(
                f"schedule must be a dict {{'name': ..., ...}} with name one of "
                f"{', '.join(SCHEDULES)}, got {spec!r}"
            )
        spec = dict(spec)
        name = spec.pop("name")
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
        want = SCHEDULES[name]
        if set(spec) != set(want):
            raise ValueError(
                f"schedule {name!r} takes {', '.join(want)}; got "
                f"{', '.join(sorted(map(str, spec))) or 'nothing'}"
            )
        self.name = name
        if name == "inverse_time":
            self.decay = _number("schedule decay", spec["decay"], 0.0)
        if name in ("step", "exponential"):
            self.gamma = _number("schedule gamma", spec["gamma"], 0.0)
            if self.gamma == 0:
                raise ValueError("schedule gamma must be > 0, got 0: the rate would stop at 0")
        if name == "step":
            k = spec["step_size"]
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"schedule step_size must be an integer >= 1, got {k!r}")
            self.step_size = int(k)
        if name == "lambda":
            if not callable(spec["fn"]):
                raise TypeError(f"schedule fn must be a function t -> factor, got {spec['fn']!r}")
            self.fn = spec["fn"]
            self.factor(0)  # a function that cannot give step 0's factor is refused now
        self._chain: list[float] = []

    def factor(self, t: int) -> float:
        """LambdaLR's factor at step t, checked: a finite number >= 0."""
        if self.name != "lambda":
            return 1 / (1 + self.decay * t)
        try:
            f = self.fn(t)
        except Exception as err:
            raise ValueError(f"schedule fn({t}) raised {type(err).__name__}: {err}") from err
        if isinstance(f, bool) or not isinstance(f, (int, float, np.floating, np.integer)):
            raise TypeError(f"schedule fn({t}) must return a number, got {type(f).__name__} {f!r}")
        if not math.isfinite(f) or f < 0:
            raise ValueError(f"schedule fn({t}) must return a finite number >= 0, got {f!r}")
        return float(f)

    def lr(self, base: float, t: int) -> float:
        """The learning rate at scheduler step t, as torch's scheduler sets it."""
        if self.name in ("inverse_time", "lambda"):
            return base * self.factor(t)
        chain = self._chain if self._chain and self._chain[0] == base else [base]
        while len(chain) <= t:
            k = len(chain)
            decays = self.name == "exponential" or k % self.step_size == 0
            chain.append(chain[-1] * self.gamma if decays else chain[-1])
        self._chain = chain
        return chain[t]

    def describe(self) -> dict:
        """The schedule as a record keeps it (a function by its name)."""
        if self.name == "lambda":
            return {"name": "lambda", "fn": getattr(self.fn, "__qualname__", repr(self.fn))}
        return {"name": self.name, **{k: getattr(self, k) for k in SCHEDULES[self.name]}}


# per-parameter settings: everything but the rate (one schedule drives it) and Adagrad's
# starting sum (made at construction)
_SHARED_ONLY = ("lr", "initial_accumulator_value")


def _overrides(cls, params: dict, hyper: dict, decay, groups) -> dict[str, dict]:
    """Per parameter name, the settings that differ from the shared ones: from `decay` (which
    parameters weight_decay applies to: "all", "weights" or a list of names) and `groups`
    ({name: {option: value}}), each checked as torch would check a parameter group."""
    over: dict[str, dict] = {}
    if decay != "all":
        if decay == "weights":
            chosen = [n for n in params if n.rsplit(".", 1)[-1] == "weight"]
            if not chosen:
                raise ValueError(
                    f"decay='weights' found no parameter named *.weight among {', '.join(params)}"
                )
        elif isinstance(decay, (list, tuple)) and all(isinstance(n, str) for n in decay):
            _known(params, decay, "decay")
            chosen = list(decay)
        else:
            raise ValueError(
                f"decay must be 'all', 'weights' or a list of parameter names, got {decay!r}"
            )
        wd = hyper.get("weight_decay", cls._defaults().get("weight_decay", 0.0))
        if not wd:
            raise ValueError(
                f"decay={decay!r} chooses parameters for weight_decay, but weight_decay is "
                f"{wd!r}: nothing would decay; set weight_decay > 0"
            )
        over = {n: {"weight_decay": 0.0} for n in params if n not in chosen}
    if groups is not None:
        if not isinstance(groups, Mapping):
            raise TypeError(f"groups must be a dict parameter name -> {{option: value}}, "
                            f"got {type(groups).__name__}")  # fmt: skip
        _known(params, list(groups), "groups")
        valid = [k for k in cls._defaults() if k not in _SHARED_ONLY]
        for n, opts in groups.items():
            if not isinstance(opts, Mapping):
                raise TypeError(f"groups[{n!r}] must be a dict option -> value, got {opts!r}")
            bad = [k for k in opts if k not in valid]
            if bad:
                raise ValueError(
                    f"groups[{n!r}]: option {bad[0]!r} cannot be set per parameter; "
                    f"these can: {', '.join(valid)}"
                )
            over.setdefault(n, {}).update(opts)
    for n, opts in over.items():  # each parameter's settings, checked by the class itself
        probe = cls({"probe": np.zeros(1)}, **{**hyper, **opts})
        over[n] = {k: getattr(probe, k) for k in opts}
    return {n: o for n, o in over.items() if o}


def _known(params: Mapping, names, what: str) -> None:
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(
            f"{what} names no parameter {unknown[0]!r}; the parameters are {', '.join(params)}"
        )


def get_optimizer(name: str, params, *, schedule=None, decay="all", groups=None,
                  **hyper) -> Optimizer:  # fmt: skip
    """An optimiser by name ("sgd", "adam", ...) over `params`, with torch's keyword arguments.

    An option the chosen optimiser does not take is refused by name, with the valid ones.

    schedule  the learning rate per step, a dict as `Schedule` takes it ({"name": "step",
              "step_size": 10, "gamma": 0.5}); torch's lr_scheduler mirrors it
    decay     which parameters weight_decay applies to: "all" (torch's default), "weights"
              (every *.weight, not the biases) or a list of names; torch: parameter groups
    groups    {parameter name: {option: value}}: any other per-parameter setting
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    valid = ["lr"] + [k for k in cls._defaults() if k != "lr"]
    for key in hyper:
        if key not in valid:
            raise ValueError(
                f"optimizer {name!r} takes no option {key!r}; its options are "
                f"{', '.join(valid)}, schedule, decay, groups"
            )
    if "lr" not in hyper and "lr" not in cls._defaults():
        raise ValueError(f"optimizer {name!r} needs lr")
    sched = None if schedule is None else Schedule(schedule)
    opt = cls(params, **hyper)
    over = _overrides(cls, opt.params, hyper, decay, groups)
    if over:
        opt.overrides = over
    if sched is not None:
        opt.schedule = sched
        opt.lr = sched.lr(opt.base_lr, 0)  # torch's scheduler sets step 0's rate when made
    return opt
