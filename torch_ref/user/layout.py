"""How the user stores each parameter: the map from their names and layout to the canonical ones."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nn_parity import scratch
    from nn_parity.torch_ref.user.network import UserNetwork


@dataclass(frozen=True)
class Slot:
    """One user parameter and where it lives in the canonical layout."""

    user: str  # the user's name: "W1", "weights[0]", "params['W1']" is written "W1"
    canonical: str  # "layers.0.weight"
    transposed: bool  # stored (in, out): the canonical array is its transpose
    shape: tuple[int, ...]  # the user's shape

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        if self.canonical.endswith(".bias"):
            return a.reshape(-1)  # (H,), (1, H) and (H, 1) all hold the same H numbers
        return a.T if self.transposed else a

    def to_user(self, a: np.ndarray) -> np.ndarray:
        if self.canonical.endswith(".bias"):
            return np.asarray(a).reshape(self.shape)
        return np.asarray(a).T if self.transposed else np.asarray(a)

    def user_index(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """A canonical element index in the user's own indexing."""
        if self.canonical.endswith(".bias"):
            flat = index[0] if index else 0
            return tuple(int(i) for i in np.unravel_index(flat, self.shape)) if self.shape else ()
        return tuple(reversed(index)) if self.transposed else tuple(index)

    def describe(self) -> str:
        if self.canonical.endswith(".bias"):
            return f"{self.user} {self.shape} -> {self.canonical}"
        layout = "(in, out)" if self.transposed else "(out, in)"
        return f"{self.user} {self.shape} {layout} -> {self.canonical}"


@dataclass
class ParamMap:
    """The user's parameters in canonical names, both ways."""

    slots: list[Slot]
    sizes: list[int]  # [D, H_1, ..., C]
    bias: bool
    how: str = "shapes"  # "shapes" or "probe": what decided the layout

    @classmethod
    def of(cls, slots: list[Slot], width: int, how: str = "shapes") -> ParamMap:
        """The map for one assignment of the user's arrays, sizes read off its weights."""
        outs = [
            s.shape[1] if s.transposed else s.shape[0]
            for s in slots
            if s.canonical.endswith("weight")
        ]
        return cls(slots, [width, *outs], any(s.canonical.endswith("bias") for s in slots), how)

    @property
    def by_canonical(self) -> dict[str, Slot]:
        return {s.canonical: s for s in self.slots}

    @property
    def by_user(self) -> dict[str, Slot]:
        return {s.user: s for s in self.slots}

    def describe(self) -> list[str]:
        return [s.describe() for s in self.slots]


def _candidates(
    shapes: dict[str, tuple[int, ...]], width: int, layers: int, out_width: int | None
) -> list[list[Slot]]:
    """Every assignment of the arrays to layers that the shapes allow, in declaration order:
    weights, and biases, each taken in the order the user declared them (two zero biases of
    one size could otherwise trade layers, and no probe could tell)."""
    names = list(shapes)
    found: list[list[Slot]] = []

    def bias_for(h: int, used: set[str], last_b: int) -> list[tuple[int, str | None]]:
        opts: list[tuple[int, str | None]] = []
        for j, n in enumerate(names):
            s = shapes[n]
            if j < last_b or n in used:
                continue
            if math.prod(s) == h and (len(s) == 1 or 1 in s):
                opts.append((j, n))
        return [*opts, (last_b, None)]

    def search(
        l: int, w: int, used: set[str], slots: list[Slot], last_w: int, last_b: int = 0
    ) -> None:
        if l == layers:
            if len(used) == len(names):
                found.append(list(slots))
            return
        for i, n in enumerate(names):
            s = shapes[n]
            if n in used or len(s) != 2 or i < last_w:
                continue
            for transposed, (d, h) in ((False, (s[1], s[0])), (True, s)):
                if d != w:
                    continue
                if l == layers - 1 and out_width is not None and h != out_width:
                    continue
                for j, b in bias_for(h, used | {n}, last_b):
                    new = [Slot(n, f"layers.{l}.weight", transposed, s)]
                    if b is not None:
                        new.append(Slot(b, f"layers.{l}.bias", False, shapes[b]))
                    used_now = used | {n} | ({b} if b else set())
                    search(l + 1, h, used_now, slots + new, i + 1, j + (b is not None))

    search(0, width, set(), [], 0)
    # one bias per layer or none at all; a weight shaped (H, H) appears twice, once per layout
    unique, seen = [], set()
    for c in found:
        has_bias = {s.canonical.split(".")[1] for s in c if s.canonical.endswith("bias")}
        if has_bias and len(has_bias) != layers:
            continue
        key = tuple(c)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _role(name: str) -> str | None:
    """ "weight" or "bias" when the user's name says which, else None."""
    last = re.sub(r"\[\d+\]", "", name.split(".")[-1]).lower()
    if "bias" in last or re.fullmatch(r"b_?\d*|b_\w+", last):
        return "bias"
    if "weight" in last or "kernel" in last or re.fullmatch(r"w_?\d*|w_\w+", last):
        return "weight"
    return None


