"""The pytest plugin: the `parity` fixture, --parity-* options, the summary line, and CI docs.

The end-to-end tests run pytest in a subprocess on a copy of docs/example_test_parity.py (the
file users copy) with a failing test added: a scratch network whose tanh derivative is taken
at z instead of at tanh(z).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from nn_parity import reports, scratch
from nn_parity.reports.notebook import summary_html
from nn_parity.torch_ref.frontends import pytest_plugin
from nn_parity.torch_ref.frontends.pytest_plugin import Parity, folder_name, summary_line

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "docs" / "example_test_parity.py"

FAILING_TEST = """

from nn_parity.scratch.activations import Tanh


class WrongTanh(Tanh):
    def backward(self, da, z, a):
        return da * (1 - z * z)  # the bug: tanh' is 1 - tanh(z)^2, evaluated here at z


def test_wrong_tanh_derivative(parity, data):
    X, y = data
    net = scratch.MLP([4, 8, 1], [WrongTanh(), "sigmoid"], dtype=parity.dtype, rng=0)
    parity.lockstep(net, TorchMLP.from_scratch(net), X, y, steps=5, lr=0.5)
"""

FAILING_ID = "test_parity_example.py::test_wrong_tanh_derivative"
FAILING_DIR = "test_parity_example.py__test_wrong_tanh_derivative"


def run_pytest(folder: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess:
    """pytest in a subprocess, in `folder`, as a user's repository would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYPOTHESIS_"))}
    env["COLUMNS"] = "200"  # the short summary line is cut to the terminal's width
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=folder, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def example_copy(tmp_path: Path, extra: str = FAILING_TEST) -> Path:
    (tmp_path / "test_parity_example.py").write_text(EXAMPLE.read_text() + extra)
    return tmp_path


def the_summary_line(stdout: str) -> str:
    lines = [x for x in stdout.splitlines() if re.match(r"nn-parity: \d+ parity check", x)]
    assert len(lines) == 1, stdout  # once, from the controller, however many workers
    return lines[0]


# --- loading --------------------------------------------------------------------------------


