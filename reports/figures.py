"""The run's figures: one function per figure draws it from a Record, one function saves it.

Drawing and saving are apart so that a notebook shows the very figures a report embeds,
without files: `draw_figures` draws every figure the record allows (the `FIGURES` registry),
`save` writes one as PNG. Figures are built on `matplotlib.figure.Figure` with an Agg canvas,
so drawing touches no pyplot state and works headless and from threads.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from matplotlib import colormaps, rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, Colormap, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from nn_parity.reports import Record

__all__ = [
    "FIGURES",
    "FigureSpec",
    "boundary_figure",
    "draw_figures",
    "errors_figure",
    "gradient_descent_figure",
    "loss_figure",
    "png",
    "probs_figure",
    "save",
]

DPI = 110
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
# Beyond this many steps, lines are drawn as a per-bin min/max envelope and the heatmap as a
# per-bin max: drawing 100,000 points per line buys nothing on a 1,000-pixel-wide axis.
MAX_LINE_POINTS = 4000
MAX_HEATMAP_COLUMNS = 1500


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


# Past this magnitude matplotlib's tick arithmetic overflows (10**decade on a log axis): such
# values, from a run that blew up, are drawn as non-finite.
PLOT_LIMIT = 1e200


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

    # (a) the gradients, and beside them (dashed) the optimizer's state buffers
    kinds = {k: v.get("quantity") for k, v in (record.summary.get("quantities") or {}).items()}
    grads = [(label, e) for label, e in items if label.startswith("grad ")]
    # step counts are exact integers on both sides: the heatmap shows them, the lines do not
    states = [(label, e) for label, e in items
              if kinds.get(label) == "state" and not label.startswith("step ")]  # fmt: skip
    colors = colormaps["tab10"] if len(grads) <= 10 else colormaps["viridis"]
    top.set_yscale("log")
    any_zero = any_bad = False
    lines = [(_text(label[len("grad ") :]), e, "-") for label, e in grads]
    lines += [(_text(label), e, "--") for label, e in states]
    for k, (label, e, style) in enumerate(lines):
        color = colors(k % 10 if len(grads) <= 10 else k / max(len(lines) - 1, 1))
        any_zero |= bool(np.any(e == 0))
        _line(
            top,
            x,
            np.where(e == 0, floor, e),
            color=color,
            linewidth=1.2,
            linestyle=style,
            label=label,
        )
        any_bad |= _mark_nonfinite(top, x, e, color)
    rtol = ((record.summary.get("tolerances") or {}).get("grad") or {}).get("rtol")
    if rtol is not None:
        top.axhline(
            rtol,
            color="tab:gray",
            linestyle="-.",
            linewidth=1.2,
            label=f"grad rtol = {rtol:.2g} (elementwise bound)",
        )
    _mark_divergence(top, div_step)
    if any_bad:
        top.plot([], [], linestyle="none", marker="x", color="black", label="NaN or inf")
    _safe_log_ylim(top, floor)
    ylabel = "normwise relative error"
    if any_zero:
        ylabel += f"\n(exact 0 drawn at {floor:.1e})"
    top.set_ylabel(ylabel)
    title = "Gradient error per parameter, ||g_scratch - g_torch|| / ||g_torch||"
    if states:
        title += "\n(dashed: the optimizer's state buffers)"
    top.set_title(title if grads else "No gradient items in this record")
    top.grid(alpha=0.3)
    if top.get_legend_handles_labels()[0]:
        # Outside the axes: a failing gradient climbs into any corner a legend could take.
        top.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
            fontsize="small",
            ncols=2 if len(grads) > 12 else 1,
        )

    # (b) every item, binned over steps for long runs
    xb, data = _heatmap_bins(x, all_errors)
    nan = np.isnan(data)
    inf = np.isinf(data)
    logs = np.log10(np.where(nan | inf | (data <= 0), 1.0, data))
    logs[data == 0] = np.log10(floor)
    finite = logs[~(nan | inf)]
    vmin = float(finite.min()) if finite.size else np.log10(floor)
    vmax = float(finite.max()) if finite.size else vmin + 1
    rtols = [t.get("rtol") for t in (record.summary.get("tolerances") or {}).values()]
    rtols = [float(r) for r in rtols if isinstance(r, (int, float)) and r > 0]
    # The scale reaches the tolerance, so a passing run reads as headroom, not as noise
    # stretched over the whole colour range.
    log_rtol = float(np.log10(max(rtols))) if rtols else None
    if log_rtol is not None:
        vmax = max(vmax, log_rtol)
    if vmax <= vmin:  # one value everywhere: give the colour scale a decade of range
        vmin, vmax = vmin - 0.5, vmax + 0.5
    logs[inf] = vmax + 1  # drawn in the colormap's "over" colour
    cmap = colormaps["viridis"].with_extremes(bad="black", over="tab:red")
    image = np.ma.masked_array(logs, mask=nan)
    step_width = float(xb[1] - xb[0]) if len(xb) > 1 else 1.0
    extent = (float(xb[0]) - step_width / 2, float(xb[-1]) + step_width / 2, len(items) - 0.5, -0.5)
    im = bottom.imshow(
        image,
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        norm=Normalize(vmin, vmax),
        extent=extent,
    )
    bottom.set_yticks(
        range(len(items)),
        [_text(label) for label, _ in items],
        fontsize=8 if len(items) > 16 else 9,
    )
    _mark_divergence(bottom, div_step, label=False)
    bottom.set_xlabel("step")
    notes = []
    if len(xb) < len(x):
        notes.append(f"max over bins of {-(-len(x) // len(xb))} steps")
    if np.any(all_errors == 0):
        notes.append("exact 0 at the floor")
    if nan.any():
        notes.append("black: NaN")
    if inf.any():
        notes.append("red: inf")
    bottom.set_title(
        "Every compared item, step x item" + (f" ({'; '.join(notes)})" if notes else ""),
        fontsize="medium",
    )
    # Beneath, not beside: the right margin holds the legend above, and the two panels' step
    # axes must stay aligned.
    bar = fig.colorbar(
        im,
        ax=bottom,
        location="bottom",
        label="log10 normwise relative error",
        extend="max" if inf.any() else "neither",
        aspect=60,
        shrink=0.7,
        pad=0.02,
    )
    if log_rtol is not None and vmin <= log_rtol <= vmax:
        bar.ax.axvline(log_rtol, color="white", linewidth=2)
        bar.ax.axvline(log_rtol, color="black", linewidth=1, linestyle="--")
        bar.ax.text(
            log_rtol,
            1.15,
            "largest rtol",
            ha="center",
            va="bottom",
            fontsize="small",
            transform=bar.ax.get_xaxis_transform(),
        )
    return fig


# --------------------------------------------------------------------------------------------
# 3. probs.png


def _last_step(record: Record) -> int:
    x = _steps(record)
    if len(x):
        return int(x[-1])
    return max(int(record.summary.get("steps") or 1) - 1, 0)


def probs_figure(record: Record) -> Figure:
    """Scratch against torch output probability per sample, at step 0 and at the last step."""
    a = record.arrays
    y = labels = np.asarray(a["y"]).ravel()
    classes = np.unique(y[np.isfinite(y)]) if y.dtype.kind == "f" else np.unique(y)
    regression = len(classes) > 12  # real-valued targets: predictions, one colour

    # A run cut short may have recorded only one of the two.
    panels = [
        (when, step)
        for when, step in (("first", 0), ("last", _last_step(record)))
        if f"probs_{when}_scratch" in a and f"probs_{when}_torch" in a
    ]
    fig = _figure(5.6 * len(panels) - 0.7 * (len(panels) - 1), 5.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (when, step) in zip(axes, panels):
        ps = np.asarray(a[f"probs_{when}_scratch"], dtype=np.float64).ravel()
        pt = np.asarray(a[f"probs_{when}_torch"], dtype=np.float64).ravel()
        y = np.asarray(a[f"probs_{when}_y"]).ravel() if f"probs_{when}_y" in a else labels
        lo, hi = (float(np.nanmin(pt)), float(np.nanmax(pt))) if regression and len(pt) else (0, 1)
        ax.plot([lo, hi], [lo, hi], color="tab:gray", linewidth=1, label="y = x")
        for k, c in enumerate([None] if regression else classes):
            sel = np.ones(len(ps), bool) if c is None else y == c
            style = CLASS_STYLE[k % len(CLASS_STYLE)]
            ax.scatter(
                ps[sel],
                pt[sel],
                s=14,
                alpha=0.7,
                linewidths=0,
                label="prediction" if c is None else f"label y = {c:g}",
                color=style["color"],
                marker=style["marker"],
                rasterized=len(ps) > 5000,
            )
        # np.max lets a NaN through, which is what a diverged output should show.
        largest = float(np.max(np.abs(ps - pt))) if len(ps) else float("nan")
        if not regression:
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        what = "prediction" if regression else "P(true class)" if len(classes) > 2 else "P(class 1)"
        ax.set_xlabel(f"scratch {what}")
        ax.set_ylabel(f"torch {what}")
        ax.set_title(
            f"Step {step}: largest |p_scratch - p_torch| = {largest:.3g}", fontsize="medium"
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    fig.suptitle("Output probabilities, scratch against torch")
    return fig


# --------------------------------------------------------------------------------------------
# 4. gradient_descent.png


def gradient_descent_figure(record: Record) -> Figure:
    """The loss along one weight, with the gradient as a tangent and the descent step."""
    gs = record.summary["gradient_slice"]
    w = np.asarray(record.arrays["slice_w"], dtype=np.float64).ravel()
    loss = np.asarray(record.arrays["slice_loss"], dtype=np.float64).ravel()
    w0, l0 = float(gs["value"]), float(gs["loss"])
    name = f"{gs.get('param', 'weight')}[{', '.join(str(i) for i in gs.get('index') or [])}]"
    name = _text(name)

    fig = _figure(8.5, 5.6)
    ax = fig.subplots()
    ax.plot(w, loss, color="black", linewidth=1.8, label="loss, all other weights at step 0")
    width = float(np.nanmax(w) - np.nanmin(w)) if np.isfinite(w).any() else 0.0
    half = 0.2 * width if width > 0 else 0.1 * max(abs(w0), 1.0)
    span = np.array([w0 - half, w0 + half])
    for key, style, who in (
        ("grad_scratch", SCRATCH, "scratch"),
        ("grad_torch", TORCH, "torch"),
        ("grad_fd", FD, "finite differences"),
    ):
        g = gs.get(key)
        if g is None:
            continue
        ax.plot(span, l0 + float(g) * (span - w0), **{**style, "label": f"{who} slope {g:.12g}"})

    g = gs.get("grad_scratch", gs.get("grad_torch"))
    if g is not None and np.isfinite(g) and g != 0:
        # The step goes against the gradient; drawn along the tangent, so it points downhill.
        dw = -np.sign(g) * 0.8 * half
        ax.annotate(
            "",
            xy=(w0 + dw, l0 + g * dw),
            xytext=(w0, l0),
            arrowprops={"arrowstyle": "-|>", "color": "tab:red", "linewidth": 1.8},
        )
        ax.plot(
            [],
            [],
            color="tab:red",
            marker=">",
            linewidth=1.8,
            label="gradient-descent direction (-grad)",
        )
    ax.plot(
        [w0],
        [l0],
        "o",
        color="black",
        markersize=7,
        zorder=5,
        label=f"step 0: w = {w0:.6g}, loss = {l0:.6g}",
    )

    # Keep the view on the curve; steep tangents are clipped rather than squashing it flat.
    ok = np.isfinite(loss)
    if ok.any():
        lo, hi = min(float(loss[ok].min()), l0), max(float(loss[ok].max()), l0)
        pad = 0.08 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    if width > 0:
        ax.set_xlim(float(np.nanmin(w)), float(np.nanmax(w)))
    ax.set_xlabel(f"{name} (other weights held at step 0)")
    ax.set_ylabel("loss")
    ax.set_title(f"Loss along {name}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", fontsize="small")
    return fig


# --------------------------------------------------------------------------------------------
# 5. boundary.png


def boundary_figure(record: Record) -> Figure:
    """P(class 1) over the input plane, before and after training, on both sides."""
    a = record.arrays
    gx = np.asarray(a["grid_x"], dtype=np.float64)
    gy = np.asarray(a["grid_y"], dtype=np.float64)
    X = a.get("X")
    y = np.asarray(a["y"]).ravel() if "y" in a else None
    n_classes = int(a["boundary_classes"]) if "boundary_classes" in a else 0
    cmap: Colormap
    if n_classes:  # regions of the predicted class, one colour each
        levels = np.arange(n_classes + 1) - 0.5
        cmap = ListedColormap([colormaps["tab10"](k % 10) for k in range(n_classes)])
    else:
        levels = np.linspace(0, 1, 21)
        cmap = colormaps["RdBu_r"]
    norm = BoundaryNorm(levels, cmap.N)

    names = list((record.summary.get("data") or {}).get("feature_names") or [])[:2]
    names = [_text(n) for n in names] if len(names) == 2 else ["x1", "x2"]
    fig = _figure(10, 9)
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    filled = None
    # "after" is the network once the last update is applied: after `steps` updates.
    updates = record.summary.get("steps", _last_step(record) + 1)
    rows = (("before", "before training (step 0)"), ("after", f"after {updates} updates"))
    for r, (when, title) in enumerate(rows):
        for c, side in enumerate(("scratch", "torch")):
            ax = axes[r, c]
            P = np.ma.masked_invalid(np.asarray(a[f"boundary_{when}_{side}"], dtype=np.float64))
            filled = ax.contourf(gx, gy, P, levels=levels, cmap=cmap, norm=norm)
            values = P.compressed()
            # contour warns when asked for a level the field never crosses.
            if not n_classes and values.size and values.min() < 0.5 < values.max():
                ax.contour(gx, gy, P, levels=[0.5], colors="black", linewidths=1.5)
            if X is not None and y is not None:
                classes = np.unique(y)
                for k, cls in enumerate(classes):
                    sel = y == cls
                    # Filled with the colour of the probability the class should get, so a
                    # point on the wrong side stands out; the white rim keeps the rest visible.
                    fill = (cmap(k) if n_classes
                            else cmap(0.9 if k == len(classes) - 1 else 0.1 + 0.2 * k))  # fmt: skip
                    ax.scatter(
                        X[sel, 0],
                        X[sel, 1],
                        s=24,
                        color=fill,
                        marker=CLASS_STYLE[k % len(CLASS_STYLE)]["marker"],
                        edgecolors="white",
                        linewidths=0.8,
                        label=f"y = {cls:g}",
                    )
            ax.set_title(f"{side}, {title}", fontsize="medium")
            if r == 1:
                ax.set_xlabel(names[0])
            if c == 0:
                ax.set_ylabel(names[1])
    handles = [] if n_classes else [Line2D([], [], color="black", linewidth=1.5, label="P = 0.5")]
    handles += axes[0, 0].get_legend_handles_labels()[0]
    # Below the panels: inside one, the legend would hide data points.
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small")
    if filled is not None and n_classes:
        fig.colorbar(filled, ax=axes, label="predicted class", ticks=np.arange(n_classes))
    elif filled is not None:
        fig.colorbar(filled, ax=axes, label="P(class 1)", ticks=np.linspace(0, 1, 6))
    fig.suptitle("Decision boundary, before and after training")
    return fig


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """A figure: its file name, how to draw it, its caption, and when the record allows it."""

    filename: str
    draw: Callable[[Record], Figure]
    caption: str
    available: Callable[[Record], bool]


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
    ),
)


def failure(what: str, err: BaseException) -> str:
    """The line a report or a notebook shows in place of a figure that failed."""
    reason = (str(err).strip().splitlines() or [""])[0]
    return f"{what} could not be drawn: {type(err).__name__}: {reason}"


def draw_figures(
    record: Record, finish: Callable[[FigureSpec, Figure], object] | None = None
) -> tuple[list[tuple[FigureSpec, Figure]], list[str]]:
    """Every figure the record allows, drawn in `FIGURES` order, and the failures by name.

    `finish` (saving it, say) runs on each figure as it is drawn: matplotlib lays text out only
    when a figure is rendered, so a failure can surface there too. Either way a figure that
    fails is named in the second list and costs neither the record nor the other figures.
    """
    drawn: list[tuple[FigureSpec, Figure]] = []
    failed: list[str] = []
    for spec in FIGURES:
        if not spec.available(record):
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
