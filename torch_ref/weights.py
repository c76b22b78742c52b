"""Weights across the two worlds, copied bit for bit with names, shapes and dtypes checked.

One function per direction, as nanoGPT's `from_pretrained` does: every tensor is matched by
name and its shape asserted as it is copied, so a mismatch is named, never broadcast.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import scratch

__all__ = ["scratch_to_torch", "torch_to_scratch"]


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
def torch_to_scratch(module: nn.Module, net: scratch.MLP) -> None:
    """Copy every torch parameter into the scratch parameter of the same name."""
    for name, t in _check_names(net, module).items():
        np.copyto(net.params[name], t.detach().cpu().numpy())
