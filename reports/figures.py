"""The run's figures: one function per figure draws it from a Record, one function saves it.

Drawing and saving are apart so that a notebook shows the very figures a report embeds,
without files: `draw_figures` draws every figure the record allows (the `FIGURES` registry),
`save` writes one as PNG. Figures are built on `matplotlib.figure.Figure` with an Agg canvas,
so drawing touches no pyplot state and works headless and from threads.

The drawings live by concept: plots_training.py (loss, errors over the steps), plots_data.py
(probabilities, the gradient slice, the decision boundary), and plotting.py what they share.
This module is their face: every name below stays importable from here.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from matplotlib.figure import Figure
from nn_parity.reports.plots_data import boundary_figure, gradient_descent_figure, probs_figure
from nn_parity.reports.plots_training import errors_figure, loss_figure
from nn_parity.reports.plotting import MAX_LINE_POINTS, _steps

if TYPE_CHECKING:
    from nn_parity.reports import Record

__all__ = [
    "DPI",
    "FIGURES",
    "MAX_LINE_POINTS",
    "FigureSpec",
    "boundary_figure",
    "draw_figures",
    "errors_figure",
    "failure",
    "gradient_descent_figure",
    "loss_figure",
    "png",
    "probs_figure",
    "save",
]

DPI = 110


def save(fig: Figure, to: Path | str | BinaryIO) -> None:
    """Write `fig` as PNG to a path (the report) or a binary file (a notebook's inline image).

    The one place the figures' resolution and metadata are set. No "Software" stamp: the same
    record then gives byte-identical PNGs.
    """
    fig.savefig(to, format="png", dpi=DPI, metadata={"Software": None})


def png(fig: Figure) -> bytes:
    """`fig` as PNG bytes, as `save` writes it."""
    buf = io.BytesIO()
    save(fig, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """A figure: its file name, how to draw it, its caption, and when the record allows it."""

    filename: str
    draw: Callable[[Record], Figure]
    caption: str
    available: Callable[[Record], bool]
    # why a network of layers has no such figure, said in the report in its place (None: the
    # figure is drawn for one whenever its record allows it)
    not_layered: str | None = None


def _has_rows(record: Record) -> bool:
    return len(_steps(record)) > 0


def _has(*arrays: str) -> Callable[[Record], bool]:
    return lambda r: all(k in r.arrays for k in arrays)


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "loss.png",
        loss_figure,
        "Loss per step on both sides (top; torch dashed over scratch) and the absolute "
        "difference between them on a log scale (bottom), against the loss tolerance.",
        lambda r: _has_rows(r) and "loss_scratch" in r.metrics and "loss_torch" in r.metrics,
    ),
    FigureSpec(
        "errors.png",
        errors_figure,
        "Top: the normwise relative error ||scratch - torch|| / ||torch|| of each "
        "parameter's gradient per step, with the gradient rtol for reference. Bottom: the "
        "same error for every compared item (log10 colour scale).",
        lambda r: _has_rows(r) and any(c.endswith(":rel_err") for c in r.metrics),
    ),
    FigureSpec(
        "probs.png",
        probs_figure,
        "Each sample's output probability, scratch (x) against torch (y), at step 0 and at the "
        "last step; agreement puts every point on the diagonal.",
        lambda r: (
            _has("y", "probs_first_scratch", "probs_first_torch")(r)
            or _has("y", "probs_last_scratch", "probs_last_torch")(r)
        ),
    ),
    FigureSpec(
        "gradient_descent.png",
        gradient_descent_figure,
        "The loss as one weight varies with all others held at step 0. The tangents at the "
        "current value have the slopes scratch, torch and finite differences compute for that "
        "weight; the arrow is the direction gradient descent moves it.",
        lambda r: "gradient_slice" in r.summary and _has("slice_w", "slice_loss")(r),
        "the loss slice is not drawn for a network with dropout: its loss changes with every mask",
    ),
    FigureSpec(
        "boundary.png",
        boundary_figure,
        "P(class 1) over the input plane before (top) and after (bottom) training, scratch "
        "(left) and torch (right); the black line is P = 0.5, the points are the data.",
        _has(
            "grid_x",
            "grid_y",
            "boundary_before_scratch",
            "boundary_before_torch",
            "boundary_after_scratch",
            "boundary_after_torch",
        ),
        "the decision boundary is drawn for a classifier on two input features",
    ),
)


def failure(what: str, err: BaseException) -> str:
    """The line a report or a notebook shows in place of a figure that failed."""
    reason = (str(err).strip().splitlines() or [""])[0]
    return f"{what} could not be drawn: {type(err).__name__}: {reason}"


def draw_figures(
    record: Record, finish: Callable[[FigureSpec, Figure], object] | None = None
) -> tuple[list[tuple[FigureSpec, Figure]], list[str]]:
    """Every figure the record allows, drawn in `FIGURES` order, and the failures by name
    (with, for a network of layers, the figures it has not and why).

    `finish` (saving it, say) runs on each figure as it is drawn: matplotlib lays text out only
    when a figure is rendered, so a failure can surface there too. Either way a figure that
    fails is named in the second list and costs neither the record nor the other figures.
    """
    drawn: list[tuple[FigureSpec, Figure]] = []
    failed: list[str] = []
    layered = bool((record.summary.get("architecture") or {}).get("layers"))
    for spec in FIGURES:
        if not spec.available(record):
            if layered and spec.not_layered:
                failed.append(f"{spec.filename} not drawn: {spec.not_layered}")
            continue
        try:
            fig = spec.draw(record)
            if finish is not None:
                finish(spec, fig)
        except Exception as err:
            failed.append(failure(spec.filename, err))
        else:
            drawn.append((spec, fig))
    return drawn, failed
