"""Dependencies point one way: scratch is NumPy only."""

from __future__ import annotations

import subprocess
import sys


def test_importing_scratch_does_not_import_torch():
    code = (
        "import sys, scratch, scratch.gradcheck, scratch.data\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib'))\n"
        "assert not bad, bad\n"
        "net = scratch.MLP([2, 3, 1], ['tanh', 'sigmoid'])\n"
        "net.forward(__import__('numpy').zeros((1, 2)))\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
