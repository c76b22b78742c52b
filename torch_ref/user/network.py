"""A user's network: their parameters and functions, called with messages that name them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nn_parity import scratch
from nn_parity.torch_ref.user.access import _Access, _flatten, is_scalar
from nn_parity.torch_ref.user.layout import ParamMap, Slot


@dataclass
class UserNetwork:
    """A user's network, adapted. Build it with `adapt`."""

    access: _Access
    activations: list
    loss: scratch.Loss
    form: str  # "grads" or "step"
    fn: Callable
    update: Callable | None
    forward: Callable | None
    loss_fn: Callable | None
    dtype: np.dtype
    pmap: ParamMap | None = None  # set once, by `layout.resolve_layout`; read `param_map`
    layout: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # fn name per role, for messages
    last_raw_grads: Any = None  # the gradients as the user's function returned them
    state_paths: dict[str, str] = field(default_factory=dict)  # torch buffer -> the user's path
    state_access: Any = None  # reads those paths
    dropout: dict[str, str] = field(default_factory=dict)  # activation -> its mask's cache name

    # --- the parameters in canonical layout ---
    @property
    def param_map(self) -> ParamMap:
        """The layout, which everything reading the parameters needs: worked out from the data
        (`layout.resolve_layout`) when the network is first checked."""
        if self.pmap is None:
            raise RuntimeError(
                "the layout of the parameters is not known yet: it is worked out from the data "
                "when the network is first checked (lockstep or the nn-parity command)"
            )
        return self.pmap

    def get_params(self) -> dict[str, np.ndarray]:
        """Copies of the user's parameters, canonical names and layout, in the user's dtype."""
        return {
            s.canonical: np.array(s.to_canonical(self.access.get(s.user)), dtype=self.dtype)
            for s in self.param_map.slots
        }

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        for s in self.param_map.slots:
            self.access.write(s.user, s.to_user(np.asarray(params[s.canonical], self.dtype)))

    def get_state(self, buffers) -> dict[str, dict[str, np.ndarray]]:
        """Copies of the user's optimizer state by canonical parameter name and torch buffer
        name, in canonical layout; a `step` given as one number serves every parameter."""
        out: dict[str, dict[str, np.ndarray]] = {s.canonical: {} for s in self.param_map.slots}
        for b in buffers:
            held = self.state_access.get(self.state_paths[b])
            for i, s in enumerate(self.param_map.slots):
                if np.ndim(held) == 0 and not isinstance(held, (Mapping, list, tuple)):
                    out[s.canonical][b] = np.array(float(held), np.float64)
                    continue
                try:
                    v = held[s.user] if isinstance(held, Mapping) else held[i]
                except (KeyError, IndexError, TypeError):
                    raise ValueError(
                        f"state {b!r} at {self.state_paths[b]!r} holds no entry for parameter "
                        f"{s.user!r} after the step (a dict keyed by parameter name, or a list "
                        "in the parameters' order, is expected)"
                    ) from None
                v = np.array(float(v), np.float64) if b == "step" else s.to_canonical(v)
                out[s.canonical][b] = np.array(v, dtype=np.float64 if b == "step" else self.dtype)
        return out

    def description(self) -> scratch.MLP:
        """The built-in network the user's claims to compute, holding the user's values."""
        pmap = self.param_map
        desc = scratch.MLP(pmap.sizes, self.activations, bias=pmap.bias, dtype=self.dtype)
        desc.load_state_dict(self.get_params())
        return desc

    # --- calling the user's functions, with messages that name them ---
    def call_forward(self, X: np.ndarray) -> tuple[np.ndarray, dict]:
        assert self.forward is not None
        got = self.run("forward", X)
        cache: dict = {}
        if isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], Mapping):
            got, cache = got
            # copies: a fused step may overwrite the arrays the cache holds (self.a1 *= ...)
            cache = {k: np.array(v) for k, v in cache.items() if isinstance(v, np.ndarray)}
        elif isinstance(got, tuple):
            got = got[0]
        out = np.array(got)
        n, c = len(X), self.param_map.sizes[-1]
        if out.shape == (c, n) and c != n:
            out = out.T  # column-per-sample code (Nielsen's feedforward)
        if out.shape != (n, c) and not (c == 1 and out.shape == (n,)):
            raise UserCodeError(
                f"{self.names['forward']} returned shape {out.shape}; expected ({n}, {c}) "
                f"for {n} samples and {c} outputs"
            )
        return out.reshape(n, c), dict(cache)

    def call_grads(
        self, X: np.ndarray, Y: np.ndarray
    ) -> tuple[float | None, dict[str, np.ndarray]]:
        """The user's loss (if returned) and gradients, in canonical names and layout."""
        got = self.run("fn", X, Y)
        loss = None
        if isinstance(got, tuple) and len(got) == 2 and is_scalar(got[0]):
            # a NaN or Inf loss is a finding the lockstep reports at its step, not an error
            loss, got = float(got[0]), got[1]
        self.last_raw_grads = got
        return loss, self._grads_by_slot(got)

    def run(self, role: str, *args: Any) -> Any:
        """Call one of the user's functions; an exception inside it is theirs to read, so it
        comes back in one line naming the function and where in their file it was raised."""
        fn = {"fn": self.fn, "forward": self.forward, "loss_fn": self.loss_fn,
              "update": self.update}[role]  # fmt: skip
        try:
            return fn(*args)  # type: ignore[misc]
        except Exception as err:
            raise UserCodeError(
                f"{self.names[role]} raised {type(err).__name__}: {err}{_where(err)}"
            ) from err
        except SystemExit as err:  # sys.exit() in user code ends nothing but its own call
            raise UserCodeError(
                f"{self.names[role]} called sys.exit({err.code!r}){_where(err)}"
            ) from err

    def call_loss(self, X: np.ndarray, y: Any) -> float:
        value = self.run("loss_fn", X, y)
        if not is_scalar(value) and not (isinstance(value, np.ndarray) and value.size == 1):
            raise UserCodeError(
                f"{self.names['loss_fn']} returned {type(value).__name__} of shape "
                f"{np.shape(value)}; expected one number"
            )
        return float(np.asarray(value).reshape(()))

    def _grads_by_slot(self, got: Any) -> dict[str, np.ndarray]:
        fname = self.names["fn"]
        slots = self.param_map.slots
        if isinstance(got, Mapping):
            out = {}
            for s in slots:
                u = s.user
                for key in (u, "d" + u, "d" + u.capitalize(), "grad_" + u, u + "_grad", "d_" + u):
                    if key in got:
                        out[s.canonical] = self._grad(got[key], s)
                        break
                else:
                    raise UserCodeError(
                        f"{fname} returned no gradient for parameter {s.user!r} "
                        f"(keys: {sorted(map(str, got))})"
                    )
            return out
        flat = list(_flatten(got))
        order = [self.param_map.by_user[n] for n in self.access.names]
        if len(flat) != len(order):
            seq = isinstance(got, (list, tuple))
            kinds = ", ".join(type(e).__name__ for e in got) if seq else ""
            raise UserCodeError(
                f"{fname} returned a {type(got).__name__} ({kinds}) holding {len(flat)} values; "
                f"expected {len(order)} gradients, one per parameter "
                f"({', '.join(self.access.names)}), or a tuple (loss, gradients)"
            )
        return {s.canonical: self._grad(g, s) for s, g in zip(order, flat)}

    def _grad(self, g: Any, s: Slot) -> np.ndarray:
        g = np.asarray(g)
        if g.shape != s.shape:
            raise UserCodeError(
                f"{self.names['fn']} returned a gradient of shape {g.shape} for {s.user!r}, "
                f"whose shape is {s.shape}"
            )
        if g.dtype != self.dtype:  # a narrower float somewhere in the chain is a finding
            raise UserCodeError(
                f"{self.names['fn']} returned a {g.dtype} gradient for {s.user!r}, whose "
                f"parameters are {self.dtype}: compute it in {self.dtype} (a {g.dtype} array "
                "or literal somewhere in the backward pass narrows it)"
            )
        return s.to_canonical(g)

    def __repr__(self) -> str:
        sizes = "-".join(map(str, self.pmap.sizes)) if self.pmap else "?"
        return (
            f"UserNetwork({sizes}, {','.join(a.name for a in self.activations)}, "
            f"loss={self.loss.name}, {self.form}={self.names['fn']})"
        )


class UserCodeError(ValueError):
    """A fault in the user's own code while it runs: an exception raised inside their function
    (reported with where it happened, `sys.exit` included) or a value it returned that breaks
    the contract (a gradient of the wrong shape, dtype or key, a forward of the wrong shape).
    The lockstep keeps what was computed before it (`LockstepResult.fault`)."""


def _where(err: BaseException) -> str:
    """' (at file.py:12)': the deepest frame of the traceback outside libraries and nn-parity."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    ours = ("site-packages", "/torch_ref/", "/scratch/")
    mine = [f for f in frames if not any(part in f.filename for part in ours)]
    if not mine:
        return ""
    f = mine[-1]
    return f" (at {f.filename.rsplit('/', 1)[-1]}:{f.lineno}: {f.line})" if f.line else ""


def _fn_name(fn: Callable) -> str:
    name = (getattr(fn, "__qualname__", None) or repr(fn)).split("<locals>.")[-1]
    return "your lambda" if name == "<lambda>" else name
