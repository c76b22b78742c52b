"""A layered run as the reports describe it: the network line names the layers (text, HTML,
notebook, through one function), summary.json keeps them, `nn-parity report` reads them back,
and every figure either draws or is named as not drawn, with its reason. And `--dropout` with
layer sizes: the dense network run as the layer spec it is, its dropout active."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nn_parity.reports.notebook import summary_html
from nn_parity.reports.text import run_description
from nn_parity.scratch import get_loss as scratch_loss
from nn_parity.scratch.sequential import from_spec
from nn_parity.torch_ref import lockstep
from nn_parity.torch_ref.engine.layered_side import layer_words
from nn_parity.torch_ref.frontends.cli import main
from nn_parity.torch_ref.frontends.datasets import load_dataset

CONV = "conv8x3,relu,pool2,flatten,affine10"
CONV_LINE = "network: conv 1->8 3x3, relu, maxpool 2, flatten, affine 72->10, init torch_default, "
CONV_LINE += f"{8 * 9 + 8 + 72 * 10 + 10} parameters"
NOT_DRAWN = ("gradient_descent.png not drawn: ", "boundary.png not drawn: ")


def run(tmp_path, *flags, figures=True):
    out = tmp_path / "rep"
    code = main(["run", "--steps", "3", "--batch-size", "64", "--out", str(out), "--quiet",
                 *flags, *([] if figures else ["--no-figures"])])  # fmt: skip
    assert code == 0
    return out, json.loads((out / "summary.json").read_text())


def _in_html(line: str) -> str:
    """A description line as HTML writes it: its label in its own cell, '>' escaped."""
    return line.partition(": ")[2].replace(">", "&gt;")


def _pngs(folder) -> set[str]:
    return {p.name for p in folder.glob("*.png")}


def test_a_conv_run_names_its_layers_in_every_report(tmp_path, capsys):
    out, summary = run(tmp_path, "--data", "digits", "--layers", CONV)
    assert summary["architecture"]["layers"] == [
        "conv 1->8 3x3", "relu", "maxpool 2", "flatten", "affine 72->10",
    ]  # fmt: skip
    assert run_description(summary)[1] == CONV_LINE
    html = (out / "report.html").read_text()
    assert _in_html(CONV_LINE) in html
    assert {"loss.png", "errors.png", "probs.png", "gradient_descent.png"} == _pngs(out)
    assert NOT_DRAWN[1] + "the decision boundary is drawn for a classifier on two" in html
    assert NOT_DRAWN[0] not in html and "could not be drawn" not in html


def test_report_reads_a_layered_record_back(tmp_path):
    spec = "affine8,bn,relu,dropout0.3,affine1"
    out, _ = run(tmp_path, "--data", "breast-cancer", "--layers", spec, figures=False)
    assert _pngs(out) == set()
    assert main(["report", str(out), "--out", str(tmp_path / "drawn")]) == 0
    drawn = tmp_path / "drawn"
    html = (drawn / "report.html").read_text()
    want = "network: affine 30->8, batchnorm 8, relu, dropout 0.3, affine 8->1"
    assert _in_html(want) in html
    assert {"loss.png", "errors.png", "probs.png"} == _pngs(drawn)
    assert all(line in html for line in NOT_DRAWN) and "could not be drawn" not in html
    assert NOT_DRAWN[0] + "the loss slice is not drawn for a network with dropout" in html


def test_the_notebook_and_python_describe_the_same_layers():
    X = load_dataset("digits", seed=0).X.reshape(-1, 1, 8, 8)[:64]
    y = load_dataset("digits", seed=0).y[:64]
    net = from_spec("conv4x3s2p1,bn,relu,flatten,affine10", (1, 8, 8), rng=0)
    result = lockstep(net, None, X, y, steps=2, lr=0.1)
    summary = result.summary()
    line = "network: conv 1->4 3x3 stride 2 pad 1, batchnorm 4, relu, flatten, affine 64->10"
    assert run_description(summary)[1].startswith(line)
    assert _in_html(line) in summary_html(summary)


def test_an_mlp_run_keeps_its_sizes_and_no_not_drawn_lines(tmp_path):
    out, summary = run(tmp_path, "--data", "xor", "--layers", "2,4,1")
    assert "layers" not in summary["architecture"]
    assert run_description(summary)[1].startswith("network: 2-4-1 (tanh, sigmoid), bias")
    assert "not drawn" not in (out / "report.html").read_text()


@pytest.mark.parametrize(
    "spec, words",
    [
        ("conv16x5s2p2", "conv 1->16 5x5 stride 2 pad 2"),
        ("pool2", "maxpool 2"),
        ("ln", None),
        ("dropout0.25", "dropout 0.25"),
        ("leaky_relu:0.1", "leaky_relu:0.1"),
    ],
)
def test_layer_words(spec, words):
    shape = (8,) if spec == "ln" else (1, 8, 8)
    layer = from_spec(spec, shape).layers[0]
    assert layer_words(layer) == (words or "layernorm 8")


# --- --dropout with layer sizes ------------------------------------------------------------


def test_dropout_runs_the_sizes_as_their_layer_spec(tmp_path):
    _, summary = run(tmp_path, "--data", "digits", "--layers", "64,32,10", "--activation",
                       "relu", "--dropout", "0.2", figures=False)  # fmt: skip
    assert summary["passed"] is True
    assert summary["architecture"]["layers"] == [
        "flatten", "affine 64->32", "relu", "dropout 0.2", "affine 32->10",
    ]  # fmt: skip
    # the same run spelled as a layer spec is the same run, step for step
    _, spelled = run(tmp_path / "spelled", "--data", "digits", "--layers",
                         "flatten,affine32,relu,dropout0.2,affine10", figures=False)  # fmt: skip
    assert spelled["loss_last"] == summary["loss_last"]


def test_dropout_is_active_and_zero_is_none(tmp_path):
    losses = {}
    for p in ("0", "0.5"):
        _, s = run(tmp_path / p, "--data", "digits", "--layers", "64,16,10", "--dropout", p,
                   figures=False)  # fmt: skip
        losses[p] = s["loss_last"]["scratch"]
    _, plain = run(tmp_path / "spec", "--data", "digits", "--layers",
                   "flatten,affine16,tanh,affine10", figures=False)  # fmt: skip
    assert losses["0"] == plain["loss_last"]["scratch"]  # dropout 0 is the identity
    assert losses["0.5"] != losses["0"]  # a mask was drawn and applied


def test_dropout_with_a_binary_loss_on_probabilities_ends_with_its_sigmoid(tmp_path):
    _, s = run(tmp_path, "--data", "breast-cancer", "--layers", "30,8,1", "--dropout", "0.1",
               "--loss", "bce", figures=False)  # fmt: skip
    assert s["architecture"]["layers"][-2:] == ["affine 8->1", "sigmoid"]
    assert s["loss"] == "bce" and s["passed"] is True


def test_dropout_help_says_what_it_does(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--dropout P" in text and "run as the layer spec they are" in text


def test_refused_dropout_leaves_no_report(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["run", "--data", "digits", "--layers", "64,32,10", "--dropout", "1.0",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "got 1.0" in err


# --- the README's conv section stays true --------------------------------------------------


def _readme_conv_section() -> str:
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    return readme.split("## A conv net, checked in lockstep", 1)[1].split("\n## ", 1)[0]


def test_the_readme_conv_command_prints_what_the_readme_shows(tmp_path, monkeypatch, capsys):
    import shlex

    section = _readme_conv_section()
    shown = []  # the indented block from the command on, blank lines inside it kept
    for line in section[section.index("    $ ") :].splitlines():
        if line and not line.startswith("    "):
            break
        shown.append(line[4:])
    while not shown[-1]:
        shown.pop()
    command = shown[0].removeprefix("$ ")
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 0
    printed = capsys.readouterr().out.splitlines()
    # every line but the measured numbers of the table, which may move in the last digit
    # with another BLAS
    table = ("prob ", "loss ", "grad ", "param ", "out ")
    want = [line for line in shown[1:] if not line.strip().startswith(table)]
    got = [line for line in printed if not line.strip().startswith(table)]
    assert got == want and len(want) > 5
    assert [line.split()[:2] for line in printed if line.strip().startswith(table)] == [
        line.split()[:2] for line in shown[1:] if line.strip().startswith(table)
    ]


def test_the_readme_conv_python_prints_what_the_readme_says(capsys):
    import re

    code = re.search(r"```python\n(.*?)```", _readme_conv_section(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    comment = re.search(r"print\(result\)  # (.*?) \.\.\.\)", code).group(1)
    assert printed.startswith(comment), printed
    # the figure itself depends on the BLAS kernels: near machine precision is the claim
    assert float(printed[len(comment) :].split()[0]) < 8 * np.finfo(np.float64).eps, printed
    layers = namespace["result"].summary()["architecture"]["layers"]
    assert repr(layers).startswith(re.search(r"# (\['conv.*?), \.\.\.\]", code).group(1))


# --- the decision boundary of a layered classifier on two features --------------------------


def test_a_layered_classifier_on_two_features_draws_its_boundary(tmp_path):
    out, summary = run(
        tmp_path, "--data", "moons", "--layers", "affine8,bn,relu,dropout0.3,affine1"
    )
    assert summary["passed"] is True
    assert "boundary.png" in _pngs(out)
    html = (out / "report.html").read_text()
    assert "boundary.png not drawn" not in html and NOT_DRAWN[0] in html


def test_the_boundary_leaves_the_run_s_network_as_it_was():
    from nn_parity.torch_ref.frontends.figure_data import layered_boundary

    X = load_dataset("moons", seed=0).X
    net = from_spec("affine8,bn,relu,dropout0.3,affine1", (2,), rng=0)
    draw = net.layers[3].rng.bit_generator.state
    before = {k: v.copy() for k, v in {**net.params, **net.buffers}.items()}
    arrays = layered_boundary(net, scratch_loss("bce-logits"), X, "before")
    assert net.training and net.layers[3].rng.bit_generator.state == draw
    assert all(np.array_equal(v, before[k]) for k, v in {**net.params, **net.buffers}.items())
    # drawn in evaluation mode: both sides agree on every grid point's probability
    np.testing.assert_allclose(
        arrays["boundary_before_scratch"], arrays["boundary_before_torch"], rtol=1e-12, atol=1e-15
    )


# --- the loss slice of a layered network without dropout -----------------------------------


def _slice_of(spec: str):
    from nn_parity.torch_ref.frontends.figure_data import layered_gradient_slice

    ds = load_dataset("digits", seed=0)
    X, loss = ds.X.reshape(-1, 1, 8, 8)[:200], scratch_loss("ce")
    net = from_spec(spec, (1, 8, 8), rng=0)
    before = {k: v.copy() for k, v in {**net.params, **net.buffers}.items()}
    sl = layered_gradient_slice(net, loss, X, loss.targets(ds.y[:200], 10, "float64"))
    assert net.training
    assert all(np.array_equal(v, before[k]) for k, v in {**net.params, **net.buffers}.items())
    return sl["summary"]["gradient_slice"], sl["arrays"]


def test_the_slice_of_a_conv_bn_net_has_three_agreeing_slopes():
    s, arrays = _slice_of("conv4x3,bn,relu,pool2,flatten,affine10")
    assert s["param"] == "0.weight" and len(s["index"]) == 4
    assert s["grad_scratch"] == pytest.approx(s["grad_torch"], rel=1e-12)
    assert s["grad_fd"] == pytest.approx(s["grad_scratch"], rel=1e-6)
    assert np.isfinite(arrays["slice_loss"]).all() and len(arrays["slice_w"]) == 21


def test_the_slice_shows_a_wrong_backward_against_finite_differences(monkeypatch):
    from nn_parity.scratch import ops

    right = ops.conv2d_backward

    def doubled(dout, cache):  # a hand-derived dW off by a factor of 2
        dx, dW, db = right(dout, cache)
        return dx, 2 * dW, db

    monkeypatch.setattr(ops, "conv2d_backward", doubled)
    s, _ = _slice_of("conv4x3,bn,relu,pool2,flatten,affine10")
    assert s["grad_scratch"] == pytest.approx(2 * s["grad_fd"], rel=1e-6)
    assert s["grad_torch"] == pytest.approx(s["grad_fd"], rel=1e-6)
