"""The checks `load_record` runs: every field a report reads has the type docs/record.md gives.

A field may be missing or null (older records and pytest's records lack some), except the
few every report needs; a field present with the wrong type, a shape that does not fit, or
JSON nested past any record's depth is a RecordError naming the file and the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


class RecordError(ValueError):
    """A record that cannot be drawn: names the file and the field, in one line."""


# a spec: a type name; "x?" also takes null; {key: spec}: an object (keys optional);
# [spec]: a list of them; ("dict", spec): an object whose every value fits spec
NUM, INT, STR, BOOL = "number", "int", "str", "bool"
PAIR = {"scratch": NUM, "torch": NUM}
SUMMARY: dict[str, Any] = {
    "format": STR, "passed": BOOL, "steps": INT, "steps_requested": INT, "dtype": STR,
    "architecture": {"sizes": [INT], "activations": [STR], "bias": BOOL, "init": STR,
                     "parameters": INT},
    "data": {"name": STR, "samples": INT, "features": INT, "feature_names": [STR],
             "source": STR},
    "loss": STR, "reduction": STR, "lr": NUM, "optimizer": {"name": STR}, "seed": INT,
    "batches": {"batch_size": "int?", "epochs": "int?", "drop_last": BOOL},
    "checked": ("dict", None), "not_compared": [STR],
    "tolerances": ("dict", {"rtol": NUM, "atol": NUM, "reason": STR}),
    "quantities": ("dict", {"quantity": STR, "layer": "int?", "max_abs": NUM, "max_rel": NUM,
                            "passed": BOOL, "max_abs_eps": NUM, "first_failing_step": "int?"}),
    "first_divergence": ("dict?", {"step": INT, "quantity": STR, "layer": "int?",
                                   "label": STR, "index": [INT], "scratch": NUM, "torch": NUM,
                                   "abs_err": NUM, "rel_err": NUM, "rtol": NUM, "atol": NUM,
                                   "mismatches": INT, "total": INT, "fd": "number?"}),
    "diagnosis": None,  # an object, a sentence (older records) or null
    "fault": ("dict?", {"step": INT, "message": STR}),
    "kink_steps": [INT], "saturation_steps": [INT], "drift_steps": [INT],
    "loss_first": PAIR, "loss_last": PAIR,
    "gradient_slice": {"param": STR, "index": [INT], "value": NUM, "loss": NUM,
                       "grad_scratch": NUM, "grad_torch": NUM, "grad_fd": NUM},
    "versions": ("dict", STR), "created": STR,
}  # fmt: skip
REQUIRED = ("passed", "steps", "quantities")
# objects that, when present, are drawn whole: every key of theirs is needed
WHOLE = ("gradient_slice", "loss_first", "loss_last")
MAX_DEPTH = 8  # a record nests 3 deep; deeper is not a record

_TYPES = {
    NUM: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    STR: lambda v: isinstance(v, str),
    BOOL: lambda v: isinstance(v, bool),
}


def check_summary(summary, path: Path) -> dict:
    """summary.json, checked against SUMMARY; a null where a number is expected becomes NaN."""
    if not isinstance(summary, dict):
        raise RecordError(f"{path} does not hold a JSON object")
    if _depth(summary) > MAX_DEPTH:
        raise RecordError(f"{path}: nested deeper than a run record ({MAX_DEPTH} levels)")
    missing = [key for key in REQUIRED if summary.get(key) is None]
    if missing:
        raise RecordError(f"{path}: field {missing[0]!r} is missing or null (docs/record.md)")
    if summary["steps"] is not None and _TYPES[INT](summary["steps"]) and summary["steps"] < 1:
        raise RecordError(f"{path}: field 'steps' must be at least 1, got {summary['steps']}")
    for key in WHOLE:
        part = summary.get(key)
        gone = [k for k in SUMMARY[key] if isinstance(part, dict) and k not in part]
        if gone:
            raise RecordError(f"{path}: field '{key}.{gone[0]}' is missing (see docs/record.md)")
    return _fit(summary, SUMMARY, path, "")


def _depth(value, level: int = 0) -> int:
    if level > MAX_DEPTH or not isinstance(value, (dict, list)):
        return level
    children = list(value.values()) if isinstance(value, dict) else value
    return max((_depth(v, level + 1) for v in children), default=level + 1)


def _fit(value, spec, path: Path, where: str):
    """`value` checked against `spec`, with null numbers as NaN; raises RecordError."""
    if spec is None:
        return value
    if value is None:  # null: NaN where a number is expected, otherwise as good as missing
        return math.nan if spec == NUM else None
    if isinstance(spec, str):
        if _TYPES[spec.rstrip("?")](value):
            return value
        expected = f"{spec.rstrip('?')}{' or null' if spec.endswith('?') else ''}"
    elif isinstance(spec, list):
        if isinstance(value, list):
            return [_fit(v, spec[0], path, f"{where}[{k}]") for k, v in enumerate(value)]
        expected = "a list"
    elif isinstance(spec, tuple):
        if isinstance(value, dict) and isinstance(spec[1], dict) and spec[0] == "dict?":
            return _fit(value, spec[1], path, where)
        if isinstance(value, dict):
            return {k: _fit(v, spec[1], path, f"{where}.{k}") for k, v in value.items()}
        expected = "an object" + (" or null" if spec[0] == "dict?" else "")
    else:
        if isinstance(value, dict):
            return {k: _fit(v, spec.get(k), path, f"{where}.{k}") for k, v in value.items()}
        expected = "an object"
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
    raise RecordError(
        f"{path}: field {where.lstrip('.')!r} must be {expected}, got {type(value).__name__} "
        f"{shown}"
    )


def check_metrics(metrics: dict[str, np.ndarray], path: Path) -> None:
    if metrics and "step" not in metrics:
        raise RecordError(f"{path}: no 'step' column (see docs/record.md)")
    step = metrics.get("step")
    if step is not None and not np.all(np.isfinite(step)):
        bad = step[~np.isfinite(step)][0]
        raise RecordError(f"{path}: column 'step' must hold whole numbers, got {bad}")


# array name -> its number of dimensions (docs/record.md)
ARRAYS = {
    "y": 1, "probs_first_scratch": 1, "probs_first_torch": 1, "probs_last_scratch": 1,
    "probs_last_torch": 1, "probs_first_y": 1, "probs_last_y": 1, "slice_w": 1,
    "slice_loss": 1, "X": 2, "grid_x": 1, "grid_y": 1, "boundary_before_scratch": 2,
    "boundary_before_torch": 2, "boundary_after_scratch": 2, "boundary_after_torch": 2,
    "boundary_classes": 0,
}  # fmt: skip
# arrays drawn together: they must have the same shape
TOGETHER = (
    ("probs_first_scratch", "probs_first_torch"), ("probs_last_scratch", "probs_last_torch"),
    ("slice_w", "slice_loss"), ("boundary_before_scratch", "boundary_before_torch",
    "boundary_after_scratch", "boundary_after_torch"),
)  # fmt: skip


def check_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    for name, ndim in ARRAYS.items():
        a = arrays.get(name)
        if a is None:
            continue
        if a.dtype.kind not in "biuf":
            raise RecordError(f"{path}: array {name!r} must hold numbers, got dtype {a.dtype}")
        if a.ndim != ndim:
            raise RecordError(
                f"{path}: array {name!r} must have {ndim} dimensions, got shape {a.shape}"
            )
    for names in TOGETHER:
        shapes = {n: arrays[n].shape for n in names if n in arrays}
        if len(set(shapes.values())) > 1:
            (one, s1), (two, s2) = list(shapes.items())[:2]
            raise RecordError(f"{path}: arrays {one!r} {s1} and {two!r} {s2} must have one shape")
    grid = arrays.get("boundary_before_scratch")
    if grid is not None and "grid_x" in arrays and "grid_y" in arrays:
        expected = (len(arrays["grid_y"]), len(arrays["grid_x"]))
        if grid.shape != expected:
            raise RecordError(f"{path}: array 'boundary_before_scratch' must have shape "
                              f"{expected} (grid_y, grid_x), got {grid.shape}")  # fmt: skip
    for when in ("first", "last"):
        probs, labels = arrays.get(f"probs_{when}_scratch"), arrays.get(f"probs_{when}_y")
        labels = arrays.get("y") if labels is None else labels
        if probs is not None and labels is not None and 0 < len(labels) != len(probs):
            raise RecordError(f"{path}: array 'probs_{when}_scratch' holds {len(probs)} "
                              f"samples but the labels {len(labels)}")  # fmt: skip
