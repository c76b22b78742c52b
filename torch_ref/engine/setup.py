"""A run's setup: the scratch side, the torch side built from its description, data in the
network's dtype, the batch plan."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch.conventions import l2_names
from nn_parity.scratch.losses import check_output
from nn_parity.scratch.optim import check_lr
from nn_parity.scratch.sequential import Sequential
from nn_parity.scratch.validate import check_finite, check_xy
from nn_parity.torch_ref.engine.budget import check_steps
from nn_parity.torch_ref.engine.layered_side import (
    LayeredSide,
    check_l2_on,
    layered_scratch_side,
    layered_torch_side,
)
from nn_parity.torch_ref.engine.scratch_side import MLPSide
from nn_parity.torch_ref.engine.side import Side
from nn_parity.torch_ref.engine.torch_side import TorchSide
from nn_parity.torch_ref.engine.user_layered_side import (
    UserLayeredSide,
    user_layered_scratch_side,
    user_layered_torch_side,
)
from nn_parity.torch_ref.engine.user_side import UserSide
from nn_parity.torch_ref.mirror.model import TorchMLP
from nn_parity.torch_ref.user.layered import UserLayeredNetwork
from nn_parity.torch_ref.user.layout import resolve_layout
from nn_parity.torch_ref.user.network import UserNetwork


def _batches(
    n: int, batch_size: int | None, epochs: int, seed: int, shuffle: bool, drop_last: bool
):
    """(epoch, batch, rows) for every step: one seeded permutation per epoch, the same for both
    sides. Without a batch size every step takes the whole data set (rows None)."""
    if batch_size is None:
        while True:
            yield 0, 0, None
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for b, start in enumerate(range(0, stop, batch_size)):
            yield epoch, b, order[start : start + batch_size]


def run_length(steps, batch_size, epochs, drop_last, n) -> int:
    """The number of steps a run takes, from steps or from batch size and epochs."""
    for name, v in (("steps", steps), ("batch_size", batch_size), ("epochs", epochs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if batch_size is None:
        if epochs is not None:
            raise ValueError("epochs needs batch_size; full-batch runs count steps")
        return 100 if steps is None else int(steps)
    if batch_size > n:
        raise ValueError(
            f"batch_size {batch_size} is larger than the data set ({n} samples); "
            f"use at most {n} (or leave it out for full-batch steps)"
        )
    per_epoch = n // batch_size if drop_last else -(-n // batch_size)
    total = per_epoch * (1 if epochs is None else int(epochs))
    return total if steps is None else min(int(steps), total)


def _scratch_side(net, loss, optimizer, lr, X, y):
    """The scratch side for the built-in network or for adapted user code."""
    if isinstance(net, UserNetwork):
        if loss is not None and scratch.get_loss(loss).name != net.loss.name:
            raise ValueError(
                f"loss {scratch.get_loss(loss).name!r} given, but the network was adapted "
                f"with loss {net.loss.name!r}"
            )
        sizes = _user_sizes(net, X, y)
        loss_s = net.loss = _l2_in_canonical_names(net)
        Xc, Yc = _check_data(loss_s, X, y, net.dtype, sizes)
        return (
            UserSide(net, _optimizer_factory(optimizer, lr), lr, np.asarray(X), np.asarray(y)),
            Xc,
            Yc,
        )
    if isinstance(net, UserLayeredNetwork):  # adapt_layers: engine/user_layered_side.py
        _l2_declared_in_adapt(net, loss)
        net.loss = _l2_in_canonical_names(net)
        return user_layered_scratch_side(net, loss, _optimizer_factory(optimizer, lr), lr, X, y)
    if isinstance(net, Sequential):  # a network of gallery layers: engine/layered_side.py
        if loss is not None:  # the declared L2 term's names, parameters of the network
            check_l2_on(net, scratch.get_loss(loss))
        return layered_scratch_side(net, loss, _optimizer_factory(optimizer, lr), lr, X, y)
    if not isinstance(net, scratch.MLP):
        raise TypeError(
            f"lockstep takes a scratch.MLP or a network adapted with adapt(...), "
            f"got {type(net).__name__}"
        )
    loss_s = scratch.get_loss("bce" if loss is None else loss)
    check_output(loss_s, net.layers[-1].activation.name)
    if loss_s.l2:  # the objective's L2 term, on parameters the network has
        l2_names(loss_s.l2_on, list(net.params))
    _check_finite(net.params)
    Xc, Yc = _check_data(loss_s, X, y, net.dtype, net.sizes)
    if isinstance(optimizer, (str, Mapping)) or optimizer is None:
        opt = _optimizer_factory(optimizer, lr)(net)
    else:
        if getattr(optimizer, "net", None) is not net:
            raise ValueError("optimizer must be bound to the scratch network being trained")
        _check_mirrored(optimizer)
        opt = optimizer
    return MLPSide(net, loss_s, opt, lr), Xc, Yc


def _l2_declared_in_adapt(net: UserLayeredNetwork, loss) -> None:
    """adapt_layers' cost is declared once, in adapt_layers(loss=...): an L2 term given to
    lockstep instead, or another one, is refused rather than left out."""
    if loss is None or isinstance(loss, str):
        return
    given, have = scratch.get_loss(loss), net.loss
    if given.l2 and (given.l2, given.l2_form, given.l2_n) != (have.l2, have.l2_form, have.l2_n):
        raise ValueError(
            f"l2={given.l2:g} given to lockstep, but the network was adapted with {net.loss!r}: "
            "declare the L2 term once, in adapt_layers(..., loss=get_loss(...))"
        )


def _l2_in_canonical_names(net: UserNetwork | UserLayeredNetwork) -> scratch.Loss:
    """The network's loss with the parameters its L2 term names (`l2_on`, in the user's names
    or canonical ones) in canonical names, each checked to be a parameter."""
    loss = net.loss
    if not loss.l2 or isinstance(loss.l2_on, str):
        return loss
    slots = net.param_map.slots
    canon = {s.user: s.canonical for s in slots}
    names = tuple(canon.get(n, n) for n in loss.l2_on)
    l2_names(names, [s.canonical for s in slots])  # refuses unknowns
    return type(loss)(loss.reduction, **{**loss.options, "l2_on": names})


def _check_finite(params: Mapping[str, np.ndarray]) -> None:
    """Starting weights that hold NaN or Inf would be reported as a blow-up at step 0."""
    for name, p in params.items():
        check_finite(p, name, f"the starting weight {name}")


def _user_sizes(net: UserNetwork, X, y) -> list[int]:
    """The user network's [D, ..., C], from its layout (worked out here if not yet)."""
    if net.pmap is None:
        Xa = np.asarray(X)
        if Xa.ndim != 2:
            raise ValueError(f"X must be 2-D (samples, features), got shape {Xa.shape}")
        return resolve_layout(net, Xa, np.asarray(y)).sizes
    return net.pmap.sizes


