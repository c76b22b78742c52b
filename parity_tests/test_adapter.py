"""User code in its own style, checked through `adapt`: layouts, names, forms and bad input.
(The three styles' full catalogues run in test_user_styles.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity.torch_ref import adapt, lockstep


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def data(n=16, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X[:, 0] - X[:, 1] > 0).astype(float)
    return X, y


# --- the parameter-dict style: weights (in, out), grads by name ---------------------------------


def init_params(sizes, seed=0):
    rng = np.random.default_rng(seed)
    params = {}
    for i, (d, h) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):  # noqa: RUF007
        params[f"W{i}"] = rng.normal(0, 1 / np.sqrt(d), (d, h))
        params[f"b{i}"] = np.zeros(h)
    return params


def loss_and_grads(params, X, y, bug=None):
    y = y.reshape(-1, 1)
    z1 = X @ params["W1"] + params["b1"]
    a1 = np.tanh(z1)
    z2 = a1 @ params["W2"] + params["b2"]
    p = sigmoid(z2)
    n = len(X)
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    dz2 = (p - y) / n
    grads = {"W2": a1.T @ dz2, "b2": dz2.sum(axis=0)}
    da1 = dz2 @ params["W2"].T
    dz1 = da1 * (1 - a1**2)
    grads["W1"] = X.T @ dz1
    grads["b1"] = dz1.sum(axis=0) if bug != "b1-not-averaged" else dz1.sum(axis=0) * n
    return loss, grads


def test_dict_style_passes_500_steps():
    X, y = data()
    params = init_params([3, 4, 1])
    net = adapt(params, activations=["tanh", "sigmoid"], loss="bce",
                grads=lambda X, y: loss_and_grads(params, X, y))  # fmt: skip
    result = lockstep(net, None, X, y, steps=500, lr=0.5)
    assert result.passed, str(result.first_divergence)
    assert "loss" in result.labels and "grad W1" in result.labels
    assert result.checked["layout_decided_by"] == "shapes"


def test_dict_style_bug_is_located_in_the_users_names():
    X, y = data()
    params = init_params([3, 4, 1])
    net = adapt(params, activations=["tanh", "sigmoid"], loss="bce",
                grads=lambda X, y: loss_and_grads(params, X, y, bug="b1-not-averaged"))  # fmt: skip
    result = lockstep(net, None, X, y, steps=5, lr=0.5)
    div = result.first_divergence
    assert div is not None and div.step == 0 and div.label == "grad b1"
    assert div.fd_agrees_with == "torch"
    assert div.diagnosis and div.diagnosis["cause"] == "reduction"


def test_a_divergence_is_indexed_in_the_users_in_out_layout():
    X, y = data()
    params = init_params([3, 4, 1])

    def wrong(X, y):
        loss, g = loss_and_grads(params, X, y)
        g["W1"] = g["W1"].copy()
        g["W1"][2, 1] *= 1.01  # (in, out) indexing: input 2, hidden unit 1
        return loss, g

    net = adapt(params, activations=["tanh", "sigmoid"], grads=wrong)
    div = lockstep(net, None, X, y, steps=2, lr=0.5).first_divergence
    assert div is not None and div.label == "grad W1" and div.index == (2, 1)


# --- the class style: (1, H) biases, z1/a1 attributes, fused backward(X, y, lr) -----------------


class NeuralNetwork:
    def __init__(self, input_size, hidden_size, output_size, seed=0, bug=None):
        rng = np.random.default_rng(seed)
        self.W1 = rng.standard_normal((input_size, hidden_size)) * 0.5
        self.b1 = np.zeros((1, hidden_size))
        self.W2 = rng.standard_normal((hidden_size, output_size)) * 0.5
        self.b2 = np.zeros((1, output_size))
        self.bug = bug

    def forward(self, X):
        self.z1 = X @ self.W1 + self.b1
        self.a1 = sigmoid(self.z1)
        self.z2 = self.a1 @ self.W2 + self.b2
        self.a2 = sigmoid(self.z2)
        return self.a2

    def backward(self, X, y, lr):
        m = X.shape[0]
        dz2 = self.a2 - y
        dW2 = self.a1.T @ dz2 / m
        db2 = np.sum(dz2, axis=0, keepdims=True) / m
        if self.bug == "update-before-use":
            self.W2 -= lr * dW2
        dz1 = dz2 @ self.W2.T * self.a1 * (1 - self.a1)
        dW1 = X.T @ dz1 / m
        db1 = np.sum(dz1, axis=0, keepdims=True) / m
        if self.bug != "update-before-use":
            self.W2 -= lr * dW2
        self.b2 -= lr * db2
        self.W1 -= lr * dW1
        self.b1 -= lr * db1


def adapt_class(nn):
    return adapt(
        nn,
        activations=["sigmoid", "sigmoid"],
        forward=lambda X: (nn.forward(X), vars(nn)),
        step=nn.backward,
    )


def test_class_style_with_a_fused_step_passes_500_steps():
    X, y = data()
    nn = NeuralNetwork(3, 5, 1)
    result = lockstep(adapt_class(nn), None, X, y.reshape(-1, 1), steps=500, lr=0.5)
    assert result.passed, str(result.first_divergence)
    assert {"z1", "a1", "z2", "prob", "grad W1", "param b1"} <= set(result.labels)
    assert "recovered" in result.checked["gradients"]
    assert any(label.startswith("loss") for label in result.not_compared)


def test_class_style_update_before_use_is_caught_at_the_lower_layer():
    X, y = data()
    nn = NeuralNetwork(3, 5, 1, bug="update-before-use")
    result = lockstep(adapt_class(nn), None, X, y.reshape(-1, 1), steps=3, lr=0.5)
    div = result.first_divergence
    assert div is not None and div.step == 0 and div.label in ("grad W1", "grad b1")


# --- layouts that shapes cannot tell ----------------------------------------------------------


def test_a_square_layer_is_settled_by_a_probe_of_the_users_forward():
    X, y = data(d=4)
    params = init_params([4, 4, 1], seed=3)

    def forward(X):
        return sigmoid(np.tanh(X @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"])

    net = adapt(params, activations=["tanh", "sigmoid"], forward=forward,
                grads=lambda X, y: loss_and_grads(params, X, y))  # fmt: skip
    result = lockstep(net, None, X, y, steps=20, lr=0.5)
    assert result.passed, str(result.first_divergence)
    assert result.checked["layout_decided_by"] == "probe"
    assert any("W1 (4, 4) (in, out)" in line for line in result.checked["layout"])


# --- bad input ----------------------------------------------------------------------------------


def test_a_parameter_that_fits_no_layer_is_named():
    X, y = data()
    params = init_params([3, 4, 1])
    params["W9"] = np.zeros((7, 2))
    snapshot = {k: v.copy() for k, v in params.items()}
    net = adapt(params, activations=["tanh", "sigmoid"],
                grads=lambda X, y: loss_and_grads(params, X, y))  # fmt: skip
    with pytest.raises(ValueError, match="W9"):
        lockstep(net, None, X, y, steps=2, lr=0.5)
    assert all(np.array_equal(params[k], snapshot[k]) for k in snapshot)


def test_integer_parameters_are_refused_by_name():
    params = init_params([3, 4, 1])
    params["W1"] = params["W1"].astype(int)
    with pytest.raises(TypeError, match="'W1' has dtype int64"):
        adapt(params, activations=["tanh", "sigmoid"], grads=lambda X, y: None)


def test_a_step_that_changes_no_parameter_is_refused_by_name():
    X, y = data()
    params = init_params([3, 4, 1])

    def train_step(X, y, lr):
        return {k: v - lr for k, v in params.items()}  # new arrays, returned, never stored

    net = adapt(params, activations=["tanh", "sigmoid"], step=train_step)
    with pytest.raises(ValueError, match="train_step changed no parameter"):
        lockstep(net, None, X, y, steps=2, lr=0.5)


# --- layer objects (the nnfs.io style): parameters at dotted paths, names settle roles -------


class LayerDense:
    def __init__(self, n_inputs, n_neurons, rng):
        self.weights = 0.5 * rng.standard_normal((n_inputs, n_neurons))
        self.biases = np.zeros((1, n_neurons))

    def forward(self, inputs):
        self.inputs = inputs
        self.output = inputs @ self.weights + self.biases

    def backward(self, dvalues):
        self.dweights = self.inputs.T @ dvalues
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        self.dinputs = dvalues @ self.weights.T


class TwoDense:
    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.dense1, self.dense2 = LayerDense(3, 5, rng), LayerDense(5, 1, rng)

    def grads(self, X, y):
        self.dense1.forward(X)
        a1 = np.tanh(self.dense1.output)
        self.dense2.forward(a1)
        p = sigmoid(self.dense2.output)
        self.dense2.backward((p - y.reshape(-1, 1)) / len(X))
        self.dense1.backward(self.dense2.dinputs * (1 - a1**2))
        d1, d2 = self.dense1, self.dense2
        return [d1.dweights, d1.dbiases, d2.dweights, d2.dbiases]


def test_layer_objects_at_dotted_paths_pass_and_names_settle_the_roles():
    # dense2.weights (5, 1) could be a bias of 5 and dense1.biases (1, 5) a weight by shape
    # alone; their names say which they are
    X, y = data()
    model = TwoDense()
    paths = ["dense1.weights", "dense1.biases", "dense2.weights", "dense2.biases"]
    net = adapt(model, names=paths, activations=["tanh", "sigmoid"], grads=model.grads)
    result = lockstep(net, None, X, y, steps=300, lr=0.5)
    assert result.passed, str(result.first_divergence)
    assert result.checked["layout_decided_by"] == "shapes"
    assert "grad dense1.biases" in result.labels


def test_zero_biases_of_one_size_do_not_trade_layers_in_the_probe():
    # square hidden layer and zero biases: the biases are taken in the order they are listed
    rng = np.random.default_rng(0)
    layers = [(0.3 * rng.standard_normal((3, 6)), np.zeros(6)),
              (0.3 * rng.standard_normal((6, 6)), np.zeros(6)),
              (0.3 * rng.standard_normal((6, 1)), np.zeros(1))]  # fmt: skip

    def forward(X):
        a = X
        for i, (W, b) in enumerate(layers):
            a = np.tanh(a @ W + b) if i < 2 else sigmoid(a @ W + b)
        return a

    def grads(X, y):
        acts = [X]
        for i, (W, b) in enumerate(layers):
            acts.append(np.tanh(acts[-1] @ W + b) if i < 2 else sigmoid(acts[-1] @ W + b))
        d, out = (acts[-1] - y.reshape(-1, 1)) / len(X), [None] * 3
        for i in (2, 1, 0):
            out[i] = (acts[i].T @ d, d.sum(axis=0))
            d = (d @ layers[i][0].T) * (1 - acts[i] ** 2)
        return out

    X, y = data()
    net = adapt(layers, activations=["tanh", "tanh", "sigmoid"], forward=forward, grads=grads)
    result = lockstep(net, None, X, y, steps=50, lr=0.5)
    assert result.passed, str(result.first_divergence)


def test_an_error_inside_user_code_names_the_function_and_the_line():
    X, y = data()
    params = init_params([3, 4, 1])

    def my_grads(X, y):
        return X @ np.zeros((5, 5))  # the shapes do not fit

    net = adapt(params, activations=["tanh", "sigmoid"], grads=my_grads)
    with pytest.raises(ValueError, match=r"my_grads raised ValueError: matmul.*\(at test_adapter"):
        lockstep(net, None, X, y, steps=2, lr=0.5)


def test_any_output_torch_accepts_is_accepted_and_bce_on_an_unbounded_one_refused():
    # torch takes a softmax before CrossEntropyLoss and a sigmoid before MSELoss
    adapt(init_params([3, 4, 2]), activations=["relu", "softmax"], loss="ce",
          grads=lambda X, y: None)  # fmt: skip
    adapt(init_params([3, 4, 1]), activations=["relu", "sigmoid"], loss="mse",
          grads=lambda X, y: None)  # fmt: skip
    with pytest.raises(ValueError, match="'tanh' can leave \\[0, 1\\]"):
        adapt(init_params([3, 4, 1]), activations=["relu", "tanh"], loss="bce",
              grads=lambda X, y: None)  # fmt: skip


def test_dict_keys_with_dots_are_keys_and_a_fused_steps_returned_loss_is_compared():
    X, y = data()
    params = {f"dense{k}.{p}": v for k, (p, v) in
              zip([1, 1, 2, 2], init_params([3, 4, 1]).items())}  # fmt: skip
    names = list(params)  # dense1.W1 ... : keys, not paths

    def step(X, y, lr):
        flat = dict(zip(["W1", "b1", "W2", "b2"], params.values()))
        loss, grads = loss_and_grads(flat, X, y)
        for key, name in zip(names, ["W1", "b1", "W2", "b2"]):
            params[key] -= lr * grads[name]
        return loss

    result = lockstep(adapt(params, activations=["tanh", "sigmoid"], step=step), None, X, y,
                      steps=20, lr=0.5)  # fmt: skip
    assert result.passed, str(result.first_divergence)
    assert "loss" in result.labels


def adam_by_hand(params, grads_fn, bias_correction=True):
    """A learner's fused Adam step, its moments kept in its own dicts."""
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    t = [0]

    def step(X, y, lr, b1=0.9, b2=0.999, eps=1e-8):
        _, g = grads_fn(X, y)
        t[0] += 1
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1 ** t[0]) if bias_correction else m[k]
            v_hat = v[k] / (1 - b2 ** t[0]) if bias_correction else v[k]
            params[k] -= lr * m_hat / (np.sqrt(v_hat) + eps)

    return step


