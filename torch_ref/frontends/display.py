"""A lockstep result in a notebook or a terminal: HTML, matplotlib figures and a short repr.

Everything shown is drawn from the run record (docs/record.md) that `write_record` would save
for the result, through the same code as `report.html`: `summary_dict` for the numbers, the
figure functions of `nn_parity.reports.figures` for the pictures. A result does not know the
data or the loss it was trained on; what the caller knows (`X`, `y`, `lr`, `loss`, ...) can be
passed as context, and what nobody said is shown as unknown rather than guessed.

    result                  # LockstepResult(PASS: 100 steps, 14 items, ...)
    result._repr_html_()    # what Jupyter shows: verdict, per-item table, first divergence
    result.figures(y=y)     # a list of matplotlib Figures (Agg canvases), shown inline
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from nn_parity.reports import Record
    from nn_parity.torch_ref.results import LockstepResult

__all__ = [
    "Figures",
    "record_config",
    "record_figures",
    "result_figures",
    "result_html",
    "result_record",
    "result_repr",
    "result_summary",
    "summary_html",
]

_PASS, _FAIL, _MUTED = "#1a7f37", "#c62828", "#59636e"
_NUMERIC = "text-align:right;font-family:monospace;white-space:nowrap"


def _dtype_name(result: LockstepResult, net: Any) -> str:
    dtype = result.dtype or getattr(net, "dtype", None)
    if dtype is None:  # the output probabilities are in the run's dtype
        pair = result.probs_first or result.probs_last
        dtype = pair[0].dtype if pair is not None else np.float64
    return np.dtype(dtype).name


def record_config(
    result: LockstepResult,
    *,
    net: Any = None,
    X: Any = None,
    y: Any = None,
    steps: int | None = None,
    lr: float | None = None,
    loss: Any = None,
    data: str | None = None,
    seed: int | None = None,
    **_: Any,
) -> dict:
    """The `config` that `write_record` and `summary_dict` take, for a result and its context.

    Sizes, bias, parameter count and sample count are read from the result's items; the
    activations from `net` when given. Unknown values are None. Other keywords (the rest of a
    lockstep call) are accepted and ignored.
    """
    by_label = {it.label: it for it in result.items}
    weights = [by_label[f"grad layers.{l}.weight"] for l in range(len(by_label))
               if f"grad layers.{l}.weight" in by_label]  # fmt: skip
    sizes = [weights[0].shape[1], *(w.shape[0] for w in weights)] if weights else None
    z0 = by_label.get("z[0]")
    samples = z0.shape[0] if z0 is not None else (len(X) if X is not None else None)
    params = [it for it in result.items if it.quantity == "param"]
    acts = getattr(net, "activations", None)
    if loss is None:  # shown as "loss ?"
        loss_name, reduction = "?", None
    else:
        loss_name = getattr(loss, "name", loss)
        reduction = getattr(loss, "reduction", "mean")
    return {
        "steps": steps if steps is not None else result.steps,
        "dtype": _dtype_name(result, net),
        "architecture": {
            "sizes": sizes,
            "activations": [getattr(a, "name", str(a)) for a in acts] if acts else None,
            "bias": any(it.param == "bias" for it in params),
            "init": None,
            "parameters": sum(it.size for it in params),
        },
        "data": {
            "name": data or "arrays",
            "samples": samples,
            "features": sizes[0] if sizes else None,
            "feature_names": None,
            "source": None,
        },
        "loss": loss_name,
        "reduction": reduction,
        "lr": lr,
        "optimizer": result.optimizer,
        "seed": seed,
        # record.npz needs an array; "no labels" is an empty one, dropped again on reading
        "y": np.zeros(0) if y is None else np.asarray(y),
    }


def result_summary(result: LockstepResult, **context: Any) -> dict:
    """The summary.json object `write_record` would save for this result."""
    from nn_parity.torch_ref.record import summary_dict

    return summary_dict(result, record_config(result, **context), {})


# --- text -----------------------------------------------------------------------------------


def result_repr(result: LockstepResult) -> str:
    """One line: the verdict, the size of the run, and where it diverged or how close it was."""
    word = "PASS" if result.passed else "DIVERGED" if result.first_divergence else "FAULT"
    head = f"{type(result).__name__}({word}: "
    head += f"{result.steps} step{'s' * (result.steps != 1)}, {len(result.items)} items"
    div = result.first_divergence
    if div is not None:
        cause = (div.diagnosis or {}).get("cause")
        index = ", ".join(str(i) for i in div.index)
        where = f"; first divergence at step {div.step}, {div.label}[{index}]: "
        where += f"scratch {div.scratch:.6g} vs torch {div.torch:.6g}"
        return head + where + (f", likely cause {cause})" if cause else ")")
    if result.fault is not None:
        fault = result.fault
        return head + f"; your code failed at step {fault['step']}: {fault['message']})"
    if not result.steps:
        return head + ")"
    k = int(np.argmax(np.max(result.rel_err, axis=0)))
    worst = float(np.max(result.rel_err[:, k]))
    return head + f"; largest relative error {worst:.3g} in {result.items[k].label})"


# --- HTML -----------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _rows(head: list[str] | None, rows: list[list[str]], numeric: set[int]) -> str:
    """A plain table from escaped cells; inline styles only, as notebook front ends strip
    <style> blocks from untrusted output and a page-wide stylesheet would restyle the notebook."""

    def cell(i: int, tag: str, content: str) -> str:
        style = "text-align:left"
        if i in numeric:  # numbers right-aligned in monospace, so that digits line up
            style = _NUMERIC if tag == "td" else "text-align:right"
        return f'<{tag} style="{style}">{content}</{tag}>'

    thead = ""
    if head:
        thead = "<thead><tr>" + "".join(cell(i, "th", h) for i, h in enumerate(head))
        thead += "</tr></thead>"
    body = "".join(
        "<tr>" + "".join(cell(i, "td", c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _facts(summary: dict) -> str:
    """One line on the run, leaving out what the record does not know (None, "?")."""
    arch, data = summary.get("architecture") or {}, summary.get("data") or {}

    def known(value: Any) -> bool:
        return value not in (None, "?", "")

    net = "-".join(str(s) for s in arch.get("sizes") or []) or "?"
    if arch.get("activations"):
        net += " (" + ", ".join(arch["activations"]) + ")"
    parts = [f"network {net}"]
    if known(arch.get("parameters")):
        parts.append(f"{arch['parameters']} parameters")
    if known(data.get("samples")):
        parts.append(f"{data['samples']} samples")
    parts.append(f"{summary.get('dtype', '?')}, {summary.get('steps', '?')} steps")
    if known(summary.get("lr")):
        parts.append(f"lr {summary['lr']:g}")
    if known(summary.get("loss")):
        parts.append(f"loss {summary['loss']}" + (
            f" ({summary['reduction']})" if summary.get("reduction") else ""
        ))  # fmt: skip
    return ", ".join(parts)


def summary_html(summary: dict) -> str:
    """An HTML fragment for a notebook: verdict, run, first divergence, per-item table."""
    from nn_parity.reports.text import (
        diagnosis_of,
        diagnosis_parts,
        divergence_where,
        fault_line,
        fd_verdict,
        fmt,
        headline,
        index_text,
        verdict,
    )

    word = verdict(summary)
    div = summary.get("first_divergence")
    color = _PASS if word == "PASS" else _FAIL
    fault = fault_line(summary)
    parts = [
        '<div class="nn-parity-result">',
        f'<p><strong style="color:{color};font-size:1.3em">{_e(word)}</strong> '
        f"{_e(headline(summary))}</p>",
        f'<p style="color:{_MUTED}">{_e(_facts(summary))}</p>',
        *([f'<p style="color:{_FAIL}">{_e(fault)}</p>'] if fault else []),
    ]  # fmt: skip
    if div:
        rows = [
            ["step", fmt(div.get("step"))],
            ["item", divergence_where(div)],
            ["element index", index_text(div.get("index"))],
            ["scratch", fmt(div.get("scratch"), ".17g")],
            ["torch", fmt(div.get("torch"), ".17g")],
            ["|scratch - torch|", fmt(div.get("abs_err"))],
            ["relative error", fmt(div.get("rel_err"))],
            ["tolerance", f"rtol {fmt(div.get('rtol'))}, atol {fmt(div.get('atol'))}"],
            ["outside tolerance", f"{fmt(div.get('mismatches'))} of {fmt(div.get('total'))}"],
        ]
        fd = fd_verdict(div)
        if fd:
            rows.append(["finite differences", fd])
        diagnosis = diagnosis_of(summary)
        if diagnosis is not None:
            headline, lines = diagnosis_parts(diagnosis)
            rows.append([headline or "diagnosis", " ".join(lines)])
        parts += [
            f'<p style="color:{_FAIL};font-weight:600;margin-bottom:0">First divergence</p>',
            _rows(None, [[_e(k), _e(v)] for k, v in rows], set()),
        ]
    items = []
    for label, q in (summary.get("quantities") or {}).items():
        ok = q.get("passed")
        mark = f'<span style="color:{_PASS if ok else _FAIL};font-weight:600">'
        mark += ("pass" if ok else "FAIL") + "</span>"
        items.append(
            [
                f"<code>{_e(label)}</code>",
                _e(fmt(q.get("max_abs"))),
                _e(fmt(q.get("max_rel"))),
                mark,
                _e(fmt(q.get("first_failing_step"))),
            ]
        )
    parts += [
        '<p style="font-weight:600;margin-bottom:0">Compared quantities, worst over all steps</p>',
        _rows(["item", "max |diff|", "max rel. error", "passed", "first failing step"], items,
              {1, 2, 4}),
        "</div>",
    ]  # fmt: skip
    return "\n".join(parts)


def result_html(result: LockstepResult, **context: Any) -> str:
    """What Jupyter shows for a result: `summary_html` of its summary."""
    return summary_html(result_summary(result, **context))


# --- figures --------------------------------------------------------------------------------


class Figures(list["Figure"]):
    """The report's figures for a run: a list of matplotlib Figures that shows itself inline.

    Code gets the Figures as from any list (`figs[0].savefig(...)`, `len(figs)`, a loop); a
    notebook gets pictures rather than `[<Figure size 900x640 with 2 Axes>, ...]`. In an
    IPython kernel (Jupyter, VS Code, Colab) each figure is its own image/png output, as the
    report embeds it (`figures.save`); other front ends get one HTML fragment with the same PNGs.
    Each picture is rendered when shown, so changes made to a figure show. A figure that failed
    to draw, or fails to render, is named in its place: it costs none of the others.
    """

    def __init__(self, figures: Iterable[Figure] = (), failed: Iterable[str] = ()):
        super().__init__(figures)
        self.failed = list(failed)  # "loss.png could not be drawn: ..." lines

    def _shown(self) -> list[tuple[bytes, str] | str]:
        """Each figure as (PNG bytes, its title for alt text), or as the line saying why it
        could not be rendered; then the figures that could not be drawn."""
        from nn_parity.reports.figures import failure, png

        shown: list[tuple[bytes, str] | str] = []
        for k, fig in enumerate(self):
            try:
                shown.append((png(fig), _title(fig)))
            except Exception as err:  # e.g. a label matplotlib cannot lay out
                shown.append(failure(f"figure {k}", err))
        return shown + self.failed

    def _ipython_display_(self) -> None:
        """One output per figure, so that each can be seen, copied and saved on its own."""
        from IPython.display import display

        for item in self._shown():
            if isinstance(item, str):
                display({"text/html": _failure_html(item), "text/plain": item}, raw=True)
            else:
                image, title = item
                display({"image/png": image, "text/plain": f"<Figure: {title}>"},
                        metadata={"image/png": {"alt": title}}, raw=True)  # fmt: skip

    def _repr_html_(self) -> str:
        """For front ends that take HTML but not IPython's display calls."""
        parts = []
        for item in self._shown():
            if isinstance(item, str):
                parts.append(_failure_html(item))
            else:
                image, title = item
                data = base64.b64encode(image).decode("ascii")
                parts.append(f'<img src="data:image/png;base64,{data}" alt="{_e(title)}">')
        return "<div>" + "\n".join(parts) + "</div>"


