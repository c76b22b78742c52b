"""Loss conventions: the cost as the user wrote it, declared once on the loss.

torch's losses have one form each; hand-written code often has another. A convention is
declared on the scratch loss (`get_loss("mse", scale=0.5, l2=0.1)`), and the torch side is
built from the same declaration, so both compute the same objective:

    objective = scale * (sum of the per-element losses) / R  +  c * sum_{theta in l2_on} ||theta||^2

    reduction   R                                         torch
    mean        torch's mean: N C (bce, mse), N or the     reduction="mean"
                targets' total weight (ce, nll)
    samples     N, the samples in the batch                reduction="sum", times 1/N
    sum         1                                          reduction="sum"

    l2_form     c                    gradient term         as written in code
    half        l2 / (2 l2_n)        (l2 / l2_n) theta     0.5 * lmbda * ||W||^2 (l2_n=1);
                                                           network2.py's lmbda/n (l2_n=n)
    full        l2 / l2_n            2 (l2 / l2_n) theta   lmbda * ||W||^2

`l2_on` is "weights" (every layer's weight, no bias), "all", or a tuple of parameter names.
NumPy only; docs/conventions.md has the table with the torch code each row stands for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["DEFAULTS", "check_conventions", "check_output", "l2_coefficient", "l2_names", "penalty"]

REDUCTIONS = ("mean", "samples", "sum")
L2_FORMS = ("half", "full")
DEFAULTS = {"scale": 1.0, "l2": 0.0, "l2_form": "half", "l2_n": 1, "l2_on": "weights"}


def _number(name: str, v, *, positive: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {v!r}")
    v = float(v)
    if not np.isfinite(v) or v < 0 or (positive and v == 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {need}, got {v!r}")
    return v


def check_conventions(scale, l2, l2_form, l2_n, l2_on) -> dict:
    """The declaration checked, each refusal naming the value: a scale > 0, an l2 >= 0, a form
    of L2_FORMS, a positive integer l2_n, l2_on "weights", "all" or parameter names."""
    out = {"scale": _number("scale", scale, positive=True), "l2": _number("l2", l2, positive=False)}
    if l2_form not in L2_FORMS:
        raise ValueError(
            f"l2_form must be 'half' (0.5 * l2 * ||W||^2) or 'full' (l2 * ||W||^2), got {l2_form!r}"
        )
    if isinstance(l2_n, bool) or not isinstance(l2_n, (int, np.integer)) or l2_n < 1:
        raise ValueError(
            f"l2_n must be a positive integer (the training-set size n in lmbda / n), got {l2_n!r}"
        )
    if isinstance(l2_on, str):
        if l2_on not in ("weights", "all"):
            raise ValueError(
                f"l2_on must be 'weights', 'all' or a list of parameter names, got {l2_on!r}"
            )
    elif isinstance(l2_on, Sequence) and l2_on and all(isinstance(n, str) for n in l2_on):
        l2_on = tuple(l2_on)
    else:
        raise ValueError(
            f"l2_on must be 'weights', 'all' or a non-empty list of parameter names, got {l2_on!r}"
        )
    if out["l2"] == 0 and (l2_form, l2_n, l2_on) != ("half", 1, "weights"):
        raise ValueError("l2_form, l2_n and l2_on describe an L2 term: give its l2 (lambda) too")
    return {**out, "l2_form": l2_form, "l2_n": int(l2_n), "l2_on": l2_on}


def l2_coefficient(l2: float, l2_form: str, l2_n: int) -> float:
    """c in c * ||theta||^2: l2 / (2 n) for the half form, l2 / n for the full one."""
    return l2 / l2_n / (2.0 if l2_form == "half" else 1.0)


def l2_names(l2_on, names: Sequence[str]) -> list[str]:
    """The parameters the L2 term covers, among `names` (canonical: layers.{l}.weight/bias)."""
    if l2_on == "all":
        return list(names)
    if l2_on == "weights":
        return [n for n in names if n.endswith("weight")]
    unknown = [n for n in l2_on if n not in names]
    if unknown:
        raise ValueError(
            f"l2_on names {', '.join(map(repr, unknown))}, which is not a parameter "
            f"({', '.join(names)})"
        )
    return [n for n in names if n in l2_on]


def penalty(c: float, params: Mapping[str, np.ndarray], names: Sequence[str]):
    """c * sum ||theta||^2 over `names`, and its gradient 2 c theta for each."""
    value = sum(float(np.sum(params[n].astype(np.float64) ** 2)) for n in names)
    grads = {n: params[n].dtype.type(2 * c) * params[n] for n in names}
    return c * value, grads


# The last activations whose output stays in [0, 1], what BCELoss can take (torch refuses
# anything outside at run time); every other loss takes any output, as torch's do.
_PROBABILITY_OUTPUTS = ("sigmoid", "softmax")


def check_output(loss, activation: str) -> None:
    """Refuse only what cannot be computed: bce on an output that can leave [0, 1]. Any other
    pairing is one torch accepts (a sigmoid before mse, a softmax before ce, ...)."""
    if loss.name == "bce" and activation not in _PROBABILITY_OUTPUTS:
        raise ValueError(
            f"loss 'bce' takes probabilities in [0, 1], but the last layer's {activation!r} "
            "can leave [0, 1] (torch's BCELoss refuses such input); end in 'sigmoid', or use "
            "'bce-logits' on the logits"
        )
