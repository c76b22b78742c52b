"""A two-layer network as a class with a fused backward, the way blog tutorials write it.

    self.W1 (input_size, hidden_size)    self.b1 (1, hidden_size)
    self.W2 (hidden_size, output_size)   self.b2 (1, output_size)

Forward:   z1 = X W1 + b1, a1 = sigmoid(z1), z2 = a1 W2 + b2, a2 = sigmoid(z2)
Loss:      mean binary cross-entropy over the m samples, labels y of shape (m, 1)
Backward:  dz2 = a2 - y, dW2 = a1^T dz2 / m, db2 = sum_n dz2 / m,
           dz1 = (dz2 W2^T) * a1 (1 - a1), dW1 = X^T dz1 / m, db1 = sum_n dz1 / m,
           then every parameter -= learning_rate * its gradient, inside `backward`.

    nn = NeuralNetwork(2, 4, 1, seed=0)
    for epoch in range(1000):
        output = nn.forward(X)
        loss = nn.compute_loss(y, output)
        nn.backward(X, y, learning_rate=0.5)

NumPy only. Below the network: `BUGS` and `EQUIVALENTS`, each a subclass with the constructor
of `NeuralNetwork` (see `parity_tests/user_code/__init__.py`).
"""

from __future__ import annotations

import numpy as np


class NeuralNetwork:
    def __init__(self, input_size, hidden_size, output_size, seed=0):
        rng = np.random.default_rng(seed)
        self.W1 = rng.standard_normal((input_size, hidden_size))
        self.b1 = np.zeros((1, hidden_size))
        self.W2 = rng.standard_normal((hidden_size, output_size))
        self.b2 = np.zeros((1, output_size))

    def sigmoid(self, x):
        return 1 / (1 + np.exp(-x))

    def sigmoid_derivative(self, x):
        # takes the sigmoid's output: s'(z) = s(z) (1 - s(z))
        return x * (1 - x)

    def forward(self, X):
        self.z1 = np.dot(X, self.W1) + self.b1  # (m, hidden)
        self.a1 = self.sigmoid(self.z1)
        self.z2 = np.dot(self.a1, self.W2) + self.b2  # (m, output)
        self.a2 = self.sigmoid(self.z2)
        return self.a2

    def compute_loss(self, y, y_hat):
        return -np.mean(y * np.log(y_hat) + (1 - y) * np.log(1 - y_hat))

    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = self.a2 - y  # sigmoid + cross-entropy
        dW2 = np.dot(self.a1.T, dz2) / m
        db2 = np.sum(dz2, axis=0, keepdims=True) / m
        dz1 = np.dot(dz2, self.W2.T) * self.sigmoid_derivative(self.a1)
        dW1 = np.dot(X.T, dz1) / m
        db1 = np.sum(dz1, axis=0, keepdims=True) / m

        self.W2 -= learning_rate * dW2
        self.b2 -= learning_rate * db2
        self.W1 -= learning_rate * dW1
        self.b1 -= learning_rate * db1

    def train(self, X, y, epochs, learning_rate):
        losses = []
        for _ in range(epochs):
            output = self.forward(X)
            losses.append(self.compute_loss(y, output))
            self.backward(X, y, learning_rate)
        return losses

    def predict(self, X):
        return (self.forward(X) > 0.5).astype(int)


# --- the bugs: each a subclass, `# BUG` on the line that is wrong ----------------------------


