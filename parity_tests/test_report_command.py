"""`nn-parity report RECORD_DIR`: the figures and report.html of a saved record."""

from __future__ import annotations

import json
import re

import pytest
from nn_parity.scratch.activations import Tanh
from nn_parity.torch_ref.frontends.cli import main

RUN = ["--data", "moons", "--layers", "2,6,1", "--steps", "12", "--seed", "3", "--quiet"]
RECORD = {"summary.json", "metrics.csv", "record.npz"}
DRAWN = {"loss.png", "errors.png", "probs.png", "gradient_descent.png", "boundary.png"}


def normalised(html: str) -> str:
    """report.html without what may differ between two runs: PNG data and the time."""
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,...", html)
    return re.sub(r"Run finished [^<]+\.", "Run finished ....", html)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run that drew its figures, and the same run recorded with --no-figures."""
    base = tmp_path_factory.mktemp("runs")
    drawn, bare = base / "drawn", base / "bare"
    assert main(["run", *RUN, "--out", str(drawn)]) == 0
    assert main(["run", *RUN, "--out", str(bare), "--no-figures"]) == 0
    return drawn, bare


def test_a_no_figures_record_is_only_the_record(runs):
    _, bare = runs
    assert {p.name for p in bare.iterdir()} == RECORD


def test_report_draws_what_a_run_with_figures_draws(runs, tmp_path, capsys):
    drawn, bare = runs
    out = tmp_path / "look"
    assert main(["report", str(bare), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}"
    names = {p.name for p in drawn.iterdir()}
    assert names == RECORD | DRAWN | {"report.html"}
    assert {p.name for p in out.iterdir()} == names
    assert {p.name for p in bare.iterdir()} == RECORD  # --out leaves the record as it was
    for name in sorted(DRAWN):  # PNGs have no time stamp: the same record, the same bytes
        assert (out / name).read_bytes() == (drawn / name).read_bytes(), name
    page, expected = (out / "report.html").read_text(), (drawn / "report.html").read_text()
    assert page != expected  # the creation times differ...
    assert normalised(page) == normalised(expected)  # ...and nothing else
    assert page.count("data:image/png;base64,") == len(DRAWN)


def test_report_in_place_adds_the_figures_and_keeps_other_files(runs, tmp_path):
    _, bare = runs
    folder = tmp_path / "record"
    folder.mkdir()
    for name in RECORD:
        (folder / name).write_bytes((bare / name).read_bytes())
    (folder / "notes.txt").write_text("mine")
    assert main(["report", str(folder)]) == 0
    assert {p.name for p in folder.iterdir()} == RECORD | DRAWN | {"report.html", "notes.txt"}
    assert (folder / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["record"]  # no temporary folder left


def test_a_diverged_record_is_drawn_with_its_divergence(tmp_path, monkeypatch):
    record = tmp_path / "diverged"
    # tanh's derivative taken as 1 - z^2 instead of 1 - a^2, for this run only
    with monkeypatch.context() as m:
        m.setattr(Tanh, "backward", lambda self, da, z, a: da * (1 - z * z))
        code = main(["run", *RUN, "--out", str(record), "--no-figures"])
    assert code == 1
    assert main(["report", str(record)]) == 0
    summary = json.loads((record / "summary.json").read_text())
    page = (record / "report.html").read_text()
    assert "DIVERGED" in page and "First divergence" in page
    assert summary["first_divergence"]["label"] == "grad layers.0.weight"
    assert "scratch and torch part at step 0: grad layers.0.weight" in page


def bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "summary.json").write_text("[1, 2]")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    return {
        "missing": ([str(tmp_path / "nope")], "does not exist"),
        "a-file": ([str(a_file)], "is not a folder"),
        "not-a-record": ([str(empty)], "is not a run record: it has no summary.json"),
        "bad-json": ([str(broken)], "cannot read the record in"),
        "not-an-object": ([str(listed)], "does not hold a JSON object"),
        "out-not-empty": ([str(listed), "--out", str(tmp_path)], "nn-parity did not write it"),
        "no-argument": ([], "the following arguments are required: RECORD_DIR"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "a-file", "not-a-record", "bad-json", "not-an-object", "out-not-empty",
     "no-argument"],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    args, message = bad_inputs(tmp_path)[case]
    if case == "out-not-empty":  # a real record, so the --out check is what refuses it
        (tmp_path / "listed" / "summary.json").write_text("{}")
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nn-parity: error: "), err
    assert message in err


def test_report_dot_inside_a_record_is_refused_and_the_record_kept(runs, tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    _, bare = runs
    folder = tmp_path / "record"
    folder.mkdir()
    for name in RECORD:
        (folder / name).write_bytes((bare / name).read_bytes())
    monkeypatch.chdir(folder)
    assert main(["report", "."]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'.' cannot be drawn in place" in err
    assert {p.name for p in folder.iterdir()} == RECORD
    assert [p.name for p in tmp_path.iterdir()] == ["record"]


@pytest.mark.parametrize("value", [[[1]], "x", {"a": {"b": 1}}, -1.5, True])
def test_every_summary_field_of_a_wrong_type_is_one_line(runs, tmp_path, capsys, value):
    """Each field of a real record, tampered: refused in one line naming it, or drawn."""
    _, bare = runs
    summary = json.loads((bare / "summary.json").read_text())
    folder = tmp_path / "r"
    folder.mkdir()
    for name in RECORD - {"summary.json"}:
        (folder / name).write_bytes((bare / name).read_bytes())
    for key in summary:
        if key in ("checked", "diagnosis"):  # free-form: any JSON is drawn as text
            continue
        (folder / "summary.json").write_text(json.dumps({**summary, key: value}))
        code = main(["report", str(folder), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        if code == 0:  # a value of the right type after all (e.g. a string for `dtype`)
            import shutil

            shutil.rmtree(tmp_path / "out")
            continue
        assert code == 2 and err.count("\n") == 1 and f"field '{key}" in err, (key, err)
