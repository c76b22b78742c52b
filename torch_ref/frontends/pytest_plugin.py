"""nn-parity in pytest: the `parity` fixture, options for a whole run, and a summary line.

Registered through the `pytest11` entry point (pyproject.toml), as pytest-benchmark and
hypothesis register theirs, so any pytest run where nn-parity is installed has it:

    def test_backprop(parity):
        net = scratch.MLP([2, 8, 1], ["tanh", "sigmoid"], dtype=parity.dtype, rng=0)
        parity.lockstep(net, TorchMLP.from_scratch(net), X, y, steps=50, lr=0.5)

`parity.lockstep` takes what `nn_parity.torch_ref.engine` takes (every keyword is passed on)
and fails the test with the first divergence: step, quantity, parameter and element, both
values, the finite-difference verdict and the likely cause. `parity.op` does the same for the
op check, where nn_parity.torch_ref.opcheck is installed.

    --parity-report DIR   each failing check writes its report folder to DIR/<test id>
    --parity-dtype D      the dtype tests read from `parity.dtype` (float64 or float32)
    --parity-steps N      every lockstep runs N steps, whatever the test asks

pytest imports this module in every run, parity checks or not: it imports only pytest and the
standard library, and loads torch, NumPy and matplotlib when a check first runs.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from nn_parity.torch_ref.results import LockstepResult

__all__ = ["Parity", "parity"]

DTYPES = ("float64", "float32")
# The checks that ran in this process; under xdist each worker sends its list to the
# controller (config.workeroutput), which prints the summary line for all of them.
_CHECKS = pytest.StashKey[list]()
_WORKER_KEY = "nn_parity_checks"
_MAX_NAME = 150  # characters of a report folder's name, far below any file system's limit


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nn-parity", "nn-parity parity checks")
    group.addoption(
        "--parity-report",
        metavar="DIR",
        help="write the report folder of every failing parity check into DIR, one folder per "
        "test, named after its test id (replacing that test's folder from an earlier run)",
    )
    group.addoption(
        "--parity-dtype",
        choices=DTYPES,
        help="the dtype that tests read from `parity.dtype`; a check whose network is built "
        "in another dtype fails (default: float64)",
    )
    group.addoption(
        "--parity-steps",
        type=_positive_int,
        metavar="N",
        help="run every parity lockstep for N steps, whatever the test asks",
    )


def _positive_int(text: str) -> int:
    # argparse turns this error into pytest's one-line usage error (exit code 4)
    from argparse import ArgumentTypeError

    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise ArgumentTypeError(f"expected at least 1 step, got {value}")
    return value


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_CHECKS] = []


def report_root(config: pytest.Config) -> Path | None:
    """--parity-report as an absolute path: relative ones are taken from where pytest ran."""
    value = config.getoption("parity_report", None)
    if not value:
        return None
    return Path(config.invocation_params.dir, value).absolute()


def folder_name(nodeid: str) -> str:
    """A report folder's name for a test id: `test_x.py::test_y[a-b]` -> `test_x.py__test_y[a-b]`.

    One folder per test id, so under pytest-xdist no two workers write one folder. `::` becomes
    `__`; path separators and other characters that some file systems refuse become `_`. Where
    that loses the id (the name does not read back as it, `__` -> `::`: `bug/a` and `bug_a`
    both give `bug_a`), or the id is too long for a file name (cut), the name ends with `-` and
    8 hex digits of the SHA-1 of the exact id, so two ids never share a folder.
    """
    name = re.sub(r"[^\w.\[\]-]", "_", nodeid.replace("::", "__"), flags=re.ASCII).strip(".")
    if name and name.replace("__", "::") == nodeid and len(name) <= _MAX_NAME:
        return name
    import hashlib

    digest = hashlib.sha1(nodeid.encode()).hexdigest()[:8]
    return f"{name[: _MAX_NAME - 9] or 'test'}-{digest}"


class Parity:
    """The `parity` fixture: parity checks that fail the test they run in."""

    def __init__(self, config: pytest.Config, nodeid: str):
        self._config = config
        self._nodeid = nodeid
        self._reports = 0

    @property
    def dtype(self) -> str:
        """The dtype this run checks: --parity-dtype, or float64."""
        return self._config.getoption("parity_dtype", None) or "float64"

    def lockstep(self, net, ref=None, X=None, y=None, **kwargs) -> LockstepResult:
        """`nn_parity.torch_ref.engine(net, ref, X, y, **kwargs)`; fails the test on divergence.

        For a `scratch.MLP`, `ref` defaults to `TorchMLP.from_scratch(net)`. --parity-steps
        replaces `steps`. Returns the result when every quantity agreed at every step.
        """
        __tracebackhide__ = True
        import numpy as np
        from nn_parity.torch_ref.engine.loop import lockstep

        config = self._config
        forced = config.getoption("parity_dtype", None)
        built = getattr(net, "dtype", None)
        if forced and built is not None and np.dtype(built).name != forced:
            pytest.fail(
                f"--parity-dtype {forced}, but this test built its network in {built}: build "
                "it with dtype=parity.dtype",
                pytrace=False,
            )
        steps = config.getoption("parity_steps", None)
        if steps is not None:
            kwargs["steps"] = steps
        if ref is None:
            from nn_parity import scratch
            from nn_parity.torch_ref.mirror.model import TorchMLP

            if isinstance(net, scratch.MLP):  # other networks: lockstep's own default, if any
                ref = TorchMLP.from_scratch(net)
        result = lockstep(net, ref, X, y, **kwargs)

        root = report_root(config)
        report: Path | str | None = None
        if not result.passed and root is not None:
            context = {
                name: p.default
                for name, p in inspect.signature(lockstep).parameters.items()
                if p.default is not inspect.Parameter.empty
            }
            context.update(kwargs, net=net, X=X, y=y)
            try:
                report = self._write_report(root, result, context)
            except OSError as err:  # the divergence is the finding: say it, and why no report
                report = f"not written under {root}: {err.strerror or err}"
        config.stash[_CHECKS].append(
            {
                "kind": "lockstep",
                "passed": bool(result.passed),
                "steps": int(result.steps),
                "items": len(result.items),
                "quantities": sorted({it.quantity for it in result.items}),
                "dtype": _dtype_of(result),
                "report": str(report) if isinstance(report, Path) else None,
            }
        )
        if not result.passed:
            pytest.fail(self._message(result, report), pytrace=False)
        return result

    def op(self, *args: Any, **kwargs: Any) -> Any:
        """`nn_parity.torch_ref.opcheck.check_op(*args, **kwargs)`; fails the test on a mismatch.

        Skips the test when this install of nn-parity has no op check.
        """
        __tracebackhide__ = True
        check_op = _check_op()
        if check_op is None:
            pytest.skip("parity.op needs nn_parity.torch_ref.opcheck.check_op, not in this install")
        # counted as failed until it has passed: an op check that raises failed too
        record = {"kind": "op", "passed": False}
        self._config.stash[_CHECKS].append(record)
        try:
            result = check_op(*args, **kwargs)
        except AssertionError as err:  # an assert-style check: its message is the report
            pytest.fail(_op_message(err), pytrace=False)
        passed = getattr(result, "passed", result if isinstance(result, bool) else True)
        if not passed:
            pytest.fail(_op_message(result), pytrace=False)
        record["passed"] = True
        return result

    def _write_report(self, root: Path, result: LockstepResult, context: dict) -> Path:
        from nn_parity import reports
        from nn_parity.reports.destination import atomic_dir
        from nn_parity.torch_ref.record import write_record

        self._reports += 1  # a test that goes on after a failed check gets -2, -3, ...
        name = folder_name(self._nodeid)
        folder = root / (name if self._reports == 1 else f"{name}-{self._reports}")
        # Written under a temporary name and renamed into place: a reader never sees a half
        # report, and a folder left by an earlier run of the same test is replaced whole.
        with atomic_dir(folder, overwrite=True) as tmp:
            write_record(tmp, result, **context)
            reports.render(tmp)
        return folder

    @staticmethod
    def _message(result: LockstepResult, report: Path | str | None) -> str:
        div = result.first_divergence
        lines = ["nn-parity: scratch and torch diverged"]
        if div is not None:
            try:
                lines[0] += f" at step {div.step}, {div.label}, index {list(div.index)}"
                lines += _divergence_lines(div)
            except AttributeError:  # a Divergence of another shape: in its own words
                lines[0] += f": {div}"
        lines.append(f"  report: {report}" if report else "  (--parity-report DIR keeps a report)")
        return "\n".join(lines)


def _divergence_lines(div: Any) -> list[str]:
    """Both values, the tolerance, the finite-difference verdict and the likely cause."""
    lines = [
        f"  scratch   {div.scratch!r}",
        f"  torch     {div.torch!r}",
        f"  |diff|    {div.abs_err:.3g} (relative {div.rel_err:.3g}); {div.mismatches} of "
        f"{div.total} elements outside rtol {div.rtol:.3g}, atol {div.atol:.3g}",
    ]
    if div.fd is not None:
        lines.append(f"  finite differences give {div.fd!r}: agrees with {div.fd_agrees_with}")
    if div.diagnosis:
        cause = div.diagnosis.get("cause")
        lines.append(f"  likely cause ({cause}): {div.diagnosis.get('explanation')}")
    return lines


def _dtype_of(result: LockstepResult) -> str:
    """The run's dtype: recorded by lockstep; else that of its probabilities, which a run
    whose loss takes no probabilities (mse, bce-logits, ce) does not have."""
    if getattr(result, "dtype", None):
        return str(result.dtype)
    pair = result.probs_first or result.probs_last
    return str(pair[0].dtype) if pair is not None else "?"


_OPCHECK = "nn_parity.torch_ref.opcheck"


def _check_op():
    """opcheck.check_op where installed, else None."""
    import importlib

    try:  # through sys.modules, which is where an install (or a test) puts it
        opcheck = importlib.import_module(_OPCHECK)
    except ImportError as err:
        if err.name != _OPCHECK:
            raise  # the op check is installed but broken: say so, do not skip
        return None
    return getattr(opcheck, "check_op", None)


def _op_message(result: Any) -> str:
    """The op check's own words, headed "op check failed" unless they say so already."""
    if type(result).__str__ is not object.__str__:
        text = str(result)
    else:
        found = (getattr(result, k, None) for k in ("first_mismatch", "first_divergence"))
        text = str(next((v for v in found if v is not None), repr(result)))
    return text if text.lower().startswith("op check") else f"op check failed: {text}"