def _layout_error(shapes: dict[str, tuple[int, ...]], width: int, layers: int, out_width) -> str:
    """Name the first array that fits no layer of the chain D -> ... -> C."""
    chain = f"{layers} layers from {width} inputs" + (
        f" to {out_width} outputs" if out_width is not None else ""
    )
    weights = [n for n, s in shapes.items() if len(s) == 2 and _role(n) != "bias"]
    biases = [n for n, s in shapes.items() if _role(n) == "bias"]
    if all(_role(n) for n in shapes):  # the names say which is which: count them
        if len(weights) < layers:
            return (
                f"{layers} activations make {layers} layers, but the parameters hold "
                f"{len(weights)} weights ({', '.join(weights)}): a weight missing, or an "
                "activation too many?"
            )
        if len(weights) > layers:
            prefix = f"{layers} activations for {len(weights)} weights ({', '.join(weights)}): "
            return prefix + _left_over(shapes, weights, width, layers, chain)
        if biases and len(biases) != layers:
            return (
                f"the parameters hold {len(biases)} biases ({', '.join(biases)}) for {layers} "
                "layers: a bias missing or extra?"
            )
    return _left_over(shapes, weights, width, layers, chain)


def _left_over(shapes, weights: list[str], width: int, layers: int, chain: str) -> str:
    """Walk the chain of weights from the input width; name the first that does not fit."""
    used: list[str] = []
    w = width
    for n, s in shapes.items():
        if len(s) != 2 or n not in weights:
            continue
        if len(used) == layers:
            return (
                f"parameter {n!r} of shape {s} is left over: the {chain} use "
                f"{', '.join(used)} (an extra parameter?)"
            )
        if w not in s:
            return (
                f"parameter {n!r} of shape {s} fits no layer of {chain}: the next takes {w} inputs"
            )
        used.append(n)
        w = s[1] if s[0] == w else s[0]
    return (
        f"the parameters {', '.join(f'{n} {s}' for n, s in shapes.items())} do not form {chain} "
        "(a missing or extra parameter?)"
    )


def output_width(loss: scratch.Loss) -> int | None:
    """The output width the loss fixes, which rules out layouts the shapes alone allow: one
    column for a binary loss; the class or target count is the last weight's to say."""
    return 1 if loss.task == "binary" else None


def resolve_layout(net: UserNetwork, X: np.ndarray, Y: np.ndarray) -> ParamMap:
    """`net`'s layout worked out from the data and kept on it: the one place `net.pmap` is set."""
    net.pmap = layout_of(net, X, Y, output_width(net.loss))
    return net.pmap


def layout_of(net: UserNetwork, X: np.ndarray, Y: np.ndarray, out_width: int | None) -> ParamMap:
    """How `net` stores its parameters, from the shapes, the input width and, where they cannot
    tell, a probe. Nothing is changed: not `net`, and not the user's arrays, whatever the probe
    runs.
    """
    arrays = net.access.read()
    shapes = {n: tuple(a.shape) for n, a in arrays.items()}
    layers = len(net.activations)
    cands = _candidates(shapes, X.shape[1], layers, out_width)
    for key, value in net.layout.items():
        cands = [
            c for c in cands if all(s.transposed == (value == "in,out") for s in c if s.user == key)
        ]
    if not cands:
        raise ValueError(_layout_error(shapes, X.shape[1], layers, out_width))
    # names settle what shapes leave open: `biases` (5, 1) is no weight, `W2` (1, 5) no bias
    named = [
        c for c in cands if all(_role(s.user) in (None, s.canonical.split(".")[-1]) for s in c)
    ]
    cands = named or cands
    if len(cands) > 1:
        return ParamMap.of(_probe(net, cands, X, Y), X.shape[1], "probe")
    return ParamMap.of(cands[0], X.shape[1])