class UpdatesW2BeforeUsingIt(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = self.a2 - y
        dW2 = np.dot(self.a1.T, dz2) / m
        db2 = np.sum(dz2, axis=0, keepdims=True) / m
        self.W2 -= learning_rate * dW2  # BUG: updated before dz1 reads it
        self.b2 -= learning_rate * db2
        dz1 = np.dot(dz2, self.W2.T) * self.sigmoid_derivative(self.a1)
        dW1 = np.dot(X.T, dz1) / m
        db1 = np.sum(dz1, axis=0, keepdims=True) / m
        self.W1 -= learning_rate * dW1
        self.b1 -= learning_rate * db1


class Db2NotAveraged(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = self.a2 - y
        dW2 = np.dot(self.a1.T, dz2) / m
        db2 = np.sum(dz2, axis=0, keepdims=True)  # BUG: / m forgotten
        dz1 = np.dot(dz2, self.W2.T) * self.sigmoid_derivative(self.a1)
        dW1 = np.dot(X.T, dz1) / m
        db1 = np.sum(dz1, axis=0, keepdims=True) / m
        self.W2 -= learning_rate * dW2
        self.b2 -= learning_rate * db2
        self.W1 -= learning_rate * dW1
        self.b1 -= learning_rate * db1


class Db1SummedOverEverything(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = self.a2 - y
        dW2 = np.dot(self.a1.T, dz2) / m
        db2 = np.sum(dz2, axis=0, keepdims=True) / m
        dz1 = np.dot(dz2, self.W2.T) * self.sigmoid_derivative(self.a1)
        dW1 = np.dot(X.T, dz1) / m
        db1 = np.sum(dz1) / m  # BUG: no axis: one number, broadcast by -= onto every unit
        self.W2 -= learning_rate * dW2
        self.b2 -= learning_rate * db2
        self.W1 -= learning_rate * dW1
        self.b1 -= learning_rate * db1


class MseDeltaWithCrossEntropy(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = (self.a2 - y) * self.sigmoid_derivative(self.a2)  # BUG: s' again, as for MSE
        dW2 = np.dot(self.a1.T, dz2) / m
        db2 = np.sum(dz2, axis=0, keepdims=True) / m
        dz1 = np.dot(dz2, self.W2.T) * self.sigmoid_derivative(self.a1)
        dW1 = np.dot(X.T, dz1) / m
        db1 = np.sum(dz1, axis=0, keepdims=True) / m
        self.W2 -= learning_rate * dW2
        self.b2 -= learning_rate * db2
        self.W1 -= learning_rate * dW1
        self.b1 -= learning_rate * db1


class SigmoidDerivativeOfZ(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = self.a2 - y
        dW2 = np.dot(self.a1.T, dz2) / m
        db2 = np.sum(dz2, axis=0, keepdims=True) / m
        dz1 = np.dot(dz2, self.W2.T) * self.sigmoid_derivative(self.z1)  # BUG: wants a1
        dW1 = np.dot(X.T, dz1) / m
        db1 = np.sum(dz1, axis=0, keepdims=True) / m
        self.W2 -= learning_rate * dW2
        self.b2 -= learning_rate * db2
        self.W1 -= learning_rate * dW1
        self.b1 -= learning_rate * db1


class LearningRateOverM(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = self.a2 - y
        dW2 = np.dot(self.a1.T, dz2) / m
        db2 = np.sum(dz2, axis=0, keepdims=True) / m
        dz1 = np.dot(dz2, self.W2.T) * self.sigmoid_derivative(self.a1)
        dW1 = np.dot(X.T, dz1) / m
        db1 = np.sum(dz1, axis=0, keepdims=True) / m
        step = learning_rate / m  # BUG: the gradients above are already averaged
        self.W2 -= step * dW2
        self.b2 -= step * db2
        self.W1 -= step * dW1
        self.b1 -= step * db1


class DerivativeOverwritesA1(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = self.a2 - y
        d_sigmoid = self.a1  # BUG: a name for self.a1, not a copy
        d_sigmoid *= 1 - self.a1  # so self.a1 now holds a1 (1 - a1)
        dz1 = np.dot(dz2, self.W2.T) * d_sigmoid
        dW2 = np.dot(self.a1.T, dz2) / m  # reads the overwritten a1
        db2 = np.sum(dz2, axis=0, keepdims=True) / m
        dW1 = np.dot(X.T, dz1) / m
        db1 = np.sum(dz1, axis=0, keepdims=True) / m
        self.W2 -= learning_rate * dW2
        self.b2 -= learning_rate * db2
        self.W1 -= learning_rate * dW1
        self.b1 -= learning_rate * db1


class LossWithoutNegativeClass(NeuralNetwork):
    def compute_loss(self, y, y_hat):
        return -np.mean(y * np.log(y_hat))  # BUG: the (1 - y) log(1 - y_hat) term is missing


BUGS = {
    "updates-W2-before-using-it": (
        UpdatesW2BeforeUsingIt,
        "W1",
        "grad",
        "W2 is updated in place before dz1 = dz2 W2^T reads it: layer 1 sees the new W2",
    ),
    "db2-not-averaged": (
        Db2NotAveraged,
        "b2",
        "grad",
        "db2 = sum(dz2) without / m: the output bias moves m times too far",
    ),
    "db1-summed-over-everything": (
        Db1SummedOverEverything,
        "b1",
        "grad",
        "np.sum(dz1) / m without axis=0: every hidden bias moves by the total over units",
    ),
    "mse-delta-with-cross-entropy": (
        MseDeltaWithCrossEntropy,
        "W2",
        "grad",
        "dz2 = (a2 - y) * a2 (1 - a2): the sigmoid derivative applied on top of the fused BCE",
    ),
    "sigmoid-derivative-of-z": (
        SigmoidDerivativeOfZ,
        "W1",
        "grad",
        "sigmoid_derivative expects a1 and is handed z1: z1 (1 - z1)",
    ),
    "learning-rate-over-m": (
        LearningRateOverM,
        "W2",
        "grad",
        "learning_rate / m on gradients already divided by m: every step m times too short",
    ),
    "derivative-overwrites-a1": (
        DerivativeOverwritesA1,
        "W2",
        "grad",
        "d_sigmoid = self.a1; d_sigmoid *= 1 - self.a1 overwrites a1 before dW2 reads it "
        "(a1 as forward left it is right: read it before backward runs, or copy it)",
    ),
    "loss-without-negative-class": (
        LossWithoutNegativeClass,
        "loss",
        "loss",
        "-mean(y log y_hat): the 1 - y term is dropped (gradients are still right)",
    ),
}


# --- rewritings that are not bugs --------------------------------------------------------


class ErrorIsYMinusOutput(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        output_delta = y - self.a2  # the negative gradient, as "error = target - output"
        hidden_delta = output_delta.dot(self.W2.T) * self.sigmoid_derivative(self.a1)
        self.W2 += learning_rate * self.a1.T.dot(output_delta) / m  # += cancels the sign
        self.b2 += learning_rate * np.sum(output_delta, axis=0, keepdims=True) / m
        self.W1 += learning_rate * X.T.dot(hidden_delta) / m
        self.b1 += learning_rate * np.sum(hidden_delta, axis=0, keepdims=True) / m


class DerivativeRecomputedFromZ(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = self.a2 - y
        dW2 = np.dot(self.a1.T, dz2) / m
        db2 = np.sum(dz2, axis=0, keepdims=True) / m
        s = self.sigmoid(self.z1)  # recomputed from z1 instead of the stored a1
        dz1 = np.dot(dz2, self.W2.T) * s * (1 - s)
        dW1 = np.dot(X.T, dz1) / m
        db1 = np.sum(dz1, axis=0, keepdims=True) / m
        self.W2 -= learning_rate * dW2
        self.b2 -= learning_rate * db2
        self.W1 -= learning_rate * dW1
        self.b1 -= learning_rate * db1


class LowerLayerFirst(NeuralNetwork):
    def backward(self, X, y, learning_rate):
        m = X.shape[0]
        dz2 = self.a2 - y
        dz1 = np.dot(dz2, self.W2.T) * self.sigmoid_derivative(self.a1)
        # every gradient is taken before any update, so the order of updates is free
        self.W1 -= learning_rate * (np.dot(X.T, dz1) / m)
        self.b1 -= learning_rate * (np.sum(dz1, axis=0, keepdims=True) / m)
        self.W2 -= learning_rate * (np.dot(self.a1.T, dz2) / m)
        self.b2 -= learning_rate * (np.sum(dz2, axis=0, keepdims=True) / m)


EQUIVALENTS = {
    "error-is-y-minus-output": (
        ErrorIsYMinusOutput,
        "error = y - output and W += lr * ...: the two sign flips cancel",
    ),
    "derivative-recomputed-from-z": (
        DerivativeRecomputedFromZ,
        "sigmoid' recomputed from z1 instead of read from the stored a1",
    ),
    "lower-layer-first": (
        LowerLayerFirst,
        "updates layer 1 before layer 2, after every delta is computed",
    ),
}
