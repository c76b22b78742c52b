"""The short terminal summary of a run, drawn from its summary.json."""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any

__all__ = [
    "diagnosis_of",
    "diagnosis_parts",
    "divergence_rows",
    "fault_line",
    "fd_verdict",
    "fmt",
    "headline",
    "optimizer_text",
    "quantity_rows",
    "run_description",
    "summary_text",
    "verdict",
]

# The order quantities flow through a step; anything unknown goes after them.
QUANTITY_ORDER = ("z", "a", "prob", "loss", "grad", "param")

_GREEN, _RED, _RESET = "\033[32;1m", "\033[31;1m", "\033[0m"
# The whole summary should fit on a screen; a long diagnosis is cut here and shown whole in HTML.
_DIAGNOSIS_LINES = 4
_WIDTH = 100


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number for people: `spec` for floats, "-" for missing, nan/inf spelled out."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


def _num(x: Any) -> float:
    """A summary number as a float; a missing one (null) as NaN."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _max(values: list[float]) -> float:
    # NaN wins: in this project a NaN error means a mismatch, not a value to skip.
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values, default=math.nan)


def verdict(summary: dict) -> str:
    """PASS, DIVERGED, or FAULT: the user's code failed mid-run before any divergence."""
    if summary.get("passed"):
        return "PASS"
    if summary.get("fault") and not summary.get("first_divergence"):
        return "FAULT"
    return "DIVERGED"


def headline(summary: dict) -> str:
    """The verdict's one sentence, the same in the terminal, the page and the notebook."""
    div, fault = summary.get("first_divergence"), summary.get("fault")
    if summary.get("passed"):
        steps = summary.get("steps")
        return f"scratch and torch agree within tolerance at every one of {steps} steps"
    if div:
        return f"scratch and torch part at step {div.get('step')}: {div.get('label')}"
    if fault:
        return (
            f"your code failed at step {fault.get('step')}; the {summary.get('steps')} steps "
            "before it agree"
        )
    return "scratch and torch disagree beyond tolerance"


def fault_line(summary: dict) -> str | None:
    """The fault in the user's code that ended the run, if one did."""
    fault = summary.get("fault")
    if not fault:
        return None
    return (
        f"Fault in your code at step {fault.get('step')}: {fault.get('message')} (the run "
        f"stopped there; the {summary.get('steps')} steps before it are recorded)"
    )


def index_text(index: Any) -> str:
    """An element index as `[1, 0]`; a scalar's empty index as `[]`."""
    if index is None:
        return "-"
    return "[" + ", ".join(str(i) for i in index) + "]"


def divergence_where(div: dict) -> str:
    """The diverging item and, spelled out, its quantity / layer / param."""
    parts = [f"quantity {div.get('quantity', '?')}"]
    if div.get("layer") is not None:
        parts.append(f"layer {div['layer']}")
    if div.get("param") is not None:
        parts.append(f"param {div['param']}")
    return f"{div.get('label', '?')} ({', '.join(parts)})"


def divergence_rows(div: dict) -> list[tuple[str, str]]:
    """The first divergence, field by field: the one table the page, the notebook and the
    terminal show."""
    return [
        ("step", fmt(div.get("step"))),
        ("item", divergence_where(div)),
        ("element index", index_text(div.get("index"))),
        ("scratch", fmt(div.get("scratch"), ".17g")),
        ("torch", fmt(div.get("torch"), ".17g")),
        ("|scratch - torch|", fmt(div.get("abs_err"), ".6g")),
        ("relative error", fmt(div.get("rel_err"), ".6g")),
        ("tolerance", f"rtol {fmt(div.get('rtol'))}, atol {fmt(div.get('atol'))}"),
        ("elements outside tolerance", f"{fmt(div.get('mismatches'))} of {fmt(div.get('total'))}"),
        ("finite differences (float64)", fmt(div.get("fd"), ".17g")),
        ("finite differences agree with", fmt(div.get("fd_agrees_with"))),
    ]


def optimizer_text(optimizer: dict | None) -> str:
    """The optimizer as the record keeps it, in words: `adam (betas 0.8, 0.99)`."""
    if not optimizer:
        return "?"
    options = {k: v for k, v in optimizer.items() if k != "name"}
    shown = ", ".join(
        f"{k} {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for k, v in options.items()
    )
    return str(optimizer.get("name", "?")) + (f" ({shown})" if shown else "")


