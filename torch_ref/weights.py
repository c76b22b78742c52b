"""Weights across the two worlds, copied bit for bit with names, shapes and dtypes checked.

One function per direction, as nanoGPT's `from_pretrained` does: every tensor is matched by
name and its shape asserted as it is copied, so a mismatch is named, never broadcast.
"""

from __future__ import annotations

import numpy as np
import torch
from nn_parity import scratch
from torch import nn

__all__ = ["load_pt", "load_weights", "save_pt", "scratch_to_torch", "torch_to_scratch"]


def _check_names(net: scratch.MLP, module: nn.Module) -> dict[str, torch.nn.Parameter]:
    tparams = dict(module.named_parameters())
    missing = [k for k in net.params if k not in tparams]
    extra = [k for k in tparams if k not in net.params]
    if missing or extra:
        raise ValueError(
            f"parameters do not match: torch lacks {missing or 'none'}, "
            f"scratch lacks {extra or 'none'}"
        )
    for name, p in net.params.items():
        t = tparams[name]
        if tuple(t.shape) != p.shape:
            raise ValueError(f"{name}: scratch shape {p.shape}, torch shape {tuple(t.shape)}")
        if str(t.dtype).removeprefix("torch.") != p.dtype.name:
            raise TypeError(f"{name}: scratch dtype {p.dtype.name}, torch dtype {t.dtype}")
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
        from .model import to_scratch  # model imports this module as it loads

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
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return {name: t.detach().cpu().numpy() for name, t in state.items()}


def load_weights(path) -> dict[str, np.ndarray]:
    """A state dict from `.npz` or `.pt`/`.pth`, by the file's suffix."""
    from pathlib import Path

    from nn_parity.scratch.weights import load_npz

    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return load_npz(path)
    if suffix in (".pt", ".pth"):
        return load_pt(path)
    raise ValueError(f"weights file {str(path)!r}: expected a .npz, .pt or .pth file")
