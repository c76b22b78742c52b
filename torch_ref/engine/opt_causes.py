"""Causes of an optimizer-state divergence a recomputation confirms.

The buffer is recomputed from torch's state as the step found it (which both sides still
shared) and torch's gradient of the step (which agreed), under each hypothesised bug; a cause is
named only when the recomputation equals scratch's buffer to rounding and differs from torch's.

    constant-swapped   beta and 1 - beta exchanged: (1 - beta) s + beta u
    constant-dropped   the (1 - beta) or (1 - dampening) factor of the new term left out
    hyper-ignored      a hyper-parameter given to the run replaced by torch's default
    wrong-start        the buffer starting from another value than torch's (0; the first
                       gradient for momentum)
    stored-corrected   Adam's bias correction stored in the buffer, not applied to a copy
    not-squared        g where g^2 is meant
    step-count         the step count off by one
"""

from __future__ import annotations

import numpy as np

__all__ = ["state_cause"]

_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "alpha": 0.99}  # torch's


def _rule(buffer: str, hyper: dict) -> tuple[float, bool, str] | None:
    """(beta, squared, the hyper-parameter's name) of `buffer`'s average, torch's definition."""
    if buffer == "exp_avg":
        return hyper["betas"][0], False, "beta1"
    if buffer == "exp_avg_sq":
        return hyper["betas"][1], True, "beta2"
    if buffer == "square_avg":
        return hyper["alpha"], True, "alpha"
    return None


def _average_hypotheses(buffer, prev, g, hyper, first: bool):
    beta, squared, hname = _rule(buffer, hyper)  # type: ignore[misc]
    u = g * g if squared else g
    yield (
        (1 - beta) * prev + beta * u,
        "constant-swapped",
        (f"{hname} and 1 - {hname} exchanged: (1 - {hname}) s + {hname} u"),
    )
    yield beta * prev + u, "constant-dropped", f"the (1 - {hname}) factor of the new term left out"
    if squared:
        yield beta * prev + (1 - beta) * g, "not-squared", "g where g^2 is meant"
    default = _DEFAULTS[hname]
    if default != beta:
        yield (
            default * prev + (1 - default) * u,
            "hyper-ignored",
            f"the run's {hname} = {beta:g} ignored: torch's default {default:g} used",
        )
    step = hyper.get("_step")
    if step and hname != "alpha":
        right = beta * prev + (1 - beta) * u
        yield (
            right / (1 - beta**step),
            "stored-corrected",
            (
                f"the bias correction 1 / (1 - {hname}^t) applied to the stored buffer, "
                "where torch keeps the raw average and corrects a copy"
            ),
        )
    if first:
        yield None, "wrong-start", f"starts from another value than torch's 0 ({hname})"


def _momentum_hypotheses(prev, g, hyper, first: bool):
    mu, d = hyper.get("momentum", 0.0), hyper.get("dampening", 0.0)
    if first:
        if d:
            yield (
                (1 - d) * g,
                "wrong-start",
                (
                    "the momentum buffer starts from 0, where torch starts it at the first "
                    "gradient (b = g, undamped)"
                ),
            )
        return
    if d:
        yield mu * prev + g, "hyper-ignored", f"the run's dampening = {d:g} ignored"
    yield (1 - mu) * prev + mu * g, "constant-swapped", "mu and 1 - mu exchanged"


def state_cause(buffer: str, s, t, prev, g, hyper: dict, label: str) -> dict | None:
    """The cause of scratch's `buffer` (`s`) differing from torch's (`t`): `prev` is torch's
    buffer as the step found it (None at its first step), `g` torch's gradient of the step."""
    s, t, g = (np.asarray(v, np.float64) for v in (s, t, g))
    first = prev is None
    if buffer == "step":
        if s.size == 1 and abs(float(s) - float(t)) == 1:
            return _named("step-count", f"the step count is off by one ({float(s):g} where "
                          f"torch counts {float(t):g})", label)  # fmt: skip
        return None
    if buffer == "momentum_buffer":
        hyps = _momentum_hypotheses(
            None if first else np.asarray(prev, np.float64), g, hyper, first
        )
    elif _rule(buffer, hyper) is not None:
        p = np.zeros_like(t) if first else np.asarray(prev, np.float64)
        hyps = _average_hypotheses(buffer, p, g, hyper, first)
    else:
        return None
    scale = max(float(np.linalg.norm(t)), 1e-300)
    found = []
    for h, cause, words in hyps:
        if h is None:
            h = _start(buffer, s, g, hyper)
            if h is None:
                continue
            words = f"{words}: it starts at {float(h[1]):.6g}"
            h = h[0]
        apart = float(np.linalg.norm(h - t)) > 1e-6 * scale
        if apart and float(np.linalg.norm(s - h)) <= 1e-9 * scale:
            found.append((cause, words))
    if not found:
        return None
    out = _named(found[0][0], "; or, fitting the same numbers, ".join(w for _, w in found), label)
    if len(found) > 1:
        out["also"] = [c for c, _ in found[1:]]
    return out


def _start(buffer, s, g, hyper):
    """(the recomputed buffer, c) when scratch's first value is torch's average started at a
    constant c everywhere instead of at 0."""
    beta, squared, _ = _rule(buffer, hyper)  # type: ignore[misc]
    u = g * g if squared else g
    c = (s - (1 - beta) * u) / beta
    c0 = float(np.median(c))
    if c0 == 0 or not np.allclose(c, c0, rtol=1e-9, atol=0):
        return None
    return beta * c0 + (1 - beta) * u, c0


def _named(cause: str, words: str, label: str) -> dict:
    return {
        "cause": cause,
        "explanation": f"{label}: recomputed exactly from torch's state and gradient when {words}",
    }
