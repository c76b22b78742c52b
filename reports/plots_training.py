"""The figures over the training steps: loss.png (both sides' loss and their difference) and
errors.png (every compared item's error, as lines and as a step x item heatmap)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from nn_parity.reports.plotting import (
    SCRATCH,
    TORCH,
    _figure,
    _first_divergence_step,
    _line,
    _mark_divergence,
    _mark_nonfinite,
    _positive_floor,
    _safe_log_ylim,
    _steps,
    _text,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from nn_parity.reports import Record

# Beyond this many steps the heatmap is drawn as a per-bin max (NaN in a bin wins).
MAX_HEATMAP_COLUMNS = 1500


# --------------------------------------------------------------------------------------------
# 1. loss.png


def loss_figure(record: Record) -> Figure:
    """Loss per step on both sides, and their absolute difference on a log axis beneath."""
    m = record.metrics
    x = _steps(record)
    ls = np.asarray(m["loss_scratch"], dtype=np.float64)
    lt = np.asarray(m["loss_torch"], dtype=np.float64)
    div_step = _first_divergence_step(record)

    fig = _figure(9, 6.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    _line(top, x, ls, **SCRATCH)
    _line(top, x, lt, **TORCH)
    _mark_divergence(top, div_step)
    top.set_ylabel(f"loss ({record.summary.get('loss', 'loss')})")
    top.set_title("Training loss, scratch and torch")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)

    with np.errstate(invalid="ignore"):  # inf - inf on a diverged run is NaN, and marked
        diff = np.abs(ls - lt)
    floor = _positive_floor(diff, record.eps)
    shown = np.where(diff == 0, floor, diff)
    label = "|loss_scratch - loss_torch|"
    if np.any(diff == 0):
        label += f" (exact 0 drawn at {floor:.1e})"
    bottom.set_yscale("log")
    _line(bottom, x, shown, color="black", linewidth=1.2, label=label)
    tol = (record.summary.get("tolerances") or {}).get("loss") or {}
    if tol.get("rtol") is not None and tol.get("atol") is not None:
        bound = tol["atol"] + tol["rtol"] * np.abs(lt)
        _line(
            bottom,
            x,
            bound,
            color="tab:gray",
            linewidth=1.0,
            linestyle="-.",
            label="tolerance atol + rtol |loss_torch|",
        )
    if _mark_nonfinite(bottom, x, diff, "tab:red"):
        bottom.plot([], [], linestyle="none", marker="x", color="tab:red", label="NaN or inf")
    _mark_divergence(bottom, div_step, label=False)
    _safe_log_ylim(bottom, floor)
    bottom.set_xlabel("step")
    bottom.set_ylabel("absolute difference")
    bottom.legend(loc="upper right", fontsize="small")
    bottom.grid(alpha=0.3, which="major")
    return fig


# --------------------------------------------------------------------------------------------
# 2. errors.png


def _rel_err_columns(record: Record) -> list[tuple[str, np.ndarray]]:
    """(item label, per-step normwise relative error), in the order of `quantities`."""
    m = record.metrics
    labels = list((record.summary.get("quantities") or {}).keys())
    # Items present in the CSV but not in the summary still get drawn, after the known ones.
    labels += [c[: -len(":rel_err")] for c in m if c.endswith(":rel_err")]
    seen: set[str] = set()
    out = []
    for label in labels:
        col = f"{label}:rel_err"
        if col in m and label not in seen:
            seen.add(label)
            out.append((label, np.asarray(m[col], dtype=np.float64)))
    return out


def _heatmap_bins(x: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns binned to at most MAX_HEATMAP_COLUMNS by their max; NaN in a bin wins."""
    n = data.shape[1]
    if n <= MAX_HEATMAP_COLUMNS:
        return x, data
    size = -(-n // MAX_HEATMAP_COLUMNS)
    starts = np.arange(0, n, size)
    return x[starts], np.maximum.reduceat(data, starts, axis=1)


def errors_figure(record: Record) -> Figure:
    """Gradient errors per parameter over steps, and a step x item heatmap of every error."""
    x = _steps(record)
    items = _rel_err_columns(record)
    div_step = _first_divergence_step(record)
    all_errors = np.vstack([e for _, e in items])
    floor = _positive_floor(all_errors, record.eps)

    heat_height = max(2.6, 0.24 * len(items)) + 0.8  # + the colorbar beneath
    fig = _figure(10, 4.2 + heat_height)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[4.2, heat_height])
    _gradient_lines(top, record, x, items, floor, div_step)
    _error_heatmap(fig, bottom, record, x, items, all_errors, floor, div_step)
    return fig


def _gradient_lines(ax: Axes, record: Record, x, items, floor: float, div_step) -> None:
    """(a) the gradients, and beside them (dashed) the optimizer's state buffers, one line each."""
    kinds = {k: v.get("quantity") for k, v in (record.summary.get("quantities") or {}).items()}
    grads = [(label, e) for label, e in items if label.startswith("grad ")]
    # step counts are exact integers on both sides: the heatmap shows them, the lines do not
    states = [(label, e) for label, e in items
              if kinds.get(label) == "state" and not label.startswith("step ")]  # fmt: skip
    colors = colormaps["tab10"] if len(grads) <= 10 else colormaps["viridis"]
    ax.set_yscale("log")
    any_zero = any_bad = False
    lines = [(_text(label[len("grad ") :]), e, "-") for label, e in grads]
    lines += [(_text(label), e, "--") for label, e in states]
    for k, (label, e, style) in enumerate(lines):
        color = colors(k % 10 if len(grads) <= 10 else k / max(len(lines) - 1, 1))
        any_zero |= bool(np.any(e == 0))
        _line(
            ax,
            x,
            np.where(e == 0, floor, e),
            color=color,
            linewidth=1.2,
            linestyle=style,
            label=label,
        )
        any_bad |= _mark_nonfinite(ax, x, e, color)
    rtol = ((record.summary.get("tolerances") or {}).get("grad") or {}).get("rtol")
    if rtol is not None:
        ax.axhline(
            rtol,
            color="tab:gray",
            linestyle="-.",
            linewidth=1.2,
            label=f"grad rtol = {rtol:.2g} (elementwise bound)",
        )
    _mark_divergence(ax, div_step)
    _label_gradient_lines(ax, floor, len(grads), bool(states), any_zero, any_bad)


