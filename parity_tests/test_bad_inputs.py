"""Runs every row of docs/bad-inputs.md: the table stays true because this test reads it."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from nn_parity import scratch
from nn_parity.scratch import weights as scratch_weights
from nn_parity.torch_ref import TorchMLP, adapt, adapt_layers, lockstep
from nn_parity.torch_ref.frontends.cli import main
from nn_parity.torch_ref.mirror.export import export
from nn_parity.torch_ref.mirror.weights import load_weights

DOC = Path(__file__).parents[1] / "docs" / "bad-inputs.md"
ROW = re.compile(r"^\| (\d+) \| (.+?) \| `(.+)` \| (.+) \|$")

CSV_FILES = {
    "empty.csv": b"",
    "header.csv": b"hours,gpa,passed\n",
    "ragged.csv": b"hours,gpa,passed\n4,3.5,1\n1,2\n",
    "text.csv": b"hours,gpa,passed\n4,high,1\n1,2.0,0\n",
    "nan.csv": b"hours,gpa,passed\n4,3.5,1\nnan,2.0,0\n",
    "labels.csv": b"hours,gpa,passed\n4,3.5,1\n1,2.0,3\n",
    "one.csv": b"passed\n1\n0\n",
    "binary.csv": b"\xff\xfe\x00\x01hours",
    "students.csv": b"hours,gpa,passed\n4,3.5,1\n1,2.0,0\n3,3.0,1\n0.5,1.5,0\n",
}


class Payload:
    """Unpickling this runs os.system: a loader that executes it creates the marker file."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def broken(value: float) -> scratch.MLP:
    """The table's `net` with one starting weight set to `value` (Inf, NaN)."""
    net = scratch.MLP([2, 3, 1], ["tanh", "sigmoid"], rng=0)
    net.layers[0].weight[0, 1] = value
    return net


def rows() -> list:
    out = []
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            n, case, call, message = m.groups()
            out.append(pytest.param(call, message.strip(), id=f"{n}-{case}"))
    return out


@pytest.fixture
def files(tmp_path):
    for name, content in CSV_FILES.items():
        (tmp_path / name).write_bytes(content)
    Payload.marker = str(tmp_path / "pwned")
    np.savez(tmp_path / "evil.npz", w=np.array([Payload()], dtype=object))
    torch.save({"layers.0.weight": Payload()}, tmp_path / "evil.pt")
    scratch_weights.save_npz(scratch.MLP([2, 3, 1], ["tanh", "sigmoid"]), tmp_path / "w231.npz")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("an earlier report\n")
    _data_weights_and_sizes(tmp_path)
    _destinations_and_records(tmp_path)
    return tmp_path


def _data_weights_and_sizes(tmp_path) -> None:
    """The files of the section "Data, weights and sizes"."""
    with open(tmp_path / "huge.csv", "wb") as f:
        f.truncate(65 * 2**20)  # sparse: 65 MiB by its size, nothing written
    _npz_bomb(tmp_path / "bomb.npz")
    state = scratch.MLP([2, 3, 1], ["tanh", "sigmoid"], rng=0).state_dict()
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    torch.save({"state_dict": tensors, "epoch": 3}, tmp_path / "ckpt.npz")
    seq = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    torch.save(seq.double().state_dict(), tmp_path / "seq.pt")  # carries _metadata
    nan = {**state, "layers.0.weight": state["layers.0.weight"].copy()}
    nan["layers.0.weight"][1, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **nan)
    torch.save({**tensors, "layers.1.bias": torch.tensor([np.inf])}, tmp_path / "inf.pt")
    (tmp_path / "argv_model.py").write_text(
        "import argparse\n"
        "argparse.ArgumentParser().parse_args()  # at import, as scripts do\n"
        "from nn_parity import scratch\n\n"
        "def make():\n"
        "    return scratch.MLP([3, 4, 1], ['tanh', 'sigmoid'])\n"
    )


def _npz_bomb(path) -> None:
    """An .npz whose one member declares a 100000 x 100000 float64 array (80 GB) in its .npy
    header, followed by 1 MB of zeros: small on disk and in this test's memory."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (100_000, 100_000)}
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("layers.0.weight.npy", "w") as f:
            f.write(header.getvalue())
            f.write(bytes(2**20))


RECORD = '{"passed": true, "steps": 1, "quantities": {}'  # the least a record holds, no "}"
TAMPERED = {  # folder -> summary.json
    "typed": '{"passed": true, "steps": "3", "quantities": {}}',
    "keyless": '{"steps": 1, "quantities": {}}',
    "nested": RECORD + ', "checked": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "nulled": '{"passed": null, "steps": 1, "quantities": {}}',
    "shaped": RECORD + "}",
    "infinite": RECORD + "}",
    "linked": RECORD + "}",
}


def _destinations_and_records(tmp_path):
    """A link, tampered records, an export nn-parity wrote and one it did not (see the doc)."""
    (tmp_path / "link").symlink_to(tmp_path / "full")
    for name, summary in TAMPERED.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(summary)
    np.savez(tmp_path / "shaped" / "record.npz", y=np.zeros((2, 2)))
    (tmp_path / "infinite" / "metrics.csv").write_text("step,loss_scratch\ninf,inf\ninf,inf\n")
    (tmp_path / "linked" / "secret.txt").symlink_to(tmp_path / "students.csv")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "net.py").write_text("# the user's own network\n")
    export(scratch.MLP([2, 3, 1], ["tanh", "sigmoid"], rng=0), tmp_path / "ours")


def test_the_table_has_at_least_30_cases():
    assert len(rows()) >= 30


@pytest.mark.parametrize("call,message", rows())
def test_bad_input_gets_a_clear_message(call, message, files, capsys, monkeypatch):
    call = re.sub(r"\{([\w.]+)\}", lambda m: str(files / m.group(1)), call)
    monkeypatch.chdir(files)
    if call.startswith("nn-parity"):
        code = main(shlex.split(call)[1:] + ["--quiet"] * ("run" in call))
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert message in err, err
    else:
        net = scratch.MLP([2, 3, 1], ["tanh", "sigmoid"], rng=0)
        rng = np.random.default_rng(1)
        P = {"W1": rng.normal(size=(2, 3)), "b1": np.zeros(3),
             "W2": rng.normal(size=(3, 1)), "b2": np.zeros(1)}  # fmt: skip
        before = {k: v.copy() for k, v in P.items()}
        env = {
            "np": np, "torch": torch, "scratch": scratch, "lockstep": lockstep,
            "TorchMLP": TorchMLP, "load_weights": load_weights, "net": net,
            "ref": TorchMLP.from_scratch(net), "X": np.random.default_rng(0).normal(size=(8, 2)),
            "y": np.array([0.0, 1.0] * 4), "adapt": adapt, "P": P,
            "G": lambda X, y: {k: np.full_like(v, 0.1) for k, v in P.items()},
            "net3": scratch.MLP([2, 4, 3], ["tanh", "identity"], rng=0), "export": export,
            "net_inf": broken(np.inf), "net_nan": broken(np.nan),
            "adapt_layers": adapt_layers,
        }  # fmt: skip
        X_given = env["X"].copy()
        with pytest.raises((ValueError, TypeError)) as err:
            eval(call, env)
        assert message in str(err.value)
        assert all(np.array_equal(P[k], before[k]) for k in P), "a refused call changed P"
        assert np.array_equal(env["X"], X_given), "a refused call changed X"
    assert not (files / "pwned").exists(), "a pickled payload ran"
