"""Reliability: reproducible runs, blow-ups reported cleanly, reports never lost, and no input
that the loaders or the lockstep meet raises anything but the documented errors."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nn_parity import scratch
from nn_parity.torch_ref import TorchMLP, lockstep
from nn_parity.torch_ref.frontends.cli import main
from nn_parity.torch_ref.frontends.datasets import load_csv

XOR = ["--data", "xor", "--layers", "2,6,1", "--steps", "40", "--quiet", "--no-figures"]


def run(tmp_path, name, *args):
    out = tmp_path / name
    code = main(["run", "--out", str(out), *args])
    return code, out


def summary_without_time(out) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("created")
    return summary


def test_same_options_and_seed_give_byte_identical_records(tmp_path):
    _, a = run(tmp_path, "a", *XOR, "--seed", "7")
    _, b = run(tmp_path, "b", *XOR, "--seed", "7")
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    assert (a / "record.npz").read_bytes() == (b / "record.npz").read_bytes()
    text_a = (a / "summary.json").read_text().splitlines()
    text_b = (b / "summary.json").read_text().splitlines()
    differ = [x for x, y in zip(text_a, text_b) if x != y]
    assert len(text_a) == len(text_b) and all('"created"' in line for line in differ)


def test_different_seeds_give_different_runs(tmp_path):
    _, a = run(tmp_path, "a", *XOR, "--seed", "7")
    _, c = run(tmp_path, "c", *XOR, "--seed", "8")
    assert (a / "metrics.csv").read_bytes() != (c / "metrics.csv").read_bytes()
    assert summary_without_time(a)["loss_first"] != summary_without_time(c)["loss_first"]


def test_a_blow_up_is_reported_where_it_starts_and_the_report_is_written(tmp_path, capsys):
    args = ["--data", "xor", "--layers", "2,8,8,1", "--activation", "identity"]
    args += ["--loss", "bce-logits", "--lr", "1e100", "--steps", "30"]
    code, out = run(tmp_path, "blow", *args)
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    div = summary["first_divergence"]
    assert div["nonfinite"] == "both" and div["quantity"] == "z"
    assert summary["steps"] == div["step"] + 1 < 30  # stopped at the step it appeared
    assert summary["diagnosis"]["cause"] == "non-finite"
    assert (out / "report.html").exists() and (out / "loss.png").exists()
    assert "blew up" in capsys.readouterr().out


def test_ctrl_c_keeps_the_previous_report_and_leaves_no_partial_one(tmp_path, monkeypatch):
    code, out = run(tmp_path, "r", "--steps", "5", "--quiet", "--no-figures")
    assert code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import nn_parity.torch_ref.engine.loop as engine

    def interrupted(*args, **kwargs):
        kwargs["progress"](0)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "lockstep", interrupted)
    code, _ = run(tmp_path, "r", "--steps", "5", "--quiet", "--overwrite", "--no-figures")
    assert code == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no .partial folder left


# --- fuzzing: only the documented errors ------------------------------------------------------


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=400)
    | st.text(alphabet="0123456789.,-e\nabnfiNA ;\"'\t", max_size=200).map(str.encode)
)
def test_csv_loader_raises_only_value_error(tmp_path, data):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    try:
        ds = load_csv(path)
    except ValueError as err:
        assert str(err)  # a message, never an empty error
    else:
        assert ds.X.ndim == 2 and len(ds.X) == len(ds.y) and np.isfinite(ds.X).all()
        assert set(np.unique(ds.y)) <= {0.0, 1.0}


def arrays_N_D():
    """Arrays of any float, int or bool dtype and of 0 to 3 dimensions, with NaN and inf."""
    dtypes = st.sampled_from([np.float64, np.float32, np.int64, np.bool_, np.float16])
    return hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6))


@settings(max_examples=150, deadline=None)
@given(X=arrays_N_D(), y=arrays_N_D(), lr=st.floats(allow_nan=True, allow_infinity=True))
def test_lockstep_raises_only_documented_errors(X, y, lr):
    net = scratch.MLP([2, 3, 1], ["tanh", "sigmoid"], rng=0)
    try:
        result = lockstep(net, TorchMLP.from_scratch(net), X, y, steps=2, lr=lr)
    except (ValueError, TypeError) as err:
        assert str(err)
    else:
        assert result.steps >= 1


# --- destinations, signals, full disks, strict JSON ----------------------------------------


def test_sigterm_while_the_report_is_written_leaves_no_partial_folder(tmp_path):
    import subprocess
    import sys

    script = (
        "import os, signal, sys, time\n"
        "from nn_parity import reports\n"
        "from nn_parity.torch_ref.frontends.cli import main\n"
        "def render(folder):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "reports.render = render\n"
        f"sys.exit(main(['run', '--steps', '3', '--quiet', '--out', {str(tmp_path / 'r')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 143, done.stderr
    assert done.stderr.count("\n") == 1 and "terminated; no report written" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no hidden .r.partial-* folder


def test_export_on_a_full_disk_leaves_nothing_and_a_retry_works(tmp_path, capsys, monkeypatch):
    import errno

    import nn_parity.torch_ref.mirror.export as export_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    args = ["--steps", "3", "--quiet", "--no-figures", "--export", str(tmp_path / "e")]
    with monkeypatch.context() as m:
        m.setattr(export_module, "save_pt", full)
        code, _ = run(tmp_path, "r1", *args)
    assert code == 2
    assert "--export: cannot write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]  # no folder, half or hidden
    code, _ = run(tmp_path, "r2", *args)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "net.pt", "net.py", "net_expected.npz", "test_net.py"]  # fmt: skip


def test_export_of_a_diverged_run_says_it_was_skipped(tmp_path, capsys):
    args = ["--data", "xor", "--layers", "2,8,8,1", "--activation", "identity", "--quiet"]
    args += ["--loss", "bce-logits", "--lr", "1e100", "--steps", "30", "--no-figures"]
    code, _ = run(tmp_path, "blow", *args, "--export", str(tmp_path / "e"))
    assert code == 1
    assert "--export skipped: scratch and torch diverged" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_summary_json_is_strict_and_nulls_read_back_as_nan(tmp_path):
    from nn_parity.reports import load_record

    args = ["--data", "xor", "--layers", "2,8,8,1", "--activation", "identity", "--quiet"]
    args += ["--loss", "bce-logits", "--lr", "1e100", "--steps", "30", "--no-figures"]
    _, out = run(tmp_path, "blow", *args)
    text = (out / "summary.json").read_text()

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    strict = json.loads(text, parse_constant=refuse)
    assert strict["format"] == "nn-parity-record/2"
    nulls = [k for k, q in strict["quantities"].items() if q["max_abs"] is None]
    assert nulls  # the blow-up's errors: null on disk...
    summary = load_record(out).summary
    assert all(np.isnan(summary["quantities"][k]["max_abs"]) for k in nulls)  # ...NaN in memory
    # a record written before format 2, NaN and Infinity in it, still reads
    strict.pop("format")
    strict["loss_last"] = {"scratch": float("nan"), "torch": float("inf")}
    (out / "summary.json").write_text(json.dumps(strict))
    assert "NaN" in (out / "summary.json").read_text()
    old = load_record(out).summary
    assert np.isnan(old["loss_last"]["scratch"]) and old["loss_last"]["torch"] == np.inf
