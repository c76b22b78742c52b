"""A run's record: the numbers a lockstep run produced, written once (see docs/record.md).

Everything shown afterwards (terminal summary, figures, report.html) is drawn from these files.
The folder is written under a temporary name beside its destination and renamed into place
only when complete, so an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import io
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.reports import RECORD_FORMAT, json_safe
from nn_parity.scratch.gradcheck import loss_fn, numerical_gradient

from .compare import TOLERANCES
from .engine import LockstepResult
from .model import TorchMLP, torch_loss, torch_probabilities

__all__ = [
    "Words", "atomic_dir", "boundary", "check_destination", "gradient_slice", "is_report_folder",
    "summary_dict", "write_record",
]  # fmt: skip


def versions() -> dict[str, str]:
    try:
        ours = metadata.version("nn-parity")
    except metadata.PackageNotFoundError:
        ours = "unknown (not installed)"
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "nn_parity": ours,
    }


def summary_dict(result: LockstepResult, config: dict, extras: dict) -> dict:
    """The summary.json object: config, verdict, tolerances, errors, first divergence."""
    worst = result.worst()
    dtype = config["dtype"]
    eps = float(np.finfo(dtype).eps)
    quantities = {}
    judged = result.judged
    for k, item in enumerate(result.items):
        failing = np.flatnonzero(~judged[:, k])
        quantities[item.label] = {
            "quantity": item.quantity,
            "layer": item.layer,
            **worst[item.label],
            # the smallest pure atol (rtol = 0) that would have passed, in units of epsilon
            "max_abs_eps": worst[item.label]["max_abs"] / eps,
            "first_failing_step": int(failing[0]) if failing.size else None,
        }
    return {
        "format": RECORD_FORMAT,
        "passed": result.passed,
        "steps": result.steps,
        "steps_requested": config["steps"],
        "dtype": dtype,
        "architecture": config["architecture"],
        "data": config["data"],
        "loss": config["loss"],
        "reduction": config["reduction"],
        "lr": config["lr"],
        "optimizer": config.get("optimizer", {"name": "sgd"}),
        "batches": config.get("batches", {"batch_size": None, "epochs": None, "drop_last": False}),
        "seed": config["seed"],
        "checked": config.get("checked") or result.checked,
        "not_compared": list(result.not_compared),
        "tolerances": {q: by_dtype[dtype].as_dict() for q, by_dtype in TOLERANCES.items()},
        "quantities": quantities,
        "first_divergence": (
            result.first_divergence.as_dict() if result.first_divergence is not None else None
        ),
        "diagnosis": (
            result.first_divergence.diagnosis if result.first_divergence is not None else None
        ),
        "fault": result.fault,
        "kink_steps": list(result.kink_steps),
        "saturation_steps": list(result.saturation_steps),
        "drift_steps": list(result.drift_steps),
        "loss_first": {
            "scratch": float(result.loss_scratch[0]),
            "torch": float(result.loss_torch[0]),
        },
        "loss_last": {
            "scratch": float(result.loss_scratch[-1]),
            "torch": float(result.loss_torch[-1]),
        },
        **extras.get("summary", {}),
        "versions": versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def metrics_csv(result: LockstepResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["step", "loss_scratch", "loss_torch"]
    for label in result.labels:
        header += [f"{label}:max_abs", f"{label}:rel_err"]
    writer.writerow(header)
    cols = np.empty((result.steps, 2 * len(result.items)))
    cols[:, 0::2] = result.max_abs
    cols[:, 1::2] = result.rel_err
    for step in range(result.steps):
        writer.writerow(
            [step, repr(float(result.loss_scratch[step])), repr(float(result.loss_torch[step]))]
            + [repr(float(v)) for v in cols[step]]
        )
    return buf.getvalue()


def write_record(folder: Path, result: LockstepResult, config: dict, extras: dict) -> dict:
    """Write summary.json, metrics.csv and record.npz into `folder`; returns the summary."""
    summary = summary_dict(result, config, extras)
    # strict JSON: a non-finite number is written null (docs/record.md), allow_nan=False proves it
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False)
    (folder / "summary.json").write_text(text + "\n")
    (folder / "metrics.csv").write_text(metrics_csv(result))
    arrays = {"y": config["y"]}
    for when, pair, rows in (
        ("first", result.probs_first, result.rows_first),
        ("last", result.probs_last, result.rows_last),
    ):
        if pair is not None:
            y = np.asarray(config["y"]) if rows is None else np.asarray(config["y"])[rows]
            arrays[f"probs_{when}_scratch"] = _per_sample(pair[0], y)
            arrays[f"probs_{when}_torch"] = _per_sample(pair[1], y)
            if rows is not None:  # a mini-batch: its own labels
                arrays[f"probs_{when}_y"] = y
    arrays.update(extras.get("arrays", {}))
    np.savez(folder / "record.npz", **arrays)
    return summary


def _predicted(p: np.ndarray) -> np.ndarray:
    """The predicted class per row, NaN where the probabilities are not finite."""
    cls = np.argmax(np.nan_to_num(p, nan=-1.0), axis=1).astype(np.float64)
    cls[~np.isfinite(p).all(axis=1)] = np.nan
    return cls


def _per_sample(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One number per sample for the probabilities figure: P(class 1) of a binary output, the
    probability of the true class over C classes, each prediction of a regression."""
    probs = np.asarray(probs)
    if probs.ndim == 2 and probs.shape[1] > 1 and np.asarray(y).dtype.kind in "iu":
        return probs[np.arange(len(probs)), np.asarray(y)]
    return np.ravel(probs)


