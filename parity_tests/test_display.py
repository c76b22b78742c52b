"""A LockstepResult in a notebook: _repr_html_, figures() and a short repr."""

from __future__ import annotations

import copy
import dataclasses
import io
import re
import subprocess
import sys
import textwrap
from html import escape

import numpy as np
import pytest
from nn_parity import reports, scratch
from nn_parity.reports import figures as drawing
from nn_parity.reports.text import fmt, run_description
from nn_parity.scratch.activations import Tanh
from nn_parity.torch_ref import TorchMLP, lockstep
from nn_parity.torch_ref.record import write_record


class WrongTanh(Tanh):
    def backward(self, da, z, a):
        return da * (1 - z * z)  # the bug: tanh' taken at z instead of at tanh(z)


def data():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((16, 3))  # (N, D)
    y = (X[:, 0] + X[:, 2] > 0).astype(np.float64)  # (N,)
    return X, y


def run(hidden) -> tuple:
    X, y = data()
    net = scratch.MLP([3, 5, 1], [hidden, "sigmoid"], rng=0)
    return lockstep(net, TorchMLP.from_scratch(net), X, y, steps=6, lr=0.5), y


@pytest.fixture(scope="module")
def passing():
    return run("tanh")


@pytest.fixture(scope="module")
def failing():
    return run(WrongTanh())


def row(html: str, label: str) -> str:
    """The table row of one item."""
    (match,) = re.findall(rf"<tr>(?:(?!</tr>).)*<code>{re.escape(label)}</code>.*?</tr>", html)
    return match


def test_html_of_a_passing_result(passing):
    result, _ = passing
    html = result._repr_html_()
    assert "PASS</strong> scratch and torch agree within tolerance at every one of 6 steps" in html
    assert "First divergence" not in html and "FAIL" not in html
    worst = result.worst()
    assert len(worst) == len(result.items) == 13
    for label, w in worst.items():  # every item, with its worst errors, passed
        cells = row(html, label)
        assert f">{fmt(w['max_abs'])}<" in cells and f">{fmt(w['max_rel'])}<" in cells
        assert ">pass</span>" in cells
    # the run described as its report describes it, one description: the result knows its
    # network, loss and training (issue 20: no more "network ?")
    for line in run_description(result.summary()):
        assert escape(line) in html, line
    assert "network: 3-5-1 (tanh, sigmoid), bias, 26 parameters" in html
    assert "training: float64, loss bce (mean), sgd, lr 0.5, 6 steps" in html


def test_html_of_a_failing_result(failing):
    result, _ = failing
    div = result.first_divergence
    html = result._repr_html_()
    assert "DIVERGED</strong> scratch and torch part at step 0: grad layers.0.weight" in html
    assert "First divergence" in html
    index = "[" + ", ".join(str(i) for i in div.index) + "]"
    for value in (index, fmt(div.scratch, ".17g"), fmt(div.torch, ".17g")):
        assert f'<td style="text-align:left">{value}</td>' in html, value
    assert "grad layers.0.weight (quantity grad, layer 0, param weight)" in html
    assert "finite differences agree with torch: the scratch gradient is wrong" in html
    assert "likely cause: derivative-at-z" in html and "tanh derivative" in html
    failed = [label for label, w in result.worst().items() if not w["passed"]]
    assert "grad layers.0.weight" in failed
    for label in failed:
        assert ">FAIL</span>" in row(html, label)
    assert html.count(">FAIL</span>") == len(failed)


def test_html_is_an_escaped_fragment(failing):
    result, _ = failing
    odd = copy.copy(result)
    odd.first_divergence = dataclasses.replace(
        result.first_divergence,
        diagnosis={"cause": "<b>bold</b>", "explanation": 'a < b & "c" > d <script>x</script>'},
    )
    html = odd._repr_html_()
    assert "<script>" not in html and "<b>bold" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "&quot;c&quot;" in html
    assert "likely cause: &lt;b&gt;bold&lt;/b&gt;" in html
    # no document, no stylesheet: a notebook's page keeps its own look
    for tag in ("<html", "<body", "<style", "<head"):
        assert tag not in html


