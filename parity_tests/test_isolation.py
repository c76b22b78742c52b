"""Dependencies point one way: scratch is NumPy only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_importing_scratch_does_not_import_torch():
    code = (
        "import sys\n"
        "from nn_parity import scratch\n"
        "import nn_parity.scratch.gradcheck, nn_parity.scratch.data\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib'))\n"
        "assert not bad, bad\n"
        "net = scratch.MLP([2, 3, 1], ['tanh', 'sigmoid'])\n"
        "net.forward(__import__('numpy').zeros((1, 2)))\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_learners_scratch_py_and_reports_py_do_not_shadow_nn_parity(tmp_path):
    # The most natural names for a learner's own files sit beside their script.
    for name in ("scratch", "reports", "torch_ref"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('{name}.py shadowed nn_parity')")
    code = (
        "from nn_parity import scratch, reports\n"
        "from nn_parity.torch_ref import TorchMLP, lockstep\n"
        "net = scratch.MLP([2, 3, 1], ['tanh', 'sigmoid'], rng=0)\n"
        "X, y = scratch.exam()\n"
        "print(lockstep(net, TorchMLP.from_scratch(net), X, y, steps=3).passed)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    cli = Path(sys.executable).with_name("nn-parity")
    proc = subprocess.run(
        [str(cli), "run", "--steps", "3", "--no-figures", "--quiet", "--out", "r"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r" / "summary.json").is_file()