def _title(fig: Figure) -> str:
    """What a figure shows, in words: its title, or its first panel's."""
    return fig.get_suptitle() or (fig.axes[0].get_title() if fig.axes else "") or "figure"


def _failure_html(line: str) -> str:
    return f'<p style="color:{_FAIL}">{_e(line)}</p>'


def record_figures(record: Record) -> Figures:
    """The report's figures for a record, drawn by the report's own code, unsaved."""
    from nn_parity.reports.figures import draw_figures

    drawn, failed = draw_figures(record)
    return Figures((fig for _, fig in drawn), failed)


def result_record(result: LockstepResult, **context: Any) -> Record:
    """The record `write_record` would save for a result, built in memory: its summary, its
    metrics parsed from the very CSV text, and the arrays the figures read."""
    from nn_parity.reports import Record, parse_metrics
    from nn_parity.torch_ref.record import _per_sample, metrics_csv

    config = record_config(result, **context)
    # through JSON, as `load_record` reads summary.json: lists, not tuples
    summary = json.loads(json.dumps(result_summary(result, **context)))
    # The loop below mirrors write_record's arrays (record.py, left to the reorganisation):
    # test_figures_are_the_reports_own pins the two to the same PNGs until they are one function.
    arrays: dict[str, np.ndarray] = {}
    labels = config["y"]
    if labels.size:  # without labels, the probability figure is not drawn
        arrays["y"] = labels
        for when, pair, rows in (
            ("first", result.probs_first, result.rows_first),
            ("last", result.probs_last, result.rows_last),
        ):
            if pair is not None:
                y = labels if rows is None else labels[rows]
                arrays[f"probs_{when}_scratch"] = _per_sample(pair[0], y)
                arrays[f"probs_{when}_torch"] = _per_sample(pair[1], y)
                if rows is not None:  # a mini-batch: its own labels
                    arrays[f"probs_{when}_y"] = y
    return Record(summary=summary, metrics=parse_metrics(metrics_csv(result)), arrays=arrays)


def result_figures(result: LockstepResult, **context: Any) -> Figures:
    """The report's figures for a result (loss, errors, and probabilities when `y` is given)."""
    return record_figures(result_record(result, **context))
