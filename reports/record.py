"""A run record (docs/record.md), read and written in this one module: summary.json (strict
JSON), metrics.csv (one row per step) and record.npz (the arrays the figures need).

Nothing here needs torch: a record can be read and drawn on a machine that only has NumPy and
matplotlib. Reading checks every field a report reads (`checks.py`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nn_parity.reports.checks import RecordError, check_arrays, check_metrics, check_summary

# summary.json's "format": version 2 writes a non-finite number as null (version 1, unmarked,
# wrote NaN and Infinity, which strict JSON parsers refuse); both read.
RECORD_FORMAT = "nn-parity-record/2"


def json_safe(value):
    """`value` with every non-finite float replaced by None: strict JSON (null)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass
class Record:
    """A run record in memory: summary.json, metrics.csv by column, record.npz by name."""

    summary: dict
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def eps(self) -> float:
        """Machine epsilon of the run's dtype."""
        try:
            return float(np.finfo(np.dtype(self.summary.get("dtype", "float64"))).eps)
        except (TypeError, ValueError):  # an unknown dtype name: assume float64
            return float(np.finfo(np.float64).eps)


def parse_metrics(text: str, source: str = "metrics.csv") -> dict[str, np.ndarray]:
    """metrics.csv's text by column: what `load_record` reads from a file, and a notebook from
    the text a run would write (`source` names it in errors)."""
    head, _, body = text.partition("\n")
    header = next(csv.reader([head]), None)
    if not header:
        return {}
    table: np.ndarray | None = np.empty((0, len(header)))
    if body.strip():
        try:  # the fast path (C parser): every row complete, every cell a number
            table = np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError:
            table = None
    if table is None:
        # Ragged rows or empty cells, e.g. a run cut short mid-write: a cell that is not a
        # number reads as NaN rather than losing the whole record.
        rows = [row for row in csv.reader(io.StringIO(body)) if row]
        table = np.full((len(rows), len(header)), np.nan)
        for i, row in enumerate(rows):
            for j, cell in enumerate(row[: len(header)]):
                try:
                    table[i, j] = float(cell)
                except ValueError:
                    pass
    if table.shape[1] != len(header):
        raise RecordError(
            f"{source}: the header names {len(header)} columns but rows have {table.shape[1]}"
        )
    columns = {name: table[:, j].copy() for j, name in enumerate(header)}
    step = columns.get("step")
    if step is not None and np.all(np.isfinite(step)) and np.all(step == np.round(step)):
        columns["step"] = step.astype(np.int64)
    return columns


def load_record(run_dir: Path | str) -> Record:
    """Read summary.json, metrics.csv and record.npz from a run folder, checked.

    summary.json is required; a missing metrics.csv or record.npz reads as empty, and the
    figures that need it are then skipped. A null where a number is expected reads as NaN.
    Raises RecordError (a ValueError) naming the file and the field when one does not fit
    docs/record.md, OSError when a file cannot be read.
    """
    run_dir = Path(run_dir)
    summary = check_summary(_read_json(run_dir / "summary.json"), run_dir / "summary.json")
    metrics_path = run_dir / "metrics.csv"
    metrics: dict[str, np.ndarray] = {}
    if metrics_path.exists():
        metrics = parse_metrics(metrics_path.read_text(encoding="utf-8"), str(metrics_path))
    check_metrics(metrics, metrics_path)
    arrays: dict[str, np.ndarray] = {}
    npz_path = run_dir / "record.npz"
    if npz_path.exists():
        try:
            with np.load(npz_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (ValueError, EOFError, KeyError) as err:  # not an npz, or a pickled array
            raise RecordError(f"{npz_path}: not a readable .npz ({err})") from None
    check_arrays(arrays, npz_path)
    return Record(summary=summary, metrics=metrics, arrays=arrays)


def _read_json(path: Path):
    # json also reads the NaN and Infinity that records before format 2 hold.
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise RecordError(f"{path}: nested too deeply to be a run record") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not JSON ({err})") from None


def save_record(folder: Path, record: Record) -> dict:
    """Write summary.json, metrics.csv and record.npz of `record` into `folder`; returns the
    summary as written. A non-finite number is written null: strict JSON, which
    allow_nan=False proves."""
    text = json.dumps(json_safe(record.summary), indent=2, allow_nan=False)
    (folder / "summary.json").write_text(text + "\n")
    (folder / "metrics.csv").write_text(metrics_text(record.metrics))
    np.savez(folder / "record.npz", **record.arrays)  # type: ignore[arg-type]
    return record.summary


def metrics_text(columns: dict[str, np.ndarray]) -> str:
    """metrics.csv from its columns: `step` as integers, every other value as the shortest
    text that reads back to the same float (repr), so parse_metrics(metrics_text(c)) == c."""
    names = list(columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    cells = [
        [str(int(v)) for v in col] if name == "step" else [repr(float(v)) for v in col]
        for name, col in columns.items()
    ]
    writer.writerows(zip(*cells))
    return buf.getvalue()
