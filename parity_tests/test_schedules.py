"""Learning-rate schedules and per-parameter settings: declared once in the optimizer's
description, mirrored by torch.optim.lr_scheduler and torch's parameter groups, the rate of
every step compared (quantity "lr"), and a schedule that parts located at the step it does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nn_parity import scratch
from nn_parity.scratch.optim import Optimizer, Schedule, get_optimizer
from nn_parity.torch_ref import TorchMLP, adapt, lockstep, tolerance
from nn_parity.torch_ref.mirror.optim import torch_optimizer, torch_scheduler, torch_state

from .helpers import make_data
from .user_code import decay_style

L = torch.optim.lr_scheduler
SCHEDULES = {
    "inverse_time": ({"name": "inverse_time", "decay": 0.013},
                     lambda o: L.LambdaLR(o, lambda t: 1 / (1 + 0.013 * t))),
    "step": ({"name": "step", "step_size": 3, "gamma": 0.3}, lambda o: L.StepLR(o, 3, 0.3)),
    "exponential": ({"name": "exponential", "gamma": 0.97}, lambda o: L.ExponentialLR(o, 0.97)),
    # fn(0) != 1: torch applies the factor when the scheduler is made, before the first step
    "lambda": ({"name": "lambda", "fn": lambda t: 0.5 + 0.1 * (t % 4)},
               lambda o: L.LambdaLR(o, lambda t: 0.5 + 0.1 * (t % 4))),
}  # fmt: skip


def _torch_rates(make, steps: int, base: float) -> list[float]:
    """The rate each step of a torch training loop uses: opt.step(), then scheduler.step()."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = make(opt)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(1)
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_each_schedule_gives_torchs_rates_bit_for_bit(name):
    spec, make = SCHEDULES[name]
    sched = Schedule(spec)
    assert [sched.lr(0.1, t) for t in range(200)] == _torch_rates(make, 200, 0.1)


def test_the_closed_form_of_a_chained_schedule_is_not_torchs():
    """torch multiplies the rate it holds by gamma; base * gamma**t rounds differently. The
    comparison is exact, so it must follow the chain (which is why Schedule does)."""
    torch_rates = _torch_rates(SCHEDULES["exponential"][1], 200, 0.1)
    closed = [0.1 * 0.97**t for t in range(200)]
    assert closed != torch_rates


def _net(dtype="float64", seed=0):
    net = scratch.MLP([4, 6, 1], ["tanh", "sigmoid"], dtype=dtype, rng=seed)
    return net, TorchMLP.from_scratch(net)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_declared_schedule_passes_and_its_rate_is_compared(name, opt, dtype):
    X, y = make_data(32, 4, seed=1)
    net, ref = _net(dtype)
    spec = {"name": opt, "schedule": SCHEDULES[name][0]}
    result = lockstep(net, ref, X, y, steps=20, lr=0.05, optimizer=spec, batch_size=8)
    assert result.passed, str(result.first_divergence)
    assert "lr" in [it.label for it in result.items]


def _late(sched: Schedule) -> None:
    """Plant a bug in scratch's copy of the schedule only: its rate one step late."""
    right = sched.lr
    sched.lr = lambda base, t: right(base, max(t - 1, 0))  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "name,first", [("step", 3), ("exponential", 1), ("inverse_time", 1), ("lambda", 1)]
)
def test_a_schedule_one_step_late_is_found_at_the_rate_of_the_step_it_parts(name, first):
    X, y = make_data(32, 4, seed=1)
    net, ref = _net()
    opt = get_optimizer("sgd", net, lr=0.05, schedule=SCHEDULES[name][0])
    _late(opt.schedule)  # the torch side is built from the spec: its schedule is right
    result = lockstep(net, ref, X, y, steps=10, optimizer=opt)
    div = result.first_divergence
    assert div is not None and (div.step, div.label) == (first, "lr"), str(div)


