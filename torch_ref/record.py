"""A lockstep result as a run record (docs/record.md): summary.json, metrics.csv and record.npz."""

from __future__ import annotations

import datetime as dt
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from nn_parity.reports.record import RECORD_FORMAT, Record, json_safe, save_record
from nn_parity.torch_ref.compare import TOLERANCES

if TYPE_CHECKING:
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
    dtype = config["dtype"]
    div = result.first_divergence
    return {
        "format": RECORD_FORMAT,
        "passed": result.passed,
        "steps": result.steps,
        "steps_requested": config["steps"],
        **{k: config[k] for k in ("dtype", "architecture", "data", "loss", "reduction", "lr")},
        "optimizer": config.get("optimizer", {"name": "sgd"}),
        "batches": config.get("batches", {"batch_size": None, "epochs": None, "drop_last": False}),
        "seed": config["seed"],
        "checked": config.get("checked") or result.checked,
        "not_compared": list(result.not_compared),
        "tolerances": {
            q: by_dtype[dtype].as_dict()
            for q, by_dtype in TOLERANCES.items()
            if q != "lr" or any(it.quantity == "lr" for it in result.items)  # a schedule's
        },
        "quantities": _quantities(result, float(np.finfo(dtype).eps)),
        "first_divergence": div.as_dict() if div is not None else None,
        "diagnosis": div.diagnosis if div is not None else None,
        "fault": result.fault,
        "kink_steps": list(result.kink_steps),
        "saturation_steps": list(result.saturation_steps),
        "drift_steps": list(result.drift_steps),
        "loss_first": _pair(result, 0),
        "loss_last": _pair(result, -1),
        **extras.get("summary", {}),
        "versions": versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _quantities(result: LockstepResult, eps: float) -> dict[str, dict]:
    worst, judged = result.worst(), result.judged
    out = {}
    for k, item in enumerate(result.items):
        failing = np.flatnonzero(~judged[:, k])
        out[item.label] = {
            "quantity": item.quantity,
            "layer": item.layer,
            **worst[item.label],
            # the smallest pure atol (rtol = 0) that would have passed, in units of epsilon
            "max_abs_eps": worst[item.label]["max_abs"] / eps,
            "first_failing_step": int(failing[0]) if failing.size else None,
        }
    return out


def _pair(result: LockstepResult, step: int) -> dict[str, float]:
    return {"scratch": float(result.loss_scratch[step]), "torch": float(result.loss_torch[step])}


def metrics_of(result: LockstepResult) -> dict[str, np.ndarray]:
    """metrics.csv by column: the step, both losses, and per item its largest absolute and its
    normwise relative error at every step."""
    columns = {
        "step": np.arange(result.steps),
        "loss_scratch": result.loss_scratch,
        "loss_torch": result.loss_torch,
    }
    for k, label in enumerate(result.labels):
        columns[f"{label}:max_abs"] = result.max_abs[:, k]
        columns[f"{label}:rel_err"] = result.rel_err[:, k]
    return columns


def record_config(result: LockstepResult, *, data=None, init=None, y=None, side=None,
                  checked=None, **_) -> dict:  # fmt: skip
    """The run's configuration as its record keeps it: the result's own, with what only the
    caller knows: the data set (a name, or the CLI's description), the initialisation, the
    labels the probabilities figure needs, and in words what was checked. Other keywords (the
    rest of a lockstep call) are accepted and ignored: the run already knows them."""
    config = dict(result.config)
    if isinstance(data, dict):
        config["data"] = data
    elif data is not None:
        config["data"] = {**config["data"], "name": data}
    if init is not None:
        config["architecture"] = {**config["architecture"], "init": init}
    config["checked"] = checked or ({**result.checked, "side": side} if side else result.checked)
    # record.npz needs an array; "no labels" is an empty one, dropped again on reading
    config["y"] = np.zeros(0) if y is None else np.asarray(y)
    return config


def record_of(result: LockstepResult, *, extras: dict | None = None, **context) -> Record:
    """The run record of a result, in memory: the one path by which the CLI, the pytest plugin
    and the notebook all record a run. `context` as `record_config`; `extras` the CLI's
    figure data ({"summary": {...}, "arrays": {...}})."""
    extras = extras or {}
    config = record_config(result, **context)
    # through JSON, as `load_record` reads summary.json: lists, not tuples, null for NaN
    summary = json.loads(json.dumps(json_safe(summary_dict(result, config, extras))))
    arrays = {"y": config["y"], **_probability_arrays(result, config["y"])}
    arrays.update(extras.get("arrays", {}))
    return Record(summary=summary, metrics=metrics_of(result), arrays=arrays)


def write_record(folder: Path, result: LockstepResult, **context) -> dict:
    """Write the run record of `result` into `folder` (summary.json, metrics.csv,
    record.npz); returns the summary. `context` as `record_of`."""
    return save_record(Path(folder), record_of(result, **context))


def _probability_arrays(result: LockstepResult, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The probabilities figure's arrays: per sample, at the first and the last step."""
    arrays: dict[str, np.ndarray] = {}
    if not labels.size:  # without labels, the probability figure is not drawn
        return arrays
    for when, pair, rows in (
        ("first", result.probs_first, result.rows_first),
        ("last", result.probs_last, result.rows_last),
    ):
        if pair is not None:
            y = labels if rows is None else labels[rows]
            arrays[f"probs_{when}_scratch"] = _per_sample(pair[0], y)
            arrays[f"probs_{when}_torch"] = _per_sample(pair[1], y)
            if rows is not None:  # a mini-batch: its own labels
                arrays[f"probs_{when}_y"] = y
    return arrays


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
