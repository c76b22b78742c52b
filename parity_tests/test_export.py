"""Both bridges to framework code: a scratch network exported as a standalone torch module with
its own pytest file, and any `nn.Sequential` of supported layers brought back as a scratch MLP."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from nn_parity import scratch
from nn_parity.torch_ref import TorchMLP, tolerance, torch_to_scratch
from nn_parity.torch_ref.mirror.export import export
from nn_parity.torch_ref.mirror.model import to_scratch
from torch import nn

# --- the generated test, run as the user would run it ---------------------------------------

# Each export lands in one folder under its own name; `edit` turns the generated module wrong
# the way a hand edit would, and `outcome` is what the generated tests must then say.
EXPORTS = {
    "deep64": dict(sizes=[3, 4, 4, 1], acts=["tanh", "leaky_relu:0.1", "sigmoid"]),
    "logits32": dict(sizes=[2, 5, 1], acts=["relu", "identity"], dtype="float32", bias=False),
    "swapped": dict(
        sizes=[3, 4, 4, 1],
        acts=["tanh", "relu", "sigmoid"],
        edit=("self.act0 = nn.Tanh()", "self.act0 = nn.Sigmoid()"),
        fails=("test_output", "test_loss_and_gradients"),
    ),
    "transposed": dict(
        sizes=[3, 4, 4, 1],
        acts=["tanh", "tanh", "sigmoid"],
        edit=(
            "self.act1(self.layers[1](x))",
            "self.act1(nn.functional.linear(x, self.layers[1].weight.T, self.layers[1].bias))",
        ),
        fails=("test_output", "test_loss_and_gradients"),
    ),
    "unbiased": dict(
        sizes=[3, 4, 1],
        acts=["sigmoid", "sigmoid"],
        edit=("self.act1(self.layers[1](x))", "self.act1(x @ self.layers[1].weight.T)"),
        fails=("test_output", "test_loss_and_gradients"),
    ),
    # the same output, but no gradient reaches layer 0: only the gradient check can see it
    "detached": dict(
        sizes=[3, 4, 1],
        acts=["tanh", "sigmoid"],
        edit=("x = self.act0(self.layers[0](x))", "x = self.act0(self.layers[0](x)).detach()"),
        fails=("test_loss_and_gradients",),
    ),
}
TESTS = ("test_parameters_keep_the_numpy_names", "test_output", "test_loss_and_gradients")


def _outcome(name: str, test: str) -> str:
    return "FAILED" if test in EXPORTS[name].get("fails", ()) else "PASSED"


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    """Every export above in one folder, then one pytest run there, nn_parity made unimportable."""
    folder = tmp_path_factory.mktemp("exported")
    for name, spec in EXPORTS.items():
        net = scratch.MLP(
            spec["sizes"],
            spec["acts"],
            dtype=spec.get("dtype", "float64"),
            bias=spec.get("bias", True),
            rng=7,
        )
        # trained-looking weights: nonzero biases, so a dropped bias changes the output
        net.flat_params[:] = np.random.default_rng(7).uniform(-1, 1, net.num_params)
        paths = export(net, folder, name)
        if "edit" in spec:
            old, new = spec["edit"]
            text = paths.module.read_text()
            assert old in text, f"{name}: the edit's anchor {old!r} is not in the generated module"
            paths.module.write_text(text.replace(old, new))
    # sys.modules[...] = None makes `import nn_parity` raise: the files must stand alone (and
    # so must pytest: nn-parity's own plugin, installed here, is not loaded, as in the user's
    # repository where nn-parity is not installed)
    runner = (
        "import sys; sys.modules['nn_parity'] = None; import pytest; "
        "raise SystemExit(pytest.main(['-rA', '-p', 'no:cacheprovider', '-W', 'error']))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", runner],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return proc


@pytest.mark.parametrize(
    "name,test", [(n, t) for n in EXPORTS for t in TESTS], ids=lambda v: str(v)
)
def test_generated_test_passes_on_the_export_and_fails_on_a_wrong_edit(generated_run, name, test):
    want = f"{_outcome(name, test)} test_{name}.py::{test}"
    lines = generated_run.stdout.splitlines()
    assert any(line.startswith(want) for line in lines), (
        f"expected {want!r} in the generated tests' summary:\n{generated_run.stdout[-3000:]}"
        f"\n{generated_run.stderr[-2000:]}"
    )


def test_the_generated_run_fails_as_a_whole_because_of_the_edits(generated_run):
    assert generated_run.returncode == 1, generated_run.stdout[-2000:]
    failed = sum(_outcome(n, t) == "FAILED" for n in EXPORTS for t in TESTS)
    assert f"{failed} failed, {len(EXPORTS) * len(TESTS) - failed} passed" in generated_run.stdout


# --- what export writes ---------------------------------------------------------------------


@pytest.fixture
def net():
    return scratch.MLP([3, 5, 1], ["tanh", "sigmoid"], rng=3)


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.module or "").split(".")[0])
    return found


def test_exported_files_stand_alone(net, tmp_path):
    paths = export(net, tmp_path)
    assert [p.name for p in paths] == ["net.py", "net.pt", "net_expected.npz", "test_net.py"]
    assert _imports(paths.module) == {"torch"}
    assert _imports(paths.test) == {"importlib", "pathlib", "numpy", "pytest", "torch"}


def test_exported_module_holds_the_scratch_weights_bit_for_bit(net, tmp_path):
    paths = export(net, tmp_path)
    spec = importlib.util.spec_from_file_location("exported_net", paths.module)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Net()
    model.load_state_dict(torch.load(paths.weights, weights_only=True))
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert list(state) == list(net.params)
    for k, p in net.params.items():
        assert np.array_equal(state[k], p), k
    X = np.random.default_rng(0).standard_normal((6, 3))
    tol = tolerance("prob", "float64")  # the scratch-vs-torch table's, for a sigmoid output
    np.testing.assert_allclose(
        model(torch.from_numpy(X)).detach().numpy(), net(X), rtol=tol.rtol, atol=tol.atol
    )


def test_export_leaves_the_network_untouched(net, tmp_path):
    params, grads = net.flat_params.copy(), net.flat_grads.copy()
    export(net, tmp_path)
    assert np.array_equal(net.flat_params, params) and np.array_equal(net.flat_grads, grads)


def test_export_refuses_to_overwrite_unless_told(net, tmp_path):
    paths = export(net, tmp_path)
    before = paths.test.read_bytes()
    paths.test.write_text("# the user's own edits\n")
    with pytest.raises(ValueError, match=r"net\.py exists; pass overwrite=True to replace it"):
        export(net, tmp_path)
    assert paths.test.read_text() == "# the user's own edits\n"
    export(net, tmp_path, overwrite=True)
    assert paths.test.read_bytes() == before


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(name="my-net"), ValueError, r"name 'my-net' must be a Python identifier"),
        (dict(name="class"), ValueError, r"name 'class' must be a Python identifier"),
        (dict(name="torch"), ValueError, r"name 'torch' would shadow the module 'torch'"),
        (dict(name="json"), ValueError, r"name 'json' would shadow the module 'json'"),
        (dict(loss="hinge"), ValueError, r"unknown loss 'hinge'"),
    ],
    ids=["dash", "keyword", "torch", "stdlib", "loss"],
)
def test_export_bad_arguments(net, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        export(net, tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_export_bad_network_and_folder(net, tmp_path):
    with pytest.raises(
        TypeError,
        match=r"takes a scratch.MLP, a scratch.sequential.Sequential or an adapted network, "
        r"got TorchMLP",
    ):
        export(TorchMLP.from_scratch(net), tmp_path)
    relu_out = scratch.MLP([2, 3, 2], ["tanh", "relu"])
    with pytest.raises(ValueError, match=r"no default loss for a relu output; pass loss="):
        export(relu_out, tmp_path)

    class Hinge(scratch.Loss):
        name = "hinge"

    with pytest.raises(ValueError, match=r"export draws targets for losses \['bce', 'bce-logits'"):
        export(net, tmp_path, loss=Hinge())
    diverged = scratch.MLP([2, 3, 1], ["tanh", "sigmoid"])
    diverged.params["layers.0.weight"][1, 0] = np.nan
    with pytest.raises(ValueError, match=r"layers.0.weight\[1, 0\] is nan: export takes finite"):
        export(diverged, tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match=r"exists and is not a folder"):
        export(net, tmp_path / "afile")


# --- any nn.Sequential back to a scratch MLP ------------------------------------------------


def _seq(*mods, dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(*mods).to(dtype)


@pytest.mark.parametrize(
    "seq,acts",
    [
        (
            lambda: _seq(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Sigmoid()),
            ["tanh", "sigmoid"],
        ),
        (
            lambda: _seq(
                nn.Linear(3, 4),
                nn.ReLU(),
                nn.Linear(4, 4),
                nn.LeakyReLU(0.2),
                nn.Linear(4, 2),
                nn.Identity(),
            ),
            ["relu", "leaky_relu:0.2", "identity"],
        ),
        (
            lambda: _seq(nn.Linear(3, 4), nn.Linear(4, 1), nn.Sigmoid()),  # no act: identity
            ["identity", "sigmoid"],
        ),
        (lambda: _seq(nn.Linear(3, 2)), ["identity"]),
        (
            lambda: _seq(
                nn.Linear(3, 4, bias=False),
                nn.Tanh(),
                nn.Linear(4, 1, bias=False),
                dtype=torch.float32,
            ),
            ["tanh", "identity"],
        ),
    ],
    ids=["tanh-sigmoid", "relu-leaky-identity", "linear-linear", "one-linear", "float32-nobias"],
)
def test_sequential_converts_to_scratch_bit_for_bit(seq, acts):
    seq = seq()
    net = torch_to_scratch(seq)
    assert [a.name for a in net.activations] == acts
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    assert net.sizes == [linears[0].in_features] + [m.out_features for m in linears]
    assert (
        net.dtype == {torch.float64: np.float64, torch.float32: np.float32}[linears[0].weight.dtype]
    )
    for l, lin in enumerate(linears):
        assert np.array_equal(net.params[f"layers.{l}.weight"], lin.weight.detach().numpy())
        if lin.bias is not None:
            assert np.array_equal(net.params[f"layers.{l}.bias"], lin.bias.detach().numpy())
    assert net.bias == (linears[0].bias is not None)
    X = np.random.default_rng(1).standard_normal((5, net.sizes[0])).astype(net.dtype)
    tol = tolerance("a", net.dtype)  # the scratch-vs-torch table's, for any activation
    np.testing.assert_allclose(
        net(X), seq(torch.from_numpy(X)).detach().numpy(), rtol=tol.rtol, atol=tol.atol
    )


def test_torch_mlp_to_scratch_is_the_same_conversion():
    ref = TorchMLP([2, 3, 1], ["tanh", "sigmoid"])
    net, again = ref.to_scratch(), to_scratch(ref)
    assert np.array_equal(net.flat_params, again.flat_params)


@pytest.mark.parametrize(
    "seq,error,match",
    [
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(), nn.Linear(4, 1)),
            ValueError,
            r"nn.Sequential layer 1 \(Dropout\) is not supported; expected nn.Linear or an "
            r"activation with a scratch twin: no scratch activation for torch module Dropout",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh()),
            ValueError,
            r"layer 1 \(BatchNorm1d\) is not supported",
        ),
        (
            lambda: nn.Sequential(nn.Tanh(), nn.Linear(3, 1)),
            ValueError,
            r"layer 0 \(Tanh\) comes before any nn.Linear",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Sigmoid()),
            ValueError,
            r"layer 2 \(Sigmoid\) is a second activation after the nn.Linear at 0",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(5, 1)),
            ValueError,
            r"layer 2 \(Linear\) takes 5 inputs, but layer 0 gives 4",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1, bias=False)),
            ValueError,
            r"layer 2 \(Linear\) has bias=False unlike layer 0",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1).double()),
            TypeError,
            r"layer 1 \(Linear\) holds torch.float64 unlike layer 0 \(torch.float32\)",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4).half()),
            TypeError,
            r"layer 0 \(Linear\) holds torch.float16; expected torch.float64 or torch.float32",
        ),
        (
            lambda: nn.Sequential(nn.Sequential(nn.Linear(3, 1))),
            ValueError,
            r"layer 0 \(Sequential\) is not supported",
        ),
        (lambda: nn.Sequential(), ValueError, r"holds no nn.Linear"),
        (
            lambda: nn.Linear(3, 1),
            TypeError,
            r"expected a TorchMLP or an nn.Sequential of nn.Linear and activations, got Linear",
        ),
    ],
    ids=[
        "dropout",
        "batchnorm",
        "act-first",
        "two-acts",
        "widths",
        "mixed-bias",
        "mixed-dtype",
        "float16",
        "nested",
        "empty",
        "not-sequential",
    ],
)
def test_sequential_that_does_not_convert_names_the_layer(seq, error, match):
    with pytest.raises(error, match=match):
        torch_to_scratch(seq())
