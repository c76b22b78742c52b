"""What a lockstep run found: the compared items, the first divergence, and the result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from nn_parity.torch_ref.user.layout import Slot


@dataclass(frozen=True)
class Item:
    """One compared quantity: e.g. z of layer 0, the gradient of layers.1.weight, or Adam's
    exp_avg of it. `param` is "weight" or "bias" (of layer `layer`); `user` is the user's own
    name for it (a parameter, or a cached z1, a1), and `slot` how user code stores that
    parameter."""

    quantity: str
    layer: int | None
    param: str | None
    shape: tuple[int, ...]
    buffer: str | None = None  # an optimizer state buffer's torch name
    user: str | None = None
    slot: Slot | None = None

    @property
    def name(self) -> str | None:
        """The canonical parameter name, `layers.{layer}.{param}`, or None."""
        return None if self.param is None else f"layers.{self.layer}.{self.param}"

    @property
    def label(self) -> str:
        if self.param is not None:
            what = self.buffer if self.quantity == "state" else self.quantity
            return f"{what} {self.user or self.name}"
        if self.quantity in ("z", "a", "out"):
            return self.user or f"{self.quantity}[{self.layer}]"
        return self.quantity

    def user_index(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """A canonical element index in the user's own layout."""
        return index if self.slot is None else self.slot.user_index(index)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Divergence:
    """Where scratch and torch first part. `index` is in the user's own layout when the
    scratch side is user code (W1[3, 0] of a weight stored (in, out))."""

    step: int
    quantity: str
    layer: int | None
    param: str | None
    label: str
    index: tuple[int, ...]
    scratch: float
    torch: float
    abs_err: float
    rel_err: float
    rtol: float
    atol: float
    mismatches: int
    total: int
    fd: float | None = None  # the finite-difference gradient at that element, in float64
    fd_agrees_with: str | None = None  # "scratch", "torch", "both", "neither", or None
    diagnosis: dict | None = None  # {"cause", "explanation"}: the likely bug, if recognised
    nonfinite: str | None = None  # "scratch", "torch" or "both" when NaN/Inf appeared
    epoch: int | None = None  # with mini-batches: the epoch and the batch within it
    batch: int | None = None

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}

    def __str__(self) -> str:
        where = f"step {self.step}"
        if self.epoch is not None:
            where += f" (epoch {self.epoch}, batch {self.batch})"
        at = f", index {list(self.index)}" if self.index else ""
        s = (
            f"{where}, {self.label}{at}: "
            f"scratch {self.scratch!r} vs torch {self.torch!r} "
            f"(|diff| {self.abs_err:.3g}, rel {self.rel_err:.3g}; "
            f"{self.mismatches}/{self.total} elements outside rtol={self.rtol:.3g}, "
            f"atol={self.atol:.3g})"
        )
        if self.fd is not None:
            s += f"; finite differences give {self.fd!r}: agrees with {self.fd_agrees_with}"
        if self.diagnosis:
            s += f"; likely cause ({self.diagnosis['cause']}): {self.diagnosis['explanation']}"
        return s


@dataclass
class LockstepResult:
    passed: bool
    steps: int  # steps run
    items: list[Item]
    max_abs: np.ndarray  # (steps, items)
    rel_err: np.ndarray  # (steps, items), normwise ||scratch - torch|| / ||torch||
    within: np.ndarray  # (steps, items) bool: every element within tolerance
    loss_scratch: np.ndarray  # (steps,)
    loss_torch: np.ndarray  # (steps,)
    tolerances: dict[str, dict]  # item label -> {rtol, atol, reason}
    first_divergence: Divergence | None
    # Steps whose mismatch `_explained` traced to the conditioning of the computation, not to
    # an error: a relu kink crossed by rounding, an output probability within rounding of 0 or
    # 1, or rounding amplified past tolerance (drift). The run resynchronised after each.
    kink_steps: list[int] = field(default_factory=list)
    saturation_steps: list[int] = field(default_factory=list)
    drift_steps: list[int] = field(default_factory=list)
    probs_first: tuple[np.ndarray, np.ndarray] | None = None  # (scratch, torch) at step 0
    probs_last: tuple[np.ndarray, np.ndarray] | None = None
    snapshot: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # What was checked: the keys only one side reported (e.g. "z[0] (your forward keeps no
    # z1)"), the parameter map of user code, and how its gradients were obtained.
    not_compared: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)
    epochs: np.ndarray | None = None  # (steps,) with mini-batches: each step's epoch and batch
    batches: np.ndarray | None = None
    rows_first: np.ndarray | None = None  # with mini-batches: the rows of probs_first, _last
    rows_last: np.ndarray | None = None
    # The run's configuration as its record keeps it (docs/record.md): dtype, architecture,
    # data, loss, reduction, lr, optimizer, batches, seed, steps requested. Built once, by the
    # run; a front end adds only what the run cannot know (the data set's name, the init).
    config: dict = field(default_factory=dict)
    # A fault in the user's code that ended the run early ({"step", "message"}): an exception
    # it raised or a value breaking the contract, at a step after the first. Never a pass.
    fault: dict | None = None

    @property
    def dtype(self) -> str | None:
        return self.config.get("dtype")

    @property
    def optimizer(self) -> dict:
        """The optimizer as a record keeps it: {"name": "adam", **the options given}."""
        return self.config.get("optimizer", {"name": "sgd"})

    @property
    def labels(self) -> list[str]:
        return [it.label for it in self.items]

    @property
    def judged(self) -> np.ndarray:
        """(steps, items) bool: within tolerance, or at a step explained as kink, saturation or
        drift (where `within` keeps the raw comparison)."""
        judged = self.within.copy()
        judged[self.kink_steps + self.saturation_steps + self.drift_steps] = True
        return judged

    def worst(self) -> dict[str, dict]:
        """Per item, the largest absolute and relative error over all steps, and the verdict."""
        judged = self.judged
        return {
            it.label: {
                "max_abs": float(np.max(self.max_abs[:, k])) if self.steps else 0.0,
                "max_rel": float(np.max(self.rel_err[:, k])) if self.steps else 0.0,
                "passed": bool(judged[:, k].all()),
            }
            for k, it in enumerate(self.items)
        }

    def __repr__(self) -> str:  # the dataclass's would print every array
        """One line: the verdict, the size of the run, and where it diverged or how close it
        was."""
        result = self
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

    def summary(self, **context) -> dict:
        """The summary.json object the run's record holds (docs/record.md). `context`: what
        only the caller knows, as `torch_ref.record.record_config` (data=, y=, init=)."""
        from nn_parity.torch_ref.record import record_of

        return record_of(self, **context).summary

    def _repr_html_(self, **context) -> str:
        """Jupyter's view: the verdict, the run described as its report describes it, the
        first divergence and the per-item table."""
        from nn_parity.reports.notebook import summary_html

        return summary_html(self.summary(**context))

    def figures(self, **context):
        """The report's figures, drawn from the run's record: a list of matplotlib Figures that
        shows itself inline in a notebook (`reports.notebook.Figures`). Pass `y=` for the
        probabilities figure."""
        from nn_parity.reports.notebook import record_figures
        from nn_parity.torch_ref.record import record_of

        return record_figures(record_of(self, **context))
