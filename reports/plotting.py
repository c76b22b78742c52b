"""What every figure shares: the two sides' colours, a headless canvas, and lines and axes that
stay readable over a 100,000-step run or one that blew up to inf.

Both drawing modules (plots_training.py, plots_data.py) import this one, and figures.py imports
all three: nothing here imports back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from nn_parity.reports import Record

# The two sides keep one colour each in every figure.
SCRATCH: dict[str, Any] = {"color": "tab:blue", "label": "scratch", "linewidth": 1.6}
# Dashed, so that where the two sides agree the scratch line still shows through.
TORCH: dict[str, Any] = {
    "color": "tab:orange",
    "label": "torch",
    "linewidth": 1.6,
    "linestyle": "--",
}
FD: dict[str, Any] = {
    "color": "tab:green",
    "label": "finite differences",
    "linewidth": 1.6,
    "linestyle": ":",
}
DIVERGENCE: dict[str, Any] = {"color": "tab:red", "linewidth": 1.2, "linestyle": ":"}
# Class colours stay clear of the scratch/torch pair so the two codings never mix.
CLASS_STYLE: list[dict[str, Any]] = [
    {"color": "tab:purple", "marker": "o"},
    {"color": "tab:green", "marker": "^"},
    {"color": "tab:brown", "marker": "s"},
    {"color": "tab:pink", "marker": "D"},
]
# Beyond this many steps, lines are drawn as a per-bin min/max envelope: drawing 100,000 points
# per line buys nothing on a 1,000-pixel-wide axis.
MAX_LINE_POINTS = 4000
# Past this magnitude matplotlib's tick arithmetic overflows (10**decade on a log axis): such
# values, from a run that blew up, are drawn as non-finite.
PLOT_LIMIT = 1e200


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    **{c: "\\" + c for c in "$#%&_{}"},
}  # fmt: skip


def _text(s: object) -> str:
    """A user-supplied string (a CSV header, a parameter name) as plain text: matplotlib would
    read `$...$` in it as mathtext, and every TeX special character under text.usetex."""
    s = str(s)
    if rcParams["text.usetex"]:
        return "".join(_TEX_ESCAPES.get(c, c) for c in s)
    return s.replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _steps(record: Record) -> np.ndarray:
    m = record.metrics
    if "step" in m:
        return np.asarray(m["step"])
    n = len(next(iter(m.values()))) if m else 0
    return np.arange(n)


def _first_divergence_step(record: Record) -> int | None:
    div = record.summary.get("first_divergence") or {}
    step = div.get("step")
    return int(step) if step is not None else None


def _mark_divergence(ax: Axes, step: int | None, label: bool = True) -> None:
    if step is not None:
        ax.axvline(step, **DIVERGENCE, label=f"first divergence (step {step})" if label else None)


def _positive_floor(values: np.ndarray, eps: float) -> float:
    """Where to draw exact zeros on a log axis: a decade under the smallest positive value."""
    v = values[np.isfinite(values) & (values > 0) & (values < PLOT_LIMIT)]
    return float(v.min()) / 10 if v.size else eps


def _envelope(x: np.ndarray, y: np.ndarray, max_points: int = MAX_LINE_POINTS):
    """x, y thinned to at most max_points as each bin's min and max, so spikes survive."""
    n = len(x)
    if n <= max_points:
        return x, y
    size = -(-n // (max_points // 2))
    starts = np.arange(0, n, size)
    # fmin/fmax skip NaN unless a whole bin is NaN, and neither warns.
    lo = np.fmin.reduceat(y, starts)
    hi = np.fmax.reduceat(y, starts)
    return np.repeat(x[starts], 2), np.column_stack([lo, hi]).ravel()


def _plottable(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(y) > PLOT_LIMIT, np.copysign(np.inf, y), y)


def _line(ax: Axes, x: np.ndarray, y: np.ndarray, **style) -> None:
    xs, ys = _envelope(x, _plottable(y))
    if len(xs) == 1:  # a one-step run: a line of one point would not show
        style = {**style, "marker": "o"}
    elif len(xs) > 500 and "linewidth" in style:  # dense, jagged lines read better thin
        style = {**style, "linewidth": 0.6 * style["linewidth"]}
    ax.plot(xs, ys, **style)


def _mark_nonfinite(ax: Axes, x: np.ndarray, y: np.ndarray, color: Any) -> bool:
    """Mark the steps where y is NaN or inf with crosses along the top edge of the axes."""
    bad = ~np.isfinite(_plottable(y))
    if not bad.any():
        return False
    xb = x[bad]
    if len(xb) > MAX_LINE_POINTS:
        xb = xb[:: -(-len(xb) // MAX_LINE_POINTS)]
    ax.plot(
        xb,
        np.ones(len(xb)),
        linestyle="none",
        marker="x",
        color=color,
        transform=ax.get_xaxis_transform(),
        clip_on=False,
    )
    return True


def _safe_log_ylim(ax: Axes, floor: float) -> None:
    """Give a log axis with nothing finite on it a range, instead of an empty autoscale."""
    lo, hi = ax.get_ylim()
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
        ax.set_ylim(floor, 1.0)


def _last_step(record: Record) -> int:
    x = _steps(record)
    if len(x):
        return int(x[-1])
    return max(int(record.summary.get("steps") or 1) - 1, 0)