def _check_data(loss_s, X, y, dtype, sizes):
    """X as a finite (N, D) array in the network's dtype, and the labels in the form the loss
    takes: (N, 1) 0/1 floats for the binary losses, (N,) class indices for ce and nll, (N, C)
    targets for mse. `sizes` is the network's [D, ..., C]."""
    # X and the labels' own form first, then the loss checks them against the output width
    X, _ = check_xy(X, y, width=sizes[0], task=loss_s.task)
    Y = loss_s.targets(y, sizes[-1], dtype)
    return np.ascontiguousarray(X, dtype=dtype), Y


def _optimizer_factory(spec, lr):
    """A function params -> scratch optimizer, from None (plain SGD), a name or a dict
    {"name": ..., **hyper-parameters}: the one description both sides are built from."""
    if spec is None:
        spec = {"name": "sgd"}
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(
            "for a user network give the optimizer by name or as a dict "
            f"{{'name': 'adam', 'betas': (0.9, 0.999)}}, got {type(spec).__name__}"
        )
    spec = dict(spec)
    name = spec.pop("name", "sgd")
    # refuse bad input now; the names decay and groups choose are checked on the parameters
    named = ("decay", "groups")
    probe = {k: v for k, v in spec.items() if k not in named}
    scratch.get_optimizer(name, {"probe": np.zeros(1)}, lr=lr, **probe)
    return lambda params: scratch.get_optimizer(name, params, lr=lr, **spec)


def _opt_of(sside):
    """The scratch optimizer both sides' optimizers are built from."""
    return sside.opt if isinstance(sside, MLPSide) else sside.opt_desc


def _optimizer_record(spec, opt) -> dict:
    """The optimizer as a record keeps it (summary.json's "optimizer"), as `nn-parity run`
    writes it: the name and the options given; for an optimizer object, those off default."""
    sched = {"schedule": opt.schedule.describe()} if opt.schedule is not None else {}
    if spec is None or isinstance(spec, (str, Mapping)):
        given = {"name": spec} if isinstance(spec, str) else dict(spec or {})
        return {"name": given.pop("name", "sgd"), **given, **sched}  # a function by its name
    defaults = type(opt)._defaults()
    hyper = {k: v for k, v in opt.hyper.items() if k != "lr" and v != defaults.get(k)}
    groups = {"groups": opt.overrides} if opt.overrides else {}
    return {"name": opt.name, **hyper, **groups, **sched}


def _check_mirrored(opt) -> None:
    """The torch side is built from the scratch optimizer's description (`opt.hyper`); an
    optimizer without one would be compared against the wrong thing."""
    registry = scratch.OPTIMIZERS
    if not isinstance(opt, tuple(registry.values())):
        raise ValueError(
            f"optimizer {type(opt).__name__} has no torch mirror: nn-parity builds torch's from "
            f"the scratch optimizer's description; use one of {', '.join(registry)}"
        )


