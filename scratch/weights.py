"""Scratch weights on disk, as `.npz`: one array per parameter name, no pickle.

    save_npz(net, "w.npz")
    net.load_state_dict(load_npz("w.npz"))

`load_npz` reads with `allow_pickle=False`: a file carrying a pickled object is refused, never
run. The torch side's `.pt` state dicts are in `torch_ref.weights`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .network import MLP

__all__ = ["load_npz", "save_npz"]


def save_npz(net: MLP, path: str | Path) -> None:
    """Every parameter under its name (`layers.0.weight`, ...)."""
    np.savez(Path(path), **net.state_dict())  # type: ignore[arg-type]


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file, refusing pickled objects and anything not numeric."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            state = {name: f[name] for name in f.files}
    except FileNotFoundError:
        raise ValueError(f"weights file {str(path)!r} does not exist") from None
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(
                f"{path}: holds a pickled object; refused (only plain numeric arrays are loaded)"
            ) from None
        raise ValueError(f"{path}: not a NumPy .npz/.npy file ({err})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: holds no arrays")
    for name, value in state.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{path}: {name} holds {value.dtype}, expected floating-point values")
    return state
