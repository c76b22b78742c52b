"""The losses, each forward and backward side by side, reduced as torch reduces them.

Every loss takes the network output `out` and targets in the form its `targets(y, C)` returns,
and reduces with `mean` (the default, as in torch) or `sum`. "mean" is torch's: over all N x C
elements for the elementwise losses (BCE, MSE), over the N samples for the class losses (CE, NLL),
and, with class weights, a weighted mean that divides by the targets' total weight.

    name        class               task        network output            targets
    bce         BCELoss             binary      sigmoid probabilities (N, 1)   (N, 1) float 0/1
    bce-logits  BCEWithLogitsLoss   binary      logits (N, 1)             (N, 1) float 0/1
    ce          CrossEntropyLoss    multiclass  logits (N, C)             (N,) int64 in 0..C-1
    nll         NLLLoss             multiclass  log_softmax (N, C)        (N,) int64 in 0..C-1
    mse         MSELoss             regression  identity (N, C)           (N, C) float

BCELoss, on probabilities p (torch.nn.BCELoss, each log clamped at -100 so that p = 0 or 1 gives
a large finite loss instead of inf):

    l_i   = -( y_i max(ln p_i, -100) + (1 - y_i) max(ln(1 - p_i), -100) )
    dl/dp = (p_i - y_i) / max(p_i (1 - p_i), 1e-12)   (1e-12 as a float32 constant, like torch)

BCEWithLogitsLoss, on logits z (torch.nn.BCEWithLogitsLoss), with p = sigmoid(z):

    l_i   = (1 - y_i) z_i - log sigmoid(z_i),   log sigmoid(z) = min(z, 0) - log(1 + e^-|z|)
    dl/dz = sigmoid(z_i) - y_i

The from-logits form never takes the log of a rounded probability, so it stays finite and exact
for logits of any size; the probability form saturates once sigmoid(z) rounds to 1. The class
losses and MSE carry their formulas in their own docstrings; docs/losses.md puts them side by side
with the textbook forms.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .activations import log_softmax, sigmoid, softmax
from .conventions import (  # noqa: F401  check_output: imported from here by callers
    DEFAULTS,
    check_conventions,
    check_output,
    l2_coefficient,
    l2_names,
    penalty,
)
from .validate import check_labels

__all__ = [
    "LOSSES",
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "Loss",
    "MSELoss",
    "NLLLoss",
    "get_loss",
]

REDUCTIONS = ("mean", "sum", "samples")
_LOG_CLAMP = -100.0  # torch.nn.BCELoss clamps each log here
# torch's floor on p (1 - p) in the BCELoss gradient: the float32 constant 1e-12, which is
# 9.9999999600e-13 once widened to float64.
_BCE_EPS = float(np.float32(1e-12))


class Loss:
    """Base class: `forward(out, y) -> (loss, cache)`, `backward(cache) -> dout`.

    `targets(y, n_outputs, dtype)` checks labels and converts them to the form `forward` takes;
    `options` are the constructor's keyword arguments besides the reduction, so that
    `type(loss)(loss.reduction, **loss.options)` builds an equal, fresh loss. The conventions
    (`scale`, `l2`, `l2_form`, `l2_n`, `l2_on`, reduction "samples"; scratch/conventions.py) are
    options of every loss; `forward` and `backward` apply the scale and the reduction's 1/N to
    what each loss's `_forward` and `_backward` compute, and `penalty(params)` is the L2 term.
    """

    name = "loss"
    task = "binary"  # "binary", "multiclass" or "regression": what targets() accepts
    output_activation = "identity"  # what the network's last layer applies before the loss
    OPTIONS: tuple[str, ...] = ()  # the keyword options the constructor takes

    def __init__(self, reduction: str = "mean", *, scale=1.0, l2=0.0, l2_form="half", l2_n=1,
                 l2_on="weights"):  # fmt: skip
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
        self.reduction = reduction
        self._r = "sum" if reduction == "samples" else reduction  # what each loss reduces with
        conv = check_conventions(scale, l2, l2_form, l2_n, l2_on)
        self.scale, self.l2, self.l2_form = conv["scale"], conv["l2"], conv["l2_form"]
        self.l2_n, self.l2_on = conv["l2_n"], conv["l2_on"]

    @property
    def options(self) -> dict:
        conv = {k: getattr(self, k) for k, v in DEFAULTS.items() if getattr(self, k) != v}
        return {**{k: getattr(self, k) for k in self.OPTIONS}, **conv}

    @property
    def declared(self) -> bool:
        """Whether any convention departs from torch's plain loss."""
        return self.reduction == "samples" or any(
            getattr(self, k) != v for k, v in DEFAULTS.items()
        ) or getattr(self, "clip", None) is not None  # fmt: skip

    def factor(self, n: int) -> float:
        """What multiplies the loss as `_forward` reduces it: the scale, over N for "samples"."""
        return self.scale / n if self.reduction == "samples" else self.scale

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        """What the output stands for, compared per element: class-1 probabilities (N, 1) for
        the binary losses, class probabilities (N, C) for the class losses, the prediction for
        MSE."""
        raise NotImplementedError

    def targets(self, y, n_outputs: int, dtype="float64") -> np.ndarray:
        """Labels checked against this loss and an `n_outputs`-wide network, in forward's form."""
        raise NotImplementedError

    def forward(self, out: np.ndarray, y: np.ndarray) -> tuple[float, tuple]:
        value, cache = self._forward(out, y)
        f = self.factor(len(out))
        return (value if f == 1 else float(value * f)), cache

    def backward(self, cache: tuple) -> np.ndarray:
        dout = self._backward(cache)
        f = self.factor(len(cache[0]))  # every loss's cache starts with the (N, ...) output
        return dout if f == 1 else dout * dout.dtype.type(f)

    def _forward(self, out: np.ndarray, y: np.ndarray) -> tuple[float, tuple]:
        raise NotImplementedError

    def _backward(self, cache: tuple) -> np.ndarray:
        raise NotImplementedError

    def penalty(self, params: Mapping[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """The L2 term c sum ||theta||^2 at `params` (canonical names) and its gradients;
        (0.0, {}) when none is declared."""
        if not self.l2:
            return 0.0, {}
        c = l2_coefficient(self.l2, self.l2_form, self.l2_n)
        return penalty(c, params, l2_names(self.l2_on, list(params)))

    def _reduce(self, per_sample: np.ndarray) -> float:
        return float(per_sample.mean() if self._r == "mean" else per_sample.sum())

    def _scale(self, dout: np.ndarray) -> np.ndarray:
        if self._r == "mean":
            dout /= dout.size  # torch divides the elementwise gradient by numel last
        return dout

    def __repr__(self) -> str:
        opts = "".join(f", {k}={_short(v)}" for k, v in self.options.items() if v is not None)
        return f"{type(self).__name__}(reduction={self.reduction!r}{opts})"


def _short(v) -> str:
    return np.array2string(v, separator=", ") if isinstance(v, np.ndarray) else repr(v)


class _BinaryLoss(Loss):
    task = "binary"

    def targets(self, y, n_outputs, dtype="float64"):
        if n_outputs != 1:
            raise ValueError(
                f"{self.name} needs 1 output (the class-1 probability), got a network with "
                f"{n_outputs} outputs; for {n_outputs} classes use ce or nll"
            )
        y = check_labels(y, "binary")
        return np.array(y, dtype=dtype).reshape(-1, 1)  # (N, 1), a copy


class BCELoss(_BinaryLoss):
    """`clip=eps` declares the clipped BCE of hand-written code: p is clipped to [eps, 1 - eps]
    (`np.clip(p, eps, 1 - eps)`) in the loss and in its gradient's formula, and the gradient
    passes through the clip to the output as the code's own backward does (torch: BCELoss on
    `p + (p.clamp(eps, 1 - eps) - p).detach()`)."""

    name = "bce"
    output_activation = "sigmoid"
    OPTIONS = ("clip",)

    def __init__(self, reduction: str = "mean", clip=None, **conventions):
        super().__init__(reduction, **conventions)
        if clip is not None:
            if isinstance(clip, bool) or not isinstance(clip, (int, float, np.floating)):
                raise TypeError(f"clip must be a number (the eps of np.clip), got {clip!r}")
            if not 0 < clip < 0.5:
                raise ValueError(f"clip must lie in (0, 0.5): p is clipped to [clip, 1 - clip], "
                                 f"got {clip!r}")  # fmt: skip
            clip = float(clip)
        self.clip = clip

    def probabilities(self, out):
        return out

    def _forward(self, out, y):
        outside = (out < 0) | (out > 1)  # NaN passes: a blow-up is the lockstep's to report
        if outside.any():
            at = tuple(int(i) for i in np.argwhere(outside)[0])
            raise ValueError(
                f"BCELoss takes probabilities in [0, 1]; got {float(out[at])} at index {at} "
                "(use bce-logits for unbounded outputs)"
            )
        if self.clip is not None:
            out = np.clip(out, self.clip, 1 - self.clip)  # (N, 1)
        with np.errstate(divide="ignore"):  # ln 0 = -inf, then clamped to -100
            log_p = np.maximum(np.log(out), _LOG_CLAMP)  # (N, 1)
            log_1mp = np.maximum(np.log1p(-out), _LOG_CLAMP)  # (N, 1)
        per_sample = (y - 1) * log_1mp - y * log_p  # (N, 1), torch's order of terms
        return self._reduce(per_sample), (out, y)

    def _backward(self, cache):
        p, y = cache
        dp = (p - y) / np.maximum((1 - p) * p, _BCE_EPS)  # (N, 1)
        return self._scale(dp)


class BCEWithLogitsLoss(_BinaryLoss):
    name = "bce-logits"
    output_activation = "identity"

    def probabilities(self, out):
        return sigmoid(out)

    def _forward(self, out, y):
        log_sigmoid = np.minimum(out, 0) - np.log1p(np.exp(-np.abs(out)))  # (N, 1)
        per_sample = (1 - y) * out - log_sigmoid  # (N, 1)
        return self._reduce(per_sample), (out, y)

    def _backward(self, cache):
        z, y = cache
        dz = sigmoid(z) - y  # (N, 1)
        return self._scale(dz)


class _ClassLoss(Loss):
    """What CE and NLL share: class-index targets, class weights, the weighted mean."""

    task = "multiclass"
    OPTIONS: tuple[str, ...] = ("weight",)

    def __init__(self, reduction: str = "mean", weight=None, **conventions):
        super().__init__(reduction, **conventions)
        self.weight = None if weight is None else _check_weight(weight)

    def targets(self, y, n_outputs, dtype="float64"):
        """(N,) int64 class indices in 0..C-1, C = n_outputs; `dtype` does not apply."""
        if n_outputs < 2:
            raise ValueError(
                f"{self.name} needs one output per class (2 or more), got a network with "
                f"{n_outputs} output; for two classes with one output use bce or bce-logits"
            )
        self._check_width(n_outputs)
        return check_labels(
            y, "multiclass", n_classes=n_outputs, context=f" for a network with {n_outputs} outputs"
        ).copy()

    def _check_width(self, C: int) -> None:
        if self.weight is not None and len(self.weight) != C:
            raise ValueError(
                f"{self.name} has {len(self.weight)} class weights but the network has "
                f"{C} outputs; give one weight per class"
            )

    def _check_forward(self, out: np.ndarray, y: np.ndarray) -> None:
        """Cheap checks on every call: a float label or a wrapped negative index would
        otherwise index the wrong class without a word."""
        if out.ndim != 2 or y.shape != (out.shape[0],):
            raise ValueError(
                f"{self.name} takes out (N, C) and y (N,), got {out.shape} and {y.shape}"
            )
        if y.dtype.kind not in "iu":
            raise TypeError(
                f"{self.name} takes class indices as integers, got dtype {y.dtype}; "
                "convert labels with loss.targets(y, C)"
            )
        self._check_width(out.shape[1])
        bad = np.flatnonzero((y < 0) | (y >= out.shape[1]))
        if bad.size:
            raise ValueError(
                f"class labels must lie in 0..{out.shape[1] - 1}; y[{bad[0]}] = {y[bad[0]]} "
                "is outside"
            )

    def _nll(self, logp: np.ndarray, y: np.ndarray):
        """torch's nll_loss: -sum_n w_{y_n} logp[n, y_n], over N or over sum_n w_{y_n}.

        Returns the loss, the target weights w_{y_n} (None unweighted) and the divisor W.
        """
        picked = logp[np.arange(len(y)), y]  # (N,)
        if self.weight is None:
            wy, total = None, len(y)
            value = -picked.sum()
        else:
            wy = self.weight.astype(logp.dtype)[y]  # (N,)
            total = wy.sum()
            value = -(picked * wy).sum()
        if self._r == "mean":
            value = value / total
        return value, wy, total

    def _dnll(self, logp: np.ndarray, y: np.ndarray, wy, total, g=1.0) -> np.ndarray:
        """torch's nll_loss backward for an upstream gradient g: -w_{y_n} g / W at the target."""
        dlogp = np.zeros_like(logp)  # (N, C)
        g = logp.dtype.type(g)
        step = -(g / logp.dtype.type(total)) if self._r == "mean" else -g
        dlogp[np.arange(len(y)), y] = step if wy is None else wy * step
        return dlogp


def _check_weight(weight) -> np.ndarray:
    if hasattr(weight, "detach"):
        weight = weight.detach().cpu().numpy()
    try:
        w = np.array(weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"class weights must be numbers, got {weight!r}") from None
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"class weights must be a 1-D array, one per class, got shape {w.shape}")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(f"class weights must be finite and >= 0; weight[{bad[0]}] = {w[bad[0]]}")
    w.flags.writeable = False
    return w


class CrossEntropyLoss(_ClassLoss):
    r"""Softmax cross-entropy from logits z (N, C), class indices y (torch.nn.CrossEntropyLoss).

    With log-probabilities lp = log_softmax(z) (max-shifted, finite for logits of any size),
    optional class weights w (all 1 when not given) and label smoothing e in [0, 1]:

        nll     = -sum_n w_{y_n} lp[n, y_n]
        smooth  = -sum_n sum_c w_c lp[n, c]
        L       = (1 - e) nll / R + (e / C) smooth / R

    with R = W = sum_n w_{y_n} for mean (N when unweighted) and R = 1 for sum. Without weights
    this is the mean cross-entropy against the smoothed target q_n = (1 - e) onehot(y_n) + e / C.

    Gradient, through lp (torch's order: nll backward, then log-softmax backward):

        dlp[n, c] = -((1 - e) w_{y_n} [c = y_n] + (e / C) w_c) / R
        dz[n]     = dlp[n] - softmax(z_n) sum_c dlp[n, c]

    which is dz[n] = w_{y_n} (softmax(z_n) - onehot(y_n)) / W without smoothing, and
    (softmax(z_n) - q_n) / N with smoothing but no weights. softmax(z_n) is e^lp, as torch has it.
    """

    name = "ce"
    output_activation = "identity"
    OPTIONS = ("weight", "label_smoothing")

    def __init__(self, reduction: str = "mean", weight=None, label_smoothing: float = 0.0,
                 **conventions):  # fmt: skip
        super().__init__(reduction, weight, **conventions)
        try:
            e = float(label_smoothing)
        except (TypeError, ValueError):
            raise TypeError(f"label_smoothing must be a number, got {label_smoothing!r}") from None
        if not 0.0 <= e <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = e

    def probabilities(self, out):
        return softmax(out)

    def _forward(self, out, y):
        self._check_forward(out, y)
        lp = log_softmax(out)  # (N, C)
        value, wy, total = self._nll(lp, y)
        e = self.label_smoothing
        if e > 0:  # torch's cross_entropy_loss_label_smoothing
            C = out.shape[1]
            w = None if self.weight is None else self.weight.astype(out.dtype)
            smooth = -(lp.sum(axis=1) if w is None else (lp * w).sum(axis=1))  # (N,)
            ret = smooth.sum()
            if self._r == "mean":
                ret = ret / (total if w is not None else out.dtype.type(len(y)))
            value = (1 - e) * value + ret * (e / C)
        return float(value), (lp, y, wy, total)

    def _backward(self, cache):
        lp, y, wy, total = cache
        e = self.label_smoothing
        dlp = self._dnll(lp, y, wy, total, g=1 - e)  # (N, C)
        if e > 0:
            C = lp.shape[1]
            g = lp.dtype.type(e / C)
            if self._r == "mean":
                g = g / (lp.dtype.type(total) if wy is not None else lp.dtype.type(len(y)))
            if self.weight is None:
                dlp -= g  # d(-sum lp)/dlp = -1 everywhere
            else:
                dlp += -g * self.weight.astype(lp.dtype)  # (N, C) via broadcast over rows
        return dlp - np.exp(lp) * dlp.sum(axis=1, keepdims=True)  # (N, C), log-softmax backward


class NLLLoss(_ClassLoss):
    r"""Negative log-likelihood of log-probabilities lp (N, C) (torch.nn.NLLLoss), the loss for a
    network ending in log_softmax (nn.LogSoftmax(dim=1) + nn.NLLLoss is nn.CrossEntropyLoss).

        L         = -sum_n w_{y_n} lp[n, y_n] / R,   R = sum_n w_{y_n} (mean), 1 (sum)
        dlp[n, c] = -w_{y_n} / R  if c = y_n, else 0

    The -1 at the target class is the whole gradient here; the softmax part comes from the
    log_softmax activation's backward, dz = dlp - e^lp sum_c dlp.
    """

    name = "nll"
    output_activation = "log_softmax"

    def probabilities(self, out):
        return np.exp(out)

    def _forward(self, out, y):
        self._check_forward(out, y)
        value, wy, total = self._nll(out, y)
        return float(value), (out, y, wy, total)

    def _backward(self, cache):
        lp, y, wy, total = cache
        return self._dnll(lp, y, wy, total)


class MSELoss(Loss):
    r"""Mean squared error of a prediction o (N, C) against real targets t (torch.nn.MSELoss).

        L     = sum_{n,c} (o_nc - t_nc)^2 / R,   R = N C (mean, over every element), 1 (sum)
        dL/do = (2 / R) (o - t)

    torch forms 2 / R in float64 and rounds it once to the network's dtype, as here. With C > 1
    the mean divides by N C, not N: the per-sample sum of squares, averaged, is C times larger.
    """

    name = "mse"
    task = "regression"
    output_activation = "identity"

    def probabilities(self, out):
        return out

    def targets(self, y, n_outputs, dtype="float64"):
        """(N, C) float targets; (N,) is taken as (N, 1) when the network has one output."""
        y = check_labels(y, "regression")
        if y.ndim == 1:
            y = y[:, None]
        if y.shape[1] != n_outputs:
            raise ValueError(
                f"mse targets have {y.shape[1]} column(s) but the network has {n_outputs} "
                "outputs; give one target column per output"
            )
        return np.array(y, dtype=dtype)  # (N, C), a copy

    def _forward(self, out, y):
        if y.shape != out.shape:
            raise ValueError(f"mse takes out and y of one shape, got {out.shape} and {y.shape}")
        y = y.astype(out.dtype, copy=False)
        diff = out - y  # (N, C)
        return self._reduce(diff * diff), (out, y)

    def _backward(self, cache):
        o, t = cache
        norm = 2.0 / o.size if self._r == "mean" else 2.0
        return o.dtype.type(norm) * (o - t)  # (N, C)


LOSSES: dict[str, type[Loss]] = {
    "bce": BCELoss,
    "bce-logits": BCEWithLogitsLoss,
    "ce": CrossEntropyLoss,
    "nll": NLLLoss,
    "mse": MSELoss,
}


def get_loss(spec: str | Loss, reduction: str = "mean", **options) -> Loss:
    """A loss from its name (one of LOSSES), e.g. `get_loss("ce", weight=w, label_smoothing=0.1)`.

    Options a loss does not take are refused by name; an option set to None counts as not given
    (so a command line can pass its unset flags through). A Loss instance is returned as it is.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(spec, Loss):
        if options:
            raise ValueError(f"options {sorted(options)} given with a ready-made {spec!r}")
        return spec
    if spec not in LOSSES:
        raise ValueError(f"unknown loss {spec!r}; expected one of {', '.join(LOSSES)}")
    cls = LOSSES[spec]
    extra = [k for k in options if k not in cls.OPTIONS + tuple(DEFAULTS)]
    if extra:
        takes = f"takes {', '.join(cls.OPTIONS)}" if cls.OPTIONS else "takes no options"
        raise ValueError(
            f"loss {spec!r} {takes}; got {', '.join(map(repr, extra))} (every loss also takes "
            f"the conventions {', '.join(DEFAULTS)}; docs/conventions.md)"
        )
    return cls(reduction, **options)
