"""Binary cross-entropy, on probabilities and from logits, forward and backward side by side.

Both take the network output `out` of shape (N, 1) and labels `y` of the same shape, and reduce
with `mean` (the default, as in torch) or `sum`. With mean reduction every gradient carries the
factor 1/N; with sum it does not.

BCELoss, on probabilities p (torch.nn.BCELoss, each log clamped at -100 so that p = 0 or 1 gives
a large finite loss instead of inf):

    l_i   = -( y_i max(ln p_i, -100) + (1 - y_i) max(ln(1 - p_i), -100) )
    dl/dp = (p_i - y_i) / max(p_i (1 - p_i), 1e-12)   (1e-12 as a float32 constant, like torch)

BCEWithLogitsLoss, on logits z (torch.nn.BCEWithLogitsLoss), with p = sigmoid(z):

    l_i   = (1 - y_i) z_i - log sigmoid(z_i),   log sigmoid(z) = min(z, 0) - log(1 + e^-|z|)
    dl/dz = sigmoid(z_i) - y_i

The from-logits form never takes the log of a rounded probability, so it stays finite and exact
for logits of any size; the probability form saturates once sigmoid(z) rounds to 1.
"""

from __future__ import annotations

import numpy as np

from .activations import sigmoid

__all__ = ["LOSSES", "BCELoss", "BCEWithLogitsLoss", "Loss", "get_loss"]

REDUCTIONS = ("mean", "sum")
_LOG_CLAMP = -100.0  # torch.nn.BCELoss clamps each log here
# torch's floor on p (1 - p) in the BCELoss gradient: the float32 constant 1e-12, which is
# 9.9999999600e-13 once widened to float64.
_BCE_EPS = float(np.float32(1e-12))


class Loss:
    """Base class: `forward(out, y) -> (loss, cache)`, `backward(cache) -> dout`."""

    name = "loss"
    output_activation = "identity"  # what the network's last layer applies before the loss

    def __init__(self, reduction: str = "mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
        self.reduction = reduction

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        """The class-1 probabilities the output stands for."""
        raise NotImplementedError

    def forward(self, out: np.ndarray, y: np.ndarray) -> tuple[float, tuple]:
        raise NotImplementedError

    def backward(self, cache: tuple) -> np.ndarray:
        raise NotImplementedError

    def _reduce(self, per_sample: np.ndarray) -> float:
        return float(per_sample.mean() if self.reduction == "mean" else per_sample.sum())

    def _scale(self, dout: np.ndarray) -> np.ndarray:
        if self.reduction == "mean":
            dout /= dout.size  # torch divides the elementwise gradient by numel last
        return dout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class BCELoss(Loss):
    name = "bce"
    output_activation = "sigmoid"

    def probabilities(self, out):
        return out

    def forward(self, out, y):
        outside = (out < 0) | (out > 1)  # NaN passes: a blow-up is the lockstep's to report
        if outside.any():
            at = tuple(int(i) for i in np.argwhere(outside)[0])
            raise ValueError(
                f"BCELoss takes probabilities in [0, 1]; got {float(out[at])} at index {at} "
                "(use bce-logits for unbounded outputs)"
            )
        with np.errstate(divide="ignore"):  # ln 0 = -inf, then clamped to -100
            log_p = np.maximum(np.log(out), _LOG_CLAMP)  # (N, 1)
            log_1mp = np.maximum(np.log1p(-out), _LOG_CLAMP)  # (N, 1)
        per_sample = (y - 1) * log_1mp - y * log_p  # (N, 1), torch's order of terms
        return self._reduce(per_sample), (out, y)

    def backward(self, cache):
        p, y = cache
        dp = (p - y) / np.maximum((1 - p) * p, _BCE_EPS)  # (N, 1)
        return self._scale(dp)


class BCEWithLogitsLoss(Loss):
    name = "bce-logits"
    output_activation = "identity"

    def probabilities(self, out):
        return sigmoid(out)

    def forward(self, out, y):
        log_sigmoid = np.minimum(out, 0) - np.log1p(np.exp(-np.abs(out)))  # (N, 1)
        per_sample = (1 - y) * out - log_sigmoid  # (N, 1)
        return self._reduce(per_sample), (out, y)

    def backward(self, cache):
        z, y = cache
        dz = sigmoid(z) - y  # (N, 1)
        return self._scale(dz)


LOSSES: dict[str, type[Loss]] = {"bce": BCELoss, "bce-logits": BCEWithLogitsLoss}


def get_loss(spec: str | Loss, reduction: str = "mean") -> Loss:
    """A loss from its name (`bce` or `bce-logits`)."""
    if isinstance(spec, Loss):
        return spec
    if spec not in LOSSES:
        raise ValueError(f"unknown loss {spec!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[spec](reduction)