def test_importing_the_plugin_imports_no_torch_numpy_or_matplotlib():
    code = (
        "import sys\n"
        "import nn_parity.torch_ref.frontends.pytest_plugin\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('torch', 'numpy', 'matplotlib', 'sklearn'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_plugin_is_registered_as_pytest11_and_loaded_without_torch(tmp_path):
    (entry,) = [e for e in metadata.entry_points(group="pytest11") if e.name == "nn_parity"]
    assert entry.value == "nn_parity.torch_ref.frontends.pytest_plugin"
    # a suite with no parity check: the plugin is loaded, costs no torch, prints no summary
    (tmp_path / "test_plain.py").write_text(
        "import sys\n\n"
        "def test_plain(request):\n"
        "    assert request.config.pluginmanager.has_plugin('nn_parity')\n"
        "    assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules\n"
    )
    proc = run_pytest(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert "nn-parity" not in proc.stdout.replace("nn-parity-0", "")  # the plugins line only


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.parametrize("xdist", [False, True], ids=["one-process", "xdist-n2"])
def test_a_failing_check_fails_with_the_divergence_and_writes_its_report(tmp_path, xdist):
    folder = example_copy(tmp_path)
    if xdist:  # the option as docs/ci.md passes it: through PYTEST_ADDOPTS, under `make test`
        proc = run_pytest(folder, "-n", "2", PYTEST_ADDOPTS="--parity-report parity-reports")
    else:
        proc = run_pytest(folder, "--parity-report", "parity-reports")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert re.search(r"\b1 failed, 1 passed\b", out), out
    assert "PASSED test_parity_example.py::test_tanh_network_matches_torch" in out

    report = (tmp_path / "parity-reports" / FAILING_DIR).absolute()
    # the failure message: where, both values, the finite-difference verdict, the cause, the path
    assert "diverged at step 0, grad layers.0.weight, index [" in out
    assert re.search(r"scratch +-?\d\.\d+", out) and re.search(r"torch +-?\d\.\d+", out)
    assert "finite differences give" in out and "agrees with torch" in out
    assert "likely cause (derivative-at-z)" in out and "tanh derivative" in out
    assert f"report: {report}" in out
    assert f"FAILED {FAILING_ID} - Failed: nn-parity: scratch and torch diverged" in out

    # only the failing test has a folder, complete, and no temporary folder is left behind
    assert sorted(p.name for p in report.parent.iterdir()) == [FAILING_DIR]
    names = {p.name for p in report.iterdir()}
    assert {"summary.json", "metrics.csv", "record.npz", "report.html", "loss.png"} <= names
    summary = json.loads((report / "summary.json").read_text())
    assert summary["passed"] is False
    div = summary["first_divergence"]
    assert (div["step"], div["label"]) == (0, "grad layers.0.weight")
    assert div["fd_agrees_with"] == "torch"
    assert summary["diagnosis"]["cause"] == "derivative-at-z"
    assert summary["lr"] == 0.5 and summary["steps_requested"] == 5
    assert summary["architecture"]["sizes"] == [4, 8, 1]
    assert summary["architecture"]["activations"] == ["tanh", "sigmoid"]
    assert "DIVERGED" in (report / "report.html").read_text()

    line = the_summary_line(out)
    steps = 50 + summary["steps"]  # the passing test's 50 and the failing one's
    assert line.startswith("nn-parity: 2 parity checks, 1 passed, 1 failed; 2 lockstep runs ")
    assert f"compared z, a, prob, loss, grad, param at {steps} steps" in line
    assert line.endswith(f"in float64; reports in {report.parent}")


def test_dtype_and_steps_options_apply_to_the_whole_run(tmp_path):
    hard_coded = (
        "\n\ndef test_float64_only(parity, data):\n"
        "    X, y = data\n"
        "    net = scratch.MLP([4, 3, 1], ['tanh', 'sigmoid'], rng=0)\n"
        "    parity.lockstep(net, None, X, y, steps=2)\n"
    )
    folder = example_copy(tmp_path, FAILING_TEST + hard_coded)
    proc = run_pytest(folder, "--parity-dtype", "float32", "--parity-steps", "3")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert re.search(r"\b2 failed, 1 passed\b", out), out
    # the tanh bug is caught in float32 too, and no report is written without --parity-report
    assert "diverged at step 0, grad layers.0.weight" in out
    assert "--parity-report DIR keeps a report" in out
    assert (
        "--parity-dtype float32, but this test built its network in float64: "
        "build it with dtype=parity.dtype"
    ) in out
    line = the_summary_line(out)
    assert line.startswith("nn-parity: 2 parity checks, 1 passed, 1 failed")
    assert "at 6 steps" in line and line.endswith("in float32")


@pytest.mark.parametrize(
    "value, message",
    [("0", "expected at least 1 step, got 0"), ("three", "expected a whole number, got 'three'")],
)
def test_a_bad_parity_steps_is_a_usage_error(tmp_path, value, message):
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    proc = run_pytest(tmp_path, "--parity-steps", value)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert f"error: argument --parity-steps: {message}" in proc.stderr


# --- the fixture, in process ----------------------------------------------------------------


class FakeConfig:
    """What Parity reads of a pytest config: options, the stash, the invocation folder."""

    def __init__(self, tmp_path: Path, **options):
        self.options = options
        self.stash = {pytest_plugin._CHECKS: []}
        self.invocation_params = types.SimpleNamespace(dir=tmp_path)

    def getoption(self, name, default=None):
        return self.options.get(name, default)


def small_case(dtype="float64"):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((12, 3))  # (N, D)
    y = (X[:, 0] > 0).astype(np.float64)  # (N,)
    net = scratch.MLP([3, 4, 1], ["tanh", "sigmoid"], dtype=dtype, rng=0)
    return net, X, y


def test_a_passing_check_returns_the_result_and_passes_keywords_on(tmp_path):
    config = FakeConfig(tmp_path)
    net, X, y = small_case()
    result = Parity(config, "t.py::t").lockstep(net, None, X, y, steps=4, lr=0.3, resync=True)
    assert result.passed and result.steps == 4
    (check,) = config.stash[pytest_plugin._CHECKS]
    assert check == {
        "kind": "lockstep", "passed": True, "steps": 4, "items": len(result.items),
        "quantities": ["a", "grad", "loss", "param", "prob", "z"], "dtype": "float64",
        "report": None,
    }  # fmt: skip
    with pytest.raises(TypeError, match="no_such_option"):  # unknown keywords reach lockstep
        Parity(config, "t.py::t").lockstep(net, None, X, y, no_such_option=1)


def test_parity_steps_overrides_the_tests_steps(tmp_path):
    net, X, y = small_case()
    result = Parity(FakeConfig(tmp_path, parity_steps=2), "t").lockstep(net, None, X, y, steps=9)
    assert result.steps == 2


def test_two_failing_checks_in_one_test_get_two_folders(tmp_path):
    config = FakeConfig(tmp_path, parity_report="out")
    parity = Parity(config, "tests/test_a.py::test_b[x]")
    for _ in range(2):
        net, X, y = small_case()
        net.layers[0].activation.backward = lambda da, z, a: da  # the derivative dropped
        with pytest.raises(pytest.fail.Exception, match=r"report: .*test_b\[x\]"):
            parity.lockstep(net, None, X, y, steps=2)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    first = folder_name("tests/test_a.py::test_b[x]")
    assert first.startswith("tests_test_a.py__test_b[x]-")  # "/" sanitised: a hash of the id
    assert names == [first, f"{first}-2"]


def test_a_report_from_an_earlier_run_of_the_same_test_is_replaced(tmp_path):
    old = tmp_path / "out" / "t.py__t"
    old.mkdir(parents=True)
    (old / "stale.txt").write_text("from yesterday")
    net, X, y = small_case()
    net.layers[0].activation.backward = lambda da, z, a: 2 * da
    with pytest.raises(pytest.fail.Exception):
        Parity(FakeConfig(tmp_path, parity_report="out"), "t.py::t").lockstep(net, None, X, y)
    assert (old / "summary.json").is_file() and not (old / "stale.txt").exists()
    assert [p.name for p in old.parent.iterdir()] == ["t.py__t"]


def test_a_report_that_cannot_be_written_still_fails_with_the_divergence(tmp_path):
    (tmp_path / "out").write_text("a file where the report folder should go")
    net, X, y = small_case()
    net.layers[0].activation.backward = lambda da, z, a: 2 * da
    parity = Parity(FakeConfig(tmp_path, parity_report="out/reports"), "t.py::t")
    with pytest.raises(pytest.fail.Exception) as failure:
        parity.lockstep(net, None, X, y, steps=2)
    message = str(failure.value)
    assert message.startswith("nn-parity: scratch and torch diverged at step 0, grad layers.0")
    assert f"report: not written under {tmp_path / 'out' / 'reports'}: " in message


def test_folder_names_are_safe_and_distinct():
    ids = [
        "tests/test_a.py::test_b",
        "tests/test_a.py::TestC::test_b",
        "tests/test_a.py::test_b[float32-relu]",
        "test_x.py::test_y[a/b:c d]",
        "../escape.py::test_up",
    ]
    names = [folder_name(i) for i in ids]
    assert [n[: -len("-0123abcd")] for n in names[:3]] == [  # "/" became "_": hashed
        "tests_test_a.py__test_b",
        "tests_test_a.py__TestC__test_b",
        "tests_test_a.py__test_b[float32-relu]",
    ]
    assert folder_name("test_a.py::TestC::test_b[float32-relu]") == (
        "test_a.py__TestC__test_b[float32-relu]"  # nothing lost: no hash
    )
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"[\w.\[\]-]+", name) and not name.startswith("."), name
    long = [f"t.py::test[{'x' * 300}{k}]" for k in range(2)]
    cut = [folder_name(i) for i in long]
    assert all(len(c) <= 150 for c in cut) and cut[0] != cut[1]


@pytest.mark.parametrize(
    "ids",
    [
        ["t.py::test_f[bug/a]", "t.py::test_f[bug_a]"],
        ["t.py::test_f[a b]", "t.py::test_f[a_b]", "t.py::test_f[a:b]"],
        ["t.py::a_::b", "t.py::a::_b"],
        ["t.py::TestA::b", "t.py::TestA__b"],
        ["", ".", "test"],
    ],
)
def test_ids_that_sanitise_alike_get_distinct_stable_folders(ids):
    names = [folder_name(i) for i in ids]
    assert len(set(names)) == len(names), names
    assert names == [folder_name(i) for i in ids]  # stable: the same id, the same folder
    for name in names:
        assert re.fullmatch(r"[\w.\[\]-]+", name) and not name.startswith("."), name


SANITISED_ALIKE = """

import pytest
from nn_parity.scratch.activations import Tanh


class DoubledTanh(Tanh):
    def backward(self, da, z, a):
        return 2 * super().backward(da, z, a)


@pytest.mark.parametrize("case", ["slash", "underscore"], ids=["bug/a", "bug_a"])
def test_named_alike(parity, data, case):
    X, y = data
    net = scratch.MLP([4, 8, 1], [DoubledTanh(), "sigmoid"], dtype=parity.dtype, rng=0)
    parity.lockstep(net, TorchMLP.from_scratch(net), X, y, steps=2, lr=0.5 + (case == "slash"))
"""


@pytest.mark.parametrize("xdist", [False, True], ids=["one-process", "xdist-n2"])
def test_two_test_ids_that_sanitise_alike_keep_two_reports(tmp_path, xdist):
    folder = example_copy(tmp_path, SANITISED_ALIKE)
    args = ["-n", "2"] if xdist else []
    proc = run_pytest(folder, *args, "-k", "named_alike", "--parity-report", "out")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"\b2 failed\b", proc.stdout), proc.stdout
    ids = [f"test_parity_example.py::test_named_alike[{c}]" for c in ("bug/a", "bug_a")]
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(folder_name(i) for i in ids) and len(set(names)) == 2
    lrs = {json.loads((tmp_path / "out" / n / "summary.json").read_text())["lr"] for n in names}
    assert lrs == {0.5, 1.5}  # each folder holds its own test's run