# the temporary folder beside a destination: "." + name + ".partial-" + mkdtemp's 8 characters
TEMP_EXTRA = len(".") + len(".partial-") + 8
LONGEST_FILE = len("gradient_descent.png") + 12  # room for the files written inside


@dataclass(frozen=True)
class Words:
    """How a destination is named in messages: at the command line or in Python."""

    flag: str  # "--out", "--export", "folder"
    what: str  # "the report", "the export"
    overwrite: str | None  # "--overwrite", "overwrite=True", None: no way to replace


def is_report_folder(folder: Path) -> bool:
    """True when `folder` holds a run record nn-parity wrote: a summary.json object with the
    record's format marker, or (records before the marker) nn-parity's version in it."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(summary, dict):
        return False
    versions = summary.get("versions")
    return summary.get("format") == RECORD_FORMAT or (
        isinstance(versions, dict) and "nn_parity" in versions
    )


def check_destination(path: Path, words: Words, *, overwrite: bool = False, owned=None) -> None:
    """Refuse, before any work, a destination that cannot be written or must not be replaced.

    `owned(folder)` tells whether an existing, non-empty folder is nn-parity's to replace
    (given only when the whole folder is replaced); raises ValueError in one line.
    """
    shown = f"{words.flag} {str(path)!r}"
    if path.name in ("", ".", ".."):
        raise ValueError(f"{shown} names no new folder; give a folder's name, e.g. ./report")
    if path.is_symlink():
        raise ValueError(f"{shown} is a symbolic link; nn-parity never replaces a link: "
                         "choose another path")  # fmt: skip
    if path.exists() and not path.is_dir():
        raise ValueError(f"{shown} exists and is not a folder; nn-parity never replaces a "
                         "file: choose another path")  # fmt: skip
    parent = _check_parent(path, words)
    _check_lengths(path, shown, parent)
    if owned is None or not path.is_dir() or not any(path.iterdir()):
        return
    if not owned(path):
        again = ", even with --overwrite" if overwrite and words.overwrite else ""
        raise ValueError(f"{shown} exists and is not empty, and nn-parity did not write it; "
                         f"refused{again}: choose another folder")  # fmt: skip
    if not overwrite:
        hint = f" or pass {words.overwrite} to replace it" if words.overwrite else ""
        raise ValueError(f"{shown} holds an earlier report; choose another folder{hint}")


def _check_parent(path: Path, words: Words) -> Path:
    """The nearest existing folder above `path` (missing ones are created): a writable folder."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {words.what} under {str(parent)!r}: it is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {words.what}: {str(parent)!r} is not writable")
    return parent


def _check_lengths(path: Path, shown: str, parent: Path) -> None:
    name_max = _pathconf(parent, "PC_NAME_MAX", 255)
    path_max = _pathconf(parent, "PC_PATH_MAX", 4096)
    size = len(os.fsencode(path.name))
    if size + TEMP_EXTRA > name_max:
        raise ValueError(
            f"{shown}: the name is {size} bytes; at most {name_max - TEMP_EXTRA} fit (it is "
            f"written first under a temporary name {TEMP_EXTRA} bytes longer, and names stop "
            f"at {name_max})"
        )
    full = len(os.fsencode(str(path.absolute()))) + TEMP_EXTRA + 1 + LONGEST_FILE
    if full > path_max:
        raise ValueError(f"{shown}: the path is too long ({full} bytes with the files inside; "
                         f"paths stop at {path_max})")  # fmt: skip


def _pathconf(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError):
        return default


@contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False, merge: bool = False) -> Iterator[Path]:
    """A temporary folder beside `final`, renamed to `final` when the block completes.

    overwrite: replace an existing folder `final` (never a link or a file: refused);
    merge: move the files into an existing `final`, each replacing its namesake.
    On any exception, KeyboardInterrupt and SIGTERM included, the temporary folder is removed
    and `final` is left as it was.
    """
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise FileExistsError(errno.EEXIST, "exists and is a file or a link, never replaced")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if merge and final.is_dir():
            for entry in sorted(tmp.iterdir()):
                os.replace(entry, final / entry.name)
            tmp.rmdir()
        elif final.exists() and overwrite:
            _swap(tmp, final)
        else:
            os.rename(tmp, final)  # fails if final appeared meanwhile: never clobber
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, final: Path) -> None:
    """Put `tmp` in the place of the folder `final`; `final` comes back if that fails."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)  # the new folder is in place: done either way


def gradient_slice(
    net: scratch.MLP, ref: TorchMLP, loss: scratch.Loss, X: np.ndarray, Y: np.ndarray
) -> dict:
    """Figure 4's data: the loss along one weight, and each side's slope there, at step 0.

    The weight is the first layer's entry with the steepest scratch gradient. Neither network's
    parameters change.
    """
    name = "layers.0.weight"
    Xd = X.astype(net.dtype)
    Yd = Y.astype(net.dtype) if Y.dtype.kind == "f" else Y  # class indices stay integers
    out, cache = net.forward(Xd)
    _, lcache = loss.forward(out, Yd)
    g_s = net.backward(loss.backward(lcache), cache)[name].copy()
    ref.zero_grad(set_to_none=True)
    torch_loss(loss, dtype=net.dtype)(ref(torch.from_numpy(Xd)), torch.from_numpy(Yd)).backward()
    grad_t = dict(ref.named_parameters())[name].grad
    assert grad_t is not None
    g_t = grad_t.detach().numpy().copy()
    ref.zero_grad(set_to_none=True)
    index = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(g_s)), g_s.shape))

    oracle = scratch.MLP(net.sizes, net.activations, bias=net.bias, dtype="float64")
    oracle.flat_params[...] = net.flat_params
    Y64 = Y.astype(np.float64) if Y.dtype.kind == "f" else Y
    f = loss_fn(oracle, type(loss)(loss.reduction, **loss.options), X.astype(np.float64), Y64)
    fd = float(numerical_gradient(f, oracle.params[name], [index])[index])
    w = oracle.params[name]
    w0 = float(w[index])
    span = max(1.0, 2 * abs(w0))
    points = 81 if X.shape[0] * net.num_params < 10**7 else 21  # big nets: fewer forwards
    ws = np.linspace(w0 - span, w0 + span, points)
    losses = np.empty_like(ws)
    for k, value in enumerate(ws):
        w[index] = value
        losses[k] = f()
    w[index] = w0
    summary = {
        "param": name,
        "index": list(index),
        "value": w0,
        "loss": f(),
        "grad_scratch": float(g_s[index]),
        "grad_torch": float(g_t[index]),
        "grad_fd": fd,
    }
    return {"summary": {"gradient_slice": summary}, "arrays": {"slice_w": ws, "slice_loss": losses}}


def boundary(
    net: scratch.MLP, ref: TorchMLP, loss: scratch.Loss, X: np.ndarray, when: str, grid=100
) -> dict:
    """P(class 1) of both networks over a grid spanning two-feature data; over C classes, the
    class each network predicts (and `boundary_classes` = C)."""
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = 0.15 * (hi - lo) + 1e-9
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid)
    xx, yy = np.meshgrid(gx, gy)  # (G, G), row i at gy[i]
    P = np.stack([xx.ravel(), yy.ravel()], 1).astype(net.dtype)  # (G*G, 2)
    with np.errstate(over="ignore", invalid="ignore"):  # a blown-up run draws as NaN
        p_s = loss.probabilities(net.forward(P)[0])  # (G*G, C)
    with torch.no_grad():
        p_t = torch_probabilities(loss, ref(torch.from_numpy(P))).numpy()  # (G*G, C)
    extra = {}
    if loss.task == "multiclass":
        p_s, p_t = (_predicted(p) for p in (p_s, p_t))
        extra["boundary_classes"] = np.array(net.sizes[-1])
    p_s, p_t = p_s.reshape(grid, grid), p_t.reshape(grid, grid)
    return {
        **extra,
        "X": X,
        "grid_x": gx,
        "grid_y": gy,
        f"boundary_{when}_scratch": p_s.astype(np.float64),
        f"boundary_{when}_torch": p_t.astype(np.float64),
    }
