"""`nn-parity run`: the plan from the command line, the run, the record and the verdict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from nn_parity import scratch
from nn_parity.scratch.data import EXAM_ACTIVATIONS, EXAM_SIZES, exam_weights
from nn_parity.scratch.optim import check_lr
from nn_parity.torch_ref.frontends.cli_conventions import (
    check_l2_on,
    declared,
    loss_for,
    schedule_and_decay,
)
from nn_parity.torch_ref.frontends.usage import (
    DEFAULT_OUT,
    EXIT_DIVERGED,
    EXIT_FAULT,
    EXIT_PASS,
    UsageError,
)

# the torch.optim options the command line takes, by torch's names
_OPTIMIZER_OPTIONS = (
    "momentum", "dampening", "weight_decay", "eps", "alpha", "lr_decay", "betas", "nesterov",
    "amsgrad", "centered",
)  # fmt: skip


def optimizer_spec(args: argparse.Namespace) -> dict:
    """The one description both sides' optimizers are built from: the name and the options
    given on the command line (the rest keep torch.optim's defaults)."""
    spec = {"name": args.optimizer}
    spec.update({k: getattr(args, k) for k in _OPTIMIZER_OPTIONS if getattr(args, k) is not None})
    return {**spec, **schedule_and_decay(args)}


def load_model(text: str):
    """`PATH.py:FUNCTION` -> what FUNCTION() returns; each failure is one UsageError line."""
    import importlib.util

    path_text, _, name = text.rpartition(":")
    if not path_text or not name:
        raise UsageError(f"--model takes PATH.py:FUNCTION, e.g. mynet.py:make, got {text!r}")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--model: no file {path_text!r}")
    spec = importlib.util.spec_from_file_location(f"_nn_parity_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--model: {path_text!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # its own imports, beside it
    argv, sys.argv = sys.argv, [path_text]  # an argparse call at import sees no nn-parity flags
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: any failure is theirs to read, in one line
        raise UsageError(
            f"--model: importing {path_text} failed: {type(err).__name__}: {err}"
        ) from None
    except SystemExit as err:  # never a silent exit 0: nothing was checked
        raise UsageError(f"--model: importing {path_text} called sys.exit({err.code!r})") from None
    finally:
        sys.argv = argv
        sys.path.pop(0)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UsageError(f"--model: {path_text} has no function {name!r}")
    try:
        return factory()
    except Exception as err:
        raise UsageError(f"--model: {name}() raised {type(err).__name__}: {err}") from None
    except SystemExit as err:
        raise UsageError(f"--model: {name}() called sys.exit({err.code!r})") from None


def _sizes(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise UsageError(
            f"--layers must be comma-separated whole numbers like 2,8,1, got {text!r}"
        ) from None
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise UsageError(f"--layers needs at least two sizes, all >= 1, got {text!r}")
    return sizes


def plan(args: argparse.Namespace) -> dict:
    """Everything the run needs, checked; raises UsageError or ValueError on bad input."""
    from nn_parity.torch_ref.frontends.datasets import AdvisedError, load_dataset

    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    try:
        check_lr(args.lr)
    except ValueError as err:
        raise UsageError(f"--lr: {err}") from None
    asked = loss_for(args, args.loss) if args.loss else None
    try:
        ds = load_dataset(
            args.data,
            seed=args.seed,
            label_column=args.label_column,
            standardized=args.standardize,
            task=asked.task if asked else None,
        )
    except AdvisedError as err:
        raise UsageError(err.cli) from None
    D = ds.X.shape[1]
    loss = asked or loss_for(args, _DEFAULT_LOSS[ds.task])
    if args.model is not None:
        return _checked_size(_plan_model(args, ds), args)
    exam = ds.name == "exam" and args.data == "exam"
    default_sizes = EXAM_SIZES if exam else [D, 8, ds.n_outputs]
    sizes = _sizes(args.layers) if args.layers else default_sizes
    if sizes[0] != D:
        raise UsageError(f"--layers starts with {sizes[0]} inputs but the data has {D} features")
    if loss.name in ("bce", "bce-logits") and sizes[-1] != 1:
        raise UsageError(
            f"--layers must end with 1 output for binary cross-entropy, got {sizes[-1]}"
        )
    hidden = len(sizes) - 2
    default_act = "identity" if exam and sizes == EXAM_SIZES else "tanh"
    acts = [a.strip() for a in (args.activation or default_act).split(",")]
    if len(acts) == 1:
        acts = acts * hidden
    elif len(acts) != hidden:
        raise UsageError(f"--activation lists {len(acts)} activations for {hidden} hidden layers")
    acts = [*acts, loss.output_activation]
    article = exam and sizes == EXAM_SIZES and acts == EXAM_ACTIVATIONS and args.bias
    init = args.init or ("article" if article and args.weights is None else "xavier_uniform")
    if args.weights is not None:
        if args.init is not None:
            raise UsageError("give --weights or --init, not both")
        init = f"file {args.weights}"
    if init == "article" and not (exam and sizes == EXAM_SIZES and args.bias):
        raise UsageError(
            "--init article sets the article's weights: only with --data exam and --layers 2,3,1"
        )
    check_l2_on(loss, sizes, args.bias)
    p = {"data": ds, "sizes": sizes, "activations": acts, "loss": loss, "init": init}
    return _checked_size(p, args)


def _checked_size(p: dict, args: argparse.Namespace) -> dict:
    """The plan, once its network and its per-step records are known to fit in memory."""
    from nn_parity.torch_ref.engine.budget import check_network, check_steps
    from nn_parity.torch_ref.engine.setup import run_length

    n = len(p["data"].X)
    if args.epochs is not None and args.batch_size is None:
        raise UsageError("--epochs needs --batch-size; full-batch runs count --steps")
    steps = run_length(args.steps, args.batch_size, args.epochs, args.drop_last, n)
    check_steps(steps, len(p["sizes"]) - 1)
    try:
        check_network(p["sizes"], n, np.dtype(args.dtype).itemsize)
    except ValueError as err:
        raise UsageError(f"--layers {args.layers}: {err}") from None
    return p


_DEFAULT_LOSS = {"binary": "bce", "multiclass": "ce", "regression": "mse"}


_ARCHITECTURE_FLAGS = {
    "layers": "--layers", "activation": "--activation", "init": "--init",
    "weights": "--weights",
}  # fmt: skip


def _plan_model(args: argparse.Namespace, ds) -> dict:
    """The plan for the user's own network: its architecture is its own."""
    from nn_parity.torch_ref.user.layout import resolve_layout
    from nn_parity.torch_ref.user.network import UserNetwork

    given = [flag for key, flag in _ARCHITECTURE_FLAGS.items() if getattr(args, key) is not None]
    if not args.bias:
        given.append("--no-bias")
    if given:
        raise UsageError(f"{given[0]} does not apply with --model: your network sets it")
    net = load_model(args.model)
    if isinstance(net, UserNetwork):
        if net.pmap is None:
            X = ds.X.astype(net.dtype)
            resolve_layout(net, X, ds.y)
        if declared(args):
            raise UsageError(
                f"--{next(iter(declared(args))).replace('_', '-')} does not apply with --model "
                "returning adapted "
                "code: declare the cost in adapt(..., loss=get_loss(...))"
            )
        desc, loss = net.description(), net.loss
    elif isinstance(net, scratch.MLP):
        desc = net
        loss = loss_for(args, args.loss or _DEFAULT_LOSS[ds.task])
    else:
        raise UsageError(
            f"--model: {args.model} returned a {type(net).__name__}; expected a network adapted "
            "with nn_parity.torch_ref.adapt(...) or a scratch.MLP"
        )
    if desc.sizes[0] != ds.X.shape[1]:
        raise UsageError(
            f"--model: {args.model} returned a network taking {desc.sizes[0]} inputs, but the "
            f"data {args.data!r} has {ds.X.shape[1]} features"
        )
    return {
        "data": ds, "sizes": desc.sizes, "activations": [a.name for a in desc.activations],
        "loss": loss, "init": f"yours ({args.model})", "net": net, "desc": desc,
    }  # fmt: skip


def build_network(p: dict, args: argparse.Namespace):
    if "net" in p:
        return p["net"]
    if p["init"] == "article":
        return scratch.MLP.from_weights(exam_weights(), p["activations"], dtype=args.dtype)
    rng = np.random.default_rng(args.seed)
    if args.weights is not None:
        from nn_parity.torch_ref.mirror.weights import load_weights

        net = scratch.MLP(p["sizes"], p["activations"], bias=args.bias, dtype=args.dtype)
        state = load_weights(args.weights)  # its errors name the file
        try:
            net.load_state_dict(state)
        except (ValueError, TypeError) as err:
            raise UsageError(f"--weights {args.weights}: {err}") from None
        return net
    return scratch.MLP(
        p["sizes"], p["activations"], bias=args.bias, dtype=args.dtype, init=p["init"], rng=rng
    )


def out_dir(args: argparse.Namespace) -> tuple[Path, str]:
    """Where the report goes, checked, and a note when it is not where the user might expect."""
    from nn_parity.reports.destination import Words, check_destination, is_report_folder

    if args.out is not None:
        words = Words("--out", "the report", "--overwrite")
        check_destination(args.out, words, overwrite=args.overwrite, owned=is_report_folder)
        return args.out, ""
    out = Path(DEFAULT_OUT)
    k = 2
    while out.exists() or out.is_symlink():
        out = Path(f"{DEFAULT_OUT}-{k}")
        k += 1
    check_destination(out, Words("--out", "the report", None))
    note = f" ({DEFAULT_OUT} exists, so written beside it)" if k > 2 else ""
    return out, note


def progress_bar(total: int, *, quiet: bool, stream=None):
    """The lockstep's progress bar, on stderr, drawn only on a terminal: in a log file or a CI
    capture each redraw would be one more line. It appears after a second, so a quick run
    prints nothing but its result."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    return tqdm(
        total=total,
        desc="lockstep",
        unit="step",
        delay=1.0,
        disable=quiet or not stream.isatty(),
        file=stream,
        leave=False,
    )


def run(args: argparse.Namespace) -> int:
    """`nn-parity run`: plan, figure data, the lockstep, the record, the verdict."""
    p, net, out, note = _plan_all(args)
    desc = p.get("desc", net)  # the built-in network the user's computes, for the figures
    extras, two_d = _figure_data(desc, p)
    result = _run_lockstep(args, p, net, desc)
    if two_d:
        if "desc" in p and hasattr(net, "get_params"):
            desc.load_state_dict(net.get_params(), finite=False)  # as trained, even blown up
        extras["arrays"].update(_boundary(desc, p, "after"))
    summary = _write(args, p, result, out, extras)
    if args.export is not None:
        _export(args, p, net, p["loss"], summary["passed"])
    return _verdict(args, result, summary, out, note)


def _plan_all(args: argparse.Namespace):
    """The plan, the network and the destination, every input checked before the run."""
    try:
        p = plan(args)
        net = build_network(p, args)
        out, note = out_dir(args)
        if args.export is not None:
            from nn_parity.torch_ref.mirror.export import check_export

            check_export(args.export, overwrite=args.overwrite, cli=True)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    return p, net, out, note


def _boundary(desc, p: dict, when: str) -> dict:
    from nn_parity.torch_ref.frontends.figure_data import boundary
    from nn_parity.torch_ref.mirror.model import TorchMLP

    return boundary(desc, TorchMLP.from_scratch(desc), p["loss"], p["data"].X, when)


def _figure_data(desc, p: dict) -> tuple[dict, bool]:
    """What the figures need beyond the record: the decision boundary before training (on two
    features: P(class 1), or the predicted class over C) and a slice through the loss."""
    from nn_parity.torch_ref.frontends.figure_data import gradient_slice
    from nn_parity.torch_ref.mirror.model import TorchMLP

    ds, loss = p["data"], p["loss"]
    extras: dict = {"summary": {}, "arrays": {}}
    two_d = ds.X.shape[1] == 2 and loss.task in ("binary", "multiclass")
    if two_d:
        extras["arrays"].update(_boundary(desc, p, "before"))
    try:
        targets = loss.targets(ds.y, desc.sizes[-1], "float64")
    except ValueError as err:
        raise UsageError(str(err)) from None
    sl = gradient_slice(desc, TorchMLP.from_scratch(desc), loss, ds.X, targets)
    extras["summary"].update(sl["summary"])
    extras["arrays"].update(sl["arrays"])
    return extras, two_d


def _run_lockstep(args: argparse.Namespace, p: dict, net, desc):
    import torch
    from nn_parity.torch_ref.engine.setup import run_length
    from nn_parity.torch_ref.mirror.model import TorchMLP

    ds, loss = p["data"], p["loss"]
    X = ds.X.astype(desc.dtype)
    # torch.optim imports its compiler stack on the first step (about 1.5 s); take that cost
    # before the progress bar starts, so the bar's rate is the lockstep's own.
    _warm = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    torch.optim.SGD([_warm], lr=0.0).step()
    try:
        steps = run_length(args.steps, args.batch_size, args.epochs, args.drop_last, len(X))
    except ValueError as err:
        raise UsageError(str(err)) from None
    loss = None if "desc" in p else loss
    return run_with_progress(args, net, TorchMLP.from_scratch(desc), X, ds.y, steps, loss)


def run_with_progress(args: argparse.Namespace, net, ref, X, y, steps: int, loss):
    """The lockstep with the command line's options and a progress bar; bad input as one
    UsageError line."""
    from nn_parity.torch_ref.engine.loop import lockstep

    bar = progress_bar(steps, quiet=args.quiet)
    try:
        return lockstep(
            net, ref, X, y, steps=steps, lr=args.lr, loss=loss, optimizer=optimizer_spec(args),
            batch_size=args.batch_size, epochs=args.epochs, drop_last=args.drop_last,
            seed=args.seed, stop_at_divergence=args.stop_at_divergence,
            progress=lambda _: bar.update(),
        )  # fmt: skip
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    finally:
        bar.close()


def _write(args: argparse.Namespace, p: dict, result, out: Path, extras: dict) -> dict:
    """The record (and, unless --no-figures, the figures and report.html), atomically."""
    from nn_parity import reports
    from nn_parity.reports.destination import atomic_dir
    from nn_parity.torch_ref.record import write_record

    ds = p["data"]
    data = {"name": ds.name, "samples": int(ds.X.shape[0]), "features": int(ds.X.shape[1]),
            "feature_names": ds.feature_names, "source": ds.source}  # fmt: skip
    try:
        with atomic_dir(out, overwrite=args.overwrite) as tmp:
            checked = _checked_in_words(args, p, result)
            summary = write_record(tmp, result, data=data, init=p["init"], y=ds.y,
                                   checked=checked, extras=extras)  # fmt: skip
            if args.figures:
                reports.render(tmp)
    except OSError as err:
        raise UsageError(
            f"cannot write the report to {str(out)!r}: {err.strerror or err}"
        ) from None
    return summary


def _verdict(args: argparse.Namespace, result, summary: dict, out: Path, note: str) -> int:
    from nn_parity import reports

    if args.quiet:
        print(f"{reports.text.verdict(summary)}: {summary['steps']} steps, report in {out}{note}")
    else:
        print(reports.summary_text(summary, color=sys.stdout.isatty()))
        print(f"report: {out / 'report.html' if args.figures else out}{note}")
    if result.fault is not None:
        print(f"nn-parity: {reports.text.fault_line(summary)}", file=sys.stderr)
        return EXIT_FAULT
    return EXIT_PASS if summary["passed"] else EXIT_DIVERGED


def _export(args: argparse.Namespace, p: dict, net, loss, passed: bool) -> None:
    """--export after the run: only a network that agreed is written; otherwise say so."""
    from nn_parity.torch_ref.mirror.export import export

    if not passed:
        print(f"nn-parity: --export skipped: scratch and torch diverged, so {str(args.export)!r} "
              "was not written", file=sys.stderr)  # fmt: skip
        return
    desc = p.get("desc", net)
    if "desc" in p and hasattr(net, "get_params"):
        desc.load_state_dict(net.get_params())
    spec = loss.name if loss.name in ("bce", "bce-logits", "mse") else None
    try:
        written = export(desc, args.export, loss=spec, overwrite=args.overwrite, _cli=True)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(
            f"--export: cannot write {str(args.export)!r}: {err.strerror or err}; nothing "
            "was written there"
        ) from None
    print(f"exported: {written.module} (test: {written.test})")


def _checked_in_words(args: argparse.Namespace, p: dict, result) -> dict:
    """What this run checked, in words a learner cannot misread."""
    checked = dict(result.checked)
    if "desc" in p:
        checked["side"] = f"your network from {args.model}: {checked['side']}"
    elif args.weights is not None:
        checked["side"] = (
            f"nn-parity's built-in network started from your weights in {args.weights}: this "
            "checks nn-parity's backprop on your weights, not your own code (--model does)"
        )
    else:
        checked["side"] = "nn-parity's built-in network"
    return checked
