"""From a scratch network to framework code, for the user's own repository.

    paths = export(net, "exported/")        # net: a scratch.MLP
    exported/net.py               class Net(nn.Module): nn.Linear layers named like the scratch
                                  parameters (`layers.0.weight`, (out, in)), needing only torch
    exported/net.pt               its weights, a state dict (`torch.load(..., weights_only=True)`)
    exported/net_expected.npz     a probe batch X, y and what the scratch network computed on it:
                                  the output, the loss and every parameter's gradient
    exported/test_net.py          pytest: Net with net.pt reproduces them (needs torch, numpy,
                                  pytest; not nn_parity)

A network of gallery layers (`scratch.sequential.Sequential`, e.g. from_spec("conv8x3,relu,..."))
is exported the same way as `class Net(nn.Sequential)` of torch's modules (export_layered.py),
its running statistics in net.pt, its probe values taken in evaluation mode.

The expected values come from the scratch network's own forward, loss and backward, so the
generated test checks the torch module against the NumPy math it was exported from, within the
tolerances of `compare.TOLERANCES` for the network's dtype.
"""

from __future__ import annotations

import keyword
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.reports.destination import Words, atomic_dir, check_destination
from nn_parity.scratch.activations import Activation
from nn_parity.scratch.sequential import Sequential
from nn_parity.torch_ref.compare import Tolerance, tolerance
from nn_parity.torch_ref.mirror import export_layered as layered
from nn_parity.torch_ref.mirror.model import torch_loss
from nn_parity.torch_ref.mirror.weights import save_pt

__all__ = ["Exported", "check_export", "export"]

PROBE_ROWS = 8  # enough rows that every gradient is a sum over a batch, small to read
# losses whose targets the probe batch draws as 0/1 floats shaped like the output, (N, C)
LOSSES = ("bce", "bce-logits", "mse")


@dataclass(frozen=True)
class Exported:
    """The four files `export` wrote."""

    module: Path
    weights: Path
    expected: Path
    test: Path

    def __iter__(self):
        return iter((self.module, self.weights, self.expected, self.test))


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"name {name!r} must be a Python identifier, e.g. 'net'")
    # the test's folder goes first on sys.path: a module named like one it imports would shadow it
    if name in {"torch", "numpy", "pytest"} or name in sys.stdlib_module_names:
        raise ValueError(
            f"name {name!r} would shadow the module {name!r}; choose another, e.g. 'net'"
        )
    return name


def _loss(net, spec: str | scratch.Loss | None) -> scratch.Loss:
    """The loss given, or the one made for the network's output activation (a layered
    network's output is logits: ce over two or more of them, bce-logits for one)."""
    known = [n for n in (layered.LOSSES if isinstance(net, Sequential) else LOSSES)]
    if spec is None and isinstance(net, Sequential):
        return scratch.get_loss("ce" if net.shapes[-1][0] >= 2 else "bce-logits")
    if spec is None:
        last = net.activations[-1].name
        for loss_name in known:
            if scratch.LOSSES[loss_name].output_activation == last:
                return scratch.get_loss(loss_name)
        raise ValueError(f"no default loss for a {last} output; pass loss= one of {known}")
    loss = scratch.get_loss(spec)
    if loss.name not in known:
        raise ValueError(f"export draws targets for losses {known}, not {loss.name!r}")
    return loss


def _activation_code(act: Activation) -> str:
    return layered.activation_code(act.name)  # the mirror's own choice, written out as code


def module_source(net: scratch.MLP, name: str) -> str:
    """The text of a standalone module file defining `class Net(nn.Module)` for `net`."""
    dtype = net.dtype.name
    bias = "" if net.bias else ", bias=False"
    linears = "".join(
        f"                nn.Linear({layer.fan_in}, {layer.fan_out}{bias}, dtype=dtype),"
        f"  # layers.{l}: {layer.fan_in} -> {layer.fan_out}\n"
        for l, layer in enumerate(net.layers)
    )
    acts = "".join(
        f"        self.act{l} = {_activation_code(a)}\n" for l, a in enumerate(net.activations)
    )
    steps = "".join(
        f"        x = self.act{l}(self.layers[{l}](x))  # (N, {layer.fan_out})\n"
        for l, layer in enumerate(net.layers)
    )
    arch = " -> ".join(
        f"Linear({layer.fan_in}, {layer.fan_out}) -> {a.name}"
        for layer, a in zip(net.layers, net.activations)
    )
    return f'''"""A PyTorch module exported by nn-parity from a NumPy network:

    {net!r}
    {arch}

Parameter names are the NumPy network's: `layers.{{l}}.weight` is (out, in), as in nn.Linear,
and `layers.{{l}}.bias` is (out,). Load the exported weights with

    model = Net()
    model.load_state_dict(torch.load("{name}.pt", weights_only=True))

`test_{name}.py` beside this file checks that the two still compute what the NumPy network did.
"""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, dtype=torch.{dtype}):
        super().__init__()
        self.layers = nn.ModuleList(
            [
{linears}            ]
        )
{acts}
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, {net.sizes[0]})
{steps}        return x
'''


