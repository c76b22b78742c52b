"""What an op check found: per item, the verdict and the first mismatch."""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class ItemResult:
    """One compared item, over every upstream gradient: its largest differences and verdict."""

    name: str  # "out", a state name, or an input or param name (its gradient)
    kind: str  # "output", "state" or "grad"
    max_abs: float  # largest |scratch - torch|
    max_rel: float  # largest normwise ||scratch - torch|| / ||torch||
    passed: bool
    rtol: float
    atol: float

    @property
    def label(self) -> str:
        return f"d{self.name}" if self.kind == "grad" else self.name

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "passed": self.passed,
        }


@dataclass
class OpMismatch:
    """The first element outside tolerance, in the user's names and layout."""

    name: str
    kind: str
    index: tuple[int, ...] | None  # None when the item failed as a whole (its dtype)
    scratch: float | None
    torch: float | None
    trial: int  # which upstream gradient (0-based); outputs and state fail on the first
    count: int = 0  # elements outside tolerance
    total: int = 0
    rtol: float = 0.0
    atol: float = 0.0
    fd: float | None = None  # float64 central difference (gradients only)
    fd_one_sided: tuple[float, float] | None = None  # (left, right) where the element is a kink
    fd_agrees_with: str | None = None  # "scratch", "torch", "both", "neither"
    cause: str | None = None
    explanation: str | None = None

    @property
    def label(self) -> str:
        what = {"grad": "d", "state": "state ", "output": ""}[self.kind]
        idx = "" if not self.index else "[" + ", ".join(map(str, self.index)) + "]"
        return f"{what}{self.name}{idx}"

    def __str__(self) -> str:
        if self.index is None:
            return f"{self.label}: {self.explanation}"
        lines = [
            f"{self.label}: scratch {self.scratch!r}, torch {self.torch!r}"
            + (f" (upstream gradient #{self.trial})" if self.kind == "grad" else ""),
            f"  {self.count} / {self.total} elements differ (rtol={self.rtol:.3g}, "
            f"atol={self.atol:.3g})",
        ]
        if self.fd_one_sided is not None:
            left, right = self.fd_one_sided
            lines.append(
                f"  finite differences: a kink, one-sided {left!r} (left) and {right!r} "
                f"(right): agrees with {self.fd_agrees_with}"
            )
        elif self.fd is not None:
            lines.append(f"  finite differences: {self.fd!r}: agrees with {self.fd_agrees_with}")
        if self.cause:
            lines.append(f"  likely cause ({self.cause}): {self.explanation}")
        return "\n".join(lines)


@dataclass
class OpCheckResult:
    passed: bool
    items: list[ItemResult]
    first_mismatch: OpMismatch | None
    dtype: str
    upstream: int  # how many upstream gradients were fed to both backwards
    kinks: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    @property
    def table(self) -> list[dict]:
        """Per item: name, kind, max_abs, max_rel, passed."""
        return [it.as_dict() for it in self.items]

    def __repr__(self) -> str:
        if self.passed:
            return f"OpCheckResult(passed=True, {len(self.items)} items, {self.dtype})"
        m = self.first_mismatch
        assert m is not None
        cause = f" ({m.cause})" if m.cause else ""
        return f"OpCheckResult(passed=False, first_mismatch={m.label}{cause})"

    def __str__(self) -> str:
        n_bad = sum(not it.passed for it in self.items)
        head = (
            f"op check {'passed' if self.passed else 'FAILED'}: "
            f"{len(self.items) - n_bad} of {len(self.items)} items agree "
            f"({self.dtype}, {self.upstream} upstream gradients)"
        )
        width = max(len(it.label) for it in self.items) + 2
        rows = [f"  {'item':<{width}}{'kind':<8}{'max_abs':>10}  {'max_rel':>10}  passed"]
        for it in self.items:
            rows.append(
                f"  {it.label:<{width}}{it.kind:<8}{it.max_abs:>10.3g}  {it.max_rel:>10.3g}  "
                f"{'yes' if it.passed else 'NO'}"
            )
        out = [head, *rows]
        if self.kinks:
            out.append(
                f"  {len(self.kinks)} element(s) on a kink, both sides one-sided derivatives"
            )
        if self.first_mismatch is not None:
            out.append("first mismatch: " + str(self.first_mismatch))
        return "\n".join(out)

    def _repr_html_(self) -> str:
        e = html.escape
        verdict = "passed" if self.passed else "FAILED"
        color = "#1a7f37" if self.passed else "#cf222e"
        rows = "".join(
            f"<tr><td>{e(it.label)}</td><td>{e(it.kind)}</td><td>{it.max_abs:.3g}</td>"
            f"<td>{it.max_rel:.3g}</td><td>{'yes' if it.passed else 'NO'}</td></tr>"
            for it in self.items
        )
        first = (
            ""
            if self.first_mismatch is None
            else f"<pre>{e('first mismatch: ' + str(self.first_mismatch))}</pre>"
        )
        return (
            f"<div><b style='color:{color}'>op check {verdict}</b> "
            f"({e(self.dtype)}, {self.upstream} upstream gradients)"
            "<table><tr><th>item</th><th>kind</th><th>max_abs</th><th>max_rel</th>"
            f"<th>passed</th></tr>{rows}</table>{first}</div>"
        )
