"""Layer objects in the style of a popular from-scratch book: a clipped binary cross-entropy.

    dense.weights (n_inputs, n_neurons)     dense.biases (1, n_neurons)

Samples are rows. Every object has `forward(inputs)` storing what `backward(dvalues)` needs and
`backward` setting `dinputs` (and `dweights`, `dbiases` on a dense layer). The loss clips the
predicted probability away from 0 and 1 before taking logs, in the loss and in its gradient:

    p_c       = clip(p, 1e-7, 1 - 1e-7)
    L         = mean over samples and outputs of -(y ln p_c + (1 - y) ln(1 - p_c))
    dL/dp     = -(y / p_c - (1 - y) / (1 - p_c)) / outputs / samples

torch's BCELoss clamps each log at -100 instead; the two agree until an output saturates. The
convention is `get_loss("bce", clip=1e-7)`. NumPy only; `BUGS` below, `# BUG` on the wrong line.
"""

from __future__ import annotations

import numpy as np


class Layer_Dense:
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


class Activation_Tanh:
    def forward(self, inputs):
        self.output = np.tanh(inputs)

    def backward(self, dvalues):
        self.dinputs = dvalues * (1 - self.output**2)


class Activation_Sigmoid:
    def forward(self, inputs):
        self.output = 1 / (1 + np.exp(-inputs))

    def backward(self, dvalues):
        self.dinputs = dvalues * (1 - self.output) * self.output


class Loss_BinaryCrossentropy:
    def calculate(self, output, y):
        return np.mean(self.forward(output, y))

    def forward(self, y_pred, y_true):
        y_pred_clipped = np.clip(y_pred, 1e-7, 1 - 1e-7)
        sample_losses = -(
            y_true * np.log(y_pred_clipped) + (1 - y_true) * np.log(1 - y_pred_clipped)
        )
        return np.mean(sample_losses, axis=-1)

    def backward(self, dvalues, y_true):
        samples = len(dvalues)
        outputs = len(dvalues[0])
        clipped_dvalues = np.clip(dvalues, 1e-7, 1 - 1e-7)
        self.dinputs = -(y_true / clipped_dvalues - (1 - y_true) / (1 - clipped_dvalues)) / outputs
        self.dinputs = self.dinputs / samples


class Optimizer_SGD:
    def __init__(self, learning_rate=1.0):
        self.learning_rate = learning_rate

    def update_params(self, layer):
        layer.weights += -self.learning_rate * layer.dweights
        layer.biases += -self.learning_rate * layer.dbiases


class Model:
    """The book's training loop, one step at a time: `train_step(X, y, lr)`."""

    loss_class = Loss_BinaryCrossentropy

    def __init__(self, n_inputs, n_hidden, seed=0):
        rng = np.random.default_rng(seed)
        self.dense1 = Layer_Dense(n_inputs, n_hidden, rng)
        self.activation1 = Activation_Tanh()
        self.dense2 = Layer_Dense(n_hidden, 1, rng)
        self.activation2 = Activation_Sigmoid()
        self.loss_function = self.loss_class()

    def forward(self, X):
        self.dense1.forward(X)
        self.activation1.forward(self.dense1.output)
        self.dense2.forward(self.activation1.output)
        self.activation2.forward(self.dense2.output)
        return self.activation2.output

    def train_step(self, X, y, lr):
        y = y.reshape(-1, 1)
        loss = self.loss_function.calculate(self.forward(X), y)
        self.loss_function.backward(self.activation2.output, y)
        self.activation2.backward(self.loss_function.dinputs)
        self.dense2.backward(self.activation2.dinputs)
        self.activation1.backward(self.dense2.dinputs)
        self.dense1.backward(self.activation1.dinputs)
        optimizer = Optimizer_SGD(learning_rate=lr)
        optimizer.update_params(self.dense1)
        optimizer.update_params(self.dense2)
        return loss


# --- the bugs -------------------------------------------------------------------------------


class UnclippedBackward(Loss_BinaryCrossentropy):
    def backward(self, dvalues, y_true):
        samples = len(dvalues)
        outputs = len(dvalues[0])
        # BUG: the clip left out of the gradient, kept in the loss
        self.dinputs = -(y_true / dvalues - (1 - y_true) / (1 - dvalues)) / outputs
        self.dinputs = self.dinputs / samples


class LossSummed(Loss_BinaryCrossentropy):
    def calculate(self, output, y):
        return np.sum(self.forward(output, y))  # BUG: summed, where the gradient averages


class ModelUnclippedBackward(Model):
    loss_class = UnclippedBackward


class ModelLossSummed(Model):
    loss_class = LossSummed


BUGS = {
    "unclipped-backward": (
        ModelUnclippedBackward,
        "dense2.weights",
        "grad",
        "dL/dp from the unclipped p: the saturated samples' gradient differs",
    ),
    "loss-summed": (
        ModelLossSummed,
        "train_step",
        "loss",
        "np.sum of the sample losses: the loss N times the mean the gradient is of",
    ),
}