def _probe(net: UserNetwork, cands: list[list[Slot]], X: np.ndarray, Y: np.ndarray) -> list[Slot]:
    """The candidate layout under which the description reproduces the user's own numbers: its
    forward's output, else its gradients. A fused step is never probed: it would move the
    user's own optimizer state (their momentum, their step count), which nothing restores."""
    if net.forward is None and net.form == "step":
        hint = _square_hint(cands)
        raise ValueError(
            f"cannot tell how parameter {hint!r} is stored from shapes alone; give forward= "
            f"(nn-parity probes it) or layout={{{hint!r}: 'in,out'}} (x @ W) or "
            f"layout={{{hint!r}: 'out,in'}} (W @ x)"
        )
    rows = slice(0, min(len(X), 16))
    Xp, Yp = X[rows], Y[rows]
    saved = {n: np.array(a) for n, a in net.access.read().items()}
    errors = []
    try:
        for cand in cands:
            trial = replace(net, pmap=ParamMap.of(cand, X.shape[1]))  # `net` keeps its own
            desc = trial.description()
            out_d, cache_d = desc.forward(Xp.astype(desc.dtype))
            if net.forward is not None:
                mine, _ = trial.call_forward(Xp)
                ref = out_d
            else:
                _, lc = net.loss.forward(out_d, net.loss.targets(Yp, out_d.shape[1], desc.dtype))
                ref_g = desc.backward(net.loss.backward(lc), cache_d)
                _, g = trial.call_grads(Xp, Yp)
                mine = np.concatenate([np.ravel(g[k]) for k in ref_g])
                ref = np.concatenate([np.ravel(ref_g[k]) for k in ref_g])
            errors.append(
                float(np.linalg.norm(np.ravel(mine) - np.ravel(ref)))
                / max(float(np.linalg.norm(ref)), 1e-300)
            )
    finally:
        for n, a in saved.items():
            net.access.write(n, a)
    order = np.argsort(errors)
    best = int(order[0])
    runner_up = errors[int(order[1])]
    if (errors[best] < 1e-6 and runner_up > 1e-6) or errors[best] * 100 < runner_up:
        return cands[best]
    if errors[best] > max(1e-6, 1e4 * float(np.finfo(net.dtype).eps)):
        raise ValueError(_disagrees(net, cands, errors))
    hint = _square_hint(cands)
    raise ValueError(
        f"cannot tell how parameter {hint!r} is stored: its shape fits both layouts and the "
        f"probe could not decide; pass layout={{{hint!r}: 'in,out'}} (x @ W) "
        f"or layout={{{hint!r}: 'out,in'}} (W @ x)"
    )


def _disagrees(net: UserNetwork, cands: list[list[Slot]], errors: list[float]) -> str:
    """What the probe saw when no layout reproduces the user's own numbers: a finding about
    their code (a wrong forward or gradient), not a layout to declare."""
    if net.forward is not None:
        what, fn = "output", net.names["forward"]
    else:
        what, fn = "gradients", net.names["fn"]
    differ = [k for k in range(len(cands[0])) if len({c[k].describe() for c in cands}) > 1]
    ranked = sorted(range(len(cands)), key=lambda i: errors[i])
    tried = "; ".join(
        f"{', '.join(cands[i][k].describe() for k in differ)}: relative difference {errors[i]:.3g}"
        for i in ranked
    )
    who = fn if fn.startswith("your ") else f"your {fn}"
    best = cands[ranked[0]]
    hint = {best[k].user: "in,out" if best[k].transposed else "out,in" for k in differ}
    return (
        f"{who} disagrees with every layout its shapes allow: under no way of storing the "
        f"parameters does the network they describe give {who}'s {what} (closest first: "
        f"{tried}). That is a finding about your code, not a layout to declare; to locate it, "
        f"give the layout you meant (layout={hint!r} is the closest) and nn-parity compares "
        "it quantity by quantity"
    )


def _square_hint(cands: list[list[Slot]]) -> str:
    """The parameter whose layout the candidates disagree on: a square one, as a rule."""
    square = sorted(
        {s.user for c in cands for s in c if len(s.shape) == 2 and s.shape[0] == s.shape[1]}
    )
    return square[0] if square else cands[0][0].user
