"""Stateful optimisers: scratch against torch.optim, parameters and every state buffer by name.

Both sides start from the same parameters and step on the same seeded gradients, so every
difference is the optimiser's own rounding. The tolerance (docs/optimizers.md, "Tolerances"):

    |scratch - torch| <= atol + rtol |torch|,   rtol = K u n,   atol = rtol * S

with u the dtype's machine epsilon; K = 2 L, L = 10 the longest chain of operations in one update
at which the two sides' results can part by one more ulp (RMSprop, centered, with momentum and
weight decay), each ulp of a value at most 2 S; n the number of steps the difference could have
accumulated over (1 when scratch takes torch's state before every step, t when the two run
free); S the largest magnitude the tensor has held so far. `step` is an exact count.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from nn_parity import scratch
from nn_parity.scratch.optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    RMSprop,
    _lerp,
    check_lr,
    get_optimizer,
)
from nn_parity.torch_ref.mirror.optim import set_torch_state, torch_optimizer, torch_state

K = 2 * 10
STEPS = 50
# 70 elements: torch's vectorised loop (8 doubles or 16 floats a lane) and its scalar tail
SHAPES = {"layers.0.weight": (5, 3), "layers.0.bias": (5,), "layers.1.weight": (70,)}
DTYPES = [np.float64, np.float32]


def _grid():
    sgd = [dict(lr=0.1, weight_decay=wd) for wd in (0.0, 0.1)]
    sgd += [
        dict(lr=0.1, momentum=0.9, nesterov=n, weight_decay=wd)
        for n, wd in itertools.product((False, True), (0.0, 0.1))
    ]
    sgd += [dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=wd) for wd in (0.0, 0.1)]
    adam = [
        dict(lr=0.01, betas=b, amsgrad=a, weight_decay=wd)
        # betas (0.3, 0.5): 1 - beta1 >= 0.5 takes torch's other lerp form
        for b, a, wd in itertools.product([(0.9, 0.999), (0.3, 0.5)], (False, True), (0.0, 0.1))
    ]
    rms = [
        dict(lr=0.01, momentum=m, centered=c, weight_decay=wd)
        for m, c, wd in itertools.product((0.0, 0.9), (False, True), (0.0, 0.1))
    ]
    ada = [
        dict(lr=0.1, lr_decay=d, weight_decay=wd, initial_accumulator_value=i)
        for d, wd, i in itertools.product((0.0, 0.1), (0.0, 0.1), (0.0, 0.5))
    ]
    return (
        [("sgd", h) for h in sgd]
        + [(n, h) for n in ("adam", "adamw") for h in adam]
        + [("rmsprop", h) for h in rms]
        + [("adagrad", h) for h in ada]
    )


GRID = _grid()


def _id(case) -> str:
    name, hyper = case
    return name + "-" + ",".join(f"{k}={v}" for k, v in hyper.items() if k != "lr")


def _gradients(dtype, seed=0, steps=STEPS):
    """Seeded gradients whose scale varies over 10^-5 .. 10 per element and step, so Adam's
    and RMSprop's denominators meet both tiny and large second moments."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield {
            k: (rng.standard_normal(s) * 10.0 ** rng.uniform(-5, 1, s)).astype(dtype)
            for k, s in SHAPES.items()
        }


def _start(name, hyper, dtype, seed=0, cls=None):
    rng = np.random.default_rng(seed + 1000)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = (cls or OPTIMIZERS[name])(params, **hyper)
    return opt, tparams, torch_optimizer(opt, tparams)


class Tracker:
    """Compares one side against the other tensor by tensor, keeping each one's scale S."""

    def __init__(self, dtype):
        self.u = float(np.finfo(dtype).eps)
        self.scale: dict[tuple[str, str], float] = {}

    def first_mismatch(self, t, n, ours, theirs, before):
        """(step, quantity, parameter, index, scratch, torch) of the first mismatch, or None.

        Order within a step is causal: each parameter's buffers, then the parameter itself.
        """
        for name in ours:
            for q in [*ours[name]]:
                a, b = ours[name][q], theirs[name].get(q)
                if b is None:
                    return (t, q, name, None, "present", "absent")
                prev = before.get((name, q))
                s = max(self.scale.get((name, q), 0.0), _maxabs(b), _maxabs(prev))
                self.scale[(name, q)] = s
                rtol = 0.0 if q == "step" else K * self.u * n
                bad = ~(np.abs(a - b) <= rtol * s + rtol * np.abs(b))
                if bad.any():
                    idx = tuple(int(i) for i in np.argwhere(bad)[0])
                    return (t, q, name, idx, a[idx], b[idx])
            extra = set(theirs[name]) - set(ours[name])
            if extra:
                return (t, sorted(extra)[0], name, None, "absent", "present")
        return None


