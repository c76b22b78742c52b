"""A lockstep result as a run record (docs/record.md): summary.json, metrics.csv and record.npz."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from nn_parity.reports import RECORD_FORMAT, json_safe
from nn_parity.torch_ref.compare import TOLERANCES
from nn_parity.torch_ref.results import LockstepResult


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
