"""Reports of a run, drawn only from its run record (docs/record.md).

`load_record` reads a run folder (`record.py` reads and writes records), `render` writes the
figures and report.html into it, and `summary_text` is the terminal summary. Nothing here needs
torch: a record can be read and drawn on a machine that only has NumPy and matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from nn_parity.reports.record import (
    RECORD_FORMAT,
    Record,
    RecordError,
    json_safe,
    load_record,
    parse_metrics,
    save_record,
)
from nn_parity.reports.text import summary_text

__all__ = ["RECORD_FORMAT", "Record", "RecordError", "json_safe", "load_record",
           "parse_metrics", "render", "save_record", "summary_text"]  # fmt: skip


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
