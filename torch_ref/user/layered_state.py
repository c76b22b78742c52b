"""What the user's own layered network keeps besides its parameters: dropout masks and
batchnorm running statistics, where each is read and how it is checked.

Dropout: each dropout layer's mask, checked and turned into the keep-pattern torch's
`GivenMask` applies.

`adapt_layers(..., dropout={3: "layers[3].mask"})` names, for each dropout layer of the spec
(by its index), where the user's code keeps the mask it drew this step:

    a path       read like a parameter name, on the object or dict the parameters were given
                 in: "layers[3].mask" (a layer object storing `self.mask`), "masks[0]", ...
    a function   `() -> mask`, called once the step has run: `lambda: model.cache["drop1"][1]`
                 for code that keeps its masks elsewhere (CS231n's `dropout_forward` caches
                 `(dropout_param, mask)`)

The mask has the shape of the layer's input as the user's code holds it ((N, H, W, C) in
NHWC), and holds 0 and one other value: 1 (a keep-pattern; the code scales elsewhere) or
1 / (1 - p) for the spec's p (inverted dropout's scaled mask, as CS231n's `(rand < keep) /
keep`). It is read after the user's forward (if given) and again after their step, and must be
the same mask: nn-parity compares one forward per step, the one torch runs with this mask.

Running statistics: `adapt_layers(..., stats={1: "layers[1]"})` names, for a batchnorm layer,
where the code keeps its running mean and variance: a path or a function `() -> holder`, the
holder a dict with "running_mean" and "running_var" (CS231n's `bn_param`), an object with those
attributes, or a pair (mean, var). Read after each step and compared with torch's buffers,
which start from the user's values when the code has them before the first step (else from
torch's zeros and ones, as CS231n's lazily created ones do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from nn_parity.scratch import sequential as sq
from nn_parity.torch_ref.user.network import UserCodeError


def check_dropout(dropout: Any, seq: sq.Sequential, spec: str) -> dict[int, str | Callable]:
    """`dropout=` checked against the spec: one source per dropout layer, and only those."""
    layers = [l for l, layer in enumerate(seq.layers) if isinstance(layer, sq.Dropout)]
    tokens = [t.strip() for t in spec.split(",")]
    if dropout is None:
        dropout = {}
    _check_sources(
        "dropout",
        dropout,
        layers,
        spec,
        kind="a dropout",
        example="{3: 'layers[3].mask'}",
        what="the mask's path ('layers[{l}].mask') or a function returning it",
    )
    missing = [l for l in layers if l not in dropout]
    if missing:
        l = missing[0]
        raise ValueError(
            f"layer {l} ({tokens[l]!r}) of the spec drops units, but no mask was named for it: "
            f"give dropout={{{l}: 'path.to.mask'}} (where your code keeps the mask it drew) or "
            f"dropout={{{l}: lambda: mask}}"
        )
    return {int(k): v for k, v in dropout.items()}


def _check_sources(
    name: str, given: Any, layers: list[int], spec: str, *, kind: str, example: str, what: str
) -> None:
    """`dropout=` or `stats=`: a mapping from layer indices of `kind` layers of the spec to a
    path in the user's object or a function; a one-line refusal naming the value otherwise."""
    if not isinstance(given, Mapping):
        raise TypeError(
            f"{name} must map {kind} layer's index to {what.format(l='K')}, e.g. "
            f"{name}={example}; got {given!r}"
        )
    tokens = [t.strip() for t in spec.split(",")]
    for key, source in given.items():
        if not isinstance(key, (int, np.integer)) or key not in layers:
            where = ", ".join(f"{l} ({tokens[l]!r})" for l in layers) or "none"
            raise ValueError(
                f"{name} names layer {key!r}, not {kind} layer of the spec {spec!r} "
                f"({kind.removeprefix('a ')} layers: {where})"
            )
        if not (isinstance(source, str) or callable(source)):
            raise TypeError(
                f"{name}[{key}] must be {what.format(l=key)}, got {type(source).__name__} "
                f"{source!r}"
            )


def read_masks(net: Any, n: int) -> dict[int, np.ndarray]:
    """This step's masks, by layer, as torch's keep-patterns: bool, (N, C, H, W) or (N, D)."""
    out = {}
    for l, source in net.dropout.items():
        out[l] = keep_pattern(net, l, _fetch(net, l, source), n)
    return out


def _fetch(net: Any, l: int, source: str | Callable) -> Any:
    if callable(source):
        try:
            return source()
        except Exception as err:
            raise UserCodeError(
                f"the mask function for dropout layer {l} raised {type(err).__name__}: {err}"
            ) from err
    try:
        return net.access.get(source)
    except ValueError:
        raise UserCodeError(
            f"no mask at {source!r} for dropout layer {l} after your step: name where your "
            "code keeps the mask it drew (dropout={l: 'layers[3].mask'})"
        ) from None


