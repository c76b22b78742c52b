"""Checks on user data, shared by the network, the lockstep, the losses and the loaders.

Each failure raises ValueError or TypeError with a message that names the offending value and
what was expected, before any of it reaches NumPy arithmetic. The labels' form depends on the
task:

    binary      (N,) or (N, 1), every label 0 or 1                    -> (N,) as given
    multiclass  (N,) or (N, 1), whole numbers 0..C-1 (any int, bool    -> (N,) int64
                or whole-valued float dtype)
    regression  (N,), (N, 1) or (N, C), any finite real values         -> (N,) or (N, C), float
"""

from __future__ import annotations

import numpy as np

__all__ = ["TASKS", "check_finite", "check_labels", "check_names", "check_xy"]

TASKS = ("binary", "multiclass", "regression")


def check_xy(
    X, y, *, width: int | None = None, task: str = "binary", n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """X as a finite (N, D) float array and y as the task's labels (see the module docstring).

    `width`, when given, is the D the network expects; `n_classes`, when given, the C that
    multi-class labels must stay below.
    """
    _check_task(task)
    X = _numeric(X, "X")
    y = _numeric(y, "y")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError("X holds no samples (shape (0, ...)); need at least one")
    if X.shape[1] == 0:
        raise ValueError(f"X holds no features (shape {X.shape})")
    if width is not None and X.shape[1] != width:
        raise ValueError(f"X has {X.shape[1]} features but the network's input layer takes {width}")
    y = _label_shape(y, task)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
    check_finite(X, "X")
    return X, _label_values(y, task, n_classes, "")


def check_labels(
    y, task: str = "binary", *, n_classes: int | None = None, context: str = ""
) -> np.ndarray:
    """y alone, checked and converted as `check_xy` does; `context` ends the range message
    (e.g. " for a network with 3 outputs")."""
    _check_task(task)
    y = _label_shape(_numeric(y, "y"), task)
    if len(y) == 0:
        raise ValueError("y holds no labels (shape (0, ...)); need at least one")
    return _label_values(y, task, n_classes, context)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def _label_shape(y: np.ndarray, task: str) -> np.ndarray:
    if task == "regression":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
            raise ValueError(
                f"regression targets must be (samples,) or (samples, outputs), got shape {y.shape}"
            )
        return y
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = ""
        if (
            task == "multiclass"
            and y.ndim == 2
            and np.isin(y, (0, 1)).all()
            and (y.sum(1) == 1).all()
        ):
            hint = " (one-hot labels: pass y.argmax(axis=1), the class indices)"
        raise ValueError(f"y must be 1-D (samples,) or (samples, 1), got shape {y.shape}{hint}")
    return y


def _label_values(y: np.ndarray, task: str, n_classes: int | None, context: str) -> np.ndarray:
    check_finite(y, "y")
    if task == "binary":
        bad = np.flatnonzero((y != 0) & (y != 1))
        if bad.size:
            raise ValueError(
                f"binary cross-entropy needs labels 0 or 1; y[{bad[0]}] = {float(y[bad[0]])} "
                f"({bad.size} label(s) outside {{0, 1}})"
            )
        return y
    if task == "regression":
        return y if np.issubdtype(y.dtype, np.floating) else y.astype(np.float64)
    # multiclass: whole numbers, then the range
    classes = f"0..{n_classes - 1}" if n_classes is not None else "0..C-1"
    if np.issubdtype(y.dtype, np.floating):
        real = np.flatnonzero(y != np.floor(y))
        if real.size:
            i = real[0]
            raise ValueError(
                f"class labels must be whole numbers {classes}; y[{i}] = {float(y[i])} is "
                "real-valued (for real-valued targets use a regression loss, e.g. mse)"
            )
    if n_classes is None:
        bad = np.flatnonzero(y < 0)
    else:
        bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"class labels must lie in {classes}{context}; y[{i}] = {_show(y[i])} is outside "
            f"({bad.size} label(s) outside)"
        )
    return y.astype(np.int64)


def _show(v) -> str:
    """A label as the user wrote it: 3 for 3 or 3.0, 2.5 for 2.5."""
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v)


def _numeric(a, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        raise TypeError(f"{name} must be a NumPy array, got a torch tensor; pass {name}.numpy()")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise ValueError(f"{name} is not a rectangular array: {err}") from None
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == bool
    ):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def check_finite(a: np.ndarray, name: str, label: str | None = None) -> None:
    """Refuse NaN and Inf, naming the first element; `label` ("input 'x'") heads the message."""
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(
            f"{label or name} holds a non-finite value: {name}{list(where)} = {float(a[where])}"
        )


def check_names(
    ours, theirs, *, what: str, ours_lack: str = "missing", theirs_lack: str = "unexpected"
) -> None:
    """Two collections of names must hold the same names; a misfit names both differences.

    The one check behind loading weights, optimizer state and gradients by name: "what" says
    what does not fit, and the two labels what each side lacks ("missing"/"unexpected", or
    "torch lacks"/"scratch lacks").
    """
    ours, theirs = list(ours), list(theirs)
    lacking = [k for k in ours if k not in theirs]
    extra = [k for k in theirs if k not in ours]
    if lacking or extra:
        raise ValueError(
            f"{what}: {ours_lack} {lacking or 'none'}, {theirs_lack} {extra or 'none'}"
        )