def test_summary_line_counts_and_describes_the_checks():
    checks = [
        {"kind": "lockstep", "passed": True, "steps": 10, "items": 13, "dtype": "float64",
         "quantities": ["z", "a", "prob", "loss", "grad", "param"], "report": None},
        {"kind": "lockstep", "passed": False, "steps": 3, "items": 11, "dtype": "float32",
         "quantities": ["z", "prob", "loss", "grad", "param"], "report": "/r/t"},
        {"kind": "op", "passed": True},
    ]  # fmt: skip
    assert summary_line(checks, Path("/r")) == (
        "nn-parity: 3 parity checks, 2 passed, 1 failed; 2 lockstep runs compared z, a, prob, "
        "loss, grad, param at 13 steps (163 item comparisons) in float32, float64; "
        "1 op check; reports in /r"
    )
    assert summary_line(checks[:1], None) == (
        "nn-parity: 1 parity check, 1 passed, 0 failed; 1 lockstep run compared z, a, prob, "
        "loss, grad, param at 10 steps (130 item comparisons) in float64"
    )


# --- the op-check hook ----------------------------------------------------------------------


class OpResult:
    def __init__(self, passed):
        self.passed = passed

    def __str__(self):
        return "dx of affine, index [2, 1]: scratch 0.5 vs torch 0.25 (likely cause: 1/N twice)"


