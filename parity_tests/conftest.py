"""Shared fixtures: a seeded scratch network, its torch mirror, and data to train them on."""

from __future__ import annotations

import os

# One thread per pool, in every run (serial or under pytest-xdist) and in the subprocesses the
# tests start, which inherit the environment. The suite's networks are small: OpenBLAS's and
# torch's pools on a few cores only contend with each other and with the other xdist worker
# (issue 8, on a 2-core AMD EPYC: 243 s serial with default threads, 111 s with one thread
# per pool).
# Set before NumPy and torch load their thread pools; the calls below cover a library that a
# plugin imported first.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from nn_parity.torch_ref import TorchMLP  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

torch.set_num_threads(1)
threadpool_limits(1)

# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (default: `ci` under CI, else `dev`).
#   dev      the default locally: derandomised like CI, so `make test` checks the same examples
#            on every run and a failure seen once is seen again;
#   ci       the same examples, plus the blob that reproduces a failure;
#   explore  draws new examples on every run, to look for configurations nobody has tried:
#            `HYPOTHESIS_PROFILE=explore make test`. Pin what it finds as a regression
#            (e.g. test_no_false_alarms.FOUND), since dev and ci will not draw it again;
#   sweep    the 1,000-configuration sweep, also drawing new examples (`make sweep`).
settings.register_profile("dev", deadline=None, max_examples=30, derandomize=True)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=30,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=30, print_blob=True)
settings.register_profile(
    "sweep", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def exam_pair():
    from nn_parity.scratch.data import exam_network

    net = exam_network()
    return net, TorchMLP.from_scratch(net)
