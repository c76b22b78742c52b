"""Hand-written optimizers whose state lives in the user's own objects: Adam's moments in
`self.m` and `self.v` with a step count `self.t`, RMSprop's `self.s`, momentum's `self.v`, each
a dict keyed by parameter name, as courses write them.

NumPy only. `OPTIMIZERS` maps a name to `(class, torch's name and options, the state by torch's
buffer name and the attribute holding it)`; `BUGS` maps a name to `(class, the optimizer it
breaks, the item it must be located at, the cause it must get, what is wrong)`.
"""

from __future__ import annotations

import numpy as np


class Adam:
    def __init__(self, lr, beta1=0.8, beta2=0.99, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m, self.v, self.t = {}, {}, 0

    def moments(self, k, g):
        self.m[k] = self.beta1 * self.m.get(k, 0.0) + (1 - self.beta1) * g
        self.v[k] = self.beta2 * self.v.get(k, 0.0) + (1 - self.beta2) * g * g

    def step(self, params, grads):
        self.t += 1
        for k in params:
            self.moments(k, grads[k])
            step_size = self.lr / (1 - self.beta1**self.t)
            denom = np.sqrt(self.v[k]) / np.sqrt(1 - self.beta2**self.t) + self.eps
            params[k] -= step_size * self.m[k] / denom


class RMSprop:
    def __init__(self, lr, alpha=0.9, eps=1e-8):
        self.lr, self.alpha, self.eps = lr, alpha, eps
        self.s = {}

    def average(self, k, g):
        self.s[k] = self.alpha * self.s.get(k, 0.0) + (1 - self.alpha) * g * g

    def step(self, params, grads):
        for k in params:
            self.average(k, grads[k])
            params[k] -= self.lr * grads[k] / (np.sqrt(self.s[k]) + self.eps)


class Momentum:
    def __init__(self, lr, mu=0.9, dampening=0.5):
        self.lr, self.mu, self.dampening = lr, mu, dampening
        self.v = {}

    def velocity(self, k, g):
        if k not in self.v:
            self.v[k] = np.array(g, dtype=float)  # torch: the first gradient, undamped
        else:
            self.v[k] = self.mu * self.v[k] + (1 - self.dampening) * g

    def step(self, params, grads):
        for k in params:
            self.velocity(k, grads[k])
            params[k] -= self.lr * self.v[k]


OPTIMIZERS = {
    "adam": (Adam, ("adam", {"betas": (0.8, 0.99)}),
             {"exp_avg": "m", "exp_avg_sq": "v", "step": "t"}),
    "rmsprop": (RMSprop, ("rmsprop", {"alpha": 0.9}), {"square_avg": "s"}),
    "momentum": (Momentum, ("sgd", {"momentum": 0.9, "dampening": 0.5}),
                 {"momentum_buffer": "v"}),
}  # fmt: skip


# --- the bugs: each a variant of one method, `# BUG` on the line that is wrong -------------


class AdamBetasSwapped(Adam):
    def moments(self, k, g):
        self.m[k] = (1 - self.beta1) * self.m.get(k, 0.0) + self.beta1 * g  # BUG
        self.v[k] = self.beta2 * self.v.get(k, 0.0) + (1 - self.beta2) * g * g


class AdamBeta2Ignored(Adam):
    def moments(self, k, g):
        self.m[k] = self.beta1 * self.m.get(k, 0.0) + (1 - self.beta1) * g
        self.v[k] = 0.999 * self.v.get(k, 0.0) + (1 - 0.999) * g * g  # BUG: the default


class AdamVStartsAtOne(Adam):
    def moments(self, k, g):
        self.m[k] = self.beta1 * self.m.get(k, 0.0) + (1 - self.beta1) * g
        self.v[k] = self.beta2 * self.v.get(k, 1.0) + (1 - self.beta2) * g * g  # BUG: from 1


class AdamCorrectionStored(Adam):
    def moments(self, k, g):
        m = (
            self.beta1 * self.m.get(k, 0.0) * (1 - self.beta1 ** (self.t - 1))
            + (1 - self.beta1) * g
        )
        self.m[k] = m / (1 - self.beta1**self.t)  # BUG: the corrected m kept as the state
        self.v[k] = self.beta2 * self.v.get(k, 0.0) + (1 - self.beta2) * g * g

    def step(self, params, grads):
        self.t += 1
        for k in params:
            self.moments(k, grads[k])
            denom = np.sqrt(self.v[k]) / np.sqrt(1 - self.beta2**self.t) + self.eps
            params[k] -= self.lr * self.m[k] / denom


class RMSpropNotSquared(RMSprop):
    def average(self, k, g):
        self.s[k] = self.alpha * self.s.get(k, 0.0) + (1 - self.alpha) * np.abs(g)  # BUG


class RMSpropAlphaSwapped(RMSprop):
    def average(self, k, g):
        self.s[k] = (1 - self.alpha) * self.s.get(k, 0.0) + self.alpha * g * g  # BUG


class MomentumFromZero(Momentum):
    def velocity(self, k, g):
        self.v[k] = self.mu * self.v.get(k, 0.0) + (1 - self.dampening) * g  # BUG: from 0


class MomentumDampeningIgnored(Momentum):
    def velocity(self, k, g):
        if k not in self.v:
            self.v[k] = np.array(g, dtype=float)
        else:
            self.v[k] = self.mu * self.v[k] + g  # BUG: dampening left out


BUGS = {
    "adam-betas-swapped": (AdamBetasSwapped, "adam", "exp_avg W2", "constant-swapped",
                           "beta1 and 1 - beta1 exchanged in the first moment"),
    "adam-beta2-ignored": (AdamBeta2Ignored, "adam", "exp_avg_sq W2", "hyper-ignored",
                           "the given beta2 ignored: 0.999 written in"),
    "adam-v-starts-at-one": (AdamVStartsAtOne, "adam", "exp_avg_sq W2", "wrong-start",
                             "the second moment started at 1, not 0"),
    "adam-correction-stored": (AdamCorrectionStored, "adam", "exp_avg W2",
                               "stored-corrected", "the bias-corrected m kept as the state"),
    "rmsprop-not-squared": (RMSpropNotSquared, "rmsprop", "square_avg W2", "optimizer-state",
                            "|g| averaged where g^2 is meant"),
    "rmsprop-alpha-swapped": (RMSpropAlphaSwapped, "rmsprop", "square_avg W2",
                              "constant-swapped", "alpha and 1 - alpha exchanged"),
    "momentum-from-zero": (MomentumFromZero, "momentum", "momentum_buffer W2",
                           "wrong-start", "the buffer started at 0, damped"),
    "momentum-dampening-ignored": (MomentumDampeningIgnored, "momentum",
                                   "momentum_buffer W2", "hyper-ignored",
                                   "the dampening left out of the velocity"),
}  # fmt: skip


class AdamWrittenOut(Adam):
    """A correct rewrite: m += (1 - beta1) (g - m), torch's lerp, and the textbook update."""

    def moments(self, k, g):
        m = self.m.setdefault(k, np.zeros_like(g))
        m += (1 - self.beta1) * (g - m)
        self.v[k] = self.beta2 * self.v.get(k, 0.0) + (1 - self.beta2) * np.square(g)


EQUIVALENTS = {"adam-lerp": (AdamWrittenOut, "adam")}
