"""The data sets the `nn-parity` command trains on.

exam           the seed article's four students (hours of study, GPA -> pass/fail)
xor            two-feature XOR, 200 points, drawn from the seed
moons          two interleaved half circles, 200 points, drawn from the seed
circles        a circle inside a circle, 200 points, drawn from the seed
breast-cancer  the Wisconsin diagnostic data set, 569 x 30, from scikit-learn's bundled copy
               (no network access), standardised
iris           150 x 4, 3 classes (setosa, versicolor, virginica), standardised
wine           178 x 13, 3 cultivars, standardised (the features span 0.1 to 1680)
digits         1797 x 64, 10 classes: 8x8 images of handwritten digits, pixels 0..16 scaled to
               [0, 1] by /16 and not standardised unless asked (the pixels share one scale)
diabetes       442 x 10 regression: disease progression after a year; the features and the
               target standardised (the raw target runs 25..346)
PATH.csv       numeric feature columns and one label column (the last, or --label-column):
               0/1 labels by default; multi-class or real-valued with `task=` (see load_csv)

iris, wine, digits and diabetes, like breast-cancer, come from the copies bundled inside the
scikit-learn package (sklearn/datasets/data), so nothing is downloaded.

Every Dataset has a task: "binary" (y (N,) float64 0/1), "multiclass" (y (N,) int64 class
indices 0..C-1, `classes` naming them) or "regression" (y (N,) float64).
"""

from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nn_parity.scratch import data as toy
from nn_parity.scratch.validate import TASKS, check_xy

__all__ = ["DATASETS", "MAX_CSV_BYTES", "AdvisedError", "Dataset", "load_csv", "load_dataset"]

DATASETS = (
    "exam",
    "xor",
    "moons",
    "circles",
    "breast-cancer",
    "iris",
    "wine",
    "digits",
    "diabetes",
)
CSV_TASKS = (*TASKS, "auto")
TOY_SAMPLES = 200
MAX_CSV_BYTES = 64 * 2**20  # a larger CSV file, or an endless stream, is refused unread


class AdvisedError(ValueError):
    """A refusal whose advice names Python keywords; `cli` is its wording for the command line."""

    def __init__(self, message: str, cli: str):
        super().__init__(message)
        self.cli = cli


@dataclass
class Dataset:
    name: str
    X: np.ndarray  # (N, D) float64
    y: np.ndarray  # (N,): 0/1 float64 (binary), int64 0..C-1 (multiclass), float64 (regression)
    source: str
    feature_names: list[str]
    task: str = "binary"
    classes: list[str] | None = None  # multiclass: the name of each class index

    @property
    def n_classes(self) -> int | None:
        """C for a multi-class set, 2 for a binary one, None for regression."""
        if self.task == "multiclass":
            return len(self.classes) if self.classes is not None else int(self.y.max()) + 1
        return 2 if self.task == "binary" else None

    @property
    def n_outputs(self) -> int:
        """The output width a network needs for this data: 1, C, or the target columns."""
        if self.task == "multiclass":
            return self.n_classes  # type: ignore[return-value]
        return 1 if self.y.ndim == 1 else self.y.shape[1]


def standardize(X: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per feature; a constant feature is only centred.

    Values so large that their squares overflow (1e308) are first divided by their column's
    largest magnitude, which leaves the standardised result the same."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = X.mean(axis=0), X.std(axis=0)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        peak = np.abs(X).max(axis=0)
        return standardize(X / np.where(peak > 0, peak, 1.0))
    return (X - mean) / np.where(std > 0, std, 1.0)


def load_dataset(
    spec: str,
    *,
    seed: int = 0,
    label_column: str | None = None,
    standardized: bool | None = None,
    task: str | None = None,
) -> Dataset:
    """A data set by name, or a CSV file by path. `standardized=None` means the set's default.

    `task` (None: the set's own; binary for a CSV) asks for a task, e.g. the chosen loss's
    `loss.task`. A CSV is read for that task (see `load_csv`). A named set has its own task and
    refuses another, except that a binary set may be read as 2-class multiclass (for ce or nll
    with two outputs). For regression, `standardized` applies to the target as well as X.
    """
    if task is not None and task not in CSV_TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(CSV_TASKS)}")
    is_csv = spec not in DATASETS and (spec.lower().endswith(".csv") or Path(spec).exists())
    if label_column is not None and not is_csv:
        raise ValueError(f"--label-column applies to CSV files only, not to {spec!r}")
    if is_csv:
        ds, by_default = load_csv(spec, label_column=label_column, task=task or "binary"), True
    else:
        ds, by_default = _named(spec, seed)
        if task not in (None, "auto") and task != ds.task:
            _read_as(ds, task)
    if standardized if standardized is not None else by_default:
        _standardise(ds)
    ds.X, ds.y = check_xy(ds.X, ds.y, task=ds.task, n_classes=ds.n_classes)
    return ds


