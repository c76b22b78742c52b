"""The mutation score: the lockstep on every mutant, caught and located."""

from __future__ import annotations

from dataclasses import dataclass

from nn_parity.torch_ref.engine.loop import lockstep
from nn_parity.torch_ref.mirror.model import TorchMLP
from nn_parity.torch_ref.mutation.cases import Mutant, make_case
from nn_parity.torch_ref.mutation.mutants import MUTANTS
from nn_parity.torch_ref.results import LockstepResult


def run_mutant(mutant: Mutant, **lockstep_kwargs) -> LockstepResult:
    case = make_case(mutant.config)
    case.ref = TorchMLP.from_scratch(case.net)  # mirrors the correct weights, before any bug
    mutant.apply(case)
    cfg = mutant.config
    return lockstep(
        case.net, case.ref, case.X, case.y, steps=case.steps, lr=case.lr, loss=case.loss,
        optimizer=case.optimizer, batch_size=cfg.batch_size, epochs=cfg.epochs, **lockstep_kwargs,
    )  # fmt: skip


@dataclass
class Score:
    """Rows of {name, caught, located, where}: the table `nn-parity mutants` prints, for the
    network catalogue here and the op catalogue (`op_mutants`) alike."""

    rows: list[dict]
    where: str = "first divergence"  # the last column's heading
    width: int = 24  # of the name column

    @property
    def caught(self) -> int:
        return sum(r["caught"] for r in self.rows)

    @property
    def located(self) -> int:
        return sum(r["located"] for r in self.rows)

    def table(self) -> str:
        w = self.width
        lines = [f"{'mutant':<{w}} {'caught':<7} {'located':<8} {self.where}"]
        for r in self.rows:
            lines.append(
                f"{r['name']:<{w}} {'yes' if r['caught'] else 'NO':<7} "
                f"{'yes' if r['located'] else 'NO':<8} {r['where']}"
            )
        n = len(self.rows)
        lines.append(
            f"caught {self.caught}/{n} ({100 * self.caught / n:.0f}%), "
            f"located {self.located}/{n} ({100 * self.located / n:.0f}%)"
        )
        return "\n".join(lines)


def score(mutants: list[Mutant] | None = None) -> Score:
    rows = []
    for m in mutants or MUTANTS:
        div = run_mutant(m).first_divergence
        where = "-" if div is None else f"step {div.step}, {div.label}"
        got = None if div is None else (div.step, div.quantity, div.layer)
        diagnosis = getattr(div, "diagnosis", None) if div is not None else None
        rows.append(
            {
                "name": m.name,
                "caught": div is not None,
                "located": got == m.expect,
                "where": where + (f" ({diagnosis['cause']})" if diagnosis else ""),
                "expect": m.expect,
            }
        )
    return Score(rows)