def _label_gradient_lines(
    ax: Axes, floor: float, n_grads: int, states: bool, any_zero: bool, any_bad: bool
) -> None:
    """Title, axis label and legend, each saying what the lines' special marks mean."""
    if any_bad:
        ax.plot([], [], linestyle="none", marker="x", color="black", label="NaN or inf")
    _safe_log_ylim(ax, floor)
    ylabel = "normwise relative error"
    if any_zero:
        ylabel += f"\n(exact 0 drawn at {floor:.1e})"
    ax.set_ylabel(ylabel)
    title = "Gradient error per parameter, ||g_scratch - g_torch|| / ||g_torch||"
    if states:
        title += "\n(dashed: the optimizer's state buffers)"
    ax.set_title(title if n_grads else "No gradient items in this record")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        # Outside the axes: a failing gradient climbs into any corner a legend could take.
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
            fontsize="small",
            ncols=2 if n_grads > 12 else 1,
        )


def _error_heatmap(fig: Figure, ax: Axes, record: Record, x, items, all_errors, floor, div_step):
    """(b) every item, binned over steps for long runs, with the colour scale beneath."""
    xb, data = _heatmap_bins(x, all_errors)
    nan = np.isnan(data)
    inf = np.isinf(data)
    logs, vmin, vmax, log_rtol = _log_scale(record, data, nan, inf, floor)
    cmap = colormaps["viridis"].with_extremes(bad="black", over="tab:red")
    image = np.ma.masked_array(logs, mask=nan)
    step_width = float(xb[1] - xb[0]) if len(xb) > 1 else 1.0
    extent = (float(xb[0]) - step_width / 2, float(xb[-1]) + step_width / 2, len(items) - 0.5, -0.5)
    im = ax.imshow(
        image,
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        norm=Normalize(vmin, vmax),
        extent=extent,
    )
    ax.set_yticks(
        range(len(items)),
        [_text(label) for label, _ in items],
        fontsize=8 if len(items) > 16 else 9,
    )
    _mark_divergence(ax, div_step, label=False)
    ax.set_xlabel("step")
    notes = []
    if len(xb) < len(x):
        notes.append(f"max over bins of {-(-len(x) // len(xb))} steps")
    if np.any(all_errors == 0):
        notes.append("exact 0 at the floor")
    if nan.any():
        notes.append("black: NaN")
    if inf.any():
        notes.append("red: inf")
    ax.set_title(
        "Every compared item, step x item" + (f" ({'; '.join(notes)})" if notes else ""),
        fontsize="medium",
    )
    # Beneath, not beside: the right margin holds the legend above, and the two panels' step
    # axes must stay aligned.
    bar = fig.colorbar(
        im,
        ax=ax,
        location="bottom",
        label="log10 normwise relative error",
        extend="max" if inf.any() else "neither",
        aspect=60,
        shrink=0.7,
        pad=0.02,
    )
    if log_rtol is not None and vmin <= log_rtol <= vmax:
        _mark_rtol(bar.ax, log_rtol)


def _log_scale(record: Record, data, nan, inf, floor: float):
    """log10 of the errors and the colour range, reaching the largest rtol so a pass reads as
    headroom rather than as noise stretched over the whole range."""
    logs = np.log10(np.where(nan | inf | (data <= 0), 1.0, data))
    logs[data == 0] = np.log10(floor)
    finite = logs[~(nan | inf)]
    vmin = float(finite.min()) if finite.size else np.log10(floor)
    vmax = float(finite.max()) if finite.size else vmin + 1
    rtols = [t.get("rtol") for t in (record.summary.get("tolerances") or {}).values()]
    rtols = [float(r) for r in rtols if isinstance(r, (int, float)) and r > 0]
    log_rtol = float(np.log10(max(rtols))) if rtols else None
    if log_rtol is not None:
        vmax = max(vmax, log_rtol)
    if vmax <= vmin:  # one value everywhere: give the colour scale a decade of range
        vmin, vmax = vmin - 0.5, vmax + 0.5
    logs[inf] = vmax + 1  # drawn in the colormap's "over" colour
    return logs, vmin, vmax, log_rtol


def _mark_rtol(bar_ax: Axes, log_rtol: float) -> None:
    """The largest rtol marked on the colour bar: where an error starts to fail."""
    bar_ax.axvline(log_rtol, color="white", linewidth=2)
    bar_ax.axvline(log_rtol, color="black", linewidth=1, linestyle="--")
    bar_ax.text(
        log_rtol,
        1.15,
        "largest rtol",
        ha="center",
        va="bottom",
        fontsize="small",
        transform=bar_ax.get_xaxis_transform(),
    )