# The generated test file, filled by `pytest_source`: `{net!r}` reads the network, `{inputs}`
# is the probe batch's shape; doubled braces are the file's own.
_TEST_TEMPLATE = '''\
"""Checks that `{name}.py` with `{name}.pt` computes what the NumPy network computed.

Generated by nn-parity from the NumPy network
    {net!r}
`{name}_expected.npz` holds a probe batch X {inputs}, its labels y, and the NumPy
network's output, loss and every parameter's gradient on it, the loss being
{loss_code}. Run with `pytest test_{name}.py`; it needs torch, numpy and pytest.

Tolerances, |torch - numpy| <= atol + rtol |numpy|, are nn-parity's for {dt}: the two sides
run the same math with sums in different orders, a few units of {dt} epsilon apart.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
NAMES = [
{names}]
TOLERANCES = {{
{tolerances}}}


def _load_net_class():
    spec = importlib.util.spec_from_file_location("{name}", HERE / "{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Net


@pytest.fixture(scope="module")
def expected():
    with np.load(HERE / "{name}_expected.npz", allow_pickle=False) as f:
        return {{key: torch.from_numpy(f[key]) for key in f.files}}


@pytest.fixture
def model():
    model = _load_net_class()()
    model.load_state_dict(torch.load(HERE / "{name}.pt", weights_only=True))  # strict
    return model.eval()  # as the NumPy values were taken: no dropout, running statistics


def test_parameters_keep_the_numpy_names(model):
    assert list(dict(model.named_parameters())) == NAMES


def test_output(model, expected):
    out = model(expected["X"]).detach()
    torch.testing.assert_close(out, expected["output"], **TOLERANCES["output"])


def test_loss_and_gradients(model, expected):
    loss = {loss_code}(model(expected["X"]), expected["y"])
    torch.testing.assert_close(loss.detach(), expected["loss"], **TOLERANCES["loss"])
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(
            p.grad,
            expected["grad." + name],
            **TOLERANCES["grad"],
            msg=lambda m, name=name: f"gradient of {{name}}: {{m}}",
        )
'''


def pytest_source(net, name: str, loss: scratch.Loss) -> str:
    """The text of a pytest file checking `name.py` with `name.pt` against the recorded values."""
    dt = net.dtype.name
    shape = net.input_shape if isinstance(net, Sequential) else (net.sizes[0],)
    tolerances = (("output", "prob"), ("loss", "loss"), ("grad", "grad"))
    return _TEST_TEMPLATE.format(
        net=net,
        name=name,
        dt=dt,
        inputs="(N, " + ", ".join(map(str, shape)) + ")",
        loss_code=f'nn.{type(torch_loss(loss)).__name__}(reduction="{loss.reduction}")',
        names="".join(f'    "{p}",\n' for p in net.params),
        tolerances="".join(_tolerance_entry(key, tolerance(q, dt)) for key, q in tolerances),
    )


def _tolerance_entry(key: str, t: Tolerance) -> str:
    """One entry of the generated TOLERANCES dict, its reason wrapped above it as comments."""
    why = "".join(f"    # {line}\n" for line in textwrap.wrap(t.reason, 94))
    return f'{why}    "{key}": {{"rtol": {t.rtol!r}, "atol": {t.atol!r}}},\n'