def test_repr_is_one_short_line(passing, failing):
    ok, bad = repr(passing[0]), repr(failing[0])
    assert ok.startswith("LockstepResult(PASS: 6 steps, 13 items; largest relative error ")
    div = failing[0].first_divergence
    where = f"{div.label}[{', '.join(str(i) for i in div.index)}]"
    assert bad.startswith("LockstepResult(DIVERGED: ")
    assert f"first divergence at step 0, {where}: scratch " in bad
    assert bad.endswith("likely cause derivative-at-z)")
    for text in (ok, bad):
        assert "\n" not in text and len(text) < 200 and "array(" not in text


def test_figures_are_the_reports_own(passing, tmp_path):
    """figures() draws what report.html embeds: the same PNG bytes from the same record."""
    result, y = passing
    write_record(tmp_path, result, y=y)
    written = reports.render(tmp_path)[:-1]  # the PNGs, without report.html
    figs = result.figures(y=y)
    assert [p.name for p in written] == ["loss.png", "errors.png", "probs.png"]
    assert len(figs) == len(written)
    for fig, path in zip(figs, written):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=drawing.DPI, metadata={"Software": None})
        assert buf.getvalue() == path.read_bytes(), path.name
    # drawing for a notebook leaves the report alone: rendering again writes files
    (tmp_path / "loss.png").unlink()
    reports.render(tmp_path)
    assert (tmp_path / "loss.png").is_file()


def test_without_labels_the_probability_figure_is_left_out(failing):
    result, _ = failing
    titles = [fig.axes[0].get_title() for fig in result.figures()]
    assert titles[0] == "Training loss, scratch and torch" and len(titles) == 2


def test_figures_need_no_display():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from nn_parity import scratch
        from nn_parity.torch_ref import TorchMLP, lockstep
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        X, y = scratch.exam()
        net = scratch.MLP([2, 3, 1], ["tanh", "sigmoid"], rng=0)
        figs = lockstep(net, TorchMLP.from_scratch(net), X, y, steps=3).figures(y=y)
        assert len(figs) == 3, figs
        assert all(isinstance(f.canvas, FigureCanvasAgg) for f in figs)
        assert "matplotlib.pyplot" not in sys.modules  # no backend was chosen, none shown
        print(" | ".join(f.get_suptitle() or f.axes[0].get_title() for f in figs))
        """
    )
    # A backend that needs a display: were pyplot touched, this would fail without one.
    env = {"MPLBACKEND": "TkAgg", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "Training loss, scratch and torch | "
        "Gradient error per parameter, ||g_scratch - g_torch|| / ||g_torch|| | "
        "Output probabilities, scratch against torch"
    )


def test_figures_are_a_list_that_shows_itself(passing, tmp_path):
    """What code gets is a list of Figures; what a notebook gets is their PNGs inline."""
    from matplotlib.figure import Figure
    from nn_parity.reports.notebook import Figures

    result, y = passing
    figs = result.figures(y=y)
    assert isinstance(figs, list) and len(figs) == 3 and all(isinstance(f, Figure) for f in figs)
    assert [f.axes[0].get_title() for f in figs[:1]] == ["Training loss, scratch and torch"]
    figs[0].savefig(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    html = figs._repr_html_()
    assert html.count('<img src="data:image/png;base64,') == 3 and "could not be drawn" not in html
    assert 'alt="Training loss, scratch and torch"' in html
    # a figure that cannot be rendered is named in its place, and costs the others nothing
    figs[1].axes[0].set_title("$\\frac{$")
    odd = Figures(figs, failed=["boundary.png could not be drawn: ValueError: no grid"])
    html = odd._repr_html_()
    assert html.count("<img ") == 2
    assert "figure 1 could not be drawn: ValueError" in html
    assert "boundary.png could not be drawn: ValueError: no grid" in html
