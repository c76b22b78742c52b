"""A network of any depth in the style of Michael Nielsen's "network2.py".

    self.weights[l] (sizes[l+1], sizes[l])     self.biases[l] (sizes[l+1], 1)

One sample at a time, as column vectors x (D, 1), y (C, 1); `training_data` is a list of
`(x, y)` tuples. Sigmoid on every layer, the cross-entropy cost.

Forward:   z^l = w^l a^{l-1} + b^l, a^l = sigmoid(z^l)
Cost:      C = -sum_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)] per sample, averaged over the data
Backprop:  delta^L = a^L - y, delta^l = (w^{l+1})^T delta^{l+1} * sigmoid'(z^l),
           nabla_b^l = delta^l, nabla_w^l = delta^l (a^{l-1})^T
Update:    w -> w - eta / len(mini_batch) * sum_x nabla_w_x   (new lists every mini-batch)

With one output (C = 1) the averaged cost is torch's BCELoss with mean reduction.

    net = Network([2, 4, 4, 1], seed=0)
    net.SGD(training_data, epochs=30, mini_batch_size=10, eta=0.5)

NumPy only. Below the network: `BUGS` and `EQUIVALENTS`, each a factory with the constructor of
`Network` (see `parity_tests/user_code/__init__.py`).
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1 - sigmoid(z))


class QuadraticCost:
    @staticmethod
    def fn(a, y):
        return 0.5 * np.linalg.norm(a - y) ** 2

    @staticmethod
    def delta(z, a, y):
        return (a - y) * sigmoid_prime(z)


class CrossEntropyCost:
    @staticmethod
    def fn(a, y):
        return np.sum(np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a)))

    @staticmethod
    def delta(z, a, y):
        return a - y


class Network:
    def __init__(self, sizes, cost=CrossEntropyCost, seed=0):
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.cost = cost
        self.rng = np.random.default_rng(seed)
        self.default_weight_initializer()

    def default_weight_initializer(self):
        self.biases = [self.rng.standard_normal((y, 1)) for y in self.sizes[1:]]
        self.weights = [
            self.rng.standard_normal((y, x)) / np.sqrt(x)
            for x, y in zip(self.sizes[:-1], self.sizes[1:])
        ]

    def feedforward(self, a):
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def SGD(self, training_data, epochs, mini_batch_size, eta):
        n = len(training_data)
        for _ in range(epochs):
            self.rng.shuffle(training_data)
            mini_batches = [
                training_data[k : k + mini_batch_size] for k in range(0, n, mini_batch_size)
            ]
            for mini_batch in mini_batches:
                self.update_mini_batch(mini_batch, eta)

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
        activations = [x]  # all the activations, layer by layer
        zs = []  # all the z vectors, layer by layer
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = (self.cost).delta(zs[-1], activations[-1], y)
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            z = zs[-l]
            sp = sigmoid_prime(z)
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)

    def total_cost(self, data):
        cost = 0.0
        for x, y in data:
            a = self.feedforward(x)
            cost += self.cost.fn(a, y) / len(data)
        return cost


# --- the bugs: each a subclass or factory, `# BUG` on the line that is wrong ----------------


class NablaAssignedNotSummed(Network):
    def update_mini_batch(self, mini_batch, eta):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = delta_nabla_b  # BUG: = where += is meant: only the last sample counts
            nabla_w = delta_nabla_w
        self.weights = [w - (eta / len(mini_batch)) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, nabla_b)]


class LastSampleDropped(Network):
    def update_mini_batch(self, mini_batch, eta):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for i in range(len(mini_batch) - 1):  # BUG: off by one, the last sample never counts
            x, y = mini_batch[i]
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        self.weights = [w - (eta / len(mini_batch)) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, nabla_b)]


class NablaBuffersKept(Network):
    def __init__(self, sizes, cost=CrossEntropyCost, seed=0):
        super().__init__(sizes, cost, seed)
        # allocated once to save work...
        self.nabla_b = [np.zeros(b.shape) for b in self.biases]
        self.nabla_w = [np.zeros(w.shape) for w in self.weights]

    def update_mini_batch(self, mini_batch, eta):
        # BUG: ...and never zeroed, so each mini-batch adds to every earlier one
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            for nb, dnb in zip(self.nabla_b, delta_nabla_b):
                nb += dnb
            for nw, dnw in zip(self.nabla_w, delta_nabla_w):
                nw += dnw
        self.weights = [
            w - (eta / len(mini_batch)) * nw for w, nw in zip(self.weights, self.nabla_w)
        ]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, self.nabla_b)]


class AveragedTwice(Network):
    def update_mini_batch(self, mini_batch, eta):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            # BUG: averaged here, and eta / len(mini_batch) below divides again
            nabla_b = [nb + dnb / len(mini_batch) for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw / len(mini_batch) for nw, dnw in zip(nabla_w, delta_nabla_w)]
        self.weights = [w - (eta / len(mini_batch)) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, nabla_b)]


class CrossEntropyWithQuadraticDelta(CrossEntropyCost):
    # BUG: the cross-entropy cost with the quadratic cost's delta, (a - y) * sigmoid'(z)
    delta = staticmethod(QuadraticCost.delta)


class SigmoidPrimeOfActivation(Network):
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
            sp = sigmoid_prime(activations[-l])  # BUG: sigmoid_prime takes z, not a
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)


class HiddenNablaWTransposed(Network):
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
            z = zs[-l]
            sp = sigmoid_prime(z)
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            # BUG: the outer product the wrong way round; square hidden layers hide the shape
            nabla_w[-l] = np.dot(activations[-l - 1], delta.transpose())
        return (nabla_b, nabla_w)


class TotalCostOverwritten(Network):
    def total_cost(self, data):
        cost = 0.0
        for x, y in data:
            a = self.feedforward(x)
            cost = self.cost.fn(a, y) / len(data)  # BUG: = where += is meant
        return cost


BUGS = {
    "nabla-assigned-not-summed": (
        NablaAssignedNotSummed,
        "weights[2]",
        "grad",
        "nabla_w = delta_nabla_w in the mini-batch loop: only the last sample's gradient is kept",
    ),
    "last-sample-dropped": (
        LastSampleDropped,
        "weights[2]",
        "grad",
        "range(len(mini_batch) - 1): one sample short, still divided by len(mini_batch)",
    ),
    "nabla-buffers-kept": (
        NablaBuffersKept,
        "weights[2]",
        "grad",
        "nabla buffers allocated in __init__ and never zeroed: step k applies the sum of k steps",
    ),
    "averaged-twice": (
        AveragedTwice,
        "weights[2]",
        "grad",
        "each sample's nabla divided by len(mini_batch), and eta / len(mini_batch) again",
    ),
    "quadratic-delta-with-cross-entropy": (
        lambda sizes, seed=0: Network(sizes, cost=CrossEntropyWithQuadraticDelta, seed=seed),
        "weights[2]",
        "grad",
        "the quadratic cost's delta (a - y) sigmoid'(z) with the cross-entropy cost",
    ),
    "sigmoid-prime-of-activation": (
        SigmoidPrimeOfActivation,
        "weights[1]",
        "grad",
        "sigmoid_prime(activations[-l]): sigmoid' taken at a, where it wants z",
    ),
    "hidden-nabla-w-transposed": (
        HiddenNablaWTransposed,
        "weights[1]",
        "grad",
        "np.dot(a, delta.T) for the hidden layers: nabla_w transposed (square layers only)",
    ),
    "total-cost-overwritten": (
        TotalCostOverwritten,
        "total_cost",
        "loss",
        "cost = ... in total_cost's loop: the last sample's cost / len(data), not the mean",
    ),
}


# --- rewritings that are not bugs --------------------------------------------------------


class UpdatesInPlace(Network):
    def update_mini_batch(self, mini_batch, eta):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            for nb, dnb in zip(nabla_b, delta_nabla_b):
                nb += dnb  # fresh buffers each mini-batch, accumulated in place
            for nw, dnw in zip(nabla_w, delta_nabla_w):
                nw += dnw
        for w, nw in zip(self.weights, nabla_w):
            w -= eta * (nw / len(mini_batch))  # the same arrays, updated in place
        for b, nb in zip(self.biases, nabla_b):
            b -= eta * (nb / len(mini_batch))


class SigmoidPrimeFromActivations(Network):
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
            a = activations[-l]
            sp = a * (1 - a)  # sigmoid'(z) = sigmoid(z) (1 - sigmoid(z)), from the stored a
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)


class MatrixMiniBatch(Network):
    def update_mini_batch(self, mini_batch, eta):
        # the whole mini-batch as columns at once (Nielsen's exercise): the same sums
        X = np.hstack([x for x, _ in mini_batch])  # (D, m)
        Y = np.hstack([y for _, y in mini_batch])  # (C, m)
        activations, zs = [X], []
        for b, w in zip(self.biases, self.weights):
            zs.append(np.dot(w, activations[-1]) + b)
            activations.append(sigmoid(zs[-1]))
        delta = self.cost.delta(zs[-1], activations[-1], Y)
        nabla_b, nabla_w = [None] * len(self.biases), [None] * len(self.weights)
        nabla_b[-1] = delta.sum(axis=1, keepdims=True)
        nabla_w[-1] = np.dot(delta, activations[-2].T)
        for l in range(2, self.num_layers):
            delta = np.dot(self.weights[-l + 1].T, delta) * sigmoid_prime(zs[-l])
            nabla_b[-l] = delta.sum(axis=1, keepdims=True)
            nabla_w[-l] = np.dot(delta, activations[-l - 1].T)
        self.weights = [w - (eta / len(mini_batch)) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, nabla_b)]


EQUIVALENTS = {
    "updates-in-place": (
        UpdatesInPlace,
        "accumulates and updates the same arrays in place instead of rebinding new lists",
    ),
    "sigmoid-prime-from-activations": (
        SigmoidPrimeFromActivations,
        "sigmoid' as a (1 - a) from the stored activations instead of recomputed from z",
    ),
    "matrix-mini-batch": (
        MatrixMiniBatch,
        "the mini-batch as one (D, m) matrix: the per-sample sums done by the matmul",
    ),
}
