"""The cause score: per catalogued bug, the cause it must get and the one it got.

Apart from `score.py` because it reads the op catalogue, which itself scores through `score.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nn_parity.torch_ref.mutation.mutants import CAUSES, MUTANTS
from nn_parity.torch_ref.mutation.op_causes import OP_CAUSES
from nn_parity.torch_ref.mutation.op_mutants import OP_MUTANTS, run_op_mutant
from nn_parity.torch_ref.mutation.score import run_mutant


@dataclass
class CauseTable:
    """Per catalogued bug, the cause it must get and the one it got: right, none or wrong. A
    wrong cause is worse than none: the goal is no wrong cause at all."""

    rows: list[dict]  # {catalogue, name, want, got, verdict}

    def count(self, verdict: str) -> int:
        return sum(r["verdict"] == verdict for r in self.rows)

    def table(self) -> str:
        lines = [f"{'catalogue':<9} {'bug':<44} {'verdict':<7} {'cause (wanted)'}"]
        for r in self.rows:
            lines.append(
                f"{r['catalogue']:<9} {r['name']:<44} {r['verdict']:<7} "
                f"{' or '.join((r['got'], *r.get('also', ()))) if r['got'] else '-'} "
                f"({r['want'] or '-'})"
            )
        n = len(self.rows)
        lines.append(
            f"right {self.count('right')}/{n} ({100 * self.count('right') / n:.0f}%), "
            f"none {self.count('none')}, wrong {self.count('wrong')}"
        )
        return "\n".join(lines)


def verdict(want: str | None, got: str | None, also: tuple = ()) -> str:
    """right: the wanted cause is named (first, or with another that fits the same numbers)."""
    if got is None:
        return "none"
    return "right" if want in (got, *also) else "wrong"


def cause_row(catalogue: str, name: str, want: str | None, diagnosis: dict | None) -> dict:
    got = (diagnosis or {}).get("cause")
    also = tuple((diagnosis or {}).get("also", ()))
    return {"catalogue": catalogue, "name": name, "want": want, "got": got, "also": also,
            "verdict": verdict(want, got, also)}  # fmt: skip


def causes(extra: list[dict] | tuple = (), ops: bool = True) -> CauseTable:
    """The causes named across the network and op catalogues (and `extra` rows, e.g. the
    user-code catalogue's, built with `cause_row`)."""
    rows = []
    for m in MUTANTS:
        div = run_mutant(m).first_divergence
        rows.append(cause_row("network", m.name, CAUSES[m.name], getattr(div, "diagnosis", None)))
    for m in OP_MUTANTS if ops else []:
        res = run_op_mutant(m)
        fm = None if isinstance(res, str) else res.first_mismatch
        cause = getattr(fm, "cause", None)
        rows.append(cause_row("op", m.name, OP_CAUSES[m.name], cause and {"cause": cause}))
    return CauseTable(rows + list(extra))