def fake_opcheck(monkeypatch, check_op):
    module = types.ModuleType("nn_parity.torch_ref.opcheck")
    module.check_op = check_op  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nn_parity.torch_ref.opcheck", module)


def test_parity_op_calls_check_op_and_fails_with_its_message(tmp_path, monkeypatch):
    calls = []

    def check_op(*args, **kwargs):
        calls.append((args, kwargs))
        return OpResult(passed=kwargs["ok"])

    fake_opcheck(monkeypatch, check_op)
    config = FakeConfig(tmp_path)
    parity = Parity(config, "t.py::t")
    assert parity.op("affine", ok=True).passed
    with pytest.raises(pytest.fail.Exception, match=r"op check failed: dx of affine, index \[2"):
        parity.op("affine", ok=False)
    assert calls == [(("affine",), {"ok": True}), (("affine",), {"ok": False})]
    assert [c["passed"] for c in config.stash[pytest_plugin._CHECKS]] == [True, False]


def test_an_op_results_own_headline_is_not_repeated(tmp_path, monkeypatch):
    class Headed(OpResult):
        def __str__(self):
            return "op check FAILED: 2 of 3 items agree\nfirst mismatch: dW[0, 1]"

    fake_opcheck(monkeypatch, lambda *a, **k: Headed(passed=False))
    with pytest.raises(pytest.fail.Exception) as failure:
        Parity(FakeConfig(tmp_path), "t").op("affine")
    assert str(failure.value).startswith("op check FAILED: 2 of 3 items agree\nfirst mismatch")


