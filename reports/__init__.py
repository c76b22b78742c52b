"""Reports of a run, drawn only from its run record (docs/record.md).

`load_record` reads a run folder, `render` writes the figures and report.html into it, and
`summary_text` is the terminal summary. Nothing here needs torch: a record can be read and
drawn on a machine that only has NumPy and matplotlib.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nn_parity.reports.text import summary_text

__all__ = ["Record", "load_record", "parse_metrics", "render", "summary_text"]


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
        raise ValueError(
            f"{source}: the header names {len(header)} columns but rows have {table.shape[1]}"
        )
    columns = {name: table[:, j].copy() for j, name in enumerate(header)}
    step = columns.get("step")
    if step is not None and np.all(np.isfinite(step)) and np.all(step == np.round(step)):
        columns["step"] = step.astype(np.int64)
    return columns


def load_record(run_dir: Path | str) -> Record:
    """Read summary.json, metrics.csv and record.npz from a run folder.

    summary.json is required; a missing metrics.csv or record.npz reads as empty, and the
    figures that need it are then skipped.
    """
    run_dir = Path(run_dir)
    # json reads the NaN and Infinity that Python's json writes for a diverged run's errors.
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    metrics_path = run_dir / "metrics.csv"
    metrics: dict[str, np.ndarray] = {}
    if metrics_path.exists():
        metrics = parse_metrics(metrics_path.read_text(encoding="utf-8"), str(metrics_path))
    arrays: dict[str, np.ndarray] = {}
    npz_path = run_dir / "record.npz"
    if npz_path.exists():
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    return Record(summary=summary, metrics=metrics, arrays=arrays)


def render(run_dir: Path | str) -> list[Path]:
    """Draw the figures and report.html of the record in run_dir, into run_dir.

    Returns the paths written, figures first and report.html last.
    """
    # Imported here so that `summary_text` (the CLI's hot path) does not pay for matplotlib.
    from nn_parity.reports.figures import FIGURES, draw_figures, save
    from nn_parity.reports.html import write_report

    run_dir = Path(run_dir)
    record = load_record(run_dir)
    drawn, failed = draw_figures(record, lambda spec, fig: save(fig, run_dir / spec.filename))
    written = [(run_dir / spec.filename, spec.caption) for spec, _ in drawn]
    for spec in FIGURES:
        path = run_dir / spec.filename
        if (path, spec.caption) not in written and path.exists():
            # Left by an earlier render of other data, or half-written by a failed save: it
            # would contradict this record.
            path.unlink()
    report = write_report(record, run_dir / "report.html", written, failed)
    return [p for p, _ in written] + [report]
