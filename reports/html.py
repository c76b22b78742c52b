"""report.html: one self-contained page (inline CSS, figures as base64) for a run record."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nn_parity.reports.text import (
    diagnosis_of,
    diagnosis_parts,
    divergence_rows,
    fault_line,
    fd_verdict,
    fmt,
    headline,
    quantity_rows,
    run_description,
    verdict,
)

if TYPE_CHECKING:
    from nn_parity.reports import Record

__all__ = ["page", "write_report"]

# Self-contained on purpose: the page must work opened from disk, mailed, or copied alone,
# so there are no external stylesheets, scripts or fonts.
_CSS = """
:root { --pass: #1a7f37; --fail: #c62828; --ink: #1f2328; --muted: #59636e;
        --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.5;
       font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue",
             Arial, "Noto Sans", sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 10px; padding-bottom: 6px;
     border-bottom: 1px solid var(--line); }
.banner { border-radius: 10px; padding: 22px 28px; color: #fff; margin: 8px 0 20px; }
.banner.pass { background: var(--pass); }
.banner.fail { background: var(--fail); }
.banner .verdict { font-size: 44px; font-weight: 800; letter-spacing: 0.04em; line-height: 1.1; }
.banner .detail { font-size: 17px; margin-top: 6px; opacity: 0.95; }
.muted { color: var(--muted); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap;
         font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
th.num { text-align: right; }
tr.failed td { background: #fdecec; }
.ok { color: var(--pass); font-weight: 600; }
.bad { color: var(--fail); font-weight: 600; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.divergence { border: 2px solid var(--fail); border-radius: 10px; padding: 6px 20px 16px;
              background: #fffafa; }
.divergence h2 { border: none; margin-top: 12px; color: var(--fail); }
.verdict-line { font-weight: 600; margin: 12px 0 0; }
.diagnosis { background: var(--soft); border-left: 4px solid var(--muted); padding: 10px 16px;
             white-space: pre-wrap; }
figure { margin: 24px 0 32px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 14px; margin-top: 6px; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
"""


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _table(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: set[int],
    row_classes: Sequence[str] | None = None,
) -> str:
    """A table from already-escaped cells; `numeric` columns are right-aligned monospace."""
    th = "".join(
        f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(head)
    )
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        tds = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _passed(ok: Any) -> str:
    return '<span class="ok">pass</span>' if ok else '<span class="bad">FAIL</span>'


def _banner(summary: dict) -> str:
    word = verdict(summary)
    cls = "pass" if word == "PASS" else "fail"
    fault = fault_line(summary)
    return (
        f'<header class="banner {cls}"><div class="verdict">{_e(word)}</div>'
        f'<div class="detail">{_e(headline(summary))}</div></header>'
    ) + (f'<p class="verdict-line">{_e(fault)}</p>' if fault else "")


def _description(summary: dict) -> str:
    items = []
    for line in run_description(summary):
        key, _, value = line.partition(": ")
        items.append(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>")
    kinks = summary.get("kink_steps") or []
    if kinks:
        shown = ", ".join(str(k) for k in kinks[:20]) + (", ..." if len(kinks) > 20 else "")
        items.append(
            f"<dt>relu kinks</dt><dd>crossed by rounding at {len(kinks)} "
            f"step{'s' * (len(kinks) != 1)} ({_e(shown)}); resynchronised</dd>"
        )
    for key, what in (("saturation_steps", "saturated outputs"), ("drift_steps", "rounding drift")):
        steps = summary.get(key) or []
        if steps:
            shown = ", ".join(str(k) for k in steps[:20]) + (", ..." if len(steps) > 20 else "")
            items.append(
                f"<dt>{what}</dt><dd>past tolerance at {len(steps)} "
                f"step{'s' * (len(steps) != 1)} ({_e(shown)}); every stage of scratch's step, "
                "fed torch's inputs, agreed; resynchronised</dd>"
            )
    lf, ll = summary.get("loss_first") or {}, summary.get("loss_last") or {}
    if lf or ll:
        items.append(
            "<dt>loss</dt><dd>"
            f"first: scratch {_e(fmt(lf.get('scratch'), '.10g'))}, "
            f"torch {_e(fmt(lf.get('torch'), '.10g'))}; "
            f"last: scratch {_e(fmt(ll.get('scratch'), '.10g'))}, "
            f"torch {_e(fmt(ll.get('torch'), '.10g'))}</dd>"
        )
    return f'<section><h2>Run</h2><dl class="facts">{"".join(items)}</dl></section>'


def _divergence(div: dict) -> str:
    rows = divergence_rows(div)
    table = _table(["field", "value"], [(_e(k), f"<code>{_e(v)}</code>") for k, v in rows], set())
    fd = fd_verdict(div)
    line = f'<p class="verdict-line">{_e(fd)}</p>' if fd else ""
    return f'<section class="divergence"><h2>First divergence</h2>{table}{line}</section>'


def _diagnosis(diagnosis: str | dict) -> str:
    headline, lines = diagnosis_parts(diagnosis)
    head = f"<p><strong>{_e(headline[0].upper() + headline[1:])}</strong></p>" if headline else ""
    body = f'<div class="diagnosis">{_e(chr(10).join(lines))}</div>' if lines else ""
    return f"<section><h2>Diagnosis</h2>{head}{body}</section>"


def _quantities(summary: dict) -> str:
    rows, classes = [], []
    for label, q in (summary.get("quantities") or {}).items():
        rows.append(
            (
                f"<code>{_e(label)}</code>",
                _e(fmt(q.get("max_abs"))),
                _e(fmt(q.get("max_abs_eps"), ".4g")),
                _e(fmt(q.get("max_rel"))),
                _passed(q.get("passed")),
                _e(fmt(q.get("first_failing_step"))),
            )
        )
        classes.append("" if q.get("passed") else "failed")
    table = _table(
        [
            "item",
            "max |diff|",
            "max |diff| / eps",
            "max normwise rel. error",
            "passed",
            "first failing step",
        ],
        rows,
        {1, 2, 3, 5},
        classes,
    )
    per_kind = _table(
        ["quantity", "items", "max |diff|", "max rel. error", "passed"],
        [
            (
                _e(r["quantity"]),
                _e(r["items"]),
                _e(fmt(r["max_abs"])),
                _e(fmt(r["max_rel"])),
                _passed(r["passed"]),
            )
            for r in quantity_rows(summary)
        ],
        {1, 2, 3},
    )
    return (
        "<section><h2>Compared quantities</h2>"
        '<p class="muted">Per item, over every step: the largest elementwise |scratch - torch| '
        "(also in units of the dtype's machine epsilon: the smallest pure atol that would have "
        "passed) and the largest normwise relative error ||scratch - torch|| / ||torch||.</p>"
        f"{table}<h3>By quantity</h3>{per_kind}</section>"
    )


def _tolerances(summary: dict) -> str:
    rows = [
        (
            f"<code>{_e(q)}</code>",
            _e(fmt(t.get("rtol"))),
            _e(fmt(t.get("atol"))),
            _e(t.get("reason", "")),
        )
        for q, t in (summary.get("tolerances") or {}).items()
    ]
    table = _table(["quantity", "rtol", "atol", "reason"], rows, {1, 2})
    return (
        "<section><h2>Tolerances</h2>"
        '<p class="muted">An element passes when |scratch - torch| &le; atol + rtol '
        "&middot; |torch|.</p>"
        f"{table}</section>"
    )


def _provenance(summary: dict) -> str:
    versions = summary.get("versions") or {}
    parts = [f"{_e(k)} {_e(v)}" for k, v in versions.items()]
    created = summary.get("created")
    text = "Versions: " + (", ".join(parts) or "unknown") + "."
    if created:
        text += f" Run finished {_e(created)}."
    return f"<section><h2>Provenance</h2><p>{text}</p></section>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = f"{path.stem.replace('_', ' ')} figure"
    return (
        f'<figure id="{_e(path.stem)}"><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption><strong>{_e(path.name)}</strong>: {_e(caption)}</figcaption></figure>"
    )


def page(record: Record, figures: Sequence[tuple[Path, str]], failed: Sequence[str] = ()) -> str:
    """The report as one HTML string; `figures` are (PNG path, caption) pairs to embed,
    `failed` one line per figure that could not be drawn."""
    s = record.summary
    data = (s.get("data") or {}).get("name")
    title = f"nn-parity: {verdict(s)}" + (f" - {data}" if data else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        "<h1>nn-parity run report</h1>",
        '<p class="muted">A from-scratch NumPy network and its PyTorch mirror, trained in '
        "lockstep and compared at every step.</p>",
        _banner(s),
        _description(s),
    ]
    if s.get("first_divergence"):
        parts.append(_divergence(s["first_divergence"]))
    diagnosis = diagnosis_of(s)
    if diagnosis is not None:
        parts.append(_diagnosis(diagnosis))
    parts += [_quantities(s), _tolerances(s), _provenance(s)]
    if figures or failed:
        parts.append("<section><h2>Figures</h2>")
        parts += [f'<p class="muted">{_e(line)}</p>' for line in failed]
        parts += [_figure(Path(p), caption) for p, caption in figures]
        parts.append("</section>")
    parts.append(
        "<footer>Drawn from summary.json, metrics.csv and record.npz in this folder.</footer>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    record: Record,
    path: Path | str,
    figures: Sequence[tuple[Path, str]],
    failed: Sequence[str] = (),
) -> Path:
    """Write page(record, figures, failed) to path."""
    path = Path(path)
    path.write_text(page(record, figures, failed), encoding="utf-8")
    return path