@pytest.fixture
def parity(request: pytest.FixtureRequest) -> Parity:
    """Parity checks for this test: `parity.lockstep(...)`, `parity.op(...)`, `parity.dtype`."""
    return Parity(request.config, request.node.nodeid)


# --- the summary line, with xdist's workers reporting to the controller ---------------------


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: sent to the controller after this hook
        workeroutput[_WORKER_KEY] = session.config.stash[_CHECKS]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist's controller: a worker finished; take its checks."""
    output = getattr(node, "workeroutput", None) or {}
    node.config.stash[_CHECKS].extend(output.get(_WORKER_KEY, []))


def summary_line(checks: list[dict], root: Path | None) -> str:
    """What the parity checks of a run compared, in one line."""

    def n(count: int, what: str) -> str:
        return f"{count} {what}{'s' * (count != 1)}"

    failed = sum(not c["passed"] for c in checks)
    line = f"nn-parity: {n(len(checks), 'parity check')}, {len(checks) - failed} passed, "
    line += f"{failed} failed"
    runs = [c for c in checks if c["kind"] == "lockstep"]
    if runs:
        quantities = {q for c in runs for q in c["quantities"]}
        order = [q for q in ("z", "a", "prob", "loss", "grad", "param") if q in quantities]
        order += sorted(quantities - set(order))
        dtypes = sorted({c["dtype"] for c in runs})
        line += (
            f"; {n(len(runs), 'lockstep run')} compared {', '.join(order)} "
            f"at {n(sum(c['steps'] for c in runs), 'step')} "
            f"({sum(c['steps'] * c['items'] for c in runs)} item comparisons) "
            f"in {', '.join(dtypes)}"
        )
    ops = [c for c in checks if c["kind"] == "op"]
    if ops:
        line += f"; {n(len(ops), 'op check')}"
    if any(c.get("report") for c in checks):
        line += f"; reports in {root}"
    return line


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller speaks for it
    checks = config.stash.get(_CHECKS, [])
    if checks:
        terminalreporter.write_sep("-", "nn-parity")
        terminalreporter.write_line(summary_line(checks, report_root(config)))
