"""Weights across the two worlds, copied bit for bit with names, shapes and dtypes checked.

One function per direction, as nanoGPT's `from_pretrained` does: every tensor is matched by
name and its shape asserted as it is copied, so a mismatch is named, never broadcast.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from nn_parity import scratch
from nn_parity.scratch.validate import check_names
from nn_parity.torch_ref.mirror.model import to_scratch
from torch import nn

__all__ = [
    "load_pt",
    "load_weights",
    "module_parameters",
    "save_pt",
    "scratch_to_torch",
    "torch_to_scratch",
]


def check_fit(ours: Mapping[str, np.ndarray], theirs: Mapping[str, torch.Tensor], *,
              dtypes: bool = True) -> None:  # fmt: skip
    """The one fit check of the mirror: scratch's arrays and torch's tensors by name, shape and
    (for weights) dtype, each misfit named."""
    check_names(
        ours, theirs, what="parameters do not match",
        ours_lack="torch lacks", theirs_lack="scratch lacks",
    )  # fmt: skip
    for name, p in ours.items():
        t = theirs[name]
        if tuple(t.shape) != p.shape:
            raise ValueError(f"{name}: scratch shape {p.shape}, torch shape {tuple(t.shape)}")
        if dtypes and str(t.dtype).removeprefix("torch.") != p.dtype.name:
            raise TypeError(f"{name}: scratch dtype {p.dtype.name}, torch dtype {t.dtype}")


def _check_names(net: scratch.MLP, module: nn.Module) -> dict[str, torch.nn.Parameter]:
    tparams = dict(module.named_parameters())
    check_fit(net.params, tparams)
    return tparams


@torch.no_grad()
def scratch_to_torch(net: scratch.MLP, module: nn.Module) -> None:
    """Copy every scratch parameter into the torch module of the same name."""
    for name, t in _check_names(net, module).items():
        t.copy_(torch.from_numpy(net.params[name]))


@torch.no_grad()
def torch_to_scratch(module: nn.Module, net: scratch.MLP | None = None) -> scratch.MLP:
    """Copy every torch parameter into the scratch parameter of the same name; returns `net`.

    Without `net`, a new scratch network of the module's architecture receives the weights: the
    module is then a `TorchMLP` or any `nn.Sequential` of `nn.Linear` and supported activations.
    """
    if net is None:
        return to_scratch(module)
    for name, t in _check_names(net, module).items():
        np.copyto(net.params[name], t.detach().cpu().numpy())
    return net


def save_pt(net: scratch.MLP, path) -> None:
    """Scratch weights as a torch state dict (`torch.load`-able into a `TorchMLP`)."""
    torch.save({name: torch.from_numpy(p.copy()) for name, p in net.params.items()}, path)


def load_pt(path) -> dict[str, np.ndarray]:
    """A torch state dict, loaded with `weights_only=True`: a pickled payload is refused."""
    import pickle
    from pathlib import Path

    from nn_parity.scratch.weights import check_weights

    path = Path(path)
    if not path.exists():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message opens with advice to disable the check; keep only what it found
        found = [line for line in str(err).splitlines() if "GLOBAL" in line or "global" in line]
        what = found[0].strip() if found else "it is not a plain state dict of tensors"
        raise ValueError(f"{path}: refused, it carries a pickled object: {what}") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable torch file ({err})") from None
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        inner = [k for k, v in state.items() if isinstance(v, dict)]
        advice = f"; save its {inner[0]!r} alone (torch.save(ckpt[{inner[0]!r}], ...))"
        raise ValueError(
            f"{path}: a checkpoint with keys {', '.join(map(repr, state))}, not a state dict of "
            f"tensors{advice if inner else ''}"
        )
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    out = {name: t.detach().cpu().numpy() for name, t in state.items()}
    check_weights(out, path)
    return out


def load_weights(path) -> dict[str, np.ndarray]:
    """A state dict from a `.npz` (scratch) or a torch file, told apart by content, not by name:
    a zip holding `data.pkl` is torch's, one holding `.npy` arrays NumPy's."""
    import zipfile
    from pathlib import Path

    from nn_parity.scratch.weights import load_npz

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise ValueError(f"weights file {str(path)!r} does not exist") from None
    except OSError as err:
        raise ValueError(f"weights file {str(path)!r}: cannot read it ({err.strerror})") from None
    if head.startswith(b"\x80"):  # torch's legacy (pre-zip) format, a pickle stream
        return load_pt(path)
    if head.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path}: a single .npy array; expected an .npz of named arrays")
    if not head.startswith(b"PK"):
        raise ValueError(f"{path}: neither an .npz nor a torch file (it is not a zip archive)")
    try:
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path}: not a readable zip archive ({err})") from None
    if any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
        return load_pt(path)
    if members and all(m.endswith(".npy") for m in members):
        return load_npz(path)
    raise ValueError(
        f"{path}: a zip archive of neither .npy arrays (an .npz) nor a torch file (data.pkl); "
        f"it holds {', '.join(members[:3]) or 'nothing'}"
    )


def module_parameters(module: nn.Module, desc: scratch.MLP) -> dict[str, torch.Tensor]:
    """The module's parameters under the canonical names of `desc` (`layers.{l}.weight`, ...).

    A module that already uses those names (TorchMLP) maps by name; any other maps its
    `nn.Linear` layers, in the order they were registered, onto the layers of `desc`. Either way
    the map must be one to one, with shapes and dtypes checked; a parameter outside any Linear
    (a LayerNorm's, say) has no counterpart and is named.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"the torch side must be an nn.Module, got {type(module).__name__}")
    named: dict[str, torch.Tensor] = dict(module.named_parameters())
    if set(named) != set(desc.params):
        linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        if len(linears) != len(desc.layers):
            raise ValueError(
                f"the torch module has {len(linears)} Linear layers, the scratch network "
                f"{len(desc.layers)}: they do not map one to one"
            )
        mapped: dict[str, torch.Tensor] = {}
        seen = set()
        for l, (prefix, lin) in enumerate(linears):
            mapped[f"layers.{l}.weight"] = lin.weight
            seen.add(f"{prefix}.weight")
            if lin.bias is not None:
                mapped[f"layers.{l}.bias"] = lin.bias
                seen.add(f"{prefix}.bias")
        extra = [n for n in named if n not in seen]
        if extra:
            raise ValueError(
                f"torch parameter {extra[0]!r} belongs to no Linear layer: the module does not "
                "map one to one onto the scratch network"
            )
        named = mapped
    for name, p in desc.params.items():
        if name not in named:
            raise ValueError(f"{name}: the scratch network has it, the torch module does not")
        t = named[name]
        if tuple(t.shape) != p.shape:
            raise ValueError(f"{name}: scratch shape {p.shape}, torch shape {tuple(t.shape)}")
        if str(t.dtype).removeprefix("torch.") != p.dtype.name:
            raise TypeError(f"{name}: scratch dtype {p.dtype.name}, torch dtype {t.dtype}")
    extra_t = [n for n in named if n not in desc.params]
    if extra_t:
        raise ValueError(f"torch parameter {extra_t[0]!r} has no scratch counterpart")
    return {name: named[name] for name in desc.params}
