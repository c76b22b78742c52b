"""The README's examples run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np

README = Path(__file__).parents[1] / "README.md"


def snippet(after_heading: str) -> str:
    section = README.read_text().split(after_heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def mynet_module(bug: bool = False) -> types.ModuleType:
    """A learner's parameter-dict network, weights stored (in, out), as the README assumes."""
    mod = types.ModuleType("mynet")

    def init_params(sizes, seed=0):
        rng = np.random.default_rng(seed)
        return {
            "W1": rng.normal(0, 1, (sizes[0], sizes[1])),
            "b1": np.zeros(sizes[1]),
            "W2": rng.normal(0, 1, (sizes[1], sizes[2])),
            "b2": np.zeros(sizes[2]),
        }

    def loss_and_grads(params, X, y):
        y = y.reshape(-1, 1)
        a1 = 1 / (1 + np.exp(-(X @ params["W1"] + params["b1"])))
        p = 1 / (1 + np.exp(-(a1 @ params["W2"] + params["b2"])))
        loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        dz2 = (p - y) / len(X)
        dz1 = dz2 @ params["W2"].T * a1 * (1 - a1)
        grads = {"W2": a1.T @ dz2, "b2": dz2.sum(axis=0), "W1": X.T @ dz1}
        grads["b1"] = dz1.sum(axis=0) * (len(X) if bug else 1)
        return loss, grads

    mod.init_params, mod.loss_and_grads = init_params, loss_and_grads
    return mod


def run_snippet(code: str, monkeypatch, **modules) -> dict:
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_check_your_own_network_is_at_most_10_lines_and_runs(monkeypatch, capsys):
    code = snippet("## Check your own network")
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 10, lines
    ns = run_snippet(code, monkeypatch, mynet=mynet_module())
    assert ns["result"].passed and ns["result"].steps == 500
    assert capsys.readouterr().out.strip() == "PASS"


def test_the_same_snippet_reports_a_learners_bug_in_their_names(monkeypatch, capsys):
    ns = run_snippet(snippet("## Check your own network"), monkeypatch, mynet=mynet_module(True))
    div = ns["result"].first_divergence
    assert div.label == "grad b1" and div.diagnosis["cause"] == "reduction"
    assert capsys.readouterr().out.startswith("step 0, grad b1")
