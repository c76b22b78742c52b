"""The data sets the `nn-parity` command trains on.

exam           the seed article's four students (hours of study, GPA -> pass/fail)
xor            two-feature XOR, 200 points, drawn from the seed
moons          two interleaved half circles, 200 points, drawn from the seed
circles        a circle inside a circle, 200 points, drawn from the seed
breast-cancer  the Wisconsin diagnostic data set, 569 x 30, from scikit-learn's bundled copy
               (no network access), standardised
PATH.csv       numeric feature columns and one 0/1 label column (the last, or --label-column)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nn_parity.scratch import data as toy
from nn_parity.scratch.validate import check_xy

__all__ = ["DATASETS", "Dataset", "load_csv", "load_dataset"]

DATASETS = ("exam", "xor", "moons", "circles", "breast-cancer")
TOY_SAMPLES = 200


@dataclass
class Dataset:
    name: str
    X: np.ndarray  # (N, D) float64
    y: np.ndarray  # (N,) 0/1 float64
    source: str
    feature_names: list[str]


def standardize(X: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per feature; a constant feature is only centred."""
    std = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)


def load_dataset(
    spec: str,
    *,
    seed: int = 0,
    label_column: str | None = None,
    standardized: bool | None = None,
) -> Dataset:
    """A data set by name, or a CSV file by path. `standardized=None` means the set's default."""
    rng = np.random.default_rng(seed)
    is_csv = spec not in DATASETS and (spec.lower().endswith(".csv") or Path(spec).exists())
    if label_column is not None and not is_csv:
        raise ValueError(f"--label-column applies to CSV files only, not to {spec!r}")
    if spec == "exam":
        X, y = toy.exam()
        ds = Dataset("exam", X, y, "the seed article's four students", ["hours of study", "GPA"])
    elif spec in ("xor", "moons", "circles"):
        X, y = getattr(toy, spec)(TOY_SAMPLES, rng)
        ds = Dataset(spec, X, y, f"{TOY_SAMPLES} points drawn from seed {seed}", ["x1", "x2"])
    elif spec == "breast-cancer":
        from sklearn.datasets import load_breast_cancer  # bundled with scikit-learn, offline

        bunch = load_breast_cancer()
        X, y = bunch.data.astype(np.float64), bunch.target.astype(np.float64)
        ds = Dataset(
            "breast-cancer",
            X,
            y,
            "Wisconsin diagnostic breast cancer (scikit-learn's bundled copy), 1 = benign",
            list(bunch.feature_names),
        )
        standardized = True if standardized is None else standardized
    elif is_csv:
        ds = load_csv(spec, label_column=label_column)
        standardized = True if standardized is None else standardized
    else:
        raise ValueError(
            f"unknown data set {spec!r}; expected one of {', '.join(DATASETS)} or a path to a "
            ".csv file"
        )
    if standardized:
        ds.X = standardize(ds.X)
        ds.source += ", standardised"
    ds.X, ds.y = check_xy(ds.X, ds.y)
    return ds


def load_csv(path: str | Path, *, label_column: str | None = None) -> Dataset:
    """Numeric features and one 0/1 label column from a CSV file, with or without a header.

    The label column is the last unless `label_column` names it (a header name, or a 0-based
    index). Every problem is reported with its row and column.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"CSV file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{str(path)!r} is a directory, not a CSV file") from None
    except OSError as err:
        raise ValueError(f"cannot read {str(path)!r}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if "\0" in text:
        raise ValueError(f"{path}: contains NUL bytes; not a text CSV file")
    try:
        rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    except csv.Error as err:
        raise ValueError(f"{path}: malformed CSV: {err}") from None
    if not rows:
        raise ValueError(f"{path}: the file is empty")

    header = None
    if any(not _is_number(c) for c in rows[0]):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if not rows:
        raise ValueError(f"{path}: a header but no data rows")
    width = len(header) if header is not None else len(rows[0])
    first_data_line = 2 if header is not None else 1
    for i, r in enumerate(rows):
        if len(r) != width:
            raise ValueError(
                f"{path}: row {i + first_data_line} has {len(r)} fields, expected {width}"
            )
    if width < 2:
        raise ValueError(
            f"{path}: {width} column; need at least one feature column and a label column"
        )
    names = header or [f"column {j}" for j in range(width)]
    label = _label_index(label_column, header, width, path)

    values = np.empty((len(rows), width))
    for i, r in enumerate(rows):
        for j, cell in enumerate(r):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise ValueError(
                    f"{path}: row {i + first_data_line}, column {names[j]!r}: "
                    f"{cell.strip()!r} is not a number"
                ) from None
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        i, j = bad[0]
        raise ValueError(
            f"{path}: row {i + first_data_line}, column {names[j]!r}: "
            f"{rows[i][j].strip()!r} is not a finite number"
        )
    y = values[:, label]
    outside = np.flatnonzero((y != 0) & (y != 1))
    if outside.size:
        i = outside[0]
        raise ValueError(
            f"{path}: label column {names[label]!r} must hold 0 or 1; row "
            f"{i + first_data_line} has {rows[i][label].strip()!r}"
        )
    X = np.delete(values, label, axis=1)
    features = [n for j, n in enumerate(names) if j != label]
    return Dataset(path.stem, X, y, f"{path} (label column {names[label]!r})", features)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _label_index(label_column: str | None, header: list[str] | None, width: int, path) -> int:
    if label_column is None:
        return width - 1
    if header is not None and label_column in header:
        return header.index(label_column)
    if label_column.lstrip("-").isdigit():
        j = int(label_column)
        if -width <= j < width:
            return j % width
        raise ValueError(f"{path}: label column index {j} is out of range for {width} columns")
    known = f"; the header has {', '.join(map(repr, header))}" if header else " (no header)"
    raise ValueError(f"{path}: no label column named {label_column!r}{known}")
