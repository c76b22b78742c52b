"""Reading and writing the user's arrays where they live: dict keys, attributes, lists, dotted
paths."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from nn_parity import scratch


class _Access:
    """Reads and writes the user's arrays by name, afresh every time: a step may rebind them
    (Nielsen's `self.weights = [w - ... for ...]`)."""

    def __init__(self, params: Any, names: Sequence[str] | None):
        self.params = params
        if isinstance(params, Mapping):
            self.kind = "dict"
            keys = list(params) if names is None else list(names)
        elif isinstance(params, (list, tuple)):
            self.kind = "list"
            keys = [f"[{i}]" for i in range(len(params))] if names is None else list(names)
        else:
            self.kind = "object"
            keys = _discover(params) if names is None else list(names)
        self.names = self._expand(keys)

    def _expand(self, keys: list[str]) -> list[str]:
        """Lists of arrays (`weights`) become one name per element (`weights[0]`)."""
        names = []
        for k in keys:
            value = self._get_raw(k)
            if isinstance(value, (list, tuple)):
                names += [f"{k}[{i}]" for i in range(len(value))]
            else:
                names.append(k)
        return names

    def _get_raw(self, key: str) -> Any:
        """The value at a path: `W1`, `weights[0]`, `dense1.weights`, `layers[2].W`; a dict's
        own key first, dots and all."""
        if self.kind == "dict" and key in self.params:
            return self.params[key]
        container, last = self._parent(key)
        try:
            return container[last] if isinstance(last, int) else self._attr(container, last)
        except (KeyError, AttributeError, IndexError):
            where = "the parameter dict" if self.kind == "dict" else type(self.params).__name__
            raise ValueError(f"parameter {key!r} not found in {where}") from None

    def _parent(self, key: str) -> tuple[Any, str | int]:
        """The object holding the last step of a path, and that step."""
        steps: list[str | int] = []
        for part in key.split("."):
            m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", part)
            if m is None:
                raise ValueError(f"cannot read the parameter path {key!r}")
            if m.group(1):
                steps.append(m.group(1))
            steps += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
        node = self.params
        try:
            for step in steps[:-1]:
                node = node[step] if isinstance(step, int) else self._attr(node, step)
        except (KeyError, AttributeError, IndexError):
            where = "the parameter dict" if self.kind == "dict" else type(self.params).__name__
            raise ValueError(f"parameter {key!r} not found in {where}") from None
        return node, steps[-1]

    @staticmethod
    def _attr(node: Any, name: str) -> Any:
        return node[name] if isinstance(node, Mapping) else getattr(node, name)

    def get(self, name: str) -> np.ndarray:
        return self._get_raw(name)

    def read(self) -> dict[str, np.ndarray]:
        return {n: self.get(n) for n in self.names}

    def write(self, name: str, value: np.ndarray) -> None:
        """Into the user's existing array where it can (its identity kept), else rebinding."""
        current = self._get_raw(name)
        if (
            isinstance(current, np.ndarray)
            and current.shape == value.shape
            and current.flags.writeable
        ):
            np.copyto(current, value)
            return
        if self.kind == "dict" and name in self.params:
            self.params[name] = np.array(value)
            return
        container, last = self._parent(name)
        if isinstance(last, int) or isinstance(container, Mapping):
            container[last] = np.array(value)
        else:
            setattr(container, last, np.array(value))


def _discover(obj: Any) -> list[str]:
    """An object's float arrays and lists of float arrays, in the order it set them."""
    names = []
    for k, v in vars(obj).items():
        if k.startswith("_"):
            continue
        if _is_float_array(v) or (
            isinstance(v, (list, tuple)) and v and all(_is_float_array(e) for e in v)
        ):
            names.append(k)
    if not names:
        raise ValueError(
            f"found no float arrays among the attributes of {type(obj).__name__}; "
            "name its parameters with names=[...]"
        )
    return names


def _is_float_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind == "f"


def _check_arrays(arrays: Mapping[str, Any]) -> np.dtype:
    dtypes = set()
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"parameter {name!r} is a {type(a).__name__}, not a NumPy array")
        if a.dtype.kind != "f":
            raise TypeError(
                f"parameter {name!r} has dtype {a.dtype}; expected float64 or float32 values"
            )
        if a.ndim not in (1, 2):
            raise ValueError(f"parameter {name!r} has shape {a.shape}; expected 1-D or 2-D")
        if not np.isfinite(a).all():
            raise ValueError(f"parameter {name!r} holds NaN or Inf")
        dtypes.add(a.dtype)
    if len(dtypes) != 1:
        raise TypeError(f"parameters mix dtypes {sorted(d.name for d in dtypes)}; use one")
    dtype = dtypes.pop()
    scratch.resolve_dtype(dtype)  # float64 or float32 only
    return dtype


def is_scalar(x: Any) -> bool:
    return isinstance(x, (float, int, np.floating, np.integer)) or (
        isinstance(x, np.ndarray) and x.ndim == 0
    )


def _flatten(x: Any):
    if isinstance(x, (list, tuple)):
        for e in x:
            yield from _flatten(e)
    else:
        yield x
