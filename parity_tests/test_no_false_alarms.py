"""No false alarms: the unmutated implementations never diverge, whatever the configuration.

CI runs a bounded, derandomised profile (30 examples). The full sweep, 4 shards x 250 = 1,000
configurations over both cores:

    HYPOTHESIS_PROFILE=sweep .venv/bin/python -m pytest -m slow -n 2 -p no:cacheprovider \
        parity_tests/test_no_false_alarms.py
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

import scratch
from parity_tests.strategies import NetConfig, net_configs
from torch_ref import TorchMLP, lockstep

STEPS = 15


def run(cfg: NetConfig):
    loss = scratch.get_loss(cfg.loss)
    acts = [*cfg.hidden, loss.output_activation]
    net = scratch.MLP(cfg.sizes, acts, bias=cfg.bias, dtype=cfg.dtype, init=cfg.init, rng=cfg.seed)
    X, y = cfg.data()
    return lockstep(net, TorchMLP.from_scratch(net), X, y, steps=STEPS, lr=cfg.lr, loss=loss)


@given(net_configs())
def test_unmutated_pair_never_diverges(cfg):
    result = run(cfg)
    assert result.passed, f"{cfg}\n{result.first_divergence}"


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(4))  # four test items, so pytest-xdist can spread them
@settings(max_examples=250)
@given(cfg=net_configs())
def test_unmutated_pair_never_diverges_sweep(shard, cfg):
    result = run(cfg)
    assert result.passed, f"{cfg}\n{result.first_divergence}"
