"""A run in a notebook: the verdict as an HTML fragment and the report's figures inline, both
drawn from the run record (docs/record.md) through the same code as report.html.

    summary_html(summary)   the verdict, the run described as the report describes it, the
                            first divergence and the per-item table
    Figures                 a list of matplotlib Figures that shows itself inline
    record_figures(record)  the report's figures for a record, drawn, unsaved
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from html import escape
from typing import TYPE_CHECKING, Any

from nn_parity.reports.text import (
    diagnosis_of,
    diagnosis_parts,
    divergence_rows,
    fault_line,
    fd_verdict,
    fmt,
    headline,
    run_description,
    verdict,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from nn_parity.reports.record import Record

_PASS, _FAIL, _MUTED = "#1a7f37", "#c62828", "#59636e"
_NUMERIC = "text-align:right;font-family:monospace;white-space:nowrap"


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


def summary_html(summary: dict) -> str:
    """An HTML fragment for a notebook: the verdict, the run described as the report
    describes it (`run_description`), the first divergence and the per-item table."""
    word = verdict(summary)
    color = _PASS if word == "PASS" else _FAIL
    fault = fault_line(summary)
    described = "<br>".join(_e(line) for line in run_description(summary))
    parts = [
        '<div class="nn-parity-result">',
        f'<p><strong style="color:{color};font-size:1.3em">{_e(word)}</strong> '
        f"{_e(headline(summary))}</p>",
        f'<p style="color:{_MUTED}">{described}</p>',
        *([f'<p style="color:{_FAIL}">{_e(fault)}</p>'] if fault else []),
    ]  # fmt: skip
    div = summary.get("first_divergence")
    if div:
        parts += _divergence_html(summary, div)
    parts += [
        '<p style="font-weight:600;margin-bottom:0">Compared quantities, worst over all steps</p>',
        _rows(["item", "max |diff|", "max rel. error", "passed", "first failing step"],
              _item_rows(summary), {1, 2, 4}),
        "</div>",
    ]  # fmt: skip
    return "\n".join(parts)


def _divergence_html(summary: dict, div: dict) -> list[str]:
    rows = [(k, v) for k, v in divergence_rows(div) if not k.startswith("finite differences")]
    fd = fd_verdict(div)
    if fd:
        rows.append(("finite differences", fd))
    diagnosis = diagnosis_of(summary)
    if diagnosis is not None:
        title, lines = diagnosis_parts(diagnosis)
        rows.append((title or "diagnosis", " ".join(lines)))
    return [
        f'<p style="color:{_FAIL};font-weight:600;margin-bottom:0">First divergence</p>',
        _rows(None, [[_e(k), _e(v)] for k, v in rows], set()),
    ]


def _item_rows(summary: dict) -> list[list[str]]:
    out = []
    for label, q in (summary.get("quantities") or {}).items():
        ok = q.get("passed")
        mark = f'<span style="color:{_PASS if ok else _FAIL};font-weight:600">'
        mark += ("pass" if ok else "FAIL") + "</span>"
        numbers = [fmt(q.get(k)) for k in ("max_abs", "max_rel")]
        out.append([f"<code>{_e(label)}</code>", *map(_e, numbers), mark,
                    _e(fmt(q.get("first_failing_step")))])  # fmt: skip
    return out


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