def _maxabs(x) -> float:
    return 0.0 if x is None or np.size(x) == 0 else float(np.max(np.abs(x)))


def _snapshot(opt, tparams, topt):
    """Both sides' state and parameters in one layout: {name: {quantity: array}}."""
    ours = opt.state_dict()
    theirs = torch_state(topt, list(opt.params))
    for name, p in opt.params.items():
        ours[name]["param"] = p.copy()
        theirs[name]["param"] = tparams[name].detach().numpy().copy()
    return ours, theirs


def run(name, hyper, dtype, *, steps=STEPS, resync=False, cls=None, after_step=None):
    """Step both sides on the same gradients; the first mismatch, or None."""
    opt, tparams, topt = _start(name, hyper, dtype, cls=cls)
    tracker = Tracker(dtype)
    before: dict = {}
    for t, grads in enumerate(_gradients(dtype, steps=steps), start=1):
        if resync:  # scratch takes torch's parameters and state: one step's rounding only
            opt.load_state_dict(torch_state(topt, list(opt.params)))
            for k, p in opt.params.items():
                p[...] = tparams[k].detach().numpy()
        opt.step(grads)
        for k, g in grads.items():
            tparams[k].grad = torch.from_numpy(g.copy())
        topt.step()
        if after_step is not None:
            after_step(t, opt)
        ours, theirs = _snapshot(opt, tparams, topt)
        found = tracker.first_mismatch(t, 1 if resync else t, ours, theirs, before)
        if found is not None:
            return found
        before = {(n, q): v for n, qs in theirs.items() for q, v in qs.items()}
    return None


# --- parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_free_running_parity(case, dtype):
    name, hyper = case
    assert run(name, hyper, dtype) is None


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_one_step_parity_from_torch_state(case, dtype):
    """Resynced before every step: within K ulps of the tensor's scale, whatever the step."""
    name, hyper = case
    assert run(name, hyper, dtype, resync=True) is None


def test_state_keys_match_torch_before_and_after_the_first_step():
    for name, hyper in GRID:
        opt, tparams, topt = _start(name, hyper, np.float64)
        for grads in _gradients(np.float64, steps=2):
            ours, theirs = _snapshot(opt, tparams, topt)
            assert {k: set(v) for k, v in ours.items()} == {k: set(v) for k, v in theirs.items()}
            opt.step(grads)
            for k, g in grads.items():
                tparams[k].grad = torch.from_numpy(g.copy())
            topt.step()


class SGDHyperLost(SGD):
    """The torch side built without momentum: a hyper-parameter given to one side only."""

    @property
    def hyper(self):
        return {**super().hyper, "momentum": 0.0}


def test_a_buffer_on_one_side_only_is_named():
    found = run("sgd", {"lr": 0.1, "momentum": 0.9}, np.float64, cls=SGDHyperLost)
    assert found == (1, "momentum_buffer", W0, None, "present", "absent")


# --- every check can fail: bugs planted on purpose -----------------------------------------------

W0 = "layers.0.weight"


