"""`nn-parity run --layers conv8x3,relu,pool2,flatten,affine10`: a network of gallery layers
(scratch/sequential.py) against its torch nn.Sequential, in lockstep.

A --layers value with any token that is not a whole number is a layer spec; digits are read as
1x8x8 images, every other data set as flat (D,) feature vectors.

`--dropout P` with layer sizes (`--layers 64,32,10 --dropout 0.2`) runs the dense network as the
layer spec it is, dropout after each hidden activation (`flatten,affine32,tanh,dropout0.2,
affine10` on the digits images): one implementation of dropout, the gallery's, its mask drawn
once per step and shared by both sides.
"""

from __future__ import annotations

import argparse

import numpy as np
from nn_parity.torch_ref.frontends.cli_conventions import loss_for
from nn_parity.torch_ref.frontends.usage import UsageError

_IMAGES = {"digits": (1, 8, 8)}  # per-sample shape of the data sets that are images

# options of the built-in MLP that a layer spec sets for itself, or that do not apply
_NOT_WITH_SPEC = {
    "model": "--model", "weights": "--weights", "init": "--init", "activation": "--activation",
}  # fmt: skip
_DEFAULT_LOSS = {"binary": "bce-logits", "multiclass": "ce", "regression": "mse"}


def is_layer_spec(text: str | None) -> bool:
    """Whether --layers names layers (conv8x3,...) rather than sizes (2,8,1): no token a number."""
    return bool(text) and not any(t.strip().isdigit() for t in str(text).split(","))


def check_dropout(args: argparse.Namespace) -> bool:
    """Whether this run is dense sizes with --dropout (a layer spec made from them); --dropout
    out of [0, 1) or beside a layer spec or --model refused."""
    p = getattr(args, "dropout", None)
    if p is None:
        return False
    if not 0 <= p < 1:
        raise UsageError(f"--dropout is the probability of dropping a unit, in [0, 1), got {p!r}")
    if is_layer_spec(args.layers):
        raise UsageError(
            f"--dropout does not apply with a layer spec in --layers ({args.layers}): put "
            "dropout<p> where it goes, e.g. affine32,relu,dropout0.2,affine10"
        )
    if args.model is not None:
        raise UsageError("--dropout does not apply with --model: your network sets it")
    return True


def dense_spec(args: argparse.Namespace, ds, shape: tuple, loss) -> str:
    """The layer spec of the dense network `--layers` sizes and `--activation` describe, with
    dropout after every hidden activation, ending as `loss` needs."""
    import math

    from nn_parity.torch_ref.frontends.cli_run import _sizes

    D = math.prod(shape)
    sizes = _sizes(args.layers) if args.layers else [D, 8, ds.n_outputs]
    if sizes[0] != D:
        raise UsageError(f"--layers starts with {sizes[0]} inputs but the data has {D} features")
    hidden = sizes[1:-1]
    acts = [a.strip() for a in (args.activation or "tanh").split(",")]
    acts = acts * len(hidden) if len(acts) == 1 else acts
    if len(acts) != len(hidden):
        raise UsageError(f"--activation lists {len(acts)} activations for {len(hidden)} hidden "
                         "layers")  # fmt: skip
    tokens = ["flatten"] * (len(shape) > 1)
    p = np.format_float_positional(args.dropout, trim="-")  # 1e-05 as 0.00001, 0.0 as 0
    for h, act in zip(hidden, acts, strict=True):
        tokens += [f"affine{h}", act, f"dropout{p}"]
    tokens.append(f"affine{sizes[-1]}")
    if loss.output_activation != "identity":  # bce on probabilities: the sigmoid it needs
        tokens.append(loss.output_activation)
    return ",".join(tokens)


