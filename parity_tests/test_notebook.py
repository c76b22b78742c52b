"""docs/notebook.ipynb, executed in a real Jupyter kernel: what a reader sees is the verdicts as
HTML and the figures as inline PNG images, not `[<Figure size 900x640 with 2 Axes>, ...]`."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebook.ipynb"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The verdict each run of the notebook shows, by a line of the cell that runs it.
VERDICTS = {
    "result = lockstep(": ">PASS</strong>",
    "bad = check(": ">DIVERGED</strong>",
    "check_op(ops.": "op check passed",
}
# The figures each figures cell shows: loss, errors and probabilities; a network given by its
# gradients alone (no forward) has no probabilities to draw.
FIGURES = {"result.figures(": 3, "bad.figures(": 2}


def execute(nb, folder: Path, monkeypatch: pytest.MonkeyPatch):
    """Run `nb` in a kernel of this very interpreter (the venv's), headless, in `folder`."""
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    # A `python3` kernelspec for sys.executable, found first (JUPYTER_PATH leads the search):
    # a user's or the system's own python3 kernel would run another interpreter.
    write_kernel_spec(str(folder / "kernels" / "python3"))
    monkeypatch.setenv("JUPYTER_PATH", str(folder))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel's matplotlib: no display, no inline hook
    client = NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(folder)}}
    )
    return client.execute()


def cell_with(nb, text: str):
    """The one code cell with a line that starts with `text`."""
    (cell,) = [
        c for c in nb.cells
        if c.cell_type == "code" and any(line.startswith(text) for line in c.source.splitlines())
    ]  # fmt: skip
    return cell


def assert_verdict(cell, expected: str) -> None:
    """The cell's result is shown as nn-parity's HTML, with its verdict."""
    html = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    assert html, f"no text/html output from {cell.source!r}: {cell.outputs}"
    assert expected in html[0], html[0][:300]


def assert_inline_figures(cell, count: int) -> None:
    """The cell's figures are shown as `count` PNG images, one output each."""
    pngs = [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == count, (
        f"{len(pngs)} image/png outputs from {cell.source!r}, "
        f"expected {count}: {[sorted(o.get('data', o)) for o in cell.outputs]}"
    )
    for data in pngs:
        assert base64.b64decode(data).startswith(PNG_SIGNATURE)
    assert not [o for o in cell.outputs if o["output_type"] == "error"], cell.outputs


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    with pytest.MonkeyPatch.context() as mp:
        return execute(nb, tmp_path_factory.mktemp("notebook"), mp)


def test_the_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source


def test_the_notebook_shows_verdicts_and_figures(executed):
    assert executed.cells[-1].outputs[0]["text"].strip() == sys.executable  # the venv's kernel
    for starts, verdict in VERDICTS.items():
        assert_verdict(cell_with(executed, starts), verdict)
    for starts, count in FIGURES.items():
        assert_inline_figures(cell_with(executed, starts), count)
    streams = [o for c in executed.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not streams, streams  # no warning, no traceback shown to the reader


def test_the_check_fails_when_figures_do_not_display(tmp_path, monkeypatch):
    """Without the container's display methods (the state before issue 20), a figures cell
    shows text, and the check above says so."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    figures = cell_with(nb, "result.figures(")
    nb.cells = nb.cells[: nb.cells.index(figures) + 1]
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        "from nn_parity.reports.notebook import Figures\n"
        "del Figures._ipython_display_, Figures._repr_html_"
    ))  # fmt: skip
    execute(nb, tmp_path, monkeypatch)
    cell = cell_with(nb, "result.figures(")
    assert "[<Figure size" in cell.outputs[0]["data"]["text/plain"]
    with pytest.raises(AssertionError, match="0 image/png outputs"):
        assert_inline_figures(cell, 3)
