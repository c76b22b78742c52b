"""Shared fixtures: a seeded scratch network, its torch mirror, and data to train them on."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from nn_parity.torch_ref import TorchMLP

settings.register_profile("dev", deadline=None, max_examples=30)
# CI: the same examples on every run, so a red build is reproducible.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=30,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# The long sweep: `HYPOTHESIS_PROFILE=sweep pytest -m slow -n 2`.
settings.register_profile(
    "sweep", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow]
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One core per worker: two workers' thread pools on two cores would only contend.
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def exam_pair():
    from nn_parity.scratch.data import exam_network

    net = exam_network()
    return net, TorchMLP.from_scratch(net)
