"""`nn-parity run --layers conv8x3,relu,pool2,flatten,affine10`: a network of gallery layers
(scratch/sequential.py) against its torch nn.Sequential, in lockstep.

A --layers value with any token that is not a whole number is a layer spec; digits are read as
1x8x8 images, every other data set as flat (D,) feature vectors.
"""

from __future__ import annotations

import argparse

from nn_parity import scratch
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


def plan_layered(args: argparse.Namespace):
    """(plan, network): the data shaped for the network, the loss, the network; bad input
    refused with the flag it came from."""
    from nn_parity.scratch.sequential import from_spec
    from nn_parity.torch_ref.engine.budget import check_steps
    from nn_parity.torch_ref.engine.setup import run_length
    from nn_parity.torch_ref.frontends.datasets import AdvisedError, load_dataset

    given = [f for key, f in _NOT_WITH_SPEC.items() if getattr(args, key, None) is not None]
    given += ["--no-bias"] * (not args.bias)
    if given:
        raise UsageError(f"{given[0]} does not apply with a layer spec in --layers")
    asked = scratch.get_loss(args.loss, args.reduction) if args.loss else None
    try:
        task = asked.task if asked else None
        ds = load_dataset(args.data, seed=args.seed, label_column=args.label_column,
                          standardized=args.standardize, task=task)  # fmt: skip
    except AdvisedError as err:
        raise UsageError(err.cli) from None
    shape = _IMAGES.get(ds.name, (ds.X.shape[1],))
    try:
        net = from_spec(args.layers, shape, dtype=args.dtype, rng=args.seed)
    except ValueError as err:
        raise UsageError(f"--layers {args.layers}: {err}") from None
    out = net.shapes[-1]
    if len(out) != 1 or out[0] != ds.n_outputs:
        raise UsageError(
            f"--layers {args.layers} ends with output shape {out}, but the data "
            f"{args.data!r} needs ({ds.n_outputs},): end with flatten,affine{ds.n_outputs}"
        )
    loss = asked or scratch.get_loss(_DEFAULT_LOSS[ds.task], args.reduction)
    steps = run_length(args.steps, args.batch_size, args.epochs, args.drop_last, len(ds.X))
    check_steps(steps, len(net.layers))
    X = ds.X.reshape(len(ds.X), *shape).astype(net.dtype)
    return {"data": ds, "X": X, "loss": loss, "init": "torch_default", "steps": steps}, net


def run_layered(args: argparse.Namespace) -> int:
    """The run for a layer spec: plan, lockstep, record, verdict (no figure extras: the
    decision boundary and the loss slice are drawn for the built-in MLP only)."""
    from nn_parity.torch_ref.frontends.cli_run import _verdict, _write, out_dir, run_with_progress

    try:
        p, net = plan_layered(args)
        out, note = out_dir(args)
        if args.export is not None:
            from nn_parity.torch_ref.mirror.export import check_export

            check_export(args.export, overwrite=args.overwrite, cli=True)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    result = run_with_progress(args, net, None, p["X"], p["data"].y, p["steps"], p["loss"])
    summary = _write(args, p, result, out, {"summary": {}, "arrays": {}})
    if args.export is not None:
        _export_layered(args, net, p["loss"], summary["passed"])
    return _verdict(args, result, summary, out, note)


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


__all__ = ["is_layer_spec", "plan_layered", "run_layered"]
