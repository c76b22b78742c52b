"""Scratch weights on disk, as `.npz`: one array per parameter name, no pickle.

    save_npz(net, "w.npz")
    net.load_state_dict(load_npz("w.npz"))

`load_npz` reads every array's header (shape and dtype) from the zip before loading anything:
a file carrying a pickled object is refused, never run, and one declaring more than
`MAX_NPZ_BYTES` of arrays (a decompression bomb, or not weights) is refused unread. NaN or inf
weights are refused by name and element. The torch side's `.pt` state dicts are in
`torch_ref.mirror.weights`.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from .network import MLP
from .validate import check_finite

__all__ = ["MAX_NPZ_BYTES", "check_weights", "load_npz", "save_npz"]

MAX_NPZ_BYTES = 2**30  # the arrays' declared size, summed: 1 GiB, 134 million float64 weights
_HEADER_READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}


def save_npz(net: MLP, path: str | Path) -> None:
    """Every parameter under its name (`layers.0.weight`, ...)."""
    np.savez(Path(path), **net.state_dict())  # type: ignore[arg-type]


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file, refusing pickled objects, anything not floating-point, a
    declared size over MAX_NPZ_BYTES (all checked on the headers, before loading) and NaN/inf."""
    path = Path(path)
    try:
        _check_headers(path, _npy_headers(path))
        with np.load(path, allow_pickle=False) as f:
            state = {name: f[name] for name in f.files}
    except FileNotFoundError:
        raise ValueError(f"weights file {str(path)!r} does not exist") from None
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a NumPy .npz file ({err})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    if not state:
        raise ValueError(f"{path}: holds no arrays")
    check_weights(state, path)
    return state


def check_weights(state: dict[str, np.ndarray], path) -> None:
    """Refuse NaN or inf among loaded weights, naming the file, the parameter and the element."""
    for name, value in state.items():
        try:
            check_finite(value, name)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def _npy_headers(path: Path) -> dict[str, tuple[tuple, np.dtype]]:
    """(shape, dtype) of every array in the zip, read from its .npy header, loading nothing."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            with z.open(member) as f:
                version = npy.read_magic(f)
                reader = _HEADER_READERS.get(version)
                if reader is None:
                    raise ValueError(f"{path}: {member} is in .npy format {version}, not 1.0/2.0")
                shape, _, dtype = reader(f)
            out[member.removesuffix(".npy")] = (shape, dtype)
    return out


def _check_headers(path: Path, headers: dict[str, tuple[tuple, np.dtype]]) -> None:
    for name, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise ValueError(
                f"{path}: holds a pickled object; refused (only plain numeric arrays are loaded)"
            )
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(f"{path}: {name} holds {dtype}, expected floating-point values")
    sizes = {name: math.prod(shape) * dtype.itemsize for name, (shape, dtype) in headers.items()}
    declared = sum(sizes.values())
    if declared > MAX_NPZ_BYTES:
        big = max(sizes, key=sizes.__getitem__)
        raise ValueError(
            f"{path}: its arrays declare {declared} bytes ({big} has shape {headers[big][0]}), "
            f"over the {MAX_NPZ_BYTES // 2**30} GiB limit for a weights file; refused unread"
        )
