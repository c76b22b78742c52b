"""A network of layer objects with an optimizer class that decays its learning rate, the way a
popular book's final chapters write it: inverse-time decay, lr / (1 + decay * iterations),
computed before each update and the iteration count advanced after it.

    model = Model(2, 8, seed=0, learning_rate=1.0, decay=1e-2)
    for epoch in range(1000):
        loss, grads = model.loss_and_grads(X, y)     # forward, loss, backward
        model.update(grads)                          # pre_update, update each layer, post_update

    dense1.weights (n_inputs, n_neurons)   dense1.biases (1, n_neurons)    tanh
    dense2.weights (n_neurons, 1)          dense2.biases (1, 1)            sigmoid, mean BCE

NumPy only. `BUGS`: the decay applied one step late, the rate never decayed, the count
advanced before the update, another decay constant; `DecayPerEpoch` steps it once per epoch.
"""

from __future__ import annotations

import numpy as np


class LayerDense:
    def __init__(self, n_inputs, n_neurons, rng):
        self.weights = 0.5 * rng.standard_normal((n_inputs, n_neurons))
        self.biases = np.zeros((1, n_neurons))

    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.dot(inputs, self.weights) + self.biases

    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        self.dinputs = np.dot(dvalues, self.weights.T)


class OptimizerSGD:
    def __init__(self, learning_rate=1.0, decay=0.0):
        self.learning_rate = learning_rate
        self.current_learning_rate = learning_rate
        self.decay = decay
        self.iterations = 0

    def pre_update_params(self):
        if self.decay:
            self.current_learning_rate = self.learning_rate * (
                1.0 / (1.0 + self.decay * self.iterations)
            )

    def update_params(self, layer):
        layer.weights += -self.current_learning_rate * layer.dweights
        layer.biases += -self.current_learning_rate * layer.dbiases

    def post_update_params(self):
        self.iterations += 1


class Model:
    optimizer_class = OptimizerSGD

    def __init__(self, n_inputs, n_hidden, seed=0, learning_rate=1.0, decay=1e-2):
        rng = np.random.default_rng(seed)
        self.dense1 = LayerDense(n_inputs, n_hidden, rng)
        self.dense2 = LayerDense(n_hidden, 1, rng)
        self.optimizer = self.optimizer_class(learning_rate=learning_rate, decay=decay)

    def forward(self, X):
        self.dense1.forward(X)
        a1 = np.tanh(self.dense1.output)
        self.dense2.forward(a1)
        out = 1 / (1 + np.exp(-self.dense2.output))
        return out, {"z1": self.dense1.output, "a1": a1, "z2": self.dense2.output}

    def loss_and_grads(self, X, y):
        out, cache = self.forward(X)
        y = y.reshape(-1, 1)
        loss = -np.mean(y * np.log(out) + (1 - y) * np.log(1 - out))
        dz2 = (out - y) / len(X)
        self.dense2.backward(dz2)
        self.dense1.backward(self.dense2.dinputs * (1 - cache["a1"] ** 2))
        d1, d2 = self.dense1, self.dense2
        return loss, [d1.dweights, d1.dbiases, d2.dweights, d2.dbiases]

    def update(self, grads, lr=None):
        # the book's loop: the optimizer keeps its own rate; the lr argument is not used
        self.optimizer.pre_update_params()
        self.optimizer.update_params(self.dense1)
        self.optimizer.update_params(self.dense2)
        self.optimizer.post_update_params()


PATHS = ["dense1.weights", "dense1.biases", "dense2.weights", "dense2.biases"]


class OptimizerDecayOneStepLate(OptimizerSGD):
    def pre_update_params(self):
        # the count taken before the last update's increment: step 1 still runs at the full rate
        if self.decay:
            self.current_learning_rate = self.learning_rate * (
                1.0 / (1.0 + self.decay * max(self.iterations - 1, 0))
            )


class OptimizerNeverDecays(OptimizerSGD):
    def post_update_params(self):
        pass  # the iteration count never advances


class DecayOneStepLate(Model):
    optimizer_class = OptimizerDecayOneStepLate


class NeverDecays(Model):
    optimizer_class = OptimizerNeverDecays


class DivideForm(Model):
    """An equivalent rewriting: lr / (1 + decay t), one rounding where the book has two."""

    class optimizer_class(OptimizerSGD):
        def pre_update_params(self):
            self.current_learning_rate = self.learning_rate / (1.0 + self.decay * self.iterations)


class OptimizerStepsBeforeUpdate(OptimizerSGD):
    def pre_update_params(self):
        self.iterations += 1  # the count advanced before the rate is read, not after the update
        super().pre_update_params()

    def post_update_params(self):
        pass


class OptimizerDecayDoubled(OptimizerSGD):
    def pre_update_params(self):
        if self.decay:  # 2 * decay: another constant than the one declared
            self.current_learning_rate = self.learning_rate * (
                1.0 / (1.0 + 2 * self.decay * self.iterations)
            )


class OptimizerPerEpoch(OptimizerSGD):
    """The count advanced once per epoch of BATCHES_PER_EPOCH updates."""

    def post_update_params(self):
        self.updates = getattr(self, "updates", 0) + 1
        self.iterations = self.updates // BATCHES_PER_EPOCH


BATCHES_PER_EPOCH = 4


class StepsBeforeUpdate(Model):
    optimizer_class = OptimizerStepsBeforeUpdate


class DecayDoubled(Model):
    optimizer_class = OptimizerDecayDoubled


class DecayPerEpoch(Model):
    optimizer_class = OptimizerPerEpoch


# name -> (class, where the bug first shows, kind, the step it first shows at)
BUGS = {
    "decay one step late": (DecayOneStepLate, "dense2.weights", "param", 1),
    "rate never decayed": (NeverDecays, "dense2.weights", "param", 1),
    "schedule stepped before the update": (StepsBeforeUpdate, "dense2.weights", "param", 0),
    "another decay constant": (DecayDoubled, "dense2.weights", "param", 1),
}
# the cause each is named with (parity_tests/test_schedule_causes.py)
CAUSES = {
    "decay one step late": "runs a step late",
    "rate never decayed": "never moves",
    "schedule stepped before the update": "you step the schedule before the update",
    "another decay constant": "decay=0.1 (fitted from steps 0 and 1) where torch's has decay=0.05",
}
EQUIVALENTS = {"lr / (1 + decay t)": DivideForm}