def plan_layered(args: argparse.Namespace):
    """(plan, network): the data shaped for the network, the loss, the network; bad input
    refused with the flag it came from."""
    from nn_parity.scratch.sequential import from_spec
    from nn_parity.torch_ref.engine.budget import check_steps
    from nn_parity.torch_ref.engine.layered_side import check_l2_on
    from nn_parity.torch_ref.engine.setup import run_length
    from nn_parity.torch_ref.frontends.datasets import AdvisedError, load_dataset

    dense = check_dropout(args)
    flags = {k: f for k, f in _NOT_WITH_SPEC.items() if not (dense and k == "activation")}
    given = [f for key, f in flags.items() if getattr(args, key, None) is not None]
    given += ["--no-bias"] * (not args.bias)
    if given and dense:
        raise UsageError(f"{given[0]} does not apply with --dropout: the sizes run as a layer "
                         "spec, at torch's default initialisation")  # fmt: skip
    if given:
        raise UsageError(f"{given[0]} does not apply with a layer spec in --layers")
    asked = loss_for(args, args.loss) if args.loss else None
    try:
        task = asked.task if asked else None
        ds = load_dataset(args.data, seed=args.seed, label_column=args.label_column,
                          standardized=args.standardize, task=task)  # fmt: skip
    except AdvisedError as err:
        raise UsageError(err.cli) from None
    shape = _IMAGES.get(ds.name, (ds.X.shape[1],))
    loss = asked or loss_for(args, _DEFAULT_LOSS[ds.task])
    spec = dense_spec(args, ds, shape, loss) if dense else args.layers
    try:
        net = from_spec(spec, shape, dtype=args.dtype, rng=args.seed)
    except ValueError as err:
        raise UsageError(f"--layers {spec}: {err}") from None
    try:  # --l2-on's names, parameters of this network
        check_l2_on(net, loss)
    except ValueError as err:
        raise UsageError(f"--l2-on: {err}") from None
    out = net.shapes[-1]
    if len(out) != 1 or out[0] != ds.n_outputs:
        raise UsageError(
            f"--layers {args.layers} ends with output shape {out}, but the data "
            f"{args.data!r} needs ({ds.n_outputs},): end with flatten,affine{ds.n_outputs}"
        )
    steps = run_length(args.steps, args.batch_size, args.epochs, args.drop_last, len(ds.X))
    check_steps(steps, len(net.layers))
    X = ds.X.reshape(len(ds.X), *shape).astype(net.dtype)
    return {"data": ds, "X": X, "loss": loss, "init": "torch_default", "steps": steps}, net


def run_layered(args: argparse.Namespace) -> int:
    """The run for a layer spec: plan, the figures' data (the loss slice at step 0 without
    dropout; on two features the decision boundary before and after), lockstep, record,
    verdict."""
    from nn_parity.torch_ref.frontends.cli_run import _verdict, _write, out_dir, run_with_progress

    try:
        p, net = plan_layered(args)
        out, note = out_dir(args)
        if args.export is not None:
            from nn_parity.torch_ref.mirror.export import check_export

            check_export(args.export, overwrite=args.overwrite, cli=True)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    extras: dict = {"summary": {}, "arrays": _boundary(net, p, "before")}
    _add(extras, _gradient_slice(net, p))
    result = run_with_progress(args, net, None, p["X"], p["data"].y, p["steps"], p["loss"])
    extras["arrays"].update(_boundary(net, p, "after"))
    summary = _write(args, p, result, out, extras)
    if args.export is not None:
        _export_layered(args, net, p["loss"], summary["passed"])
    return _verdict(args, result, summary, out, note)


def _add(extras: dict, more: dict) -> None:
    extras["summary"].update(more.get("summary", {}))
    extras["arrays"].update(more.get("arrays", {}))


def _gradient_slice(net, p: dict) -> dict:
    """The loss slice at step 0, for a network without dropout (else none: its loss changes
    with every mask)."""
    from nn_parity.scratch.sequential import Dropout
    from nn_parity.torch_ref.frontends.figure_data import layered_gradient_slice

    if any(isinstance(layer, Dropout) for layer in net.layers):
        return {}
    loss, X = p["loss"], p["X"]
    Y = loss.targets(p["data"].y, net.shapes[-1][0], "float64")
    return layered_gradient_slice(net, loss, X, Y)


def _boundary(net, p: dict, when: str) -> dict:
    """The decision boundary's arrays for a classifier on two features, else none."""
    from nn_parity.torch_ref.frontends.figure_data import layered_boundary

    X, loss = p["X"], p["loss"]
    if X.ndim != 2 or X.shape[1] != 2 or loss.task not in ("binary", "multiclass"):
        return {}
    return layered_boundary(net, loss, X, when)


def _export_layered(args: argparse.Namespace, net, loss, passed: bool) -> None:
    """--export after the run: the trained network as an nn.Sequential of torch's modules, only
    when the two sides agreed (the probe's loss: the run's, if export draws targets for it)."""
    import sys

    from nn_parity.torch_ref.mirror.export import export
    from nn_parity.torch_ref.mirror.export_layered import LOSSES

    if not passed:
        print(f"nn-parity: --export skipped: scratch and torch diverged, so {str(args.export)!r} "
              "was not written", file=sys.stderr)  # fmt: skip
        return
    spec = loss.name if loss.name in LOSSES else None
    try:
        written = export(net, args.export, loss=spec, overwrite=args.overwrite, _cli=True)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(
            f"--export: cannot write {str(args.export)!r}: {err.strerror or err}; nothing "
            "was written there"
        ) from None
    print(f"exported: {written.module} (test: {written.test})")


__all__ = ["check_dropout", "dense_spec", "is_layer_spec", "plan_layered", "run_layered"]