def test_the_rate_tolerance_is_a_few_ulps_and_fails_a_rate_one_ulp_of_gamma_off():
    tol = tolerance("lr", "float64")
    eps = np.finfo(np.float64).eps
    assert tol.atol == eps / 1024 and tol.rtol == 4 * eps and tol.reason
    # an exponential schedule with gamma = 1 - 1e-6, one step late, parts by 1e-6: found
    assert 1e-6 > tol.rtol * 1e3


def test_a_schedule_never_applied_on_the_scratch_side_is_found():
    X, y = make_data(32, 4, seed=1)
    net, ref = _net()
    opt = get_optimizer("sgd", net, lr=0.05, schedule={"name": "step", "step_size": 2,
                                                        "gamma": 0.5})  # fmt: skip
    opt.schedule_step = lambda: opt.lr  # type: ignore[method-assign]
    result = lockstep(net, ref, X, y, steps=6, optimizer=opt)
    div = result.first_divergence
    assert div is not None and (div.step, div.label) == (2, "lr"), str(div)


def test_the_record_keeps_the_schedule_and_a_function_by_its_name():
    X, y = make_data(16, 4, seed=1)
    net, ref = _net()

    def halve_every_5(t):
        return 0.5 ** (t // 5)

    spec = {"name": "sgd", "weight_decay": 0.01, "decay": "weights",
            "schedule": {"name": "lambda", "fn": halve_every_5}}  # fmt: skip
    result = lockstep(net, ref, X, y, steps=3, optimizer=spec)
    kept = result.config["optimizer"]
    assert kept["schedule"] == {"name": "lambda", "fn": halve_every_5.__qualname__}
    assert kept["decay"] == "weights"
    json.dumps(kept)  # as summary.json writes it


# --- per-parameter settings ---------------------------------------------------------------

DECAYED = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2},
    "adam": {"lr": 1e-2, "weight_decay": 1e-2},
    "adamw": {"lr": 1e-2},
    "rmsprop": {"lr": 1e-2, "weight_decay": 1e-2},
    "adagrad": {"lr": 1e-1, "weight_decay": 1e-2},
}


def _params(rng):
    return {
        "layers.1.weight": rng.standard_normal((3, 4)),
        "layers.1.bias": rng.standard_normal(3),
        "layers.0.weight": rng.standard_normal((4, 2)),
        "layers.0.bias": rng.standard_normal(4),
    }


@pytest.mark.parametrize("name", list(DECAYED))
def test_decay_on_weights_only_is_torchs_parameter_groups(name):
    rng = np.random.default_rng(0)
    params = _params(rng)
    tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    opt = get_optimizer(name, params, decay="weights", **DECAYED[name])
    topt = torch_optimizer(opt, tparams)
    assert [g["weight_decay"] for g in topt.param_groups] == [
        DECAYED[name].get("weight_decay", 1e-2),
        0.0,
        DECAYED[name].get("weight_decay", 1e-2),
        0.0,
    ]
    for _ in range(50):
        g = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k])
        opt.step(g)
        topt.step()
        for k in params:
            S = max(float(np.abs(params[k]).max()), 1.0)
            assert np.allclose(params[k], tparams[k].detach().numpy(), rtol=0, atol=40e-16 * S), k
    state = torch_state(topt, list(params))  # read back by name, group by group
    assert set(state) == set(params)