def _torch_side(ref, sside, loss_s, opt_desc):
    """The torch side: the given module with the scratch side's weights copied in, or a
    TorchMLP built from the scratch side's description."""
    from nn_parity.torch_ref.mirror.weights import module_parameters

    if isinstance(sside, LayeredSide):
        return layered_torch_side(ref, sside)
    if isinstance(sside, UserLayeredSide):
        return user_layered_torch_side(ref, sside)
    desc = sside.desc
    if ref is None:
        ref = TorchMLP.from_scratch(desc)
    by_name = module_parameters(ref, desc)
    if isinstance(sside, UserSide) and sside.net.dropout and not isinstance(ref, TorchMLP):
        raise ValueError(
            f"dropout= needs the torch side to apply your masks, which the built-in mirror "
            f"does: leave ref out (got a {type(ref).__name__})"
        )
    if isinstance(sside, UserSide):
        params = sside.get_params()
        with torch.no_grad():
            for k, p in by_name.items():
                p.copy_(torch.from_numpy(np.ascontiguousarray(params[k])))
    return TorchSide(ref, by_name, loss_s, opt_desc, sside.order)


@dataclass
class Run:
    """Everything a lockstep run is made of, checked before its first step: both sides, the
    data in the network's dtype (and as torch tensors over the same memory), the plan of
    batches, and the run's configuration as its record keeps it."""

    sside: Side
    tside: TorchSide
    X: np.ndarray
    Y: np.ndarray
    steps: int
    plan: Iterator[tuple[int, int, np.ndarray | None]]
    config: dict
    mini_batches: bool
    kinks: list[int] = field(default_factory=list)  # layers whose activation has a kink
    masked: bool = False  # the user's code draws dropout masks, which torch's step applies

    def __post_init__(self) -> None:
        self._tensors = torch.from_numpy(self.X), torch.from_numpy(self.Y)

    def batch(self, rows: np.ndarray | None) -> tuple[tuple, tuple]:
        """(scratch's X, Y, rows), (torch's X, Y) for one step: the whole set, or its rows."""
        if rows is None:
            return (self.X, self.Y, None), self._tensors
        Xb, Yb = self.X[rows], self.Y[rows]
        return (Xb, Yb, rows), (torch.from_numpy(Xb), torch.from_numpy(Yb))


def prepare(net, ref, X, y, *, steps, lr, loss, optimizer, batch_size, epochs, shuffle,
            drop_last, seed) -> Run:  # fmt: skip
    """A run, every input checked: bad input is refused here, before anything is computed."""
    lr = check_lr(lr)
    sside, X, Y = _scratch_side(net, loss, optimizer, lr, X, y)
    n = len(X)
    steps = run_length(steps, batch_size, epochs, drop_last, n)
    check_steps(steps, len(sside.desc.layers))  # before the (steps, items) records
    opt_desc = _opt_of(sside)
    tside = _torch_side(ref, sside, sside.loss, opt_desc)
    desc = sside.desc
    config = {
        "steps": steps,
        "dtype": np.dtype(sside.dtype).name,
        "architecture": {
            "sizes": list(desc.sizes),
            "bias": desc.bias,
            "init": None,
            "activations": [a.name for a in desc.activations],
            "parameters": desc.num_params,
            **({"layers": desc.words} if hasattr(desc, "words") else {}),  # a layered network's
        },
        "data": {
            "name": "arrays",
            "samples": n,
            "features": int(X.shape[1]),
            "feature_names": None,
            "source": None,
        },
        "loss": sside.loss.name,
        "reduction": _declared(sside.loss),
        "lr": lr,
        "optimizer": _optimizer_record(optimizer, opt_desc),
        "batches": {"batch_size": batch_size, "epochs": epochs, "drop_last": drop_last},
        "seed": seed,
    }
    plan = _batches(n, batch_size, epochs or 1, seed, shuffle, drop_last)
    kinks = [l for l, a in enumerate(desc.activations) if a.name.partition(":")[0] in _KINKED]
    masked = isinstance(sside, (UserSide, UserLayeredSide)) and bool(sside.net.dropout)
    if masked:
        config["dropout"] = {str(k): v if isinstance(v, str) else "a mask function"
                             for k, v in sside.net.dropout.items()}  # fmt: skip
    return Run(sside, tside, X, Y, steps, plan, config, batch_size is not None, kinks, masked)


def _declared(loss: scratch.Loss) -> str:
    """The reduction as the record keeps it, followed by the loss's declared conventions
    ("mean, scale=0.5, l2=0.1, l2_n=16"): a run is described by the cost it compared."""
    conv = {k: v for k, v in loss.options.items() if k not in ("weight", "label_smoothing")}
    return ", ".join([loss.reduction, *(f"{k}={v!r}" for k, v in conv.items() if v is not None)])


_KINKED = ("relu", "leaky_relu")  # activations with a kink at 0
