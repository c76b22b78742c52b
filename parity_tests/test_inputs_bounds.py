"""Inputs that are not one-line refusals (docs/bad-inputs.md, "Data, weights and sizes"):
huge values scaled rather than zeroed, user text drawn as text, a failing figure named in a
report that is otherwise complete, weights told apart by content."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.reports import figures
from nn_parity.torch_ref.frontends.cli import main
from nn_parity.torch_ref.frontends.cli_run import load_model
from nn_parity.torch_ref.frontends.datasets import load_dataset
from nn_parity.torch_ref.mirror.weights import load_weights

STUDENTS = "4,3.5,1\n1,2.0,0\n3,3.0,1\n0.5,1.5,0\n"


def test_a_column_of_1e308_is_standardised_not_zeroed(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("a,b,y\n1e308,1,0\n-1e308,2,1\n1e308,3,0\n-1e308,1,1\n")
    X = load_dataset(str(path)).X
    assert np.isfinite(X).all()
    np.testing.assert_allclose(X[:, 0], [1, -1, 1, -1])  # what 1, -1, 1, -1 standardises to


def test_a_mathtext_header_gets_a_complete_report(tmp_path, capsys):
    data = tmp_path / "math.csv"
    data.write_text("x$\\frac{$,gpa,passed\n" + STUDENTS)
    code = main(["run", "--data", str(data), "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    html = (tmp_path / "r" / "report.html").read_text()
    assert "could not be drawn" not in html
    for spec in figures.FIGURES:
        assert (tmp_path / "r" / spec.filename).is_file(), spec.filename


def test_a_failing_figure_is_named_and_costs_nothing_else(tmp_path, capsys, monkeypatch):
    def broken(record):
        raise RuntimeError("drawing failed\nsecond line")

    specs = tuple(
        dataclasses.replace(s, draw=broken) if s.filename == "loss.png" else s
        for s in figures.FIGURES
    )
    monkeypatch.setattr(figures, "FIGURES", specs)
    code = main(["run", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "r"
    html = (out / "report.html").read_text()
    assert "loss.png could not be drawn: RuntimeError: drawing failed" in html
    assert not (out / "loss.png").exists()
    assert (out / "errors.png").is_file() and (out / "record.npz").is_file()


def test_a_torch_state_dict_named_npz_loads_as_torch(tmp_path):
    net = scratch.MLP([2, 3, 1], ["tanh", "sigmoid"], rng=0)
    torch.save({k: torch.from_numpy(v.copy()) for k, v in net.state_dict().items()},
               tmp_path / "w.npz")  # fmt: skip
    state = load_weights(tmp_path / "w.npz")
    assert all(np.array_equal(state[k], v) for k, v in net.state_dict().items())


def test_a_model_file_sees_only_its_own_name_in_argv(tmp_path, monkeypatch):
    path = tmp_path / "m.py"
    path.write_text(
        "import pathlib, sys\nfrom nn_parity import scratch\n"
        "pathlib.Path(__file__).with_suffix('.argv').write_text(repr(sys.argv))\n"
        "def make():\n    return scratch.MLP([2, 3, 1], ['tanh', 'sigmoid'])\n"
    )
    monkeypatch.setattr(sys, "argv", ["nn-parity", "run", "--model", f"{path}:make"])
    load_model(f"{path}:make")
    assert (tmp_path / "m.argv").read_text() == repr([str(path)])
    assert sys.argv == ["nn-parity", "run", "--model", f"{path}:make"]  # restored