@pytest.mark.parametrize("name", list(DECAYED))
def test_weights_only_decay_passes_the_lockstep_and_decaying_every_parameter_is_found(name):
    X, y = make_data(32, 4, seed=1)
    spec = {"name": name, "decay": "weights", **DECAYED[name]}
    lr = spec.pop("lr")
    net, ref = _net()
    assert lockstep(net, ref, X, y, steps=20, lr=lr, optimizer=spec).passed
    net, ref = _net()
    opt = get_optimizer(name, net, lr=lr, **{k: v for k, v in spec.items() if k != "name"})
    # a scratch side that ignores its per-parameter settings decays the biases too
    opt._settings = lambda over: _Nothing()  # type: ignore[method-assign]
    div = lockstep(net, ref, X, y, steps=20, lr=lr, optimizer=opt).first_divergence
    assert div is not None and div.label in ("param layers.1.bias", "exp_avg layers.1.bias",
                                             "square_avg layers.1.bias", "sum layers.1.bias",
                                             "momentum_buffer layers.1.bias"), str(div)  # fmt: skip


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_groups_set_any_option_per_parameter():
    rng = np.random.default_rng(0)
    params = _params(rng)
    own = {"layers.0.bias": {"momentum": 0.0, "weight_decay": 0.1}}
    opt = get_optimizer("sgd", params, lr=0.1, momentum=0.9, groups=own)
    settings = opt.settings()
    assert settings["layers.0.bias"]["momentum"] == 0.0
    assert settings["layers.1.bias"]["momentum"] == 0.9
    tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    topt = torch_optimizer(opt, tparams)
    for _ in range(5):
        g = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k])
        opt.step(g)
        topt.step()
    assert set(opt.state["layers.0.bias"]) == set(torch_state(topt, list(params))["layers.0.bias"])
    for k in params:
        assert np.allclose(params[k], tparams[k].detach().numpy(), rtol=1e-14, atol=1e-14)


def test_a_network_with_settings_per_parameter_leaves_the_flat_update():
    net, _ = _net()
    opt = get_optimizer("sgd", net, lr=0.1, weight_decay=0.1, decay="weights")
    assert opt._flat_state() is None  # each parameter with its own settings, in the loop
    plain = get_optimizer("sgd", net, lr=0.1, weight_decay=0.1)
    assert isinstance(plain, Optimizer) and not plain.overrides


def test_torch_scheduler_is_none_without_a_schedule():
    net, ref = _net()
    opt = get_optimizer("sgd", net, lr=0.1)
    topt = torch_optimizer(opt, dict(ref.named_parameters()))
    assert torch_scheduler(opt, topt) is None


# --- user code: the book's inverse-time decay in its own update -----------------------------


def _decay_run(cls, optimizer, steps=30):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(float)
    model = cls(2, 6, seed=0, learning_rate=0.5, decay=0.05)
    net = adapt(model, names=decay_style.PATHS, activations=["tanh", "sigmoid"],
                grads=model.loss_and_grads, update=model.update, forward=model.forward)  # fmt: skip
    return lockstep(net, None, X, y, steps=steps, lr=0.5, optimizer=optimizer)


DECLARED = {"name": "sgd", "schedule": {"name": "inverse_time", "decay": 0.05}}


@pytest.mark.parametrize("cls", [decay_style.Model, *decay_style.EQUIVALENTS.values()])
def test_the_books_decay_passes_as_written_once_declared(cls):
    result = _decay_run(cls, DECLARED)
    assert result.passed, str(result.first_divergence)
    # their own update keeps its rate to itself: seen through the parameters it moves
    assert any("lr" in m and "the update is yours" in m for m in result.not_compared), (
        result.not_compared
    )


def test_the_books_decay_undeclared_parts_at_the_first_decayed_step():
    div = _decay_run(decay_style.Model, None).first_divergence
    assert div is not None and (div.step, div.label) == (1, "param dense2.weights"), str(div)


@pytest.mark.parametrize("bug", list(decay_style.BUGS))
def test_a_planted_decay_bug_is_caught_and_located_in_the_users_names(bug):
    cls, where, kind, step = decay_style.BUGS[bug]
    div = _decay_run(cls, DECLARED).first_divergence
    assert div is not None and (div.step, div.label) == (step, f"{kind} {where}"), str(div)


def test_user_gradients_with_nn_paritys_update_compare_the_scheduled_rate():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(float)
    model = decay_style.Model(2, 6, seed=0)
    net = adapt(model, names=decay_style.PATHS, activations=["tanh", "sigmoid"],
                grads=model.loss_and_grads)  # fmt: skip
    result = lockstep(net, None, X, y, steps=15, lr=0.5, optimizer=DECLARED, batch_size=8)
    assert result.passed, str(result.first_divergence)
    assert "lr" in [it.label for it in result.items]
