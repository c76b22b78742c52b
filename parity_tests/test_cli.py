"""The `nn-parity run` command: files, exit codes, the verdict, and the first divergence."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nn_parity.scratch.activations import Tanh
from nn_parity.torch_ref.frontends.cli import main

SUMMARY_KEYS = {
    "format", "passed", "steps", "steps_requested", "dtype", "architecture", "data", "loss",
    "reduction", "lr", "seed", "tolerances", "quantities", "first_divergence", "kink_steps",
    "loss_first", "loss_last", "gradient_slice", "versions", "created", "diagnosis", "drift_steps",
    "fault",
    "saturation_steps", "optimizer", "batches", "checked", "not_compared",
}  # fmt: skip


def documented_summary_keys() -> set[str]:
    doc = (Path(__file__).parents[1] / "docs" / "record.md").read_text()
    section = doc.split("## summary.json")[1].split("##")[0]
    return {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}


def run_cli(tmp_path, *args):
    out = tmp_path / "report"
    code = main(["run", "--out", str(out), "--quiet", *args])
    return code, out


def test_summary_keys_are_the_documented_ones():
    assert documented_summary_keys() == SUMMARY_KEYS


def test_default_run_writes_the_whole_report(tmp_path):
    code, out = run_cli(tmp_path)
    assert code == 0
    names = {p.name for p in out.iterdir()}
    figures = {"loss.png", "errors.png", "probs.png", "gradient_descent.png", "boundary.png"}
    assert {"summary.json", "metrics.csv", "record.npz", "report.html"} | figures <= names
    for name in figures:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        import matplotlib.image as mpimg

        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200, name

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["passed"] is True and summary["first_divergence"] is None
    assert summary["architecture"]["sizes"] == [2, 3, 1]
    assert summary["architecture"]["init"] == "article"
    assert summary["data"]["name"] == "exam" and summary["data"]["samples"] == 4
    assert summary["data"]["feature_names"] == ["hours of study", "GPA"]
    assert set(summary["tolerances"]) == {
        "z",
        "a",
        "out",
        "stat",
        "prob",
        "loss",
        "grad",
        "param",
        "state",
    }
    assert summary["checked"]["side"] == "nn-parity's built-in network"
    assert summary["not_compared"] == []
    assert summary["loss_last"]["scratch"] < summary["loss_first"]["scratch"]
    # the article's first forward: the loss at step 0 over four students
    assert summary["loss_first"]["scratch"] == pytest.approx(1.360377821314429, rel=1e-12)

    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["steps"] == 100
    assert [int(r["step"]) for r in rows] == list(range(100))
    for label in summary["quantities"]:
        assert f"{label}:max_abs" in rows[0] and f"{label}:rel_err" in rows[0]
    record = np.load(out / "record.npz")
    assert record["probs_last_scratch"].shape == (4,) and record["grid_x"].ndim == 1


def test_a_wrong_backward_gives_exit_1_and_the_right_first_divergence(tmp_path, monkeypatch):
    # tanh's derivative taken as 1 - z^2 instead of 1 - a^2: a classic hand-derivation slip
    monkeypatch.setattr(Tanh, "backward", lambda self, da, z, a: da * (1 - z * z))
    code, out = run_cli(
        tmp_path, "--data", "xor", "--layers", "2,4,1", "--activation", "tanh", "--steps", "20"
    )
    assert code == 1
    div = json.loads((out / "summary.json").read_text())["first_divergence"]
    assert (div["step"], div["quantity"], div["layer"]) == (0, "grad", 0)
    assert div["fd_agrees_with"] == "torch"
    html = (out / "report.html").read_text()
    assert "DIVERGED" in html


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_breast_cancer_30_16_1_passes_500_steps(tmp_path, dtype):
    code, out = run_cli(
        tmp_path,
        "--data",
        "breast-cancer",
        "--layers",
        "30,16,1",
        "--steps",
        "500",
        "--dtype",
        dtype,
        "--no-figures",  # what is checked here is the record
    )
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0, summary["first_divergence"]
    assert summary["data"]["samples"] == 569 and summary["data"]["features"] == 30
    assert summary["loss_last"]["torch"] < 0.5 * summary["loss_first"]["torch"]


def test_existing_out_is_refused_and_default_out_goes_beside(tmp_path, monkeypatch, capsys):
    code, out = run_cli(tmp_path, "--no-figures")
    assert code == 0
    before = (out / "summary.json").read_bytes()
    code, _ = run_cli(tmp_path, "--no-figures")
    assert code == 2
    err = capsys.readouterr().err
    assert "holds an earlier report; choose another folder or pass --overwrite" in err
    assert (out / "summary.json").read_bytes() == before
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quiet", "--no-figures"]) == 0
    assert main(["run", "--quiet", "--no-figures"]) == 0
    assert "written beside it" in capsys.readouterr().out
    assert (tmp_path / "nn-parity-report" / "summary.json").exists()
    assert (tmp_path / "nn-parity-report-2" / "summary.json").exists()


def test_no_figures_writes_the_record_only(tmp_path):
    code, out = run_cli(tmp_path, "--no-figures")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "record.npz", "summary.json"]


def test_interrupted_run_leaves_no_partial_report(tmp_path, monkeypatch, capsys):
    import nn_parity.torch_ref.engine.loop as engine

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "lockstep", interrupt)
    code, out = run_cli(tmp_path)
    assert code == 130 and not out.exists()
    assert list(tmp_path.iterdir()) == []
    assert "no report written" in capsys.readouterr().err


def test_console_entry_point_runs_as_a_module(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch_ref",
            "run",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
            "--no-figures",  # what is checked here is the exit code and the verdict line
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PASS: 3 steps")


def test_a_link_or_a_file_as_out_is_refused_and_left_untouched(tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    link, a_file = tmp_path / "link", tmp_path / "file.txt"
    link.symlink_to(target)
    a_file.write_text("mine")
    for out in (link, a_file):
        code = main(["run", "--steps", "2", "--quiet", "--overwrite", "--out", str(out)])
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(out) in err and "never replaces" in err
    assert link.is_symlink() and link.resolve() == target
    assert a_file.read_text() == "mine" and (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "link", "mine"]


def test_overwrite_replaces_only_a_report_nn_parity_wrote(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--steps", "2", "--quiet", "--no-figures", "--out", str(out)]) == 0
    assert main(["run", "--steps", "3", "--quiet", "--no-figures", "--out", str(out),
                 "--overwrite"]) == 0  # fmt: skip
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    (out / "summary.json").write_text('{"mine": 1}')  # no longer a record nn-parity wrote
    code = main(["run", "--steps", "2", "--quiet", "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "refused, even with --overwrite" in err and "pass --overwrite" not in err
    assert (out / "summary.json").read_text() == '{"mine": 1}'


def test_destination_is_checked_before_the_run(tmp_path, capsys, monkeypatch):
    import nn_parity.torch_ref.engine.loop as engine

    def never(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(engine, "lockstep", never)
    code = main(["run", "--quiet", "--out", str(tmp_path / ("a" * 245))])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "the name is 245 bytes; at most 237 fit" in err
