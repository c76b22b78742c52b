"""The `nn-parity` command.

    nn-parity run [options]     train scratch and torch in lockstep, write a report, give a verdict
    nn-parity mutants           the mutation score: the catalogued bugs caught and located
    nn-parity report RECORD_DIR draw the figures and report.html of a saved run record

Exit codes: 0 every quantity agreed at every step; 1 they diverged; 2 bad usage or bad input
(one line on stderr, no traceback); 3 the user's code failed mid-run (raised, called sys.exit,
or returned a value that breaks the contract): the steps before it are in the report; 130
interrupted, 143 terminated (SIGTERM): no report written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from nn_parity import scratch
from nn_parity.scratch.activations import ACTIVATIONS
from nn_parity.scratch.data import EXAM_ACTIVATIONS, EXAM_SIZES, exam_weights
from nn_parity.scratch.init import INITS
from nn_parity.scratch.optim import check_lr

from .datasets import DATASETS

EXIT_PASS, EXIT_DIVERGED, EXIT_USAGE, EXIT_FAULT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 128 + 15  # SIGTERM, as 130 is 128 + SIGINT
DEFAULT_OUT = "nn-parity-report"


class UsageError(Exception):
    """Bad usage or bad input: reported in one line, exit code 2."""


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that a half-written report is removed on the way out."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line and exit 2, as ours
        raise UsageError(message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it informs: not None (the help says what happens instead),
    not for on/off flags (their help says which way they switch), not twice."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "(default" in text
            or action.default is None
            or isinstance(action.default, bool)
            or action.nargs == 0  # store_true / store_false and friends
        ):
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nn-parity",
        description="Train a from-scratch NumPy network and its PyTorch mirror side by side, "
        "compare them at every step, and report where they part.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser(
        "run",
        help="run the lockstep and write the report",
        description="Run scratch and torch in lockstep with full-batch gradient descent and "
        "write a report folder. With no options: the seed article's four students through its "
        "2-3-1 network.",
        formatter_class=_HelpFormatter,
    )
    run.add_argument(
        "--data",
        default="exam",
        help=f"{' | '.join(DATASETS)} | a path to a CSV file (numeric features, 0/1 label)",
    )
    run.add_argument(
        "--label-column",
        help="CSV label column: a header name or 0-based index (default: the last)",
    )
    run.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scale features to zero mean, unit variance (default: on for breast-cancer and CSV)",
    )
    run.add_argument(
        "--layers",
        help="layer sizes, input to output, e.g. 2,8,8,1 (default: 2,3,1 on exam, D,8,1 otherwise)",
    )
    run.add_argument(
        "--activation",
        help=f"hidden activation(s): one of {', '.join(ACTIVATIONS)} for all hidden layers, or a "
        "comma list, one per hidden layer; leaky_relu:0.2 sets the slope "
        "(default: identity on exam, as the article, tanh otherwise)",
    )
    run.add_argument(
        "--no-bias",
        dest="bias",
        action="store_false",
        help="layers without bias terms (default: with biases)",
    )
    run.add_argument(
        "--loss",
        choices=list(scratch.LOSSES),
        help="bce: binary, on sigmoid probabilities; bce-logits: binary, from logits; ce: "
        "softmax cross-entropy over C classes from logits; nll: on log-softmax outputs; mse: "
        "regression (default: bce, ce or mse, by the data's task)",
    )
    run.add_argument(
        "--reduction",
        choices=["mean", "sum"],
        default="mean",
        help="how the loss combines the batch's per-sample losses, on both sides",
    )
    run.add_argument("--lr", type=_float, default=0.1, help="learning rate")
    run.add_argument(
        "--steps",
        type=_int,
        help="training steps (default: 100 full-batch steps; with --batch-size, every batch of "
        "--epochs)",
    )
    run.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default="float64",
        help="floating-point type of both networks and the data; float32 is compared with "
        "its own, looser tolerances",
    )
    run.add_argument("--seed", type=_int, default=0, help="seed for the data and the weights")
    run.add_argument(
        "--init",
        choices=["article", *INITS],
        help="weight initialisation (default: article, the hand-set weights, on exam 2-3-1; "
        "xavier_uniform otherwise)",
    )
    run.add_argument(
        "--out",
        type=Path,
        help=f"report folder (default: ./{DEFAULT_OUT}, or -2, -3, ... beside an existing one)",
    )
    run.add_argument(
        "--weights",
        type=Path,
        help="start from these weights: a .npz (scratch.weights.save_npz) or a torch state dict "
        ".pt; names and shapes must fit --layers",
    )
    run.add_argument(
        "--model",
        metavar="PATH.py:FUNCTION",
        help="check your own network: FUNCTION() in PATH.py returns it adapted with "
        "nn_parity.torch_ref.adapt(...) (or a scratch.MLP); --layers, --activation, --init, "
        "--weights and --no-bias then come from it",
    )
    opt = run.add_argument_group(
        "optimizer and batches",
        "torch.optim's names and defaults; an option the chosen optimizer does not take is an "
        "error. Given once, they build both sides' optimizers.",
    )
    opt.add_argument(
        "--optimizer",
        default="sgd",
        help="sgd | adam | adamw | rmsprop | adagrad (default: sgd)",
    )
    for flag, kind, what in (
        ("--momentum", _float, "sgd, rmsprop: momentum factor"),
        ("--dampening", _float, "sgd: dampening for momentum"),
        ("--weight-decay", _float, "L2 penalty (adamw: decoupled decay)"),
        ("--eps", _float, "adam, adamw, rmsprop, adagrad: term added to the denominator"),
        ("--alpha", _float, "rmsprop: smoothing constant"),
        ("--lr-decay", _float, "adagrad: learning-rate decay"),
    ):
        opt.add_argument(flag, type=kind, help=what)
    opt.add_argument("--betas", type=_pair, help="adam, adamw: two coefficients, e.g. 0.9,0.999")
    for flag, what in (
        ("--nesterov", "sgd: Nesterov momentum"),
        ("--amsgrad", "adam, adamw: the AMSGrad variant"),
        ("--centered", "rmsprop: centered (normalised by the gradient's variance)"),
    ):
        opt.add_argument(flag, action="store_true", default=None, help=what)
    opt.add_argument(
        "--batch-size",
        type=_int,
        help="mini-batches of this size, one seeded permutation per epoch shared by both sides "
        "(default: the whole data set every step)",
    )
    opt.add_argument(
        "--epochs", type=_int, help="passes over the data with --batch-size (default: 1)"
    )
    opt.add_argument(
        "--drop-last",
        action="store_true",
        help="drop each epoch's last, partial batch (default: keep it)",
    )
    run.add_argument(
        "--export",
        metavar="DIR",
        type=Path,
        help="after the run, write the network as framework code into DIR: a torch module file, "
        "its trained weights (.pt) and a pytest file checking the two against the NumPy math",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out folder or --export files that nn-parity wrote earlier; never "
        "another folder (default: no)",
    )
    run.add_argument(
        "--stop-at-divergence",
        action="store_true",
        help="stop at the first divergence (default: run every step)",
    )
    run.add_argument(
        "--quiet",
        action="store_true",
        help="print only the verdict line, no progress bar (default: the summary)",
    )
    run.add_argument(
        "--no-figures",
        dest="figures",
        action="store_false",
        help="write the record only (summary.json, metrics.csv, record.npz): no PNGs, no "
        "report.html; for CI, where only the verdict and the numbers are read (default: "
        "figures and report.html are written)",
    )
    sub.add_parser(
        "mutants",
        help="run the lockstep on the catalogue of hand-derivation bugs and print the score",
        description="Run the lockstep on every catalogued hand-derivation bug; exit 1 unless "
        "every one is caught.",
    )
    add_report_parser(sub)
    return parser


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two numbers like 0.9,0.999, got {text!r}"
        ) from None
    return a, b


_OPTIMIZER_OPTIONS = (
    "momentum", "dampening", "weight_decay", "eps", "alpha", "lr_decay", "betas", "nesterov",
    "amsgrad", "centered",
)  # fmt: skip


def optimizer_spec(args: argparse.Namespace) -> dict:
    """The one description both sides' optimizers are built from: the name and the options
    given on the command line (the rest keep torch.optim's defaults)."""
    spec = {"name": args.optimizer}
    spec.update({k: getattr(args, k) for k in _OPTIMIZER_OPTIONS if getattr(args, k) is not None})
    return spec


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
    from .datasets import AdvisedError, load_dataset

    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    try:
        check_lr(args.lr)
    except ValueError as err:
        raise UsageError(f"--lr: {err}") from None
    asked = scratch.get_loss(args.loss, args.reduction) if args.loss else None
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
    loss = asked or scratch.get_loss(_DEFAULT_LOSS[ds.task], args.reduction)
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
    p = {"data": ds, "sizes": sizes, "activations": acts, "loss": loss, "init": init}
    return _checked_size(p, args)


def _checked_size(p: dict, args: argparse.Namespace) -> dict:
    """The plan, once its network and its per-step records are known to fit in memory."""
    from .budget import check_network, check_steps
    from .engine import run_length

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
    from .adapter import UserNetwork, resolve_layout

    given = [flag for key, flag in _ARCHITECTURE_FLAGS.items() if getattr(args, key) is not None]
    if not args.bias:
        given.append("--no-bias")
    if given:
        raise UsageError(f"{given[0]} does not apply with --model: your network sets it")
    net = load_model(args.model)
    if isinstance(net, UserNetwork):
        if net.pmap is None:
            X = ds.X.astype(net.dtype)
            resolve_layout(net, X, ds.y, 1 if net.loss.name.startswith("bce") else None)
        assert net.pmap is not None
        desc, loss = net.description(), net.loss
    elif isinstance(net, scratch.MLP):
        desc = net
        loss = scratch.get_loss(args.loss or _DEFAULT_LOSS[ds.task], args.reduction)
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
        from .weights import load_weights

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
    from .record import Words, check_destination, is_report_folder

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
    import torch
    from nn_parity import reports

    from .engine import lockstep, run_length
    from .model import TorchMLP
    from .record import atomic_dir, boundary, gradient_slice, write_record

    try:
        p = plan(args)
        net = build_network(p, args)
        out, note = out_dir(args)
        if args.export is not None:
            from .export import check_export

            check_export(args.export, overwrite=args.overwrite, cli=True)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    desc = p.get("desc", net)  # the built-in network the user's computes, for the figures
    ref = TorchMLP.from_scratch(desc)
    ds, loss = p["data"], p["loss"]
    X = ds.X.astype(desc.dtype)

    extras: dict = {"summary": {}, "arrays": {}}
    # the decision-boundary figure: P(class 1), or the predicted class over C, on two features
    two_d = X.shape[1] == 2 and loss.task in ("binary", "multiclass")
    if two_d:
        extras["arrays"].update(boundary(desc, ref, loss, ds.X, "before"))
    try:
        targets = loss.targets(ds.y, desc.sizes[-1], "float64")
    except ValueError as err:
        raise UsageError(str(err)) from None
    sl = gradient_slice(desc, ref, loss, ds.X, targets)
    extras["summary"].update(sl["summary"])
    extras["arrays"].update(sl["arrays"])

    # torch.optim imports its compiler stack on the first step (about 1.5 s); take that cost
    # before the progress bar starts, so the bar's rate is the lockstep's own.
    _warm = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    torch.optim.SGD([_warm], lr=0.0).step()

    try:
        steps = run_length(args.steps, args.batch_size, args.epochs, args.drop_last, len(X))
    except ValueError as err:
        raise UsageError(str(err)) from None
    bar = progress_bar(steps, quiet=args.quiet)
    try:
        result = lockstep(
            net,
            ref,
            X,
            ds.y,
            steps=steps,
            lr=args.lr,
            loss=None if "desc" in p else loss,
            optimizer=optimizer_spec(args),
            batch_size=args.batch_size,
            epochs=args.epochs,
            drop_last=args.drop_last,
            seed=args.seed,
            stop_at_divergence=args.stop_at_divergence,
            progress=lambda _: bar.update(),
        )
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    finally:
        bar.close()
    if two_d:
        if "desc" in p and hasattr(net, "get_params"):
            desc.load_state_dict(net.get_params(), finite=False)  # as trained, even blown up
        extras["arrays"].update(boundary(desc, ref, loss, ds.X, "after"))

    config = {
        "steps": steps,
        "dtype": desc.dtype.name,
        "architecture": {
            "sizes": p["sizes"],
            "activations": [a.name for a in desc.activations],
            "bias": desc.bias,
            "init": p["init"],
            "parameters": desc.num_params,
        },
        "optimizer": optimizer_spec(args),
        "batches": {
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "drop_last": args.drop_last,
        },
        "data": {
            "name": ds.name,
            "samples": int(X.shape[0]),
            "features": int(X.shape[1]),
            "feature_names": ds.feature_names,
            "source": ds.source,
        },
        "loss": loss.name,
        "reduction": loss.reduction,
        "lr": args.lr,
        "seed": args.seed,
        "y": ds.y,
        "checked": _checked_in_words(args, p, result),
    }
    try:
        with atomic_dir(out, overwrite=args.overwrite) as tmp:
            summary = write_record(tmp, result, config, extras)
            if args.figures:
                reports.render(tmp)
    except OSError as err:
        raise UsageError(
            f"cannot write the report to {str(out)!r}: {err.strerror or err}"
        ) from None
    if args.export is not None:
        _export(args, p, net, loss, summary["passed"])
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
    from .export import export

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


def mutants() -> int:
    """Both catalogues: whole-network bugs through the lockstep, op-level bugs through the op
    check; exit 1 unless every one is caught."""
    from .mutants import MUTANTS, score
    from .op_mutants import OP_MUTANTS, op_score

    result, ops = score(), op_score()
    print("network bugs, through the lockstep")
    print(result.table())
    print("\nop bugs, through the op check")
    print(ops.table())
    caught = result.caught == len(MUTANTS) and ops.caught == len(OP_MUTANTS)
    return EXIT_PASS if caught else EXIT_DIVERGED


def add_report_parser(sub) -> None:
    rep = sub.add_parser(
        "report",
        help="draw the figures and report.html of a saved run record",
        description="Draw the figures and report.html from a run record, e.g. one written by "
        "`nn-parity run --no-figures` in CI: the same files a run with figures writes. Exit 0 "
        "when drawn, 2 on bad input.",
    )
    rep.add_argument(
        "record",
        type=Path,
        metavar="RECORD_DIR",
        help="a folder written by `nn-parity run` (summary.json, metrics.csv, record.npz)",
    )
    rep.add_argument(
        "--out",
        type=Path,
        help="write a copy of the record with its report here (a new or empty folder) "
        "instead of drawing into RECORD_DIR",
    )


def report(args: argparse.Namespace) -> int:
    """Draw a saved record's figures and report.html: into RECORD_DIR, or a copy at --out.

    Either way the folder is assembled under a temporary name and renamed into place, so an
    interrupted drawing leaves the record as it was.
    """
    import shutil

    from nn_parity import reports

    from .record import Words, atomic_dir, check_destination, is_report_folder

    src: Path = args.record
    _check_record_dir(src)
    if args.out is not None:
        try:
            check_destination(args.out, Words("--out", "the report", None), owned=is_report_folder)
        except ValueError as err:
            raise UsageError(str(err)) from None
    try:
        reports.load_record(src)  # checked: a record that cannot be drawn is refused here
    except (OSError, ValueError) as err:  # unreadable, or a field that does not fit
        raise UsageError(f"cannot read the record in {str(src)!r}: {err}") from None
    out: Path = args.out if args.out is not None else src
    try:
        with atomic_dir(out, overwrite=args.out is None) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            reports.render(tmp)
    except OSError as err:
        reason = err.strerror or err
        raise UsageError(f"cannot write the report to {str(out)!r}: {reason}") from None
    print(f"report: {out / 'report.html'}")
    return EXIT_PASS


def _check_record_dir(src: Path) -> None:
    """RECORD_DIR: an existing folder with a summary.json, no links out of it, not '.'."""
    import os

    if not src.exists():
        raise UsageError(f"RECORD_DIR {str(src)!r} does not exist")
    if not src.is_dir():
        raise UsageError(f"RECORD_DIR {str(src)!r} is not a folder")
    if not (src / "summary.json").is_file():
        raise UsageError(
            f"{str(src)!r} is not a run record: it has no summary.json (see docs/record.md)"
        )
    if src.name in ("", ".", ".."):
        raise UsageError(
            f"RECORD_DIR {str(src)!r} cannot be drawn in place (it would replace the folder "
            "you are in); name it from outside, e.g. ../NAME, or pass --out NEW_FOLDER"
        )
    links = [
        str(Path(root, name).relative_to(src))
        for root, dirs, files in os.walk(src)
        for name in dirs + files
        if Path(root, name).is_symlink()
    ]
    if links:
        raise UsageError(
            f"RECORD_DIR {str(src)!r} holds symbolic links ({', '.join(sorted(links)[:3])}); "
            "a report never follows links out of its record: remove them"
        )


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        previous = None
    try:
        args = parser.parse_args(argv)
        if args.command == "report":
            return report(args)
        return run(args) if args.command == "run" else mutants()
    except UsageError as err:
        print(f"nn-parity: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "nn-parity: interrupted; no report written (any earlier report is intact)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Terminated:
        print(
            "nn-parity: terminated; no report written (any earlier report is intact)",
            file=sys.stderr,
        )
        return EXIT_TERMINATED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up is not interrupted
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
