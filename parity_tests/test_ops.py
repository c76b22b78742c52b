"""The gallery of hand-derived ops: each passes the op check, each catalogued bug is caught."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from nn_parity.scratch import ops
from nn_parity.torch_ref.compare import tolerance
from nn_parity.torch_ref.mutation.op_mutants import (
    ALTERNATIVES,
    OP_MUTANTS,
    gallery,
    op_score,
    run_op_mutant,
)
from nn_parity.torch_ref.opcheck.check import assert_op, check_op

OPS = list(gallery())
BY_NAME = {m.name: m for m in OP_MUTANTS}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", OPS)
def test_every_gallery_op_passes_the_op_check(op, dtype):
    for seed in range(3):
        result = assert_op(**gallery(dtype, seed)[op])
        eps = np.finfo(dtype).eps
        for item in result.items:
            # every element within the table; the largest differences themselves are a few
            # ulps of the values compared (their magnitude is at most ~30 here)
            assert item.max_abs <= 2**7 * eps, (op, item)


def test_float64_agreement_is_near_machine_precision():
    worst = max(
        it.max_abs / np.finfo(np.float64).eps
        for case in gallery("float64").values()
        for it in check_op(**case).items
    )
    assert worst <= 64, worst


@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_correct_alternative_derivations_pass(name):
    op, change = ALTERNATIVES[name]
    for dtype in ("float64", "float32"):
        assert_op(**change(gallery(dtype)[op]))


def test_the_catalogue_has_at_least_two_bugs_per_gallery_op():
    per_op = {}
    for m in OP_MUTANTS:
        per_op[m.op] = per_op.get(m.op, 0) + 1
    for op in ("affine", "softmax", "log_softmax", "softmax_cross_entropy", "mse", "dropout",
               "batchnorm", "layernorm", "conv2d", "maxpool2d", "embedding"):  # fmt: skip
        assert per_op.get(op, 0) >= 2, op
    activations = sum(per_op.get(a, 0) for a in ("sigmoid", "tanh", "relu", "leaky_relu"))
    assert activations >= 2


@pytest.mark.parametrize("mutant", OP_MUTANTS, ids=[m.name for m in OP_MUTANTS])
def test_mutant_is_caught_and_located(mutant):
    res = run_op_mutant(mutant)
    if isinstance(res, str):  # refused with a one-line error naming the input
        assert f"'{mutant.expect}'" in res and "\n" not in res, res
    else:
        assert not res.passed, f"{mutant.name} ({mutant.bug}) went unnoticed"
        assert res.first_mismatch.name == mutant.expect, str(res)


def test_op_score_is_full():
    score = op_score()
    n = len(score.rows)
    assert score.caught == n, score.table()
    assert score.located >= 0.95 * n, score.table()
    assert f"caught {n}/{n} (100%)" in score.table()


@pytest.mark.parametrize(
    "name,cause,words",
    [
        ("affine-dW-transposed", "layout", "transpose"),
        ("affine-db-mean", "reduction", "1/8 of torch's"),
        ("ce-missing-1/N", "reduction", "8 times torch's: a missing 1/N"),
        ("mse-mean-over-N", "reduction", "3 times"),
        ("conv-db-mean", "reduction", "1/32"),
        ("mse-dtarget-sign", "sign", "-1 times"),
        ("mse-missing-2", "scale", "0.5 times"),
        ("conv-dW-kernel-flipped", "layout", "kernel flipped"),
        ("sigmoid'-at-output", "wrong-point", "at the output"),
        ("sigmoid'-z(1-z)", "wrong-point", "a (1 - a)"),
        ("tanh'-1-z^2", "wrong-point", "1 - a^2"),
        ("bn-running-var-biased", "variance", "biased batch variance"),
        ("bn-normalise-unbiased", "variance", "unbiased variance"),
        ("ln-dgamma-wrong-axis", "wrong-axis", "sum over the wrong axis"),
        ("ce-dout-ignored", "scale", "times torch's everywhere"),
        ("affine-dx-W^T", "layout", "dx = dout W^T"),
        ("relu-mask-on-dout", "kink-mask", "where dout > 0"),
        ("softmax-diagonal-only", "jacobian-diagonal", "taken as its diagonal"),
        ("softmax-sum-over-batch", "wrong-axis", "over the batch (axis 0)"),
        ("bn-dx-no-mean-term", "dropped-term", "leaves out the mean path"),
        ("bn-dx-no-var-term", "dropped-term", "leaves out the variance path"),
        ("ln-dx-no-mean-term", "dropped-term", "leaves out the mean path"),
        ("ln-dx-batchnorm-formula", "wrong-axis", "sums (of dxhat and dxhat xhat) run over"),
        ("leaky-relu-slope-dropped", "derivative-form", "negative slope 0.1 is dropped"),
        ("log-softmax-no-softmax-term", "dropped-term", "softmax term"),
        ("log-softmax-y-for-softmax", "derivative-form", "where p = exp(y) is meant"),
        ("ce-no-onehot", "derivative-form", "one-hot targets are not subtracted"),
        ("bn-momentum-flipped", "constant-swapped", "momentum and 1 - momentum exchanged"),
        ("ln-eps-outside-sqrt", "eps-placement", "eps outside the square root"),
    ],
)
def test_each_fingerprint_names_its_mutant(name, cause, words):
    m = run_op_mutant(BY_NAME[name]).first_mismatch
    assert m.cause == cause, str(m)
    assert words in m.explanation, m.explanation


@pytest.mark.parametrize(
    "name",
    ["maxpool-overwrite", "bn-dgamma-no-xhat", "conv-dx-crop-offset", "embedding-overwrite",
     "dropout-mask-ignored", "maxpool-whole-window"],
)  # fmt: skip
def test_no_fingerprint_is_claimed_where_none_fits(name):
    m = run_op_mutant(BY_NAME[name]).first_mismatch
    assert m.cause is None, str(m)


@pytest.mark.parametrize("name", ["affine-db-mean", "softmax-diagonal-only", "maxpool-overwrite"])
def test_finite_differences_side_with_torch_against_a_bug(name):
    m = run_op_mutant(BY_NAME[name]).first_mismatch
    assert m.fd_agrees_with == "torch", str(m)
    assert abs(m.fd - m.torch) <= 1e-6 * max(1, abs(m.torch))


def test_batchnorm_updates_its_running_statistics_like_torch():
    # the gallery's forward alone, against torch's buffers after one training-mode call
    import torch

    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4))
    rm, rv = np.zeros(4), np.ones(4)
    ops.batchnorm_forward(x, np.ones(4), np.zeros(4), rm, rv, momentum=0.3)
    bn = torch.nn.BatchNorm1d(4, momentum=0.3).double()
    bn(torch.from_numpy(x))
    np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-15, atol=1e-15)


def test_maxpool_overlapping_windows_add_their_gradients():
    # one element that is the max of all four overlapping 3x3 windows around it, stride 1
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = x[0, 0, 2, 1] = -1
    x[0, 0, 2, 2] = 5.0
    out, cache = ops.maxpool2d_forward(x, kernel=3, stride=1)
    dx = ops.maxpool2d_backward(np.ones_like(out), cache)
    assert dx[0, 0, 2, 2] == 4 and dx.sum() == 4


def test_docstring_formulas_match_the_code():
    # softmax: dx_j = y_j (dout_j - sum_i dout_i y_i), checked against the explicit Jacobian
    rng = np.random.default_rng(2)
    x, dout = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    y, cache = ops.softmax_forward(x)
    J = np.stack([np.diag(r) - np.outer(r, r) for r in y])  # (N, C, C)
    np.testing.assert_allclose(
        ops.softmax_backward(dout, cache), np.einsum("ni,nij->nj", dout, J), rtol=1e-13, atol=1e-15
    )
    # mse: dtarget = -dpred
    dp, dt = ops.mse_backward(np.float64(1.3), ops.mse_forward(x, dout)[1])
    np.testing.assert_array_equal(dt, -dp)


def test_the_ops_import_numpy_only():
    code = (
        "import sys\nimport nn_parity.scratch.ops\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'torch']\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_float32_tolerance_is_the_tables():
    # the gallery needs no op-specific tolerance: docs/ops.md gives the margins measured
    result = check_op(**gallery("float32")["conv2d"])
    assert {(it.rtol, it.atol) for it in result.items if it.kind == "grad"} == {
        (tolerance("grad", "float32").rtol, tolerance("grad", "float32").atol)
    }