def test_parity_op_fails_with_an_assert_style_checks_message(tmp_path, monkeypatch):
    def check_op(*args, **kwargs):
        raise AssertionError("dgamma of layernorm summed over the wrong axis")

    fake_opcheck(monkeypatch, check_op)
    config = FakeConfig(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="op check failed: dgamma of layernorm"):
        Parity(config, "t").op("layernorm")
    assert config.stash[pytest_plugin._CHECKS] == [{"kind": "op", "passed": False}]


def test_an_op_check_that_raises_counts_as_failed(tmp_path, monkeypatch):
    def check_op(*args, **kwargs):
        raise ValueError("backward returned 1 gradient for 2 inputs")

    fake_opcheck(monkeypatch, check_op)
    config = FakeConfig(tmp_path)
    with pytest.raises(ValueError, match="1 gradient for 2 inputs"):  # the test errors
        Parity(config, "t").op("affine")
    assert config.stash[pytest_plugin._CHECKS] == [{"kind": "op", "passed": False}]


def test_a_divergence_of_another_shape_is_reported_in_its_own_words():
    class Elsewhere:
        def __str__(self):
            return "step 3, out[2, 1]: mine 1.0 vs theirs 2.0"

    result = types.SimpleNamespace(first_divergence=Elsewhere())
    message = Parity._message(result, None)  # type: ignore[arg-type]
    assert message.splitlines()[0] == (
        "nn-parity: scratch and torch diverged: step 3, out[2, 1]: mine 1.0 vs theirs 2.0"
    )


def test_parity_op_skips_where_the_op_check_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nn_parity.torch_ref.opcheck", None)  # import fails
    config = FakeConfig(tmp_path)
    with pytest.raises(pytest.skip.Exception, match=r"opcheck\.check_op, not in this install"):
        Parity(config, "t").op("affine")
    assert config.stash[pytest_plugin._CHECKS] == []  # nothing ran, nothing counted


# --- docs/ci.md -----------------------------------------------------------------------------


def test_the_ci_docs_workflow_runs_what_ci_runs():
    ci_run = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_run == ["make test"]
    doc = (ROOT / "docs" / "ci.md").read_text()
    workflow = doc.split("```yaml")[1].split("```")[0]
    runs = re.findall(r"^\s*(?:- )?run: (.+)$", workflow, flags=re.M)
    assert ci_run[0] in runs, runs  # the very command, not a look-alike
    # the report folder comes through pytest's own PYTEST_ADDOPTS and is kept as an artifact
    assert re.search(r"PYTEST_ADDOPTS: +--parity-report parity-reports$", workflow, re.M)
    assert "actions/upload-artifact" in workflow and "path: parity-reports" in workflow


def test_the_readme_shows_the_example_file():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## In pytest and notebooks")[1].split("\n## ")[0]
    shown = section.split("```python\n")[1].split("```")[0]
    code = EXAMPLE.read_text().split('"""', 2)[2].lstrip("\n")  # without its docstring
    assert shown == code
    assert readme.index("## In pytest and notebooks") < readme.index("## The pieces")


# --- what a run records: its dtype, its optimizer ---------------------------------------------


def user_net(dtype="float64", bug=1.0, d=3):
    """User code with gradients only (no forward: no probabilities compared), `d` inputs;
    `bug` scales db2."""
    from nn_parity.torch_ref import adapt

    rng = np.random.default_rng(0)
    P = {"W1": rng.standard_normal((d, 4)) * 0.5, "b1": np.zeros(4),
         "W2": rng.standard_normal((4, 1)) * 0.5, "b2": np.zeros(1)}  # fmt: skip
    P = {k: v.astype(dtype) for k, v in P.items()}

    def grads(X, y):
        a1 = np.tanh(X @ P["W1"] + P["b1"])  # (N, 4)
        p = 1 / (1 + np.exp(-(a1 @ P["W2"] + P["b2"])))  # (N, 1)
        dz2 = (p - y.reshape(-1, 1)) / len(X)
        dz1 = dz2 @ P["W2"].T * (1 - a1**2)
        return {"W1": X.T @ dz1, "b1": dz1.sum(0), "W2": a1.T @ dz2, "b2": bug * dz2.sum(0)}

    return adapt(P, activations=["tanh", "sigmoid"], grads=grads)


