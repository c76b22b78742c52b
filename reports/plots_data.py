"""The figures of the network against its data at chosen steps: probs.png (each sample's output
on both sides), gradient_descent.png (the loss along one weight) and boundary.png (the decision
boundary over the input plane)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, Colormap, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from nn_parity.reports.plotting import CLASS_STYLE, FD, SCRATCH, TORCH, _figure, _last_step, _text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from nn_parity.reports import Record


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
    _tangents(ax, gs, w0, l0, half)
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


def _tangents(ax: Axes, gs: dict, w0: float, l0: float, half: float) -> None:
    """Each side's slope drawn as a tangent at the weight, so a wrong gradient shows as an angle."""
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
    levels, cmap = _boundary_scale(n_classes)
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
                _data_points(ax, X, y, cmap, n_classes)
            ax.set_title(f"{side}, {title}", fontsize="medium")
            if r == 1:
                ax.set_xlabel(names[0])
            if c == 0:
                ax.set_ylabel(names[1])
    _boundary_legend(fig, axes, filled, n_classes)
    fig.suptitle("Decision boundary, before and after training")
    return fig


def _boundary_scale(n_classes: int) -> tuple[np.ndarray, Colormap]:
    """Levels and colours: one region per predicted class, or P(class 1) diverging about 0.5."""
    cmap: Colormap
    if n_classes:  # regions of the predicted class, one colour each
        levels = np.arange(n_classes + 1) - 0.5
        cmap = ListedColormap([colormaps["tab10"](k % 10) for k in range(n_classes)])
    else:
        levels = np.linspace(0, 1, 21)
        cmap = colormaps["RdBu_r"]
    return levels, cmap


def _data_points(ax: Axes, X, y, cmap: Colormap, n_classes: int) -> None:
    """The data over a panel: a boundary is judged by the points it puts on the wrong side."""
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


def _boundary_legend(fig: Figure, axes, filled, n_classes: int) -> None:
    """One legend and one colour bar for the four panels, outside them, where they hide nothing."""
    handles = [] if n_classes else [Line2D([], [], color="black", linewidth=1.5, label="P = 0.5")]
    handles += axes[0, 0].get_legend_handles_labels()[0]
    # Below the panels: inside one, the legend would hide data points.
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small")
    if filled is not None and n_classes:
        fig.colorbar(filled, ax=axes, label="predicted class", ticks=np.arange(n_classes))
    elif filled is not None:
        fig.colorbar(filled, ax=axes, label="P(class 1)", ticks=np.linspace(0, 1, 6))
