"""The `nn-parity` command.

    nn-parity run [options]     train scratch and torch in lockstep, write a report, give a verdict
    nn-parity mutants           the mutation score: the catalogued bugs caught and located

Exit codes: 0 every quantity agreed at every step; 1 they diverged; 2 bad usage or bad input
(one line on stderr, no traceback); 130 interrupted (no report written).
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

EXIT_PASS, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_OUT = "nn-parity-report"


class UsageError(Exception):
    """Bad usage or bad input: reported in one line, exit code 2."""


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
        default="bce",
        help="bce: on sigmoid probabilities; bce-logits: from logits",
    )
    run.add_argument(
        "--reduction",
        choices=["mean", "sum"],
        default="mean",
        help="how the loss combines the batch's per-sample losses, on both sides",
    )
    run.add_argument("--lr", type=_float, default=0.1, help="learning rate")
    run.add_argument("--steps", type=_int, default=100, help="gradient-descent steps")
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
        "--overwrite", action="store_true", help="replace an existing --out folder (default: no)"
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
    from .datasets import load_dataset

    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    try:
        check_lr(args.lr)
    except ValueError as err:
        raise UsageError(f"--lr: {err}") from None
    ds = load_dataset(
        args.data, seed=args.seed, label_column=args.label_column, standardized=args.standardize
    )
    D = ds.X.shape[1]
    exam = ds.name == "exam" and args.data == "exam"
    sizes = _sizes(args.layers) if args.layers else (EXAM_SIZES if exam else [D, 8, 1])
    if sizes[0] != D:
        raise UsageError(f"--layers starts with {sizes[0]} inputs but the data has {D} features")
    if sizes[-1] != 1:
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
    loss = scratch.get_loss(args.loss, args.reduction)
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
    return {"data": ds, "sizes": sizes, "activations": acts, "loss": loss, "init": init}


def build_network(p: dict, args: argparse.Namespace) -> scratch.MLP:
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
    """Where the report goes, and a note when it is not where the user might expect."""
    if args.out is not None:
        out = args.out
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {str(out)!r} exists and is not a folder")
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise UsageError(
                f"--out {str(out)!r} exists and is not empty; "
                "choose another folder or pass --overwrite"
            )
        return out, ""
    out = Path(DEFAULT_OUT)
    k = 2
    while out.exists():
        out = Path(f"{DEFAULT_OUT}-{k}")
        k += 1
    note = f" ({DEFAULT_OUT} exists, so written beside it)" if k > 2 else ""
    return out, note


def check_writable(folder: Path) -> None:
    """Fail before the run, not after it, when the report cannot be written."""
    import os

    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write the report under {str(parent)!r}: it is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write the report: {str(parent)!r} is not writable")


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

    from .engine import lockstep
    from .model import TorchMLP
    from .record import atomic_dir, boundary, gradient_slice, write_record

    try:
        p = plan(args)
        net = build_network(p, args)
        out, note = out_dir(args)
        check_writable(out)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    ref = TorchMLP.from_scratch(net)
    ds, loss = p["data"], p["loss"]
    X = ds.X.astype(net.dtype)

    extras: dict = {"summary": {}, "arrays": {}}
    two_d = X.shape[1] == 2
    if two_d:
        extras["arrays"].update(boundary(net, ref, loss, ds.X, "before"))
    sl = gradient_slice(net, ref, loss, ds.X, ds.y.reshape(-1, 1))
    extras["summary"].update(sl["summary"])
    extras["arrays"].update(sl["arrays"])

    # torch.optim imports its compiler stack on the first step (about 1.5 s); take that cost
    # before the progress bar starts, so the bar's rate is the lockstep's own.
    _warm = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    torch.optim.SGD([_warm], lr=0.0).step()

    bar = progress_bar(args.steps, quiet=args.quiet)
    try:
        result = lockstep(
            net,
            ref,
            X,
            ds.y,
            steps=args.steps,
            lr=args.lr,
            loss=loss,
            stop_at_divergence=args.stop_at_divergence,
            progress=lambda _: bar.update(),
        )
    finally:
        bar.close()
    if two_d:
        extras["arrays"].update(boundary(net, ref, loss, ds.X, "after"))

    config = {
        "steps": args.steps,
        "dtype": args.dtype,
        "architecture": {
            "sizes": p["sizes"],
            "activations": [a.name for a in net.activations],
            "bias": net.bias,
            "init": p["init"],
            "parameters": net.num_params,
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
    if args.quiet:
        verdict = "PASS" if summary["passed"] else "DIVERGED"
        print(f"{verdict}: {summary['steps']} steps, report in {out}{note}")
    else:
        print(reports.summary_text(summary, color=sys.stdout.isatty()))
        print(f"report: {out / 'report.html' if args.figures else out}{note}")
    return EXIT_PASS if summary["passed"] else EXIT_DIVERGED


def mutants() -> int:
    from .mutants import MUTANTS, score

    result = score()
    print(result.table())
    return EXIT_PASS if result.caught == len(MUTANTS) else EXIT_DIVERGED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
