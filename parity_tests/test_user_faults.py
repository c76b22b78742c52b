"""A fault in the user's code keeps what was found: the steps before it, the divergence found
first, a report, and an exit code of its own (3) at the command line. Never a pass."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
from nn_parity.torch_ref import adapt, lockstep
from nn_parity.torch_ref.frontends.cli import main

FAULT_STEP = 5


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


class Net:
    """A 2-3-1 tanh/sigmoid network written as a learner would, with a fault to switch on
    from step FAULT_STEP: `fault` names it, `bug` plants a wrong derivative from step 0."""

    def __init__(self, fault=None, bug=False):
        rng = np.random.default_rng(1)
        self.P = {"W1": rng.normal(size=(2, 3)), "b1": np.zeros(3),
                  "W2": rng.normal(size=(3, 1)), "b2": np.zeros(1)}  # fmt: skip
        self.fault, self.bug, self.calls = fault, bug, 0

    def grads(self, X, y):
        P, n = self.P, len(X)
        a1 = np.tanh(X @ P["W1"] + P["b1"])  # (N, H)
        p = sigmoid(a1 @ P["W2"] + P["b2"])  # (N, 1)
        t = y.reshape(-1, 1)
        loss = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
        dz2 = (p - t) / n
        dz1 = dz2 @ P["W2"].T * (1 - a1**2 if not self.bug else a1 * (1 - a1))
        g = {"W1": X.T @ dz1, "b1": dz1.sum(0), "W2": a1.T @ dz2, "b2": dz2.sum(0)}
        self.calls += 1
        if self.calls > FAULT_STEP:
            loss = self._fault(X, g, loss)
        return loss, g

    def _fault(self, X, g, loss):
        if self.fault == "raise":
            raise RuntimeError("boom")
        if self.fault == "exit":
            sys.exit(0)
        if self.fault == "shape":
            g["W1"] = g["W1"].T
        if self.fault == "key":
            g["dW1"] = g.pop("W1")
            g["W9"] = g.pop("dW1")
        if self.fault == "float32":
            g["W1"] = g["W1"].astype(np.float32)
        if self.fault == "mutate":
            X -= 1.0
        return float("nan") if self.fault == "nan" else loss


def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 2))  # (N, D)
    return X, (X[:, 0] > 0).astype(float)


def run(fault=None, bug=False, **options):
    X, y = data()
    user = Net(fault, bug)
    net = adapt(user.P, grads=user.grads, activations=["tanh", "sigmoid"], loss="bce")
    return lockstep(net, None, X, y, steps=20, lr=0.5, **options), X, y


@pytest.mark.parametrize(
    "fault,words",
    [
        ("raise", "grads raised RuntimeError: boom (at test_user_faults.py:"),
        ("exit", "grads called sys.exit(0)"),
        ("shape", "returned a gradient of shape (3, 2) for 'W1', whose shape is (2, 3)"),
        ("key", "returned no gradient for parameter 'W1'"),
        ("float32", "returned a float32 gradient for 'W1', whose parameters are float64"),
        ("mutate", "modified X in place: X[0, 0] was"),
    ],
)
def test_a_fault_mid_run_ends_it_with_the_steps_before_kept(fault, words):
    result, X, y = run(fault)
    assert not result.passed
    assert result.fault["step"] == FAULT_STEP and words in result.fault["message"]
    assert result.steps == FAULT_STEP and result.within.shape[0] == FAULT_STEP
    assert result.within.all() and result.first_divergence is None  # the steps before agree
    assert "FAULT" in repr(result)
    assert np.array_equal((X, y)[0], data()[0]), "the caller's X was modified"


def test_the_bug_found_first_stays_the_first_divergence():
    # the sigmoid's derivative for a tanh layer: found at step 0 (where the re-check calls the
    # gradient function twice more), then the function raises on its sixth call
    result, _, _ = run("raise", bug=True)
    assert result.first_divergence.step == 0 and result.first_divergence.quantity == "grad"
    assert result.fault["step"] == result.steps == 3 and not result.passed
    assert "DIVERGED" in repr(result)


def test_a_nan_loss_is_a_finding_at_its_step_not_an_error():
    result, _, _ = run("nan")
    div = result.first_divergence
    assert (div.step, div.quantity, div.nonfinite) == (FAULT_STEP, "loss", "scratch")
    assert "on scratch's side while torch's stayed finite" in div.diagnosis["explanation"]


def test_a_nan_loss_after_a_bug_keeps_the_bug_as_the_first_divergence():
    result, _, _ = run("nan", bug=True)
    assert result.first_divergence.step == 0 and result.first_divergence.quantity == "grad"


def test_a_probability_of_exactly_one_is_named_as_the_log_of_zero():
    X = np.array([[40.0], [-40.0], [1.0], [-1.0]])  # (N, D)
    y = np.array([0.0, 1.0, 1.0, 0.0])
    W = {"W": np.array([[1.0]]), "b": np.zeros(1)}

    def grads(X, y):
        p = sigmoid(X @ W["W"] + W["b"])  # exactly 1.0 for z = 40 in float64
        t = y.reshape(-1, 1)
        loss = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))  # log(0) = -inf
        dz = (p - t) / len(X)
        return loss, {"W": X.T @ dz, "b": dz.sum(0)}

    with np.errstate(divide="ignore"):
        net = adapt(W, grads=grads, activations=["sigmoid"], loss="bce", layout={"W": "in,out"})
        result = lockstep(net, None, X, y, steps=3, lr=0.1)
    div = result.first_divergence
    assert (div.step, div.quantity, div.nonfinite) == (0, "loss", "scratch")
    assert "p is exactly 1 at sample 0" in div.diagnosis["explanation"]
    assert "clamps the log at -100" in div.diagnosis["explanation"]


def test_a_fault_at_the_first_step_is_an_error_as_before():
    # nothing has been computed yet: the user's code does not run as given
    X, y = data()
    user = Net("raise")
    user.calls = FAULT_STEP  # faults on its first call
    net = adapt(user.P, grads=user.grads, activations=["tanh", "sigmoid"], loss="bce")
    with pytest.raises(ValueError, match="grads raised RuntimeError: boom"):
        lockstep(net, None, X, y, steps=3, lr=0.5)


# --- at the command line -------------------------------------------------------------------

MODEL = textwrap.dedent(
    """
    import sys
    import numpy as np
    from nn_parity.torch_ref import adapt

    IMPORT_EXIT

    class TwoLayer:
        def __init__(self):
            rng = np.random.default_rng(0)
            self.W1, self.b1 = rng.standard_normal((2, 5)) * 0.5, np.zeros((1, 5))
            self.W2, self.b2 = rng.standard_normal((5, 1)) * 0.5, np.zeros((1, 1))
            self.steps = 0

        def forward(self, X):
            self.a1 = np.tanh(X @ self.W1 + self.b1)
            self.a2 = 1 / (1 + np.exp(-(self.a1 @ self.W2 + self.b2)))
            return self.a2

        def backward(self, X, y, lr):
            self.steps += 1
            if self.steps > 7:
                STEP_FAULT
            y = y.reshape(-1, 1)
            dz2 = (self.a2 - y) / len(X)
            dz1 = dz2 @ self.W2.T * (1 - self.a1 ** 2)
            self.W2 -= lr * self.a1.T @ dz2
            self.b2 -= lr * dz2.sum(axis=0, keepdims=True)
            self.W1 -= lr * X.T @ dz1
            self.b1 -= lr * dz1.sum(axis=0, keepdims=True)

    def make():
        FACTORY_EXIT
        net = TwoLayer()
        return adapt(net, names=["W1", "b1", "W2", "b2"], activations=["tanh", "sigmoid"],
                     forward=net.forward, step=net.backward)
    """
)


def cli(tmp_path, capsys, *, step="pass", at_import="", in_factory="pass"):
    path = tmp_path / "mynet.py"
    path.write_text(
        MODEL.replace("IMPORT_EXIT", at_import)
        .replace("STEP_FAULT", step)
        .replace("FACTORY_EXIT", in_factory)
    )
    out = tmp_path / "r"
    code = main(["run", "--data", "moons", "--no-figures", "--quiet", "--steps", "20",
                 "--out", str(out), "--model", f"{path}:make"])  # fmt: skip
    return code, capsys.readouterr(), out


def test_cli_a_fault_mid_run_writes_the_report_and_exits_3(tmp_path, capsys):
    code, io, out = cli(tmp_path, capsys, step="raise KeyError('W3')")
    assert code == 3, io.err
    assert "Fault in your code at step 7: TwoLayer.backward raised KeyError: 'W3'" in io.err
    assert io.err.count("\n") == 1 and "Traceback" not in io.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is False and summary["steps"] == 7
    assert summary["fault"]["step"] == 7 and "mynet.py:" in summary["fault"]["message"]
    assert io.out.startswith("FAULT: 7 steps")


@pytest.mark.parametrize(
    "where",
    [{"step": "sys.exit(0)"}, {"at_import": "sys.exit(0)"}, {"in_factory": "sys.exit(0)"}],
    ids=["mid-run", "at-import", "in-factory"],
)
def test_cli_sys_exit_in_user_code_is_never_a_pass(tmp_path, capsys, where):
    code, io, _ = cli(tmp_path, capsys, **where)
    assert code in (2, 3), io
    assert "sys.exit(0)" in io.err and "Traceback" not in io.err
