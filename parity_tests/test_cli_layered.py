"""`nn-parity run --layers conv8x3,...`: a conv net on the digits images, in lockstep."""

from __future__ import annotations

import json

import pytest
from nn_parity.torch_ref.frontends.cli import main
from nn_parity.torch_ref.frontends.cli_layered import is_layer_spec

SPEC = "conv4x3,relu,pool2,flatten,affine10"


@pytest.mark.parametrize(
    "text, layered",
    [(SPEC, True), ("2,8,1", False), ("2,x,1", False), ("flatten,affine10", True), (None, False)],
)
def test_a_layer_spec_is_told_from_sizes(text, layered):
    assert is_layer_spec(text) == layered


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_conv_net_on_digits_passes_and_writes_its_record(tmp_path, capsys, dtype):
    out = tmp_path / "rep"
    code = main(["run", "--data", "digits", "--layers", SPEC, "--batch-size", "64", "--steps",
                 "4", "--dtype", dtype, "--out", str(out), "--no-figures", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True and summary["steps"] == 4
    assert {"out[0]", "out[4]", "grad layers.0.weight", "param layers.4.bias", "loss"} <= set(
        summary["quantities"]
    )


def test_a_bad_layer_exits_2_naming_it(capsys):
    code = main(["run", "--data", "digits", "--layers", "conv4x3,relu,affine10", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "layer 2 ('affine10') does not fit its input" in err, err


def test_the_readme_conv_snippet_runs_and_passes():
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## A conv net, checked in lockstep", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].passed, namespace["result"].first_divergence
    assert namespace["result"].steps == 20
