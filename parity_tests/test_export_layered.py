"""`export` and `--export` for a network of gallery layers: an nn.Sequential of torch's own
modules, the trained weights and running statistics loaded.

The exported module, imported fresh, must compute in evaluation mode exactly what the lockstep's
torch mirror computes at the scratch weights (bit for bit, float64, on the digits images), and
what the scratch network computes within the lockstep's tolerances. Scratch and torch sum in
different orders (im2col against torch's convolution, x W^T + b against addmm), so bit for bit
holds against the mirror, the torch side the lockstep compared, not against NumPy. Each broken
export below (a transposed kernel, a wrong padding, a missing running statistic, a wrong eps)
is shown failing the same check.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from nn_parity.scratch.sequential import from_spec
from nn_parity.torch_ref import tolerance
from nn_parity.torch_ref.frontends.cli import main
from nn_parity.torch_ref.frontends.datasets import load_dataset
from nn_parity.torch_ref.mirror.export import Exported, export
from nn_parity.torch_ref.mirror.sequential import TorchSequential

SPECS = {
    "conv": "conv8x3,relu,pool2,flatten,affine10",  # the net
    "conv_bn_pad": "conv4x3p1,bn,relu,pool2,flatten,dropout0.2,affine16,ln,tanh,affine10",
    "mlp_bn_dropout": "flatten,affine32,bn,relu,dropout0.3,affine10",
    "strided": "conv6x3s2p1,leaky_relu:0.1,flatten,affine10",
    "log_softmax": "flatten,affine16,sigmoid,affine10,log_softmax",
}
_fresh = itertools.count()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0).X.reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8) float64


def trained(spec: str, dtype="float64"):
    """A network from `spec` at trained-looking values: weights moved off their draw, running
    statistics away from 0 and 1 (so a missing one changes the output)."""
    net = from_spec(spec, (1, 8, 8), dtype=dtype, rng=3)
    rng = np.random.default_rng(1)
    for v in net.params.values():
        v += rng.normal(0, 0.2, v.shape).astype(v.dtype)
    for k, v in net.buffers.items():
        v += rng.uniform(0.1, 0.5, v.shape).astype(v.dtype) * (1 if "var" in k else -1)
    return net


def load_fresh(paths, *, state_edit=None, source_edit=None, strict=True):
    """The exported Net, imported from its file under a new module name, its weights loaded,
    in evaluation mode; `state_edit`/`source_edit` break the export first."""
    source = paths.module.read_text()
    if source_edit is not None:
        old, new = source_edit
        assert old in source, f"the edit's anchor {old!r} is not in the exported module"
        paths.module.write_text(source.replace(old, new))
    spec = importlib.util.spec_from_file_location(f"exported_{next(_fresh)}", paths.module)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Net()
    state = torch.load(paths.weights, weights_only=True)
    if state_edit is not None:
        state_edit(state)
    model.load_state_dict(state, strict=strict)
    return model.eval()


def check_reproduces(model, net, X):
    """The exported module's eval output: the mirror's bit for bit, scratch's within tolerance."""
    out = model(torch.from_numpy(X)).detach().numpy()
    mirror = TorchSequential(net).eval()
    want = mirror(torch.from_numpy(X)).detach().numpy()
    bad = np.flatnonzero(out.ravel() != want.ravel())
    assert bad.size == 0, (
        f"{bad.size} of {out.size} outputs differ from the mirror's, first at {bad[0]}: "
        f"{out.ravel()[bad[0]]!r} != {want.ravel()[bad[0]]!r}"
    )
    scratch_out, _ = net.eval().forward(X)
    net.train()
    tol = tolerance("out", net.dtype)
    np.testing.assert_allclose(out, scratch_out, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("name", list(SPECS))
def test_the_exported_module_reproduces_the_network_in_eval_mode(name, digits, tmp_path):
    net = trained(SPECS[name])
    paths = export(net, tmp_path)
    model = load_fresh(paths)
    state = model.state_dict()
    for k, v in {**net.params, **net.buffers}.items():  # every value as trained, bit for bit
        assert np.array_equal(state[k].numpy(), v), k
    kinds = {type(m).__name__ for m in model}
    assert "GivenMask" not in kinds and "_BatchNormAnyRank" not in kinds
    check_reproduces(model, net, digits)


def test_the_exported_module_warns_of_nothing(tmp_path):
    """A softmax module without its dim warns on every call (torch's implicit-dimension
    deprecation), and the generated test runs with warnings as errors."""
    import warnings

    model = load_fresh(export(trained(SPECS["log_softmax"]), tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.zeros((2, 1, 8, 8), dtype=torch.float64))


def test_a_float32_export_reproduces_the_mirror(digits, tmp_path):
    net = trained(SPECS["conv_bn_pad"], "float32")
    check_reproduces(load_fresh(export(net, tmp_path)), net, digits.astype(np.float32))


def _transpose_kernel(state):
    state["0.weight"] = state["0.weight"].transpose(-1, -2).contiguous()


def _drop_running_var(state):
    del state["1.running_var"]


# how an export goes wrong, each as the module file or the state dict would carry it
BROKEN = {
    "transposed-kernel": dict(spec="conv", state_edit=_transpose_kernel),
    "zero-padding-as-replicate": dict(
        spec="conv_bn_pad", source_edit=("padding=1,", "padding=1, padding_mode='replicate',")
    ),
    "no-padding": dict(spec="strided", source_edit=("padding=1,", "padding=0,")),
    "missing-running-var": dict(spec="conv_bn_pad", state_edit=_drop_running_var, strict=False),
    "batchnorm-eps": dict(spec="mlp_bn_dropout", source_edit=("eps=1e-05, mom", "eps=0.001, mom")),
    "no-running-stats": dict(
        spec="mlp_bn_dropout",
        source_edit=("momentum=0.1,", "momentum=0.1, track_running_stats=False,"),
        strict=False,
    ),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_export_fails_the_check(name, digits, tmp_path):
    case = dict(BROKEN[name])
    net = trained(SPECS[case.pop("spec")])
    model = load_fresh(export(net, tmp_path), **case)
    with pytest.raises((AssertionError, RuntimeError)):
        check_reproduces(model, net, digits)


def test_the_generated_test_passes_alone_and_fails_on_a_broken_export(tmp_path):
    net = trained(SPECS["conv_bn_pad"])
    export(net, tmp_path, "good")
    bad = export(net, tmp_path, "bad")
    bad.module.write_text(
        bad.module.read_text().replace("padding=1,", "padding=1, padding_mode='reflect',")
    )
    runner = (
        "import sys; sys.modules['nn_parity'] = None; import pytest; "
        "raise SystemExit(pytest.main(['-rA', '-p', 'no:cacheprovider', '-W', 'error']))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    lines = proc.stdout.splitlines()
    for test in ("test_parameters_keep_the_numpy_names", "test_output", "test_loss_and_gradients"):
        assert any(line.startswith(f"PASSED test_good.py::{test}") for line in lines), proc.stdout
    for test in ("test_output", "test_loss_and_gradients"):
        assert any(line.startswith(f"FAILED test_bad.py::{test}") for line in lines), proc.stdout


def test_export_leaves_the_layered_network_untouched(tmp_path):
    net = trained(SPECS["conv_bn_pad"])
    before = {k: v.copy() for k, v in {**net.params, **net.buffers}.items()}
    draw = net.layers[5].rng.bit_generator.state
    export(net, tmp_path)
    assert net.training and net.layers[5].rng.bit_generator.state == draw
    for k, v in {**net.params, **net.buffers}.items():
        assert np.array_equal(v, before[k]), k


def test_export_refuses_a_loss_it_cannot_draw_targets_for(tmp_path):
    with pytest.raises(ValueError, match=r"export draws targets for losses \['ce', 'bce-logits'"):
        export(trained(SPECS["conv"]), tmp_path, loss="nll")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_of_a_conv_net_after_its_run(tmp_path, capsys, digits):
    out, exp = tmp_path / "rep", tmp_path / "exported"
    code = main(["run", "--data", "digits", "--layers", SPECS["conv_bn_pad"], "--steps", "3",
                 "--batch-size", "64", "--out", str(out), "--no-figures", "--quiet",
                 "--export", str(exp)])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert json.loads((out / "summary.json").read_text())["passed"] is True
    paths = Exported(*(exp / n for n in ("net.py", "net.pt", "net_expected.npz", "test_net.py")))
    state = load_fresh(paths).state_dict()
    start = from_spec(SPECS["conv_bn_pad"], (1, 8, 8), rng=0)  # the run's draw, seed 0
    assert float(state["1.running_var"].sub(1).abs().max()) > 0  # trained: the stats moved
    assert not np.array_equal(state["0.weight"].numpy(), start.params["0.weight"])


def test_cli_export_is_checked_before_the_run(tmp_path, capsys):
    exp = tmp_path / "mine"
    exp.mkdir()
    (exp / "net.py").write_text("# the user's own file\n")
    code = main(["run", "--data", "digits", "--layers", SPECS["conv"], "--steps", "2",
                 "--out", str(tmp_path / "rep"), "--quiet", "--export", str(exp)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "nn-parity did not write it" in err, err
    assert not (tmp_path / "rep").exists()
    assert (exp / "net.py").read_text() == "# the user's own file\n"