@pytest.mark.parametrize("bias_correction", [True, False], ids=["correct", "no-bias-correction"])
def test_a_hand_written_fused_adam_is_compared_by_its_parameters(bias_correction):
    X, y = data()
    params = init_params([3, 4, 1])
    step = adam_by_hand(params, lambda X, y: loss_and_grads(params, X, y), bias_correction)
    net = adapt(params, activations=["tanh", "sigmoid"], step=step)
    result = lockstep(net, None, X, y, steps=200, lr=0.01, optimizer="adam")
    # Adam's update is not lr g: no gradient is implied, the parameters are compared
    assert not any(label.startswith("grad ") for label in result.labels)
    assert any(line.startswith("grad W1") for line in result.not_compared)
    if bias_correction:
        assert result.passed, str(result.first_divergence)
    else:
        div = result.first_divergence
        assert div is not None and div.step == 0 and div.quantity == "param"


def test_a_gradient_function_that_also_moves_the_parameters_is_refused_by_name():
    X, y = data()
    params = init_params([3, 4, 1])

    def grads_and_a_stray_update(X, y):
        loss, g = loss_and_grads(params, X, y)
        params["b2"] -= 0.1 * g["b2"]  # an update hidden in the gradient function
        return loss, g

    net = adapt(params, activations=["tanh", "sigmoid"], grads=grads_and_a_stray_update)
    with pytest.raises(ValueError, match="grads_and_a_stray_update changed parameter 'b2'"):
        lockstep(net, None, X, y, steps=2, lr=0.5)


def test_a_fused_step_is_never_probed_a_square_layer_then_asks_for_forward_or_layout():
    X, y = data(d=4)
    params = init_params([4, 4, 1], seed=3)
    net = adapt(params, activations=["tanh", "sigmoid"],
                step=lambda X, y, lr: None)  # fmt: skip
    with pytest.raises(ValueError, match=r"give forward= \(nn-parity probes it\) or layout="):
        lockstep(net, None, X, y, steps=2, lr=0.5)
