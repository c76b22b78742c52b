"""A network in the style of Michael Nielsen's first "network.py": the quadratic cost.

    self.weights[l] (sizes[l+1], sizes[l])     self.biases[l] (sizes[l+1], 1)

Sigmoid on every layer, the output included, trained on the quadratic cost one sample (a column
vector) at a time, with the book's summed mini-batch update:

Cost:      C_x = 1/2 ||a^L - y||^2 per sample, averaged over the mini-batch
Backprop:  delta^L = (a^L - y) * sigmoid'(z^L), delta^l = (w^{l+1})^T delta^{l+1} * sigmoid'(z^l)
Update:    w -> w - (eta / len(mini_batch)) * sum_x nabla_w_x

With one output this is torch's MSELoss (mean) times 1/2: `get_loss("mse", scale=0.5)`.
NumPy only. Below the network: `BUGS`, each a subclass, `# BUG` on the line that is wrong.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1 - sigmoid(z))


class Network:
    def __init__(self, sizes, seed=0):
        rng = np.random.default_rng(seed)
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.biases = [rng.standard_normal((y, 1)) for y in sizes[1:]]
        self.weights = [rng.standard_normal((y, x)) for x, y in zip(sizes[:-1], sizes[1:])]  # noqa: RUF007

    def feedforward(self, a):
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def update_mini_batch(self, mini_batch, eta):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        self.weights = [w - (eta / len(mini_batch)) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, nabla_b)]

    def backprop(self, x, y):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            sp = sigmoid_prime(zs[-l])
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)

    def cost_derivative(self, output_activations, y):
        return output_activations - y

    def cost(self, mini_batch):
        return sum(0.5 * np.linalg.norm(self.feedforward(x) - y) ** 2 for x, y in mini_batch) / len(
            mini_batch
        )


# --- the bugs -------------------------------------------------------------------------------


class HiddenSigmoidPrimeOfActivation(Network):
    def backprop(self, x, y):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            sp = sigmoid_prime(activations[-l])  # BUG: sigmoid_prime takes z, not a
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)


class OutputSigmoidPrimeMissing(Network):
    def backprop(self, x, y):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = self.cost_derivative(activations[-1], y)  # BUG: the cross-entropy delta
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            sp = sigmoid_prime(zs[-l])
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)


class CostDerivativeFlipped(Network):
    def cost_derivative(self, output_activations, y):
        return y - output_activations  # BUG: the sign of dC/da


class CostWithoutHalf(Network):
    def cost(self, mini_batch):
        # BUG: the 1/2 dropped from the cost, kept in the gradient
        return sum(np.linalg.norm(self.feedforward(x) - y) ** 2 for x, y in mini_batch) / len(
            mini_batch
        )


BUGS = {
    "hidden-sigmoid-prime-of-activation": (
        HiddenSigmoidPrimeOfActivation,
        "weights[1]",
        "grad",
        "sigmoid_prime(activations[-l]) in the hidden layers: behind the output's 1/2",
    ),
    "output-sigmoid-prime-missing": (
        OutputSigmoidPrimeMissing,
        "weights[2]",
        "grad",
        "delta^L = a - y: the cross-entropy delta with the quadratic cost",
    ),
    "cost-derivative-flipped": (
        CostDerivativeFlipped,
        "weights[2]",
        "grad",
        "y - a for dC/da: every gradient's sign",
    ),
    "cost-without-half": (
        CostWithoutHalf,
        "cost",
        "loss",
        "the cost without its 1/2, the gradient with it",
    ),
}