def expected_values(
    net: scratch.MLP, loss: scratch.Loss, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A probe batch and what `net` computes on it, on a copy (net's buffers stay untouched)."""
    copy = scratch.MLP(net.sizes, net.activations, bias=net.bias, dtype=net.dtype)
    copy.load_state_dict(net.state_dict())
    X = rng.standard_normal((PROBE_ROWS, net.sizes[0])).astype(net.dtype)  # (N, D)
    y = rng.integers(0, 2, (PROBE_ROWS, net.sizes[-1])).astype(net.dtype)  # (N, C)
    out, cache = copy.forward(X)  # (N, C)
    value, loss_cache = loss.forward(out, y)
    grads = copy.backward(loss.backward(loss_cache), cache)
    record = {"X": X, "y": y, "output": out, "loss": np.asarray(value, dtype=net.dtype)}
    record.update({f"grad.{k}": g.copy() for k, g in grads.items()})
    return record


def export(
    net,
    folder,
    name: str = "net",
    *,
    loss: str | scratch.Loss | None = None,
    seed: int = 0,
    overwrite: bool = False,
    _cli: bool = False,
) -> Exported:
    """Write `net` as framework code into `folder`; returns the four paths.

    net:        a scratch.MLP, an adapted network, or a network of gallery layers
                (scratch.sequential.Sequential: an nn.Sequential of torch's modules, its
                weights and running statistics, checked in evaluation mode)
    loss:       the loss the gradients are taken of, one of `LOSSES` (targets drawn as 0/1);
                by default the one made for the output activation (bce for a sigmoid,
                bce-logits for identity); for a layered network ce, bce-logits or mse
                (default ce, or bce-logits for one output)
    seed:       draws the probe batch
    overwrite:  replace the files of an earlier export of `name` (refused otherwise, naming the
                first); files nn-parity did not write are never replaced
    The files are written into a temporary folder beside `folder` and moved into place when
    all are complete: a failure (a full disk) leaves `folder` as it was.
    """
    if hasattr(net, "description"):  # the user's network: its description, at its values
        if getattr(net, "pmap", None) is None:
            raise ValueError("export a user network after its first check: its layout is unknown")
        net = net.description()
    if not isinstance(net, (scratch.MLP, Sequential)):
        raise TypeError(
            "export takes a scratch.MLP, a scratch.sequential.Sequential or an adapted network, "
            f"got {type(net).__name__}"
        )
    for key, p in net.params.items():
        if not np.isfinite(p).all():
            at = tuple(int(i) for i in np.argwhere(~np.isfinite(p))[0])
            raise ValueError(f"{key}{list(at)} is {p[at]}: export takes finite weights")
    name = _check_name(name)
    loss = _loss(net, loss)
    folder = Path(folder)
    paths = check_export(folder, name, overwrite=overwrite, cli=_cli)
    rng = np.random.default_rng(seed)
    if isinstance(net, Sequential):
        record = layered.layered_expected(net, loss, rng, PROBE_ROWS)
        source = layered.layered_source(net, name)
    else:
        record, source = expected_values(net, loss, rng), module_source(net, name)
    with atomic_dir(folder, merge=True) as tmp:
        inside = Exported(*(tmp / p.name for p in paths))
        inside.module.write_text(source)
        if isinstance(net, Sequential):
            torch.save(layered.layered_state(net), inside.weights)
        else:
            save_pt(net, inside.weights)
        np.savez(inside.expected, **record)  # type: ignore[arg-type]
        inside.test.write_text(pytest_source(net, name, loss))
    return paths


HEADER = '"""A PyTorch module exported by nn-parity'  # how an export's module file begins


def check_export(folder, name: str = "net", *, overwrite: bool = False, cli: bool = False):
    """The four paths `export` writes into `folder`, checked before any work: the folder can be
    written, and a file already there is replaced only with overwrite, and only if nn-parity
    wrote it (the module file begins with HEADER). Messages name --export and --overwrite
    when `cli`, the arguments otherwise."""
    folder = Path(folder)
    words = (
        Words("--export", "the export", "--overwrite")
        if cli
        else Words("folder", "the export", "overwrite=True")
    )
    check_destination(folder, words)
    paths = Exported(
        folder / f"{name}.py",
        folder / f"{name}.pt",
        folder / f"{name}_expected.npz",
        folder / f"test_{name}.py",
    )
    there = [p for p in paths if p.exists() or p.is_symlink()]
    if not there:
        return paths
    if not _is_export(paths.module):
        flag = f"{words.flag} {str(folder)!r}: " if cli else ""
        raise ValueError(
            f"{flag}{there[0]} exists and nn-parity did not write it (no {paths.module.name} "
            "it exported beside it); refused: choose another folder"
        )
    if not overwrite:
        raise ValueError(f"{there[0]} exists; pass {words.overwrite} to replace it")
    return paths


def _is_export(module: Path) -> bool:
    if module.is_symlink() or not module.is_file():
        return False
    with open(module, "rb") as f:
        return f.read(len(HEADER)) == HEADER.encode()