def _named(spec: str, seed: int) -> tuple[Dataset, bool]:
    """A named set, and whether it is standardised by default (its features' scales differ)."""
    if spec == "exam":
        X, y = toy.exam()
        source = "the seed article's four students"
        return Dataset("exam", X, y, source, ["hours of study", "GPA"]), False
    if spec in ("xor", "moons", "circles"):
        X, y = getattr(toy, spec)(TOY_SAMPLES, np.random.default_rng(seed))
        source = f"{TOY_SAMPLES} points drawn from seed {seed}"
        return Dataset(spec, X, y, source, ["x1", "x2"]), False
    if spec == "breast-cancer":
        from sklearn.datasets import load_breast_cancer  # bundled with scikit-learn, offline

        bunch = load_breast_cancer()
        X, y = bunch.data.astype(np.float64), bunch.target.astype(np.float64)
        source = "Wisconsin diagnostic breast cancer (scikit-learn's bundled copy), 1 = benign"
        return Dataset("breast-cancer", X, y, source, list(bunch.feature_names)), True
    if spec in ("iris", "wine", "digits", "diabetes"):
        return _sklearn(spec), spec != "digits"  # the pixels share one scale
    raise ValueError(
        f"unknown data set {spec!r}; expected one of {', '.join(DATASETS)} or a path to a .csv file"
    )


def _read_as(ds: Dataset, task: str) -> None:
    """A named set has its own task: only a binary one may be read as 2-class multiclass."""
    if not (ds.task == "binary" and task == "multiclass"):
        raise ValueError(f"{ds.name!r} is a {ds.task} data set; it cannot be read as {task}")
    ds.y, ds.task, ds.classes = ds.y.astype(np.int64), "multiclass", ["0", "1"]


def _standardise(ds: Dataset) -> None:
    """The features, and a regression target, on one scale, so that no input dominates."""
    ds.X = standardize(ds.X)
    if ds.task == "regression":
        ds.y = standardize(ds.y[:, None])[:, 0] if ds.y.ndim == 1 else standardize(ds.y)
        ds.source += ", features and target standardised"
    else:
        ds.source += ", standardised"


def _sklearn(name: str) -> Dataset:
    """iris, wine, digits or diabetes from the copies bundled inside scikit-learn."""
    from sklearn import datasets  # bundled data files, read from the package: no network

    if name == "diabetes":
        bunch = datasets.load_diabetes(scaled=False)  # raw values; standardised by the caller
        return Dataset(
            "diabetes",
            bunch.data.astype(np.float64),
            bunch.target.astype(np.float64),
            "diabetes progression after one year (scikit-learn's bundled copy), regression",
            list(bunch.feature_names),
            task="regression",
        )
    bunch = getattr(datasets, f"load_{name}")()
    X = bunch.data.astype(np.float64)  # (N, D)
    what = {
        "iris": "Fisher's iris flowers",
        "wine": "wine from three cultivars",
        "digits": "8x8 handwritten digits",
    }[name]
    source = f"{what} (scikit-learn's bundled copy), {len(bunch.target_names)} classes"
    if name == "digits":
        X = X / 16.0  # pixel counts 0..16 -> [0, 1]
        source += ", pixels / 16"
    return Dataset(
        name,
        X,
        bunch.target.astype(np.int64),
        source,
        list(bunch.feature_names),
        task="multiclass",
        classes=[str(c) for c in bunch.target_names],
    )


def load_csv(path: str | Path, *, label_column: str | None = None, task: str = "binary") -> Dataset:
    """Numeric features and one label column from a CSV file, with or without a header.

    The label column is the last unless `label_column` names it (a header name, or a 0-based
    index). Every problem is reported with its row and column. `task` says what the labels are:

    binary      0 or 1 only (the default, as before multi-class support)
    multiclass  whole numbers >= 0, read as class indices: C = the largest label + 1, so labels
                1..3 mean 4 classes with class 0 empty (relabel from 0 to avoid a dead output)
    regression  any finite numbers
    auto        decided from the values: binary if all are 0 or 1; multiclass if they are
                exactly the whole numbers 0..C-1 for some C >= 3, each present; otherwise
                regression (so a column of counts 0..4 with every count present is read as 5
                classes: pass task="regression" to say otherwise)
    """
    if task not in CSV_TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(CSV_TASKS)}")
    path = Path(path)
    table = _table(_decode(_read_csv_bytes(path), path), path)
    label = _label_index(label_column, table.header, table.width, path)
    values = _numbers(table)
    y = values[:, label]
    if task == "auto":
        task = _guess_task(y)
    y, classes, kind = _labels(y, task, table, label)
    X = np.delete(values, label, axis=1)
    features = [n for j, n in enumerate(table.names) if j != label]
    source = f"{path} (label column {table.names[label]!r}{kind})"
    return Dataset(path.stem, X, y, source, features, task=task, classes=classes)