def keep_pattern(net: Any, l: int, mask: Any, n: int) -> np.ndarray:
    """The user's mask for layer `l` checked (shape, values) and returned as a bool pattern in
    torch's layout."""
    layer, what = net.seq.layers[l], f"the mask of dropout layer {l}"
    shape = (n, *net.seq.shapes[l])  # the layer's input, canonical
    if net.layout == "NHWC" and len(shape) == 4:
        shape = (shape[0], shape[2], shape[3], shape[1])
    m = np.asarray(mask)
    if m.shape != shape:
        raise UserCodeError(
            f"{what} has shape {m.shape}; expected {shape}, the shape of the layer's input "
            f"for {n} samples in layout {net.layout}"
        )
    keep = m != 0
    values = np.unique(m[keep].astype(np.float64)) if keep.any() else np.ones(1)
    scaled = 1 / (1 - layer.p)
    ok = [v for v in (1.0, scaled) if np.allclose(values, v, rtol=4 * _eps(m), atol=0)]
    if not ok or not np.isfinite(m).all():
        bad = values[0] if len(values) == 1 else values[np.argmax(np.abs(values - scaled))]
        raise UserCodeError(
            f"{what} holds {float(bad):g}; expected 0 and 1, or 0 and {scaled:g} = 1 / (1 - "
            f"{layer.p:g}) for the spec's p = {layer.p:g}"
        )
    if net.layout == "NHWC" and keep.ndim == 4:
        keep = keep.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(keep)


def _eps(m: np.ndarray) -> float:
    return float(np.finfo(m.dtype if m.dtype.kind == "f" else np.float64).eps)


def same_masks(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> int | None:
    """The first layer whose mask differs between two reads, or None."""
    return next((l for l in a if not np.array_equal(a[l], b[l])), None)


STATS = ("running_mean", "running_var")


def check_stats(stats: Any, seq: sq.Sequential, spec: str) -> dict[int, str | Callable]:
    """`stats=` checked against the spec: batchnorm layers only, a path or a function each."""
    layers = [l for l, layer in enumerate(seq.layers) if isinstance(layer, sq.BatchNorm)]
    if stats is None:
        return {}
    _check_sources(
        "stats",
        stats,
        layers,
        spec,
        kind="a batchnorm",
        example="{1: 'layers[1]'}",
        what="a path ('layers[{l}]') or a function returning the running statistics",
    )
    return {int(k): v for k, v in stats.items()}


def read_stats(net: Any, l: int, *, missing_ok: bool = False) -> tuple | None:
    """(running_mean, running_var) of batchnorm layer l as (C,) arrays in the network's dtype;
    None if the code has none yet and `missing_ok`."""
    live = live_stats(net, l, missing_ok=missing_ok)
    if live is None:
        return None
    c = net.seq.layers[l].c
    return tuple(np.array(v.reshape(c), dtype=net.dtype) for v in live)


def restore_stats(net: Any, saved: Mapping[int, tuple | None]) -> None:
    """The running statistics set back to `saved` (as `read_stats` gave them), in the user's
    own arrays: a rerun of the step must not advance them twice."""
    for l, values in saved.items():
        live = live_stats(net, l, missing_ok=True)
        for a, v in zip(live or (), values or (), strict=False):
            np.copyto(a, v.reshape(a.shape), casting="unsafe")


def live_stats(net: Any, l: int, *, missing_ok: bool = False) -> tuple | None:
    """The user's own (running_mean, running_var) arrays of batchnorm layer l, checked."""
    source = net.stats[l]
    try:
        holder = source() if callable(source) else net.access.get(source)
        if isinstance(holder, (tuple, list)) and len(holder) == 2:
            pair = holder
        elif isinstance(holder, Mapping):
            pair = tuple(holder[b] for b in STATS)
        else:
            pair = tuple(getattr(holder, b) for b in STATS)
    except (KeyError, AttributeError, ValueError, IndexError, TypeError) as err:
        if missing_ok:
            return None
        raise UserCodeError(
            f"found no running statistics of batchnorm layer {l} at "
            f"{repr(source) if isinstance(source, str) else 'your function'}: "
            f"{type(err).__name__} {err}; expected running_mean and running_var"
        ) from None
    c = net.seq.layers[l].c
    out = tuple(np.asarray(v) for v in pair)
    for b, v in zip(STATS, out, strict=True):
        if v.size != c:
            raise UserCodeError(
                f"the running statistics of batchnorm layer {l}: {b} has shape {v.shape}; "
                f"expected ({c},)"
            )
    return out


__all__ = ["check_dropout", "check_stats", "keep_pattern", "live_stats", "read_masks",
           "read_stats", "restore_stats", "same_masks"]  # fmt: skip
