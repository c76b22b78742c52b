"""`nn-parity run`'s declarations: the cost (docs/conventions.md) and the learning-rate schedule
and weight decay's reach (docs/optimizers.md), built here once from their flags.

    --scale S --reduction mean|samples|sum --l2 LAMBDA --l2-form half|full --l2-n N
    --l2-on weights|all|NAME,...  --clip EPS        -> scratch.get_loss(name, reduction, ...)
    --schedule inverse-time:decay=D | step:step_size=K,gamma=G | exponential:gamma=G
    --decay-on weights|all                           -> the optimizer description's schedule, decay

Each bad value is refused in one line naming its flag (exit 2).
"""

from __future__ import annotations

import argparse

from nn_parity import scratch
from nn_parity.scratch.conventions import l2_names
from nn_parity.torch_ref.frontends.usage import UsageError

__all__ = ["add_arguments", "check_l2_on", "declared", "loss_for", "schedule_and_decay"]

_LOSS_FLAGS = {  # the get_loss option -> its flag
    "scale": "--scale", "l2": "--l2", "l2_form": "--l2-form", "l2_n": "--l2-n",
    "l2_on": "--l2-on", "clip": "--clip",
}  # fmt: skip
_SCHEDULES: dict[str, tuple[str, dict[str, type]]] = {  # flag name -> scratch's, option types
    "inverse-time": ("inverse_time", {"decay": float}),
    "step": ("step", {"step_size": int, "gamma": float}),
    "exponential": ("exponential", {"gamma": float}),
}


def add_arguments(run: argparse.ArgumentParser) -> None:
    """The declaration flags, in a group of their own."""
    g = run.add_argument_group(
        "declared cost and schedule",
        "a cost that is not torch's plain loss, declared once for both sides "
        "(docs/conventions.md); a learning-rate schedule (docs/optimizers.md)",
    )
    g.add_argument("--scale", metavar="S", help="the loss times S, e.g. 0.5 for 0.5 * mse")
    g.add_argument("--l2", metavar="LAMBDA", help="an L2 term in the cost: 0.5 * LAMBDA ||W||^2")
    g.add_argument("--l2-form", metavar="half|full", help="full: LAMBDA ||W||^2 (default half)")
    g.add_argument("--l2-n", metavar="N", help="LAMBDA / N, network2.py's lmbda / n (default 1)")
    g.add_argument(
        "--l2-on", metavar="weights|all|NAME,...", help="what the L2 term covers (default weights)"
    )
    g.add_argument("--clip", metavar="EPS", help="bce: p clipped to [EPS, 1 - EPS] in the loss")
    g.add_argument(
        "--schedule",
        metavar="SPEC",
        help="inverse-time:decay=D | step:step_size=K,gamma=G | exponential:gamma=G",
    )
    g.add_argument(
        "--decay-on",
        metavar="weights|all",
        help="which parameters --weight-decay decays (default all, as torch)",
    )


def declared(args: argparse.Namespace) -> dict:
    """The get_loss options the flags give, each parsed; {} when none is given."""
    out = {}
    for key, flag in _LOSS_FLAGS.items():
        text = getattr(args, key, None)
        if text is not None:
            out[key] = _parse(key, flag, text)
    if "l2" not in out and {"l2_form", "l2_n", "l2_on"} & set(out):
        raise UsageError("--l2-form, --l2-n and --l2-on describe an L2 term: give --l2 too")
    return out


def check_l2_on(loss: scratch.Loss, sizes: list[int], bias: bool) -> None:
    """--l2-on's names are parameters of the network --layers describes."""
    if loss.l2 and not isinstance(loss.l2_on, str):
        names = [f"layers.{i}.{k}" for i in range(len(sizes) - 1) for k in ("weight", "bias")]
        try:
            l2_names(loss.l2_on, names if bias else names[::2])
        except ValueError as err:
            raise UsageError(f"--l2-on: {err}") from None


def _parse(key: str, flag: str, text: str):
    if key == "l2_form":
        return text
    if key == "l2_on":
        names = [n.strip() for n in text.split(",")]
        if text in ("weights", "all"):
            return text
        if not all(names):
            raise UsageError(f"{flag} must be weights, all or parameter names, got {text!r}")
        return names
    kind = int if key == "l2_n" else float
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise UsageError(f"{flag} must be {what}, got {text!r}") from None


def loss_for(args: argparse.Namespace, name: str) -> scratch.Loss:
    """The loss `name` with the reduction and the declaration the flags give."""
    opts = declared(args)
    try:
        return scratch.get_loss(name, args.reduction, **opts)
    except (ValueError, TypeError) as err:
        flag = _LOSS_FLAGS.get(str(err).split()[0])
        raise UsageError(f"{flag}: {err}" if flag else str(err)) from None


def schedule_and_decay(args: argparse.Namespace) -> dict:
    """The optimizer description's schedule and decay, from --schedule and --decay-on."""
    out: dict = {}
    if getattr(args, "schedule", None) is not None:
        out["schedule"] = _schedule(args.schedule)
    decay = getattr(args, "decay_on", None)
    if decay is not None:
        if decay not in ("weights", "all"):
            raise UsageError(f"--decay-on must be weights or all, got {decay!r}")
        if not args.weight_decay:
            raise UsageError("--decay-on chooses what --weight-decay decays: give --weight-decay")
        out["decay"] = decay
    return out


def _schedule(text: str) -> dict:
    kind, _, rest = text.partition(":")
    if kind not in _SCHEDULES:
        raise UsageError(
            f"--schedule {text!r}: expected inverse-time:decay=D, step:step_size=K,gamma=G "
            "or exponential:gamma=G"
        )
    name, types = _SCHEDULES[kind]
    spec: dict = {"name": name}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in types:
            raise UsageError(f"--schedule {kind} takes {', '.join(types)}=...; got {part!r}")
        try:
            spec[key] = types[key](value)
        except ValueError:
            what = "a whole number" if types[key] is int else "a number"
            raise UsageError(f"--schedule {kind}: {key} must be {what}, got {value!r}") from None
    missing = [k for k in types if k not in spec]
    if missing:
        raise UsageError(f"--schedule {kind} needs {', '.join(f'{k}=...' for k in missing)}")
    try:
        scratch.optim.Schedule(spec)
    except (ValueError, TypeError) as err:
        raise UsageError(f"--schedule: {err}") from None
    return spec
