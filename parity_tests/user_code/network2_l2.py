"""A network in the style of Michael Nielsen's "network2.py": cross-entropy with L2 on weights.

    self.weights[l] (sizes[l+1], sizes[l])     self.biases[l] (sizes[l+1], 1)

Sigmoid on every layer, the cross-entropy cost, one sample (a column vector) at a time. The L2
term lives in the update, on the weights only, with the training set's size n:

Cost:      C = -1/m sum_x [y ln a + (1 - y) ln(1 - a)] + (lmbda / 2n) sum_w ||w||^2
Update:    w -> (1 - eta (lmbda / n)) w - (eta / len(mini_batch)) sum_x nabla_w_x
           b -> b - (eta / len(mini_batch)) sum_x nabla_b_x

With one output this is torch's BCELoss (mean) plus the L2 term of the weights:
`get_loss("bce", l2=lmbda, l2_n=n)`. NumPy only; `BUGS` below, `# BUG` on the wrong line.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1 - sigmoid(z))


class CrossEntropyCost:
    @staticmethod
    def fn(a, y):
        return np.sum(np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a)))

    @staticmethod
    def delta(z, a, y):
        return a - y


class Network:
    def __init__(self, sizes, cost=CrossEntropyCost, seed=0):
        self.rng = np.random.default_rng(seed)
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.cost = cost
        self.biases = [self.rng.standard_normal((y, 1)) for y in sizes[1:]]
        self.weights = [
            self.rng.standard_normal((y, x)) / np.sqrt(x)
            for x, y in zip(sizes[:-1], sizes[1:])  # noqa: RUF007
        ]

    def feedforward(self, a):
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def update_mini_batch(self, mini_batch, eta, lmbda, n):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        self.weights = [
            (1 - eta * (lmbda / n)) * w - (eta / len(mini_batch)) * nw
            for w, nw in zip(self.weights, nabla_w)
        ]
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
        delta = (self.cost).delta(zs[-1], activations[-1], y)
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            sp = sigmoid_prime(zs[-l])
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)

    def total_cost(self, data, lmbda):
        cost = 0.0
        for x, y in data:
            a = self.feedforward(x)
            cost += self.cost.fn(a, y) / len(data)
        cost += 0.5 * (lmbda / len(data)) * sum(np.linalg.norm(w) ** 2 for w in self.weights)
        return cost


# --- the bugs -------------------------------------------------------------------------------


class BiasesDecayed(Network):
    def update_mini_batch(self, mini_batch, eta, lmbda, n):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        self.weights = [
            (1 - eta * (lmbda / n)) * w - (eta / len(mini_batch)) * nw
            for w, nw in zip(self.weights, nabla_w)
        ]
        self.biases = [  # BUG: the biases decayed too, where the cost has the weights only
            (1 - eta * (lmbda / n)) * b - (eta / len(mini_batch)) * nb
            for b, nb in zip(self.biases, nabla_b)
        ]


class DecayWithoutEta(Network):
    def update_mini_batch(self, mini_batch, eta, lmbda, n):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        self.weights = [
            (1 - lmbda / n) * w - (eta / len(mini_batch)) * nw  # BUG: eta missing from the decay
            for w, nw in zip(self.weights, nabla_w)
        ]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, nabla_b)]


class HiddenSigmoidForPrime(Network):
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
        delta = (self.cost).delta(zs[-1], activations[-1], y)
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            sp = sigmoid(zs[-l])  # BUG: sigmoid where its derivative is meant
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)


BUGS = {
    "biases-decayed": (
        BiasesDecayed,
        "biases[2]",
        "grad",
        "(1 - eta lmbda / n) b: the biases decayed, the cost's L2 term has the weights only",
    ),
    "decay-without-eta": (
        DecayWithoutEta,
        "weights[2]",
        "grad",
        "(1 - lmbda / n) w: the decay not scaled by the learning rate",
    ),
    "hidden-sigmoid-for-prime": (
        HiddenSigmoidForPrime,
        "weights[1]",
        "grad",
        "sigmoid(z) for sigmoid'(z) in the hidden layers: behind the output's L2 term",
    ),
}
