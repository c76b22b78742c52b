"""`nn-parity run --model PATH.py:FUNCTION`: the user's own network from the command line."""

from __future__ import annotations

import json
import textwrap

import pytest
from nn_parity.torch_ref.frontends.cli import main

MODEL = textwrap.dedent(
    """
    import numpy as np
    from nn_parity.torch_ref import adapt

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    class TwoLayer:
        def __init__(self, d, h, seed=0):
            rng = np.random.default_rng(seed)
            self.W1 = rng.standard_normal((d, h)) * 0.5
            self.b1 = np.zeros((1, h))
            self.W2 = rng.standard_normal((h, 1)) * 0.5
            self.b2 = np.zeros((1, 1))

        def forward(self, X):
            self.a1 = np.tanh(X @ self.W1 + self.b1)
            self.a2 = sigmoid(self.a1 @ self.W2 + self.b2)
            return self.a2

        def backward(self, X, y, lr):
            y = y.reshape(-1, 1)
            m = len(X)
            dz2 = (self.a2 - y) / m
            dz1 = dz2 @ self.W2.T * (1 - self.a1 ** 2)
            self.W2 -= lr * self.a1.T @ dz2
            self.b2 -= lr * dz2.sum(axis=0, keepdims=True)
            self.W1 -= lr * X.T @ dz1
            self.b1 -= lr * dz1.sum(axis=0, keepdims=True)BUG

    def make():
        net = TwoLayer(2, 5)
        return adapt(net, names=["W1", "b1", "W2", "b2"], activations=["tanh", "sigmoid"],
                     forward=net.forward, step=net.backward)
    """
)


def write_model(tmp_path, bug=""):
    path = tmp_path / "mynet.py"
    path.write_text(MODEL.replace("BUG", bug))
    return path


def run(tmp_path, *args):
    return main(
        ["run", "--data", "moons", "--no-figures", "--quiet", "--out", str(tmp_path / "r"), *args]
    )


def test_a_correct_user_model_passes_from_the_command_line(tmp_path, capsys):
    path = write_model(tmp_path)
    assert run(tmp_path, "--model", f"{path}:make", "--steps", "200", "--lr", "0.5") == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["passed"]
    assert summary["checked"]["side"].startswith(f"your network from {path}:make")
    assert "recovered" in summary["checked"]["gradients"]
    assert "grad W1" in summary["quantities"]
    assert any(s.startswith("loss") for s in summary["not_compared"])


def test_a_bug_in_the_user_model_exits_1_named_in_its_own_terms(tmp_path, capsys):
    path = write_model(tmp_path, bug="\n        self.b1 -= lr * dz1.sum(axis=0, keepdims=True)")
    assert run(tmp_path, "--model", f"{path}:make", "--steps", "20") == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["first_divergence"]["label"] == "grad b1"
    assert summary["first_divergence"]["step"] == 0


@pytest.mark.parametrize(
    "model,message",
    [
        ("nope.py:make", "--model: no file 'nope.py'"),
        ("{path}:build", "has no function 'build'"),
        ("{path}", "--model takes PATH.py:FUNCTION"),
    ],
    ids=["missing-file", "missing-function", "no-function-named"],
)
def test_bad_model_arguments_get_one_line(tmp_path, capsys, model, message):
    path = write_model(tmp_path)
    assert run(tmp_path, "--model", model.format(path=path)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_architecture_flags_do_not_apply_with_a_model(tmp_path, capsys):
    path = write_model(tmp_path)
    assert run(tmp_path, "--model", f"{path}:make", "--layers", "2,5,1") == 2
    assert "--layers does not apply with --model" in capsys.readouterr().err


def test_export_after_a_user_model_run_writes_a_passing_torch_test(tmp_path, capsys):
    import subprocess
    import sys

    path = write_model(tmp_path)
    code = run(
        tmp_path, "--model", f"{path}:make", "--steps", "20", "--export", str(tmp_path / "ex")
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == [
        "net.pt", "net.py", "net_expected.npz", "test_net.py",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_net.py"],
        cwd=tmp_path / "ex", capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # edited to be wrong, the generated test fails
    module = tmp_path / "ex" / "net.py"
    module.write_text(module.read_text().replace("nn.Tanh()", "nn.Sigmoid()"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_net.py"],
        cwd=tmp_path / "ex", capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout


def test_three_classes_on_two_features_draw_their_regions(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 2))
    y = np.argmax(np.c_[X[:, 0], X[:, 1], -X[:, 0] - X[:, 1]], axis=1)
    csv = tmp_path / "three.csv"
    np.savetxt(csv, np.c_[X, y], delimiter=",", header="x1,x2,label", comments="",
               fmt=["%.6f", "%.6f", "%d"])  # fmt: skip
    code = main(["run", "--data", str(csv), "--loss", "ce", "--layers", "2,8,3", "--steps", "20",
                 "--quiet", "--out", str(tmp_path / "r")])  # fmt: skip
    assert code == 0
    arrays = np.load(tmp_path / "r" / "record.npz")
    assert int(arrays["boundary_classes"]) == 3
    assert set(np.unique(arrays["boundary_after_scratch"])) <= {0.0, 1.0, 2.0}
    assert (tmp_path / "r" / "boundary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
