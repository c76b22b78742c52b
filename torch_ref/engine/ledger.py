"""A run's ledger: what each step compared, which steps were explained, and the first
divergence; it becomes the `LockstepResult`.

Per step only small summaries are kept (largest absolute difference and normwise relative error
of each quantity); full tensors are kept for the step of the first divergence alone, so a run
of any length stays in bounded memory.
"""

from __future__ import annotations

import numpy as np
from nn_parity.torch_ref.compare import compare_segments, tolerance
from nn_parity.torch_ref.engine.comparer import _check_dtypes, _Group, _groups, _np, _slack_for
from nn_parity.torch_ref.engine.findings import _divergence, _nonfinite, _snapshot
from nn_parity.torch_ref.engine.items import _checked, _items, _resize
from nn_parity.torch_ref.engine.recheck import _kink_flips, _resync, explain
from nn_parity.torch_ref.engine.setup import Run
from nn_parity.torch_ref.engine.start import _carried_in, _start_divergence, _start_words
from nn_parity.torch_ref.results import Divergence, Item, LockstepResult


class Ledger:
    """The records of one run, step by step."""

    def __init__(self, run: Run, resync: bool):
        self.run, self.resync = run, resync
        # Before step 0, nothing has been computed: a difference in the starting state is no
        # rounding any step produced, so it is a divergence no re-check may excuse.
        self.first: Divergence | None = _start_divergence(run.sside, run.tside)
        self.started = _start_words(run.sside, self.first)
        self.fault: dict | None = None  # a fault in the user's code mid-run: {step, message}
        self.explained: dict[str, list[int]] = {"kink": [], "saturation": [], "drift": []}
        self.snapshot: dict = {}
        self.items: list[Item] = []
        self.not_compared: list[str] = []
        self.layout: dict[int, tuple[list[Item], list[_Group]]] = {}  # per batch size
        self.loss = np.zeros((2, run.steps))
        self.where = np.zeros((2, run.steps), dtype=np.int64)  # epoch and batch of each step
        self.probs: dict[str, tuple] = {}  # "first", "last" -> (scratch, torch, rows)
        self.ran = 0

    def record(self, step: int, where: tuple[int, int], batch: tuple, svals, tvals) -> bool:
        """Compare one step, explain or record a mismatch; True when the run must stop."""
        run = self.run
        Xb, _, rows = batch
        if step == 0:
            self._first_step(svals, tvals)
        svals, tvals = self._shared(svals, tvals)
        items, groups = self._layout(len(Xb))
        if step == 0:
            _check_dtypes(items, svals, tvals)
        slack = run.sside.recovery_slack() if run.sside.recovered else None
        self._compare(step, groups, items, svals, tvals, slack)
        self.loss[:, step] = run.sside.loss_value, run.tside.loss_value
        self.where[:, step] = where
        self._keep_probs("first" if step == 0 else "last", svals, tvals, rows)
        self.ran = step + 1
        if not (np.isfinite(self.max_abs[step]).all() and np.isfinite(self.rel_err[step]).all()):
            blowup = _nonfinite(step, items, svals, tvals, run.sside.loss, run.tside)
            if blowup is not None:  # blown up: every later step would compare NaN with NaN
                self.first = self.first or blowup
                self.snapshot = self.snapshot or _snapshot(items, svals, tvals, run.sside)
                return True
        self._judge(step, where, batch, items, svals, tvals, slack)
        return False

    def _first_step(self, svals, tvals) -> None:
        """The items both sides report, known from the first step, and the records sized."""
        run = self.run
        self.items, self.pick_s, self.pick_t, self.not_compared = _items(
            run.sside, run.tside, svals
        )
        self.p_idx = next((k for k, it in enumerate(self.items) if it.quantity == "prob"), None)
        shape = (run.steps, len(self.items))
        self.max_abs, self.rel_err = np.zeros(shape), np.zeros(shape)
        self.within = np.zeros(shape, dtype=bool)

    def _shared(self, svals, tvals) -> tuple[list, list]:
        """Each side's values of the items both report, in the items' order."""
        if self.pick_s is not None:
            svals = [svals[j] for j in self.pick_s]
        if self.pick_t is not None:
            tvals = [tvals[j] for j in self.pick_t]
        return svals, tvals

    def _layout(self, n: int) -> tuple[list[Item], list[_Group]]:
        """The items and their packed groups for a batch of n rows (a last, partial batch has
        its own)."""
        if n not in self.layout:
            items = self.items if not self.layout else _resize(self.items, n)
            self.layout[n] = (items, _groups(items, self.run.sside.dtype))
        return self.layout[n]

    def _compare(self, step, groups, items, svals, tvals, slack) -> None:
        for g in groups:
            s, t = g.flat(svals, tvals)
            atol = g.atol if slack is None else g.atol + _slack_for(g, items, slack)
            m, r, ok = compare_segments(s, t, g.starts, g.rtol, atol)
            self.max_abs[step, g.slice], self.rel_err[step, g.slice] = m, r
            self.within[step, g.slice] = ok

    def _keep_probs(self, when: str, svals, tvals, rows) -> None:
        """The step's output probabilities, for the figures: each step makes them anew, so a
        reference is enough until `result` copies the first and the last."""
        if self.p_idx is not None:
            k = self.p_idx
            self.probs[when] = (svals[k], tvals[k], rows)

    def _judge(self, step, where, batch, items, svals, tvals, slack) -> None:
        """A step that agreed passes; a mismatch is explained by the stage-wise re-check, or
        is the first divergence. After an explained step the run resynchronises."""
        run, within = self.run, self.within[step]
        flips = _kink_flips(run.sside, run.tside, run.kinks) if run.kinks else {}
        reason = None
        if self.first is None and not within.all():
            reason, failed_at = None, None
            if _carried_in(run.sside, run.tside, step):
                reason, failed_at = explain(
                    run.sside, run.tside, items, within, svals, tvals, flips, batch
                )
            if reason is None:
                # the stage that failed names the item, unless it is one that agreed
                named = failed_at is not None and not bool(within[failed_at])
                k = failed_at if named else int(np.argmin(within))
                self.first = _divergence(
                    step, items, k, svals, tvals, run.sside, run.tside, slack,
                    where if run.mini_batches else None,
                )  # fmt: skip
                self.snapshot = _snapshot(items, svals, tvals, run.sside)
        elif flips and within.all():
            reason = "kink"  # agreed this time; resync so the trajectories cannot part
        if reason is not None:
            self.explained[reason].append(step)
        if reason is not None or self.resync:
            _resync(run.sside, run.tside)

    def result(self) -> LockstepResult:
        run, ran = self.run, self.ran
        first, last = (
            (np.array(p[0]), _np(p[1]).copy(), p[2]) if p else None
            for p in (self.probs.get("first"), self.probs.get("last") or self.probs.get("first"))
        )
        sized = bool(self.items)
        return LockstepResult(
            passed=self.first is None and self.fault is None,
            steps=ran,
            items=self.items,
            max_abs=self.max_abs[:ran] if sized else np.zeros((0, 0)),
            rel_err=self.rel_err[:ran] if sized else np.zeros((0, 0)),
            within=self.within[:ran] if sized else np.zeros((0, 0), dtype=bool),
            loss_scratch=self.loss[0, :ran],
            loss_torch=self.loss[1, :ran],
            tolerances={
                it.label: tolerance(it.quantity, run.sside.dtype).as_dict() for it in self.items
            },
            first_divergence=self.first,
            kink_steps=self.explained["kink"],
            saturation_steps=self.explained["saturation"],
            drift_steps=self.explained["drift"],
            probs_first=first[:2] if first else None,
            probs_last=last[:2] if last else None,
            snapshot=self.snapshot,
            not_compared=self.not_compared,
            checked={**_checked(run.sside), "start": self.started},
            epochs=self.where[0, :ran] if run.mini_batches else None,
            batches=self.where[1, :ran] if run.mini_batches else None,
            rows_first=first[2] if first else None,
            rows_last=last[2] if last else None,
            config=run.config,
            fault=self.fault,
        )