class AdamNoBiasCorrection(Adam):
    def _update(self, p, g, state):
        beta1, beta2 = self.betas
        self._start(state, p, "exp_avg", "exp_avg_sq")
        state["step"] += 1
        m, v = state["exp_avg"], state["exp_avg_sq"]
        _lerp(m, g, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * g * g
        p += -self.lr * m / (np.sqrt(v) + self.eps)


class AdamEpsInsideSqrt(Adam):
    def _update(self, p, g, state):
        beta1, beta2 = self.betas
        self._start(state, p, "exp_avg", "exp_avg_sq")
        state["step"] += 1
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        _lerp(m, g, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * g * g
        p += -self.lr / (1 - beta1**t) * m / np.sqrt(v / (1 - beta2**t) + self.eps)


class SGDBufferFromZero(SGD):
    """The textbook start b_0 = 0, then b_1 = mu 0 + (1 - dampening) g."""

    def _update(self, p, g, state):
        state.setdefault("momentum_buffer", np.zeros_like(p))
        super()._update(p, g, state)


class SGDNesterovTwice(SGD):
    """d = g + mu b + mu b: the look-ahead term added a second time."""

    def _update(self, p, g, state):
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = g.copy()
        else:
            buf *= self.momentum
            buf += g
        d = g + self.momentum * buf
        p -= self.lr * (d + self.momentum * buf)


class AdamWAsL2(AdamW):
    decoupled = False


class AdamDecoupled(Adam):
    decoupled = True


MUTANTS = [
    ("no-bias-correction", "adam", {}, AdamNoBiasCorrection, (1, "param", W0)),
    ("eps-inside-sqrt", "adam", {"eps": 1e-3}, AdamEpsInsideSqrt, (1, "param", W0)),
    ("buffer-from-zero", "sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5},
     SGDBufferFromZero, (1, "momentum_buffer", W0)),
    ("nesterov-twice", "sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True},
     SGDNesterovTwice, (1, "param", W0)),
    ("adamw-as-l2", "adamw", {}, AdamWAsL2, (1, "exp_avg", W0)),
    ("adam-decoupled", "adam", {"weight_decay": 0.1}, AdamDecoupled, (1, "exp_avg", W0)),
]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("mutant", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_planted_bug_is_caught_and_located(mutant, dtype):
    _, name, hyper, cls, where = mutant
    found = run(name, hyper, dtype, cls=cls)
    assert found is not None and found[:3] == where, found


def test_buffer_from_zero_is_invisible_without_dampening():
    """With dampening 0, mu * 0 + g = g: the textbook start and torch's agree exactly, so the
    planted bug can only be seen with dampening != 0 (as above)."""
    hyper = {"lr": 0.1, "momentum": 0.9}
    assert run("sgd", hyper, np.float64, cls=SGDBufferFromZero) is None


PERTURBED = [
    ("sgd", {"lr": 0.1, "momentum": 0.9}, "momentum_buffer"),
    ("adam", {"amsgrad": True}, "exp_avg"),
    ("adam", {"amsgrad": True}, "exp_avg_sq"),
    ("adam", {"amsgrad": True}, "max_exp_avg_sq"),
    ("adam", {}, "step"),
    ("adamw", {}, "param"),
    ("rmsprop", {"momentum": 0.9, "centered": True}, "square_avg"),
    ("rmsprop", {"momentum": 0.9, "centered": True}, "momentum_buffer"),
    ("rmsprop", {"momentum": 0.9, "centered": True}, "grad_avg"),
    ("adagrad", {}, "sum"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", PERTURBED, ids=[f"{n}-{b}" for n, _, b in PERTURBED])
def test_one_element_nudged_by_a_few_ulps_is_named(case, dtype):
    """One element of one buffer moved by 4 K = 80 ulps of the tensor's scale after step 3 is
    reported as that buffer of that parameter at step 3 (the one-step comparison)."""
    name, hyper, buffer = case
    index = (2, 1)

    def nudge(t, opt):
        if t == 3:
            arr = opt.params[W0] if buffer == "param" else opt.state[W0][buffer]
            ulp = np.spacing(arr.dtype.type(np.max(np.abs(arr))))
            arr[() if buffer == "step" else index] += 1 if buffer == "step" else 4 * K * ulp

    found = run(name, hyper, dtype, resync=True, after_step=nudge)
    assert found is not None and found[:3] == (3, buffer, W0), found
    assert found[3] == (() if buffer == "step" else index)


# --- Adam under gradient noise: the bound of docs/optimizers.md --------------------------------


def adam_step_bound(hyper, t, exp_avg_sq, delta, theta):
    """Largest difference of one Adam step between two sides whose gradients have differed by
    at most `delta` (absolute) at every step so far (docs/optimizers.md):

        min(lr delta (1 + C_t) / (sqrt(v_hat) + eps), 2 lr C_t) + K u lr C_t + 2 u |theta|
    """
    (b1, b2), lr, eps = hyper["betas"], hyper["lr"], hyper["eps"]
    r = b1 * b1 / b2
    C = np.sqrt((1 - b1) ** 2 * (1 - b2**t) * (1 - r**t) / ((1 - b2) * (1 - b1**t) ** 2 * (1 - r)))
    u = float(np.finfo(theta.dtype).eps)
    vhat = exp_avg_sq.astype(np.float64) / (1 - b2**t)
    noise = np.minimum(lr * delta * (1 + C) / (np.sqrt(vhat) + eps), 2 * lr * C)
    return noise + K * u * lr * C + 2 * u * np.abs(theta.astype(np.float64))


def _adam_under_noise(cls, steps=300, n=400):
    """Worst (step difference / bound) over `steps` float32 steps, torch's gradients off by
    delta = 4 ulps of 1 in random directions, gradient scales spread over 10^-10 .. 1."""
    rng = np.random.default_rng(7)
    dtype, delta = np.float32, 4 * float(np.finfo(np.float32).eps)
    params = {"w": rng.standard_normal(n).astype(dtype)}
    tparams = {"w": torch.nn.Parameter(torch.from_numpy(params["w"].copy()))}
    opt = cls(params, lr=1e-3)
    topt = torch_optimizer(opt, tparams)
    scale = 10.0 ** rng.uniform(-10, 0, n)  # (n,)
    worst, apart = 0.0, 0.0
    for t in range(1, steps + 1):
        g = (rng.standard_normal(n) * scale).astype(dtype)  # (n,)
        before = params["w"].astype(np.float64)
        tbefore = tparams["w"].detach().numpy().astype(np.float64)
        opt.step({"w": g})
        tparams["w"].grad = torch.from_numpy(
            g + dtype(delta) * rng.choice([-1, 1], n).astype(dtype)
        )
        topt.step()
        theta = tparams["w"].detach().numpy()
        v = torch_state(topt, ["w"])["w"]["exp_avg_sq"]
        diff = np.abs((params["w"] - before) - (theta - tbefore))
        worst = max(worst, float(np.max(diff / adam_step_bound(opt.hyper, t, v, delta, theta))))
        apart = max(apart, float(np.max(np.abs(params["w"] - theta))) / opt.lr)
    return worst, apart


def test_adam_update_difference_obeys_the_derived_bound():
    worst, apart = _adam_under_noise(Adam)
    assert worst <= 1.0, worst
    # and the amplification is real: the parameters part by many learning rates
    assert apart > 10, apart


def test_adam_bound_is_broken_by_a_missing_bias_correction():
    worst, _ = _adam_under_noise(AdamNoBiasCorrection, steps=5)
    assert worst > 10, worst


def test_centered_rmsprop_parts_beyond_the_tolerance_where_the_variance_cancels():
    """The documented limit of the one-step tolerance: with a nearly constant gradient,
    s - a^2 cancels to ulps of s, and g / (sqrt(s - a^2) + eps) magnifies the two sides'
    roundings far past K u S. Both sides are right; the lockstep has to explain such a step."""
    rng = np.random.default_rng(3)
    n, names = 200, ["w"]
    params = {"w": rng.standard_normal(n)}  # (n,)
    tparams = {"w": torch.nn.Parameter(torch.from_numpy(params["w"].copy()))}
    opt = RMSprop(params, lr=1e-2, centered=True)
    topt = torch_optimizer(opt, tparams)
    # a variance of 1e-12 under a mean square of 1: s - a^2 keeps ~4 significant digits
    state = {"w": {"step": np.array(1000.0), "square_avg": np.full(n, 1 + 1e-12)}}
    state["w"]["grad_avg"] = np.ones(n)
    opt.load_state_dict(state)
    set_torch_state(topt, names, state)
    g = 1 + 1e-6 * rng.standard_normal(n)  # (n,)
    before = params["w"].copy()
    opt.step({"w": g})
    tparams["w"].grad = torch.from_numpy(g.copy())
    topt.step()
    ours, theirs = _snapshot(opt, tparams, topt)
    tracker = Tracker(np.float64)
    mismatch = tracker.first_mismatch(1001, 1, ours, theirs, {("w", "param"): before})
    assert mismatch is not None and mismatch[1:3] == ("param", "w"), mismatch
    parted = np.max(np.abs(ours["w"]["param"] - theirs["w"]["param"]))
    assert parted > 1e3 * K * float(np.finfo(np.float64).eps) * _maxabs(before)


# --- state in and out -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", GRID[::3], ids=[_id(c) for c in GRID[::3]])
def test_state_dict_round_trip_continues_bit_for_bit(case):
    name, hyper = case
    grads = list(_gradients(np.float64, steps=8))
    opt, _, _ = _start(name, hyper, np.float64)
    for g in grads[:4]:
        opt.step(g)
    twin, _, _ = _start(name, hyper, np.float64)
    for k, p in twin.params.items():
        p[...] = opt.params[k]
    saved = opt.state_dict()
    twin.load_state_dict(saved)
    saved_copy = {k: {b: v.copy() for b, v in s.items()} for k, s in saved.items()}
    for g in grads[4:]:
        opt.step(g)
        twin.step(g)
    for k in opt.params:
        np.testing.assert_array_equal(twin.params[k], opt.params[k])
        for b in opt.state[k]:
            np.testing.assert_array_equal(twin.state[k][b], opt.state[k][b])
            # the loaded dict was copied from, not adopted
            np.testing.assert_array_equal(saved[k][b], saved_copy[k][b])


def test_load_state_dict_copies_into_the_existing_arrays():
    opt, _, _ = _start("adam", {}, np.float64)
    opt.step(next(_gradients(np.float64)))
    held = opt.state[W0]["exp_avg"]
    state = opt.state_dict()
    state[W0]["exp_avg"] += 1.0
    opt.load_state_dict(state)
    assert opt.state[W0]["exp_avg"] is held
    np.testing.assert_array_equal(held, state[W0]["exp_avg"])


@pytest.mark.parametrize("case", GRID[::3], ids=[_id(c) for c in GRID[::3]])
def test_torch_state_round_trip_continues_bit_for_bit(case):
    """torch_state then set_torch_state into a fresh torch optimiser: the same trajectory."""
    name, hyper = case
    grads = list(_gradients(np.float64, steps=8))
    opt, tparams, topt = _start(name, hyper, np.float64)
    names = list(opt.params)
    _, tparams2, topt2 = _start(name, hyper, np.float64)
    for i, g in enumerate(grads):
        if i == 4:
            set_torch_state(topt2, names, torch_state(topt, names))
            with torch.no_grad():
                for k in names:
                    tparams2[k].copy_(tparams[k])
        for k in names:
            tparams[k].grad = torch.from_numpy(g[k].copy())
            tparams2[k].grad = torch.from_numpy(g[k].copy())
        topt.step()
        if i >= 4:
            topt2.step()
    a, b = torch_state(topt, names), torch_state(topt2, names)
    for k in names:
        assert torch.equal(tparams[k], tparams2[k])
        assert a[k].keys() == b[k].keys()
        for buf in a[k]:
            np.testing.assert_array_equal(a[k][buf], b[k][buf])


def test_set_torch_state_empty_means_first_step_again():
    opt, tparams, topt = _start("sgd", {"lr": 0.1, "momentum": 0.9}, np.float64)
    names = list(opt.params)
    for k, g in next(_gradients(np.float64)).items():
        tparams[k].grad = torch.from_numpy(g)
    topt.step()
    assert torch_state(topt, names)[W0].keys() == {"momentum_buffer"}
    set_torch_state(topt, names, {k: {} for k in names})
    assert torch_state(topt, names) == {k: {} for k in names}


# --- the network interface the engine relies on --------------------------------------------------


def test_plain_sgd_on_a_network_keeps_the_one_operation_update():
    net = scratch.MLP([3, 4, 1], ["tanh", "sigmoid"], rng=0)
    net.flat_grads[...] = np.linspace(-1, 1, net.flat_grads.size)
    expected = net.flat_params - 0.1 * net.flat_grads
    opt = scratch.SGD(net, 0.1)
    assert opt.net is net and opt.params is net.params
    opt.step()
    np.testing.assert_array_equal(net.flat_params, expected)
    assert repr(opt) == "SGD(lr=0.1)"


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_network_steps_on_its_own_gradients(name):
    """step() with no argument reads net.grads; the arrays are the network's, never rebound."""
    net = scratch.MLP([3, 4, 1], ["tanh", "sigmoid"], rng=0)
    views = dict(net.params)
    net.flat_grads[...] = np.linspace(-1, 1, net.flat_grads.size)
    twin = {k: p.copy() for k, p in net.params.items()}
    opt = get_optimizer(name, net, lr=0.1, weight_decay=0.1)
    ref = get_optimizer(name, twin, lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.step()
        ref.step(net.grads)
    for k, p in net.params.items():
        assert p is views[k] and np.shares_memory(p, net.flat_params)
        np.testing.assert_array_equal(p, twin[k])


@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_a_twin_from_hyper_reruns_a_step_from_torch_state(case):
    """type(opt)(params, **opt.hyper) is the same optimiser: fed torch's parameters and state,
    its one step agrees with torch's within the one-step tolerance (the lockstep's rerun)."""
    name, hyper = case
    opt, tparams, topt = _start(name, hyper, np.float64)
    names = list(opt.params)
    grads = list(_gradients(np.float64, steps=4))
    for g in grads[:3]:
        for k in names:
            tparams[k].grad = torch.from_numpy(g[k].copy())
        topt.step()
    twin = type(opt)({k: tparams[k].detach().numpy().copy() for k in names}, **opt.hyper)
    assert twin.hyper == opt.hyper
    twin.load_state_dict(torch_state(topt, names))
    before = {(k, q): v for k, qs in torch_state(topt, names).items() for q, v in qs.items()}
    twin.step(grads[3])
    for k in names:
        tparams[k].grad = torch.from_numpy(grads[3][k].copy())
    topt.step()
    ours, theirs = _snapshot(twin, tparams, topt)
    assert Tracker(np.float64).first_mismatch(4, 1, ours, theirs, before) is None


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_a_network_updated_in_one_flat_pass_matches_the_loop_bit_for_bit(case, dtype):
    """On a network, step() updates the flat buffers at once; a dict of copies stepped
    parameter by parameter gives the same bits, state included, also after a load that gives
    the parameters different step counts (which forces the loop)."""
    name, hyper = case
    net = scratch.MLP([3, 17, 2], ["tanh", "identity"], dtype=np.dtype(dtype).name, rng=0)
    twin = {k: p.copy() for k, p in net.params.items()}
    opt, ref = OPTIMIZERS[name](net, **hyper), OPTIMIZERS[name](twin, **hyper)
    rng = np.random.default_rng(5)
    for t in range(6):
        net.flat_grads[...] = rng.standard_normal(net.flat_grads.size)
        if t == 3 and "step" in opt.state_names:
            state = opt.state_dict()
            state["layers.0.bias"]["step"] = np.array(7.0)
            opt.load_state_dict(state)
            ref.load_state_dict(state)
        opt.step()
        ref.step({k: g.copy() for k, g in net.grads.items()})
        for k in twin:
            np.testing.assert_array_equal(net.params[k], twin[k], err_msg=f"{k} at step {t}")
            assert opt.state[k].keys() == ref.state[k].keys()
            for b, v in opt.state[k].items():
                np.testing.assert_array_equal(v, ref.state[k][b], err_msg=f"{b} of {k}, {t}")
    # the state is views into flat buffers, as the parameters are
    for st in opt.state.values():
        for b, v in st.items():
            assert b == "step" or np.shares_memory(v, opt._flat[b]), b


def test_step_leaves_the_gradients_alone():
    opt, _, _ = _start("adam", {"weight_decay": 0.1}, np.float64)
    grads = next(_gradients(np.float64))
    kept = {k: g.copy() for k, g in grads.items()}
    opt.step(grads)
    for k in grads:
        np.testing.assert_array_equal(grads[k], kept[k])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_hyper_builds_torch_from_one_description(name):
    opt, _, topt = _start(name, {"lr": 0.05}, np.float64)
    group = topt.param_groups[0]
    for k, v in opt.hyper.items():
        assert group[k] == v, k
    assert group["foreach"] is False
    assert type(topt).__name__ == opt.torch_name == OPTIMIZERS[name].torch_name


# --- bad input ---------------------------------------------------------------------------------

P = {"w": np.zeros(3)}

BAD = [
    (lambda: get_optimizer("adamax", P, lr=0.1), ValueError,
     r"unknown optimizer 'adamax'.*sgd, adam"),
    (lambda: get_optimizer("adam", P, momentum=0.9), ValueError,
     r"'adam' takes no option 'momentum'; its options are lr, betas, eps, weight_decay, amsgrad"),
    (lambda: get_optimizer("sgd", P), ValueError, r"'sgd' needs lr"),
    (lambda: SGD(P, 0.0), ValueError, r"learning rate must be a finite number > 0, got 0.0"),
    (lambda: SGD(P, "0.1"), TypeError, r"learning rate must be a number, got str '0.1'"),
    (lambda: SGD(P, 0.1, momentum=-0.5), ValueError, r"momentum must be .* >= 0, got -0.5"),
    (lambda: SGD(P, 0.1, dampening=2.0), ValueError, r"dampening must be .* in \[0, 1\], got 2.0"),
    (lambda: SGD(P, 0.1, nesterov=True), ValueError,
     r"nesterov needs momentum > 0 and dampening 0.*momentum=0.0, dampening=0.0"),
    (lambda: SGD(P, 0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
     r"nesterov needs .* dampening=0.1"),
    (lambda: SGD(P, 0.1, nesterov="yes"), TypeError, r"nesterov must be True or False, got str"),
    (lambda: SGD(P, 0.1, weight_decay=-1e-4), ValueError, r"weight_decay must be .*got -0.0001"),
    (lambda: Adam(P, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be .* in \[0, 1\), got 1.0"),
    (lambda: Adam(P, betas=(-0.1, 0.9)), ValueError, r"betas\[0\] must be .*got -0.1"),
    (lambda: Adam(P, betas=0.9), ValueError, r"betas must be a pair \(beta1, beta2\), got 0.9"),
    (lambda: AdamW(P, eps=-1e-8), ValueError, r"eps must be a finite number >= 0, got -1e-08"),
    (lambda: Adam(P, eps=float("nan")), ValueError, r"eps must be a finite number >= 0, got nan"),
    (lambda: Adam(P, amsgrad=1), TypeError, r"amsgrad must be True or False, got int 1"),
    (lambda: RMSprop(P, alpha=1.5), ValueError, r"alpha must be .* in \[0, 1\], got 1.5"),
    (lambda: RMSprop(P, momentum=-1), ValueError, r"momentum must be .*got -1"),
    (lambda: Adagrad(P, lr_decay=-0.1), ValueError, r"lr_decay must be .*got -0.1"),
    (lambda: Adagrad(P, initial_accumulator_value=-1.0), ValueError,
     r"initial_accumulator_value must be .*got -1.0"),
    (lambda: SGD([np.zeros(3)], 0.1), TypeError, r"params must be a scratch.MLP or a dict"),
    (lambda: SGD({}, 0.1), ValueError, r"params is empty"),
    (lambda: SGD({"w": [0.0]}, 0.1), TypeError, r"parameter 'w' must be a NumPy array.*list"),
    (lambda: SGD({"w": np.zeros(3, int)}, 0.1), TypeError, r"'w' must be float32 or float64"),
    (lambda: SGD(P, 0.1).step(), TypeError, r"step\(\) needs grads"),
    (lambda: SGD(P, 0.1).step({"v": np.zeros(3)}), ValueError,
     r"grads do not fit the parameters: missing \['w'\], unexpected \['v'\]"),
    (lambda: SGD(P, 0.1).step({"w": np.zeros(4)}), ValueError,
     r"grad 'w': expected shape \(3,\), got \(4,\)"),
    (lambda: SGD(P, 0.1).step({"w": [0.0, 0.0, 0.0]}), TypeError,
     r"grad 'w' must be a NumPy array, got list"),
    (lambda: SGD(P, 0.1).step({"w": np.zeros(3, np.float32)}), TypeError,
     r"grad 'w': expected dtype float64, got float32"),
    (lambda: Adam(P).load_state_dict({"w": {"exp_avg": np.zeros(4)}}), ValueError,
     r"exp_avg of 'w': expected shape \(3,\), got \(4,\)"),
    (lambda: Adam(P).load_state_dict({"w": {"momentum_buffer": np.zeros(3)}}), ValueError,
     r"adam state of 'w': unknown buffer\(s\) \['momentum_buffer'\]"),
    (lambda: Adam(P).load_state_dict({}), ValueError, r"missing \['w'\]"),
    (lambda: Adam(P).load_state_dict({"w": np.zeros(3)}), TypeError,
     r"state of 'w' must be a dict buffer name -> array, got ndarray"),
]  # fmt: skip


@pytest.mark.parametrize("call,exc,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_is_one_line_naming_the_value(call, exc, message):
    with pytest.raises(exc, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_torch_side_refuses_misfits_by_name():
    opt = Adam({"w": np.zeros(3)})
    with pytest.raises(ValueError, match=r"torch lacks \['w'\], scratch lacks \['v'\]"):
        torch_optimizer(opt, {"v": torch.nn.Parameter(torch.zeros(3))})
    with pytest.raises(ValueError, match=r"w: scratch shape \(3,\), torch shape \(4,\)"):
        torch_optimizer(opt, {"w": torch.nn.Parameter(torch.zeros(4))})
    topt = torch_optimizer(opt, {"w": torch.nn.Parameter(torch.zeros(3))})
    with pytest.raises(ValueError, match=r"2 names for the torch optimiser's 1 parameters"):
        torch_state(topt, ["w", "v"])
    with pytest.raises(ValueError, match=r"exp_avg of 'w': expected shape \(3,\), got \(2,\)"):
        set_torch_state(topt, ["w"], {"w": {"exp_avg": np.zeros(2)}})
    topt = torch_optimizer(Adagrad({"w": np.zeros(3)}), {"w": torch.nn.Parameter(torch.zeros(3))})
    with pytest.raises(ValueError, match=r"Adagrad's state of 'w' cannot be emptied"):
        set_torch_state(topt, ["w"], {"w": {}})


def test_check_lr_kept():
    assert check_lr(1) == 1.0


def test_adagrad_loaded_empty_starts_again_from_its_accumulator():
    opt = Adagrad({"w": np.zeros(3)}, initial_accumulator_value=0.5)
    opt.step({"w": np.ones(3)})
    opt.load_state_dict({"w": {}})
    assert opt.state_dict()["w"] == {}
    opt.step({"w": np.ones(3)})
    np.testing.assert_array_equal(opt.state["w"]["sum"], np.full(3, 1.5))
    assert float(opt.state["w"]["step"]) == 1.0


# --- the survey behind docs/optimizers.md: `python -m parity_tests.test_optim [steps]` ------------


def _survey(steps: int) -> None:
    """Largest difference seen, in units of u * S (the tensor's scale), over `steps` free-running
    steps: scratch against torch (foreach=False), and torch's foreach=True against it."""
    for dtype in DTYPES:
        u = float(np.finfo(dtype).eps)
        for name in OPTIMIZERS:
            worst = {"scratch": 0.0, "foreach": 0.0}
            same, total = 0, 0  # elements bitwise equal after the first step
            for _, hyper in (c for c in GRID if c[0] == name):
                opt, tparams, topt = _start(name, hyper, dtype)
                tp2 = {k: torch.nn.Parameter(v.detach().clone()) for k, v in tparams.items()}
                topt2 = torch_optimizer(opt, tp2, foreach=True)
                scale: dict = {}
                assert topt2.param_groups[0]["foreach"] is True
                for t, grads in enumerate(_gradients(dtype, steps=steps), start=1):
                    opt.step(grads)
                    for k, g in grads.items():
                        tparams[k].grad = torch.from_numpy(g.copy())
                        tp2[k].grad = torch.from_numpy(g.copy())
                    topt.step()
                    topt2.step()
                    ours, theirs = _snapshot(opt, tparams, topt)
                    fe = torch_state(topt2, list(opt.params))
                    for k in opt.params:
                        fe[k]["param"] = tp2[k].detach().numpy()
                        for q, b in theirs[k].items():
                            s = scale[k, q] = max(scale.get((k, q), 0.0), _maxabs(b))
                            if q == "step" or s == 0:
                                continue
                            for side, a in (("scratch", ours[k][q]), ("foreach", fe[k][q])):
                                d = float(np.max(np.abs(a - b))) / (u * s)
                                worst[side] = max(worst[side], d)
                            if t == 1:
                                same += int(np.count_nonzero(ours[k][q] == b))
                                total += b.size
            print(
                f"{np.dtype(dtype).name:8s} {name:8s} scratch {worst['scratch']:8.2f} u*S   "
                f"torch foreach {worst['foreach']:8.2f} u*S   "
                f"bitwise equal after step 1: {100 * same / total:5.1f}%"
            )


def _probe(n: int = 1000) -> None:
    """Each torch kernel the optimizers use against its NumPy expression and against a
    correctly rounded fused multiply-add (exact rational arithmetic, rounded once)."""
    from fractions import Fraction

    rng = np.random.default_rng(0)
    print(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {n} elements")
    for dtype in DTYPES:
        a, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))  # (n,)
        c = np.abs(rng.standard_normal(n)).astype(dtype) + dtype(0.1)  # (n,)
        ta, tb, tc = (torch.from_numpy(x) for x in (a, b, c))
        w, k = dtype(0.1), dtype(0.37)

        def fma(x, y, z):
            exact = [Fraction(float(p)) * Fraction(float(q)) + Fraction(float(r))
                     for p, q, r in zip(*np.broadcast_arrays(x, y, z), strict=True)]  # fmt: skip
            # float64: one rounding; float32: via float64, exact product, then float32
            return np.array([float(e) for e in exact]).astype(np.result_type(x, y, z))

        rows = [
            ("add(x, alpha=k)", ta.add(tb, alpha=0.37), a + k * b, fma(k, b, a)),
            ("addcmul(x, x, value=k)", ta.addcmul(tb, tb, value=0.37), a + k * b * b,
             fma(k * b, b, a)),
            ("lerp(x, 0.1)", ta.lerp(tb, 0.1), a + w * (b - a), fma(w, b - a, a)),
            ("addcdiv(x, c, value=-k)", ta.addcdiv(tb, tc, value=-0.37), a + -k * b / c, None),
            ("sqrt", tc.sqrt(), np.sqrt(c), None),
        ]  # fmt: skip
        for label, got, plain, fused in rows:
            got = got.numpy()
            line = f"{np.dtype(dtype).name:8s} {label:26s} differs from NumPy in "
            line += f"{np.count_nonzero(got != plain):4d}"
            if fused is not None:
                line += f", from a fused multiply-add in {np.count_nonzero(got != fused):4d}"
            print(line)


if __name__ == "__main__":
    import sys

    _probe()
    _survey(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