def fd_verdict(div: dict) -> str | None:
    """What the finite-difference gradient says about who is wrong, or None without one."""
    if div.get("fd") is None:
        return None
    fd = fmt(div["fd"], ".17g")
    who = div.get("fd_agrees_with")
    meaning = {
        "torch": "finite differences agree with torch: the scratch gradient is wrong",
        "scratch": "finite differences agree with scratch: the torch side is the one that is off",
        "both": ("finite differences agree with both: the gap is rounding, not a wrong gradient"),
        "neither": (
            "finite differences agree with neither: suspect a kink or a too-coarse difference"
        ),
    }.get(who or "", "finite differences gave no verdict")
    return f"{meaning} (fd = {fd})"


def run_description(summary: dict) -> list[str]:
    """Short lines: the data, the network, the training setup, what was checked and what
    could not be compared."""
    data = summary.get("data") or {}
    d = f"data: {data.get('name', '?')}, {fmt(data.get('samples'))} samples x "
    d += f"{fmt(data.get('features'))} features"
    if data.get("source"):
        d += f" ({data['source']})"

    arch = summary.get("architecture") or {}
    sizes = arch.get("sizes") or []
    a = "network: " + ("-".join(str(s) for s in sizes) or "?")
    if arch.get("layers"):  # a network of layers: its layers, not its widths
        a = "network: " + ", ".join(str(x) for x in arch["layers"])
        arch = {k: v for k, v in arch.items() if k != "bias"}  # each layer has its bias
    elif arch.get("activations"):
        a += " (" + ", ".join(str(x) for x in arch["activations"]) + ")"
    extras = []
    if "bias" in arch:
        extras.append("bias" if arch["bias"] else "no bias")
    if arch.get("init"):
        extras.append(f"init {arch['init']}")
    if arch.get("parameters") is not None:
        extras.append(f"{arch['parameters']} parameters")
    if extras:
        a += ", " + ", ".join(extras)

    checked = summary.get("checked") or {}
    c = f"checked: {checked.get('side', 'the built-in network')}"
    if checked.get("gradients"):
        c += f"; gradients {checked['gradients']}"
    if checked.get("start"):
        c += f"; starting state {checked['start']}"
    t = f"training: {summary.get('dtype', '?')}, loss {summary.get('loss', '?')}"
    if summary.get("reduction"):
        t += f" ({summary['reduction']})"
    t += f", {optimizer_text(summary.get('optimizer'))}, lr {fmt(summary.get('lr'), 'g')}"
    t += f", {fmt(summary.get('steps'))} steps"
    requested = summary.get("steps_requested")
    if requested is not None and requested != summary.get("steps"):
        t += f" of {requested} requested (stopped early)"
    if summary.get("seed") is not None:
        t += f", seed {summary['seed']}"
    lines = [d, a, t, c]
    missing = summary.get("not_compared") or []
    if missing:
        lines.append("not compared: " + "; ".join(str(m) for m in missing))
    return lines


def quantity_rows(summary: dict) -> list[dict]:
    """One row per quantity kind, aggregating its items: passed, max |diff|, max rel, ..."""
    groups: dict[str, list[dict]] = {}
    for item in (summary.get("quantities") or {}).values():
        groups.setdefault(str(item.get("quantity", "?")), []).append(item)
    order = [q for q in QUANTITY_ORDER if q in groups] + [
        q for q in groups if q not in QUANTITY_ORDER
    ]
    tolerances = summary.get("tolerances") or {}
    rows = []
    for q in order:
        items = groups[q]
        failing = [s for i in items if (s := i.get("first_failing_step")) is not None]
        rows.append(
            {
                "quantity": q,
                "items": len(items),
                "passed": all(bool(i.get("passed")) for i in items),
                "max_abs": _max([_num(i.get("max_abs")) for i in items]),
                "max_rel": _max([_num(i.get("max_rel")) for i in items]),
                "rtol": (tolerances.get(q) or {}).get("rtol"),
                "first_failing_step": min(failing) if failing else None,
            }
        )
    return rows