@dataclass
class _Table:
    """A CSV file's cells, with what its messages need: the file, the column names, the line
    the first data row was on."""

    path: Path
    header: list[str] | None
    rows: list[list[str]]
    names: list[str]
    first_line: int

    @property
    def width(self) -> int:
        return len(self.names)

    def at(self, i: int, j: int) -> str:
        """Where cell (i, j) is, as a message names it."""
        return f"{self.path}: row {i + self.first_line}, column {self.names[j]!r}"


def _read_csv_bytes(path: Path) -> bytes:
    """The file's bytes, bounded; an unreadable path is a ValueError naming it, not a trace."""
    try:
        return _read_bounded(path)
    except FileNotFoundError:
        raise ValueError(f"CSV file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{str(path)!r} is a directory, not a CSV file") from None
    except OSError as err:
        raise ValueError(f"cannot read {str(path)!r}: {err.strerror}") from None


def _decode(raw: bytes, path: Path) -> str:
    """UTF-8 text (a byte-order mark dropped): a binary file is refused before the CSV parser
    reads garbage."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if "\0" in text:
        raise ValueError(f"{path}: contains NUL bytes; not a text CSV file")
    return text


def _table(text: str, path: Path) -> _Table:
    """The header (when the first row is not all numbers) and rows of equal width, so that
    every later message can name a row and a column."""
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
    first_line = 2 if header is not None else 1
    for i, r in enumerate(rows):
        if len(r) != width:
            raise ValueError(f"{path}: row {i + first_line} has {len(r)} fields, expected {width}")
    if width < 2:
        raise ValueError(
            f"{path}: {width} column; need at least one feature column and a label column"
        )
    names = header or [f"column {j}" for j in range(width)]
    return _Table(path, header, rows, names, first_line)


def _numbers(table: _Table) -> np.ndarray:
    """Every cell as a finite float: the first that is not is reported where it is."""
    values = np.empty((len(table.rows), table.width))
    for i, r in enumerate(table.rows):
        for j, cell in enumerate(r):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise ValueError(f"{table.at(i, j)}: {cell.strip()!r} is not a number") from None
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        i, j = bad[0]
        raise ValueError(f"{table.at(i, j)}: {table.rows[i][j].strip()!r} is not a finite number")
    return values


def _labels(
    y: np.ndarray, task: str, table: _Table, label: int
) -> tuple[np.ndarray, list[str] | None, str]:
    """The labels checked against the task: (y, class names, what the source line adds)."""

    def bad_row(mask: np.ndarray, expected: str) -> ValueError:
        i = np.flatnonzero(mask)[0]
        return ValueError(
            f"{table.path}: label column {table.names[label]!r} must hold {expected}; row "
            f"{i + table.first_line} has {table.rows[i][label].strip()!r}"
        )

    if task == "binary":
        if ((y != 0) & (y != 1)).any():
            where = bad_row((y != 0) & (y != 1), "0 or 1")
            raise AdvisedError(
                f"{where} (for other labels pass task='multiclass' or 'regression')",
                f"{where} (for other labels pass --loss ce for classes or --loss mse for values)",
            )
        return y, None, ""
    if task == "multiclass":
        if (y != np.floor(y)).any():
            raise bad_row(y != np.floor(y), "class numbers 0, 1, 2, ...")
        if (y < 0).any():
            raise bad_row(y < 0, "class numbers 0, 1, 2, ...")
        y = y.astype(np.int64)
        classes = [str(c) for c in range(int(y.max()) + 1)]
        return y, classes, f", {len(classes)} classes"
    return y, None, ", real-valued target"


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refusing one over MAX_CSV_BYTES: by its size where it has one (a
    regular file), while reading where it has none (a pipe, a device such as /dev/zero)."""
    limit = f"the {MAX_CSV_BYTES // 2**20} MiB limit for a CSV file"
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size > MAX_CSV_BYTES:
            raise ValueError(f"{path}: {info.st_size} bytes, over {limit}")
        raw = f.read(MAX_CSV_BYTES + 1)
    if len(raw) > MAX_CSV_BYTES:
        raise ValueError(f"{path}: more than {limit} (an endless stream or device?)")
    return raw


def _guess_task(y: np.ndarray) -> str:
    """binary for 0/1, multiclass for exactly 0..C-1 (C >= 3, each present), else regression."""
    values = np.unique(y)
    if np.isin(values, (0.0, 1.0)).all():
        return "binary"
    if len(values) >= 3 and np.array_equal(values, np.arange(len(values))):
        return "multiclass"
    return "regression"


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
