"""The lockstep engine: it passes what agrees, and catches and locates what does not."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import scratch
from nn_parity.scratch.data import exam
from nn_parity.torch_ref import TorchMLP, lockstep

from parity_tests.helpers import make_data, make_pair


def grads_of(result, quantity="grad"):
    return [k for k, it in enumerate(result.items) if it.quantity == quantity]


def test_done_when_1000_steps_of_2_8_8_1_tanh_on_the_students():
    X, y = exam()
    net, ref = make_pair([2, 8, 8, 1], ["tanh", "tanh", "sigmoid"], seed=1)
    result = lockstep(net, ref, X, y, steps=1000, lr=0.5)
    assert result.passed, str(result.first_divergence)
    # Normwise relative gradient error, per parameter and step: ||g_s - g_t|| / ||g_t||.
    worst = result.rel_err[:, grads_of(result)].max()
    assert worst < 1e-10, worst
    assert result.loss_scratch[-1] < 1e-2 * result.loss_scratch[0]


def perturb_grad_at(net, step, name, index, rel):
    """Make net.backward scale one gradient element by (1 + rel) at one step."""
    calls = {"n": 0}
    backward = net.backward

    def wrapped(dout, cache):
        grads = backward(dout, cache)
        if calls["n"] == step:
            grads[name][index] *= 1 + rel
        calls["n"] += 1
        return grads

    net.backward = wrapped


@pytest.mark.parametrize(
    "name,index,layer,param",
    [
        ("layers.0.weight", (3, 1), 0, "weight"),
        ("layers.1.bias", (5,), 1, "bias"),
        ("layers.2.weight", (0, 4), 2, "weight"),
    ],
    ids=["first-layer-weight", "hidden-bias", "output-weight"],
)
@pytest.mark.parametrize("step", [0, 7, 150])
def test_a_1e_8_relative_gradient_error_is_located(name, index, layer, param, step):
    X, y = make_data(64, 4, seed=1)
    net, ref = make_pair([4, 8, 8, 1], ["tanh", "tanh", "sigmoid"], seed=2)
    perturb_grad_at(net, step, name, index, 1e-8)
    result = lockstep(net, ref, X, y, steps=200, lr=0.3)
    div = result.first_divergence
    assert not result.passed and div is not None
    assert (div.step, div.quantity, div.layer, div.param) == (step, "grad", layer, param)
    assert div.index == index
    assert div.scratch == pytest.approx(div.torch * (1 + 1e-8), rel=1e-12)
    # 1e-8 is below what central differences resolve: the verdict must not pick a side.
    assert div.fd_agrees_with == "both"


def test_the_unperturbed_twin_passes():
    # The control for the test above: same network, data and steps, no perturbation.
    X, y = make_data(64, 4, seed=1)
    net, ref = make_pair([4, 8, 8, 1], ["tanh", "tanh", "sigmoid"], seed=2)
    assert lockstep(net, ref, X, y, steps=200, lr=0.3).passed


def test_a_real_gradient_bug_is_blamed_on_scratch_by_finite_differences():
    X, y = make_data(32, 3, seed=5)
    net, ref = make_pair([3, 6, 1], ["sigmoid", "sigmoid"], seed=6)
    perturb_grad_at(net, 2, "layers.0.weight", (2, 1), 0.5)
    div = lockstep(net, ref, X, y, steps=5, lr=0.5).first_divergence
    assert div is not None and div.fd_agrees_with == "torch"
    assert div.fd == pytest.approx(div.torch, rel=1e-6)


def test_forward_loss_and_update_errors_are_located(monkeypatch):
    X, y = make_data(16, 3, seed=0)

    # forward: layer 1's pre-activation, from step 4 on
    net, ref = make_pair([3, 5, 5, 1], ["relu", "tanh", "sigmoid"], seed=0)
    forward = net.layers[1].forward
    count = {"n": 0}

    def shifted(x):
        a, (x_, z, a_) = forward(x)
        count["n"] += 1
        if count["n"] == 5:
            z = z.copy()
            z[2, 3] += 1e-6
        return a, (x_, z, a_)

    net.layers[1].forward = shifted
    div = lockstep(net, ref, X, y, steps=10, lr=0.1).first_divergence
    assert div is not None
    assert (div.step, div.quantity, div.layer, div.index) == (4, "z", 1, (2, 3))
    assert div.fd is None

    # loss: reported as the loss, after every forward quantity agreed
    class OffLoss(scratch.BCELoss):
        def forward(self, out, y):
            value, cache = super().forward(out, y)
            return value * (1 + 1e-9), cache

    net, ref = make_pair([3, 5, 1], ["tanh", "sigmoid"], seed=0)
    div = lockstep(net, ref, X, y, steps=3, lr=0.1, loss=OffLoss()).first_divergence
    assert div is not None and (div.step, div.quantity, div.layer) == (0, "loss", None)

    # update: the learning rate applied twice from step 2
    net, ref = make_pair([3, 5, 1], ["tanh", "sigmoid"], seed=0)
    steps_taken = {"n": 0}
    step = scratch.SGD.step

    def double_lr(self, grads=None):
        step(self, grads)
        if steps_taken["n"] >= 2:
            step(self, grads)
        steps_taken["n"] += 1

    monkeypatch.setattr(scratch.SGD, "step", double_lr)
    div = lockstep(net, ref, X, y, steps=5, lr=0.1).first_divergence
    assert div is not None and (div.step, div.quantity, div.layer) == (2, "param", 1)


def test_stop_at_divergence_and_the_snapshot_holds_that_step_only():
    X, y = make_data(16, 3, seed=0)
    net, ref = make_pair([3, 4, 1], ["tanh", "sigmoid"], seed=0)
    perturb_grad_at(net, 3, "layers.0.weight", (0, 0), 1e-3)
    result = lockstep(net, ref, X, y, steps=50, lr=0.1, stop_at_divergence=True)
    assert result.steps == 4 and result.max_abs.shape[0] == 4
    s, t = result.snapshot["grad layers.0.weight"]
    assert s[0, 0] == pytest.approx(t[0, 0] * (1 + 1e-3), rel=1e-9)
    # kept going, the run records every step but still only one snapshot
    net, ref = make_pair([3, 4, 1], ["tanh", "sigmoid"], seed=0)
    perturb_grad_at(net, 3, "layers.0.weight", (0, 0), 1e-3)
    result = lockstep(net, ref, X, y, steps=50, lr=0.1)
    assert result.steps == 50 and result.first_divergence.step == 3
    assert not result.within[3:].all() and result.within[:3].all()


def test_records_stay_small_summaries():
    X, y = make_data(256, 8, seed=0)
    net, ref = make_pair([8, 32, 1], ["tanh", "sigmoid"], seed=0)
    result = lockstep(net, ref, X, y, steps=300, lr=0.1)
    assert result.passed and result.snapshot == {}
    per_step_bytes = (result.max_abs.nbytes + result.rel_err.nbytes) / result.steps
    assert per_step_bytes == 16 * len(result.items)  # two float64 numbers per quantity


def test_relu_kinks_crossed_by_rounding_are_explained_not_reported():
    # float32 relu with 784 inputs: some pre-activations land within rounding of 0, and the
    # two sides take the kink on different sides. This configuration crosses at known steps.
    X, y = make_data(256, 784, seed=2, dtype="float32")
    net, ref = make_pair([784, 256, 128, 1], ["relu", "relu", "sigmoid"], dtype="float32", seed=1)
    result = lockstep(net, ref, X, y, steps=12, lr=0.05)
    assert result.passed, str(result.first_divergence)
    assert result.kink_steps, "expected this configuration to cross a relu kink"


def test_a_wrong_relu_derivative_is_not_excused_as_a_kink():
    X, y = make_data(256, 784, seed=2, dtype="float32")
    net, ref = make_pair([784, 256, 128, 1], ["relu", "relu", "sigmoid"], dtype="float32", seed=1)
    relu = net.layers[0].activation
    relu.backward = lambda da, z, a: np.where(a >= 0, da, 0)  # derivative 1 at z = 0
    net.layers[0].weight[:5] = 0  # five units with z = 0 exactly on every sample
    ref = TorchMLP.from_scratch(net)
    result = lockstep(net, ref, X, y, steps=3, lr=0.05)
    div = result.first_divergence
    assert div is not None and (div.step, div.quantity, div.layer) == (0, "grad", 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"lr": -0.1}, "learning rate"),
        ({"lr": float("nan")}, "learning rate"),
        ({"loss": "bce-logits"}, "last layer's activation"),
        ({"loss": "hinge"}, "unknown loss"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    X, y = exam()
    net, ref = make_pair([2, 3, 1], ["tanh", "sigmoid"])
    with pytest.raises(ValueError, match=match):
        lockstep(net, ref, X, y, **kwargs)


def test_rounding_drift_on_a_sensitive_trajectory_is_rechecked_not_reported():
    # A 1-wide chain whose loss oscillates: a weight passing near zero amplifies ulp-level
    # parameter differences past the z tolerance at step 8 (found by the hypothesis sweep).
    from parity_tests.strategies import NetConfig
    from parity_tests.test_no_false_alarms import run

    cfg = NetConfig(
        sizes=(1, 1, 1, 1, 1), hidden=("leaky_relu:0.3", "identity", "leaky_relu:0.3"),
        loss="bce", bias=False, dtype="float64", n=10, input_scale=4.0, lr=0.3,
        init="he_normal", seed=3,
    )  # fmt: skip
    result = run(cfg)
    assert not result.within[8].all(), "the raw records keep the step-8 mismatch"
    assert result.passed and result.drift_steps == [8]


def test_a_deterministic_bug_that_appears_late_is_not_excused_as_drift():
    # The output's sigmoid derivative is off by 0.1% once the output saturates past 0.9:
    # nothing differs until training gets there, and rerun from torch's weights the bug repeats.
    X, y = make_data(32, 3, seed=0)
    net, ref = make_pair([3, 4, 1], ["tanh", "sigmoid"], seed=0)
    sig = net.layers[1].activation
    sig.backward = lambda da, z, a: np.where(a > 0.9, 1.001, 1.0) * da * (1 - a) * a
    result = lockstep(net, ref, X, y, steps=300, lr=1.0)
    div = result.first_divergence
    assert div is not None and div.step > 0 and div.quantity == "grad", str(div)
    assert result.drift_steps == []


def test_a_forward_that_caches_the_wrong_layer_input_is_not_excused():
    # The forward keeps z_{l-1} where a_{l-1} belongs as the next layer's input: every
    # compared forward quantity is right, the gradients are not. No stage-wise rerun may
    # substitute torch's inputs over a cache that no comparison has checked.
    X, y = make_data(32, 4, seed=1)
    net, ref = make_pair([4, 8, 8, 1], ["tanh", "tanh", "sigmoid"], seed=2)

    def forward(X_in):
        cache, a, prev_z = [], X_in, X_in
        for layer in net.layers:
            a_next, (_, z, a_) = layer.forward(a)
            cache.append((prev_z, z, a_))
            prev_z, a = z, a_next
        return a, cache

    net.forward = forward
    result = lockstep(net, ref, X, y, steps=20, lr=0.5)
    div = result.first_divergence
    assert div is not None and (div.step, div.quantity) == (0, "grad"), str(div)
    assert result.drift_steps == []


def test_raw_unscaled_inputs_do_not_raise_false_alarms():
    # 0..255 pixels into 784 inputs: z near 0 cancels terms of order 10^3, so correct
    # implementations differ by more than the fixed atol; the forward stage allows each dot
    # product its rounding (torch_ref.engine._forward_slack). Found by a review: 19 of 36 such
    # runs failed before.
    rng = np.random.default_rng(0)
    X = np.round(255 * rng.random((128, 784)))
    y = rng.integers(0, 2, 128).astype(float)
    for act in ("tanh", "sigmoid", "relu"):
        net, ref = make_pair([784, 64, 1], [act, "sigmoid"], seed=0)
        result = lockstep(net, ref, X, y, steps=30, lr=1e-3)
        assert result.passed, f"{act}: {result.first_divergence}"


def test_a_bug_that_starts_on_a_drifting_step_is_located_where_it_lives():
    # Raw inputs make z drift past the fixed atol at the very step a carried-state bug starts:
    # the divergence must point at the gradients, not at the harmless z.
    rng = np.random.default_rng(0)
    X = np.round(255 * rng.random((64, 784)))
    y = rng.integers(0, 2, 64).astype(float)
    net, ref = make_pair([784, 64, 1], ["tanh", "sigmoid"], seed=0)
    previous = np.zeros_like(net.flat_grads)
    backward = net.backward

    def accumulating(dout, cache):  # gradients never reset between steps
        grads = backward(dout, cache)
        net.flat_grads += previous
        previous[...] = net.flat_grads
        return grads

    net.backward = accumulating
    div = lockstep(net, ref, X, y, steps=10, lr=1e-3).first_divergence
    assert div is not None and (div.step, div.quantity) == (1, "grad"), str(div)


def test_dtypes_are_checked_before_values():
    X, y = make_data(8, 3, dtype="float32")
    net, ref = make_pair([3, 4, 1], ["tanh", "sigmoid"], dtype="float32")
    tanh = net.layers[0].activation
    tanh.forward = lambda z: np.tanh(z.astype(np.float64))  # promotes to float64
    with pytest.raises(
        TypeError, match=r"a\[0\]: scratch computes it in float64, torch in float32"
    ):
        lockstep(net, ref, X, y, steps=2, lr=0.1)


def test_explained_steps_count_as_passing_in_the_per_item_verdicts():
    from parity_tests.test_no_false_alarms import FOUND, run

    result = run(FOUND[0])
    assert result.passed and result.drift_steps
    assert all(v["passed"] for v in result.worst().values())
    assert not result.within.all()  # the raw comparison is kept