def diagnosis_of(summary: dict) -> str | dict | None:
    """The run's diagnosis (a string, or `cause` and `explanation`), or None without one.

    Read from the summary's top level, else from inside `first_divergence`.
    """
    for d in (summary.get("diagnosis"), (summary.get("first_divergence") or {}).get("diagnosis")):
        if isinstance(d, (str, dict)) and d:
            return d
    return None


def diagnosis_parts(diagnosis: str | dict) -> tuple[str | None, list[str]]:
    """A headline (the cause, if named) and the lines of text under it."""
    if isinstance(diagnosis, str):
        return None, diagnosis.splitlines()
    rest = {k: v for k, v in diagnosis.items() if k not in ("cause", "explanation")}
    cause = diagnosis.get("cause")
    lines = [str(diagnosis["explanation"])] if diagnosis.get("explanation") else []
    lines += [
        f"{k}: {v if isinstance(v, str) else json.dumps(v, default=str)}" for k, v in rest.items()
    ]
    return (f"likely cause: {cause}" if cause else None), lines


def _diagnosis_lines(diagnosis: str | dict) -> list[str]:
    headline, raw = diagnosis_parts(diagnosis)
    lines = []
    for line in raw:
        lines += textwrap.wrap(line, _WIDTH - 2, subsequent_indent="  ") or [""]
    if len(lines) > _DIAGNOSIS_LINES:
        lines = [*lines[: _DIAGNOSIS_LINES - 1], "... (the full diagnosis is in report.html)"]
    return [f"Diagnosis: {headline}" if headline else "Diagnosis:"] + ["  " + x for x in lines]


def summary_text(summary: dict, *, color: bool = False) -> str:
    """The terminal summary: verdict, run, per-quantity table, and where the run diverged."""
    word = verdict(summary)
    if color:
        word = f"{_GREEN if word == 'PASS' else _RED}{word}{_RESET}"
    div = summary.get("first_divergence")
    lines = [f"{word}: {headline(summary)}", *("  " + line for line in run_description(summary))]
    fault = fault_line(summary)
    lines += ["", fault] if fault else []
    lines.append("")

    rows = quantity_rows(summary)
    if rows:
        lines.append(
            f"  {'quantity':<9}{'result':<8}{'max |diff|':>11}{'max rel':>11}{'rtol':>11}"
            f"{'first fail':>12}"
        )
        for r in rows:
            lines.append(
                f"  {r['quantity']:<9}{'ok' if r['passed'] else 'FAIL':<8}"
                f"{fmt(r['max_abs']):>11}{fmt(r['max_rel']):>11}{fmt(r['rtol']):>11}"
                f"{fmt(r['first_failing_step']):>12}"
            )
        lines.append(
            "  (result: every element within atol + rtol |torch|; max rel: the normwise "
            "||scratch - torch|| / ||torch||, which a tiny torch norm can lift above rtol)"
        )

    kinks = summary.get("kink_steps") or []
    if kinks:
        lines.append(
            f"  relu kinks crossed by rounding at {len(kinks)} step{'s' * (len(kinks) != 1)}; "
            "resynchronised"
        )
    for key, what in (("saturation_steps", "saturated outputs"), ("drift_steps", "rounding drift")):
        steps = summary.get(key) or []
        if steps:
            lines.append(
                f"  {what} past tolerance at {len(steps)} step{'s' * (len(steps) != 1)}; "
                "every stage agreed on torch's inputs; resynchronised"
            )

    if div:
        lines += [
            "",
            f"First divergence at step {div.get('step')}: {divergence_where(div)}",
            f"  element  {index_text(div.get('index'))}",
            f"  scratch  {fmt(div.get('scratch'), '.17g')}",
            f"  torch    {fmt(div.get('torch'), '.17g')}",
            f"  |diff|   {fmt(div.get('abs_err'))} (relative {fmt(div.get('rel_err'))}); "
            f"tolerance rtol {fmt(div.get('rtol'))}, atol {fmt(div.get('atol'))}",
            f"  {fmt(div.get('mismatches'))} of {fmt(div.get('total'))} elements outside tolerance",
        ]
        fd = fd_verdict(div)
        if fd:
            lines.append(f"  {fd}")

    diagnosis = diagnosis_of(summary)
    if diagnosis is not None:
        lines += ["", *_diagnosis_lines(diagnosis)]
    return "\n".join(lines)