def test_a_run_without_probabilities_records_its_real_dtype(tmp_path):
    config = FakeConfig(tmp_path)
    _, X, y = small_case()
    result = Parity(config, "t.py::t").lockstep(
        user_net("float32"), None, X.astype(np.float32), y.astype(np.float32), steps=2
    )
    assert result.probs_first is None  # the case that printed "?"
    (check,) = config.stash[pytest_plugin._CHECKS]
    assert check["dtype"] == "float32"
    assert summary_line([check], None).endswith("in float32")


MODEL_WITH_A_BUG = """
import numpy as np
from parity_tests.test_plugin import user_net

def make():
    return user_net(bug=2.0, d=2)
"""


def test_an_adam_run_records_the_same_optimizer_through_the_plugin_and_the_cli(tmp_path):
    from nn_parity.torch_ref.frontends.cli import main

    (tmp_path / "buggy.py").write_text(MODEL_WITH_A_BUG)
    cli_out = tmp_path / "cli"
    code = main(["run", "--data", "moons", "--model", f"{tmp_path / 'buggy.py'}:make",
                 "--optimizer", "adam", "--betas", "0.8,0.99", "--steps", "3", "--no-figures",
                 "--quiet", "--out", str(cli_out)])  # fmt: skip
    assert code == 1
    cli = json.loads((cli_out / "summary.json").read_text())

    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 2))
    y = (X[:, 0] > 0).astype(np.float64)
    parity = Parity(FakeConfig(tmp_path, parity_report="plugin"), "t.py::t")
    adam = {"name": "adam", "betas": (0.8, 0.99)}
    with pytest.raises(pytest.fail.Exception):
        parity.lockstep(user_net(bug=2.0, d=2), None, X, y, steps=3, optimizer=adam)
    plugin = json.loads((tmp_path / "plugin" / "t.py__t" / "summary.json").read_text())
    assert plugin["optimizer"] == cli["optimizer"] == {"name": "adam", "betas": [0.8, 0.99]}
    # the notebook's record of the same run, and the reports that show it
    from nn_parity.torch_ref import lockstep

    notebook = lockstep(user_net(bug=2.0, d=2), None, X, y, steps=3, optimizer=adam).summary()
    assert notebook["optimizer"] == cli["optimizer"]
    for key in ("optimizer", "loss", "reduction", "dtype", "batches"):
        assert plugin[key] == cli[key] == notebook[key], key
    for shown in (reports.summary_text(cli), summary_html(notebook)):
        assert "adam (betas 0.8, 0.99)" in shown
    assert "adam (betas 0.8, 0.99)" in (tmp_path / "plugin" / "t.py__t" / "report.html").read_text()


def test_an_adam_update_that_differs_is_diagnosed_in_adams_words(tmp_path):
    class OffAdam(scratch.optim.Adam):  # gradients agree, the update carries an extra term
        def step(self, grads=None):
            super().step(grads)
            for p in self.params.values():
                p -= 1e-3 * p

    net, X, y = small_case()
    parity = Parity(FakeConfig(tmp_path, parity_report="out"), "t.py::t")
    with pytest.raises(pytest.fail.Exception, match="likely cause"):
        parity.lockstep(net, None, X, y, steps=2, optimizer=OffAdam(net, lr=0.1, betas=(0.8, 0.99)))
    summary = json.loads((tmp_path / "out" / "t.py__t" / "summary.json").read_text())
    assert summary["optimizer"] == {"name": "adam", "betas": [0.8, 0.99]}
    assert summary["diagnosis"]["cause"] == "update-rule"
    assert "Adam(lr=0.1, betas=(0.8, 0.99))" in summary["diagnosis"]["explanation"]
    assert "theta - lr * g" not in summary["diagnosis"]["explanation"]
