"""The seed article's four students, pinned in both implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nn_parity import scratch
from nn_parity.scratch.data import exam, exam_network
from nn_parity.torch_ref import TorchMLP, lockstep


def test_first_student_output_probability_and_loss(exam_pair):
    net, ref = exam_pair
    X, y = exam()
    out, cache = net.forward(X[:1])
    z = cache[-1][1][0, 0]
    assert z == pytest.approx(5.815, abs=1e-12)
    assert out[0, 0] == pytest.approx(0.99703, abs=5e-6)
    loss, _ = scratch.BCELoss().forward(out, y[:1, None])
    assert loss == pytest.approx(0.002978, abs=5e-7)

    with torch.no_grad():
        p_t = ref(torch.from_numpy(X[:1]))
        loss_t = torch.nn.BCELoss()(p_t, torch.from_numpy(y[:1, None]))
    assert float(p_t) == pytest.approx(out[0, 0], rel=1e-15)
    assert float(loss_t) == pytest.approx(loss, rel=1e-14)


def test_article_figure_is_the_loss_of_p_rounded_to_three_places():
    # The article prints 0.003005: that is -ln 0.997, the loss after rounding p = 0.99703 to
    # three places. The unrounded loss is 0.002978.
    p = float(exam_network().forward(exam()[0][:1])[0][0, 0])
    assert round(-math.log(round(p, 3)), 6) == 0.003005
    assert round(-math.log(p), 6) == 0.002978


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradient_descent_lowers_the_loss_at_every_step_in_lockstep(dtype):
    X, y = exam()
    net = exam_network(dtype)
    ref = TorchMLP.from_scratch(net)
    result = lockstep(net, ref, X, y, steps=200, lr=0.05)
    assert result.passed, result.first_divergence
    for losses in (result.loss_scratch, result.loss_torch):
        assert np.all(np.diff(losses) < 0), "the loss went up at some step"
    assert result.loss_scratch[-1] < 0.5 * result.loss_scratch[0]
