"""Running both sides of an op check: the user's forward and backward, torch's autograd."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from nn_parity.torch_ref.opcheck.spec import (
    _FLOATS,
    _Spec,
    _tensor,
    _to_torch,
    _to_user,
    _what,
    keepdims_fit,
)


def _run_torch(spec: _Spec, arrays: Mapping[str, np.ndarray], dout, need_grads: bool):
    """torch's output, gradients and state, all as float arrays in the user's layout."""
    tensors = {k: _tensor(_to_torch(spec, k, v)) for k, v in arrays.items()}
    grad_in = [k for k in spec.grad_names if k in spec.inputs]
    for k in grad_in:
        tensors[k].requires_grad_(True)
    ref = spec.torch_ref
    if isinstance(ref, torch.nn.Module):
        module = copy.deepcopy(ref).to(_tdtype(spec))
        named = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        with torch.no_grad():
            for k in spec.params + spec.state:
                target = named[spec.module_names[k]]
                if not keepdims_fit(target.shape, tensors[k].shape):  # (1, D) for (D,) fits
                    raise ValueError(
                        f"{k!r} has shape {tuple(tensors[k].shape)} in torch's layout but "
                        f"{type(ref).__name__}.{spec.module_names[k]} has {tuple(target.shape)}"
                    )
                target.copy_(tensors[k].reshape(target.shape))
        out = _call_ref(module, [tensors[k] for k in spec.inputs])
        grad_at = [tensors[k] for k in grad_in] + [named[spec.module_names[k]] for k in spec.params]
        state_t = {k: named[spec.module_names[k]] for k in spec.state}
    else:
        for k in spec.params:
            tensors[k].requires_grad_(True)
        out = _call_ref(ref, [tensors[k] for k in spec.inputs + spec.params + spec.state])
        grad_at = [tensors[k] for k in spec.grad_names]
        state_t = {k: tensors[k] for k in spec.state}
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the torch reference must return one tensor, got {type(out).__name__}")
    out_np = _to_user(spec, "out", out.detach().numpy())
    state = {k: _to_user(spec, k, v.detach().numpy().copy()) for k, v in state_t.items()}
    grads = {}
    if need_grads and spec.grad_names:
        if not out.requires_grad:
            raise ValueError(
                f"the torch reference is not differentiable in {spec.grad_names[0]!r}: its "
                "output has no autograd history (list inputs that take no gradient in no_grad)"
            )
        dout_t = torch.from_numpy(np.array(_to_torch(spec, "out", dout), order="C"))
        got = torch.autograd.grad(out, grad_at, grad_outputs=dout_t, allow_unused=True)
        for k, g in zip(spec.grad_names, got):
            if g is None:
                raise ValueError(
                    f"the torch reference is not differentiable in {k!r}: autograd gives it "
                    "no gradient (list it in no_grad if it takes none)"
                )
            grads[k] = _to_user(spec, k, g.numpy())
    return out_np, grads, state


def _call_ref(ref, args: list[torch.Tensor]):
    try:
        return ref(*args)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        shapes = ", ".join(str(tuple(a.shape)) for a in args)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"the torch reference failed on tensors of shapes {shapes} (torch's layout): "
            f"{type(e).__name__}: {first}"
        ) from e


def _tdtype(spec: _Spec) -> torch.dtype:
    return torch.float64 if spec.dtype == np.float64 else torch.float32


def _copies(spec: _Spec, dtype=None) -> dict[str, np.ndarray]:
    return {
        k: v.astype(dtype if (dtype is not None and v.dtype in _FLOATS) else v.dtype, copy=True)
        for k, v in spec.arrays.items()
    }


def _run_scratch(spec: _Spec, dout):
    arrays = _copies(spec)
    res = spec.forward(**arrays)
    if not isinstance(res, tuple) or len(res) not in (2, 3):
        raise TypeError(
            f"forward must return (out, cache) or (out, cache, new_state), got {_what(res)}"
        )
    out, cache = np.asarray(res[0]), res[1]
    state = {k: arrays[k] for k in spec.state}
    if len(res) == 3:
        if not isinstance(res[2], Mapping):
            raise TypeError(f"forward's third value must be a dict of state, got {_what(res[2])}")
        state.update({k: np.asarray(v) for k, v in res[2].items() if k in state})
    grads = None if dout is None else _grads(spec, spec.backward(dout, cache))
    return out, grads, state


def _grads(spec: _Spec, got) -> dict[str, np.ndarray]:
    """The backward's gradients by name, checked for count, names and shapes."""
    names = spec.grad_names
    expected = f"one per float input and param: {', '.join(names)}"
    if isinstance(got, Mapping):
        grads = {}
        for key, g in got.items():
            name = key if key in names else key[1:] if key[:1] == "d" and key[1:] in names else None
            if name is None:
                hint = (
                    " (it takes no gradient)"
                    if key in spec.arrays or key[1:] in spec.arrays
                    else ""
                )
                raise ValueError(
                    f"backward returned a gradient for {key!r}{hint}; expected {expected}"
                )
            grads[name] = g
        missing = [n for n in names if n not in grads]
        if missing:
            raise ValueError(
                f"backward returned no gradient for {missing[0]!r}; expected {expected}"
            )
    else:
        seq = [got] if isinstance(got, np.ndarray) or np.isscalar(got) else got
        if not isinstance(seq, Sequence) and not isinstance(seq, list):
            raise TypeError(f"backward must return a dict, a tuple or an array, got {_what(got)}")
        if len(seq) != len(names):
            n = len(seq)
            raise ValueError(f"backward returned {n} gradient{'s' * (n != 1)}; expected {expected}")
        grads = dict(zip(names, seq))
    out = {}
    for name in names:
        g = grads[name]
        if g is None:
            raise ValueError(f"backward returned None for {name!r}; expected {expected}")
        g = np.asarray(g)
        shape = spec.arrays[name].shape
        if not keepdims_fit(g.shape, shape):
            raise ValueError(
                f"backward's gradient for {name!r} has shape {g.shape} but {name} has shape {shape}"
            )
        out[name] = g.reshape(shape)  # size-1 axes keepdims left: compared in {name}'s shape
    return out


def _upstream_gradients(seed: int, upstream: int, shape, dtype):
    """The seeded upstream gradients, one at a time (never all held at once)."""
    rng = np.random.default_rng(seed)
    for _ in range(upstream):
        if shape == ():  # a loss: a random scale of either sign, away from 0 and 1
            d = rng.uniform(0.5, 2.0) * rng.choice([-1.0, 1.0])
            yield np.asarray(d if abs(d - 1) > 0.05 else 1.5, dtype=dtype)
        else:
            yield rng.standard_normal(shape).astype(dtype)
