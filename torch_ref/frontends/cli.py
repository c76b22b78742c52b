"""The `nn-parity` command: the parser, `report`, `mutants` and the entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nn_parity import scratch
from nn_parity.scratch.activations import ACTIVATIONS
from nn_parity.scratch.init import INITS
from nn_parity.torch_ref.frontends.cli_conventions import add_arguments as add_conventions
from nn_parity.torch_ref.frontends.cli_layered import is_layer_spec, run_layered
from nn_parity.torch_ref.frontends.cli_run import run
from nn_parity.torch_ref.frontends.datasets import DATASETS
from nn_parity.torch_ref.frontends.usage import (
    DEFAULT_OUT,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_PASS,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Terminated,
    UsageError,
)


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
        help="layer sizes, input to output, e.g. 2,8,8,1 (default: 2,3,1 on exam, D,8,1 "
        "otherwise); or layers, e.g. conv8x3,relu,pool2,flatten,affine10 (digits as 1x8x8 images): "
        "conv<F>x<K>[s<S>][p<P>], pool<K>, affine<H>, bn, ln, dropout[<p>], flatten, activations",
    )
    run.add_argument(
        "--activation",
        help=f"hidden activation(s): one of {', '.join(ACTIVATIONS)} for all hidden layers, or a "
        "comma list, one per hidden layer; leaky_relu:0.2 sets the slope "
        "(default: identity on exam, as the article, tanh otherwise)",
    )
    run.add_argument(
        "--dropout",
        type=_float,
        metavar="P",
        help="dropout with probability P after every hidden activation of the --layers sizes: "
        "they then run as the layer spec they are (64,32,10 with tanh on digits: "
        "flatten,affine32,tanh,dropout0.2,affine10), one mask per step shared by both sides, "
        "torch's default initialisation (default: no dropout)",
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
        choices=["mean", "sum", "samples"],
        default="mean",
        help="how the loss combines the batch's per-sample losses, on both sides: torch's mean, "
        "the sum, or the sum over the samples N (docs/conventions.md)",
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
    add_conventions(run)  # --scale, --l2..., --clip, --schedule, --decay-on
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


def mutants() -> int:
    """The catalogues: whole-network bugs through the lockstep, op-level bugs through the op
    check, bugs between layers through a layered network's lockstep; exit 1 unless every one
    is caught."""
    from nn_parity.torch_ref.mutation.layered import LAYERED_MUTANTS, layered_score
    from nn_parity.torch_ref.mutation.mutants import MUTANTS
    from nn_parity.torch_ref.mutation.op_mutants import OP_MUTANTS, op_score
    from nn_parity.torch_ref.mutation.score import score

    result, ops, layered = score(), op_score(), layered_score()
    print("network bugs, through the lockstep")
    print(result.table())
    print("\nop bugs, through the op check")
    print(ops.table())
    print("\nbugs between layers, through the lockstep of a layered network")
    print(layered.table())
    caught = (result.caught, ops.caught, layered.caught) == (
        len(MUTANTS),
        len(OP_MUTANTS),
        len(LAYERED_MUTANTS),
    )
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
    from nn_parity.reports.destination import Words, atomic_dir, check_destination, is_report_folder

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
        if args.command == "run" and (is_layer_spec(args.layers) or args.dropout is not None):
            return run_layered(args)  # a network of gallery layers: cli_layered.py
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
