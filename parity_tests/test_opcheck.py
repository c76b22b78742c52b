"""The op check itself: layouts, inputs without gradients, state, kinks, the result object, bad
input (docs/bad-inputs.md, "Op checks", row by row) and the README's example."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nn_parity.scratch import ops
from nn_parity.torch_ref.mutation.op_mutants import gallery
from nn_parity.torch_ref.opcheck.check import assert_op, check_op
from nn_parity.torch_ref.opcheck.results import ItemResult, OpCheckResult

ROOT = Path(__file__).parents[1]
OP_ROW = re.compile(r"^\| (op\d+) \| (.+?) \| `(.+)` \| (.+) \|$")


def op_rows() -> list:
    rows = []
    for line in (ROOT / "docs" / "bad-inputs.md").read_text().splitlines():
        m = OP_ROW.match(line)
        if m:
            n, case, call, message = m.groups()
            rows.append(pytest.param(call, message.strip(), id=f"{n}-{case}"))
    return rows


def test_the_op_table_covers_the_issues_bad_inputs():
    cases = " ".join(p.id for p in op_rows())
    for words in ("shapes differ", "fewer gradients", "wrong shape", "integer param",
                  "not differentiable in an input"):  # fmt: skip
        assert words in cases
    assert len(op_rows()) >= 20


@pytest.mark.parametrize("call,message", op_rows())
def test_op_check_bad_input_gets_a_one_line_message(call, message):
    rng = np.random.default_rng(0)
    x, W, b = rng.normal(size=(8, 5)), rng.normal(size=(3, 5)), rng.normal(size=3)
    before = (x.copy(), W.copy(), b.copy())
    env = {
        "np": np, "torch": torch, "ops": ops, "check_op": check_op, "x": x, "W": W, "b": b,
        "lin": torch.nn.Linear(5, 3), "fwd": ops.affine_forward, "back": ops.affine_backward,
        "P": {"W": W, "b": b}, "N": {"W": "weight", "b": "bias"},
    }  # fmt: skip
    with pytest.raises((ValueError, TypeError)) as err:
        eval(call, env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    for a, a0 in zip((x, W, b), before):
        np.testing.assert_array_equal(a, a0)  # refused without touching the caller's arrays


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Check one op", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 10
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    assert env["result"].passed, str(env["result"])


# --- nothing of the caller's changes ------------------------------------------------------


def test_the_callers_arrays_and_module_are_not_modified():
    case = gallery()["batchnorm"]
    arrays = {**case["inputs"], **case["params"], **case["state"]}
    before = {k: v.copy() for k, v in arrays.items()}
    module_before = {k: v.clone() for k, v in case["torch_ref"].state_dict().items()}
    check_op(**case)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    for k, v in case["torch_ref"].state_dict().items():
        assert torch.equal(v, module_before[k]), k


# --- layouts: transposes and permutes, reported in the user's layout ----------------------


def _affine_in_out(x, W, b):  # W stored (in, out), the CS231n way
    return x @ W + b, (x, W)


def _affine_in_out_backward(dout, cache):
    x, W = cache
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


def _affine_case(backward=_affine_in_out_backward):
    rng = np.random.default_rng(3)
    return dict(
        forward=_affine_in_out, backward=backward, torch_ref=torch.nn.Linear(5, 3),
        inputs={"x": rng.normal(size=(8, 5))},
        params={"W": rng.normal(size=(5, 3)), "b": rng.normal(size=3)},
        names={"W": "weight", "b": "bias"}, layouts={"W": "T"},
    )  # fmt: skip


def test_in_out_weights_are_checked_through_a_declared_transpose():
    assert_op(**_affine_case())


def test_a_mismatch_in_transposed_weights_is_reported_at_the_users_index():
    def backward(dout, cache):
        dx, dW, db = _affine_in_out_backward(dout, cache)
        dW[4, 1] += 1.0  # element (4, 1) of the user's (in, out) array
        return dx, dW, db

    m = check_op(**_affine_case(backward)).first_mismatch
    assert (m.name, m.index) == ("W", (4, 1)), str(m)


def test_a_wrong_layout_declaration_fails_it_is_never_reshaped_into_agreement():
    case = _affine_case()
    rng = np.random.default_rng(4)
    case["params"]["W"] = rng.normal(size=(5, 5))  # square: a transpose keeps the shape
    case["torch_ref"] = torch.nn.Linear(5, 5)
    case["params"]["b"] = rng.normal(size=5)
    del case["layouts"]  # the user's (in, out) W handed over as if it were (out, in)
    m = check_op(**case).first_mismatch
    assert m is not None and m.name == "out"


def _conv_nhwc(x, W, b):
    """A user's NHWC conv with (KH, KW, C, F) weights, through the gallery's NCHW one."""
    out, cache = ops.conv2d_forward(x.transpose(0, 3, 1, 2), W.transpose(3, 2, 0, 1), b, 2, 1)
    return out.transpose(0, 2, 3, 1), cache


def _conv_nhwc_backward(dout, cache, bump=None):
    dx, dW, db = ops.conv2d_backward(dout.transpose(0, 3, 1, 2), cache)
    dx = dx.transpose(0, 2, 3, 1).copy()
    if bump is not None:
        dx[bump] += 1.0
    return dx, dW.transpose(2, 3, 1, 0), db


def _conv_case(backward):
    rng = np.random.default_rng(5)
    return dict(
        forward=_conv_nhwc, backward=backward, torch_ref=torch.nn.Conv2d(3, 4, 3, 2, 1),
        inputs={"x": rng.normal(size=(2, 7, 7, 3))},
        params={"W": rng.normal(size=(3, 3, 3, 4)), "b": rng.normal(size=4)},
        names={"W": "weight", "b": "bias"},
        layouts={"x": "NHWC->NCHW", "W": "HWCF->FCHW"}, out_layout="NHWC->NCHW",
    )  # fmt: skip


def test_nhwc_against_nchw_through_declared_permutes():
    assert_op(**_conv_case(_conv_nhwc_backward))


def test_an_nhwc_mismatch_is_reported_at_the_users_nhwc_index():
    m = check_op(**_conv_case(partial(_conv_nhwc_backward, bump=(1, 2, 3, 0)))).first_mismatch
    assert (m.name, m.index) == ("x", (1, 2, 3, 0)), str(m)
    assert m.fd_agrees_with == "torch"


# --- inputs without gradients, state -----------------------------------------------------


def test_a_float_mask_in_no_grad_is_passed_through_not_compared():
    case = gallery()["dropout"]
    case["inputs"]["mask"] = case["inputs"]["mask"].astype(np.float64)
    result = assert_op(**case, no_grad=["mask"])
    assert [it.name for it in result.items] == ["out", "x"]
    with pytest.raises(ValueError, match=r"backward returned 1 gradient; expected .*: x, mask"):
        check_op(**case)


def test_integer_labels_take_no_gradient_and_are_not_compared():
    result = check_op(**gallery()["softmax_cross_entropy"])
    assert [it.name for it in result.items] == ["out", "logits"]


def _bn_functional(x, gamma, beta, running_mean, running_var, flip=False):
    """Returns the new running statistics instead of updating them in place."""
    rm, rv = running_mean.copy(), running_var.copy()
    out, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv)
    if flip:
        rm = 0.1 * running_mean + 0.9 * x.mean(axis=0)
    return out, cache, {"running_mean": rm, "running_var": rv}


def test_state_returned_by_the_forward_is_compared_too():
    case = {**gallery()["batchnorm"], "forward": _bn_functional}
    assert_op(**case)
    m = check_op(**{**case, "forward": partial(_bn_functional, flip=True)}).first_mismatch
    assert m.name == "running_mean" and m.kind == "state", str(m)


def test_state_updated_by_a_torch_function_reference_is_compared():
    case = gallery()["batchnorm"]
    ref = lambda x, g, b, rm, rv: F.batch_norm(x, rm, rv, g, b, training=True)  # noqa: E731
    case = {**case, "torch_ref": ref, "names": None}
    assert_op(**case)
    bad = dict(case, forward=partial(ops.batchnorm_forward, momentum=0.2))
    assert check_op(**bad).first_mismatch.name == "running_mean"


# --- upstream gradients: never ones alone -------------------------------------------------


def test_a_bug_that_cancels_under_ones_is_caught():
    def backward(dout, y):  # subtracts the mean of dout instead of sum(dout * y)
        return y * (dout - dout.mean(axis=-1, keepdims=True))

    case = gallery()["softmax"]
    _, y = ops.softmax_forward(case["inputs"]["x"])
    ones = np.ones_like(y)
    np.testing.assert_allclose(backward(ones, y), ops.softmax_backward(ones, y), atol=1e-16)
    for n in (1, 3):
        result = check_op(**{**case, "backward": backward}, upstream=n)
        assert not result.passed and result.first_mismatch.name == "x"


def test_every_upstream_gradient_is_compared():
    calls = []

    def backward(dout, cache):
        calls.append(dout.copy())
        return ops.activation_backward(dout, cache)

    check_op(**{**gallery()["tanh"], "backward": backward}, upstream=4, seed=7)
    assert len(calls) == 4 and not any(np.array_equal(calls[0], c) for c in calls[1:])
    assert not any(np.all(c == 1) for c in calls)


# --- kinks: one-sided differences ---------------------------------------------------------


def _relu_case(backward):
    z = np.array([[-1.0, 0.0, 2.0], [0.0, 0.5, -0.3]])  # two exact zeros: the kink
    return dict(
        forward=partial(ops.activation_forward, kind="relu"), backward=backward,
        torch_ref=torch.relu, inputs={"z": z},
    )  # fmt: skip


def test_relu_derivative_1_at_0_is_a_kink_not_a_failure():
    def backward(dout, cache):
        _, z, _ = cache
        return np.where(z >= 0, dout, 0)  # the right-hand derivative at 0; torch takes the left

    result = assert_op(**_relu_case(backward))
    assert result.kinks == [("z", (0, 1)), ("z", (1, 0))]
    assert "on a kink" in str(result)


def test_a_wrong_derivative_at_a_kink_is_still_reported_one_sided():
    def backward(dout, cache):
        _, z, _ = cache
        return np.where(z > 0, dout, np.where(z == 0, 2 * dout, 0))  # neither side's slope

    m = check_op(**_relu_case(backward)).first_mismatch
    assert m.index == (0, 1) and m.fd_one_sided is not None, str(m)
    assert m.fd_agrees_with == "torch"
    assert "a kink, one-sided" in str(m)


def test_maxpool_ties_broken_the_other_way_are_kinks():
    def forward(x):  # the last max of each window where torch takes the first
        win = x.reshape(1, 1, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 1, 2, 2, 4)
        arg = 3 - win[..., ::-1].argmax(axis=-1)
        return np.take_along_axis(win, arg[..., None], -1)[..., 0], (x.shape, arg, 2, 2)

    x = np.array([[[[1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 2.0, 0.0],
                    [3.0, 0.5, 0.1, 0.2], [0.4, 0.3, 0.0, 0.6]]]])  # fmt: skip
    result = assert_op(forward, ops.maxpool2d_backward, torch.nn.MaxPool2d(2), inputs={"x": x})
    assert {idx for _, idx in result.kinks} == {(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 3),
                                                (0, 0, 1, 2)}  # fmt: skip


# --- the result ---------------------------------------------------------------------------


def _failing():
    def backward(dout, cache):
        dx, dW, db = ops.affine_backward(dout, cache)
        return dx, dW, db / 8

    return check_op(**{**gallery()["affine"], "backward": backward})


def test_the_result_names_the_item_index_values_fd_and_cause():
    result = _failing()
    assert not result.passed
    m = result.first_mismatch
    assert (m.name, m.kind, m.index) == ("b", "grad", (0,))
    assert m.scratch * 8 == pytest.approx(m.torch, rel=1e-12)
    assert m.fd == pytest.approx(m.torch, rel=1e-6) and m.fd_agrees_with == "torch"
    assert m.cause == "reduction"
    assert [row["name"] for row in result.table] == ["out", "x", "W", "b"]
    assert [row["passed"] for row in result.table] == [True, True, True, False]


def test_repr_is_one_short_line_and_str_the_full_message():
    result = _failing()
    assert repr(result) == "OpCheckResult(passed=False, first_mismatch=db[0] (reduction))"
    text = str(result)
    for words in ("op check FAILED: 3 of 4 items agree", "db[0]: scratch", "finite differences",
                  "likely cause (reduction)", "max_abs"):  # fmt: skip
        assert words in text
    ok = check_op(**gallery()["tanh"])
    assert repr(ok) == "OpCheckResult(passed=True, 2 items, float64)"


def test_html_shows_table_and_verdict_escaped():
    html = _failing()._repr_html_()
    assert "<table>" in html and "FAILED" in html and "db[0]" in html
    item = ItemResult("<script>", "grad", 1.0, 1.0, False, 0.0, 0.0)
    html = OpCheckResult(False, [item], None, "float64", 3)._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_assert_op_fails_with_the_element_and_values_for_pytest():
    def backward(dout, cache):
        return (*ops.affine_backward(dout, cache)[:2], np.zeros(5))  # db forgotten

    with pytest.raises(AssertionError, match=r"db\[0\]: scratch 0\.0, torch -?\d"):
        assert_op(**{**gallery()["affine"], "backward": backward})
    assert "__tracebackhide__" in assert_op.__code__.co_varnames


def test_a_dtype_the_forward_upcast_is_a_failure():
    def forward(x, mask, p=0.4):
        return x * (mask / (1 - p)), mask / (1 - p)  # a bool mask / float: float64

    case = {**gallery("float32")["dropout"], "forward": forward}
    m = check_op(**case).first_mismatch
    assert m.cause == "dtype" and "float64 (scratch) != float32 (torch)" in str(m)


def test_tolerances_override_the_table_per_item():
    case = gallery()["batchnorm"]
    assert check_op(**case).passed
    result = check_op(**case, tolerances={"x": (0.0, 0.0)})
    assert not result.passed and result.first_mismatch.name == "x"
    assert result.items[3].atol == 0.0


class _WrongTanh(torch.autograd.Function):
    """A torch reference whose own backward is wrong: finite differences must side with scratch."""

    @staticmethod
    def forward(ctx, z):
        out = torch.tanh(z)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved_tensors
        return dout * (1 - out)  # the square forgotten


def test_finite_differences_side_with_scratch_when_the_reference_is_wrong():
    m = check_op(**{**gallery()["tanh"], "torch_ref": _WrongTanh.apply}).first_mismatch
    assert m.fd_agrees_with == "scratch", str(m)
    assert m.fd == pytest.approx(m.scratch, rel=1e-6)


# --- non-finite input, the cost bound, ties excused jointly --------------------------------


@pytest.mark.parametrize("group", ["inputs", "params", "state"])
def test_a_non_finite_array_is_refused_and_left_as_it_was(group):
    case = gallery()["batchnorm"]
    arrays = {g: {k: v.copy() for k, v in case[g].items()} for g in ("inputs", "params", "state")}
    name = next(iter(arrays[group]))
    arrays[group][name].flat[1] = np.inf
    before = {k: v.copy() for g in arrays.values() for k, v in g.items()}
    with pytest.raises(ValueError, match=rf"{name!r} holds a non-finite value: {name}\[.*\] = inf"):
        check_op(**{**case, **arrays})
    for g in arrays.values():
        for k, v in g.items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_a_refused_upstream_count_runs_no_backward():
    def backward(dout, cache):
        raise AssertionError("a refused check ran a backward")

    with pytest.raises(ValueError, match=r"at most 1000, got 1001: .* about [\d.e+-]+ hours"):
        check_op(**{**gallery()["affine"], "backward": backward, "upstream": 1001})


def test_upstream_gradients_are_the_same_drawn_one_at_a_time():
    result = check_op(**{**gallery()["affine"], "upstream": 1000})  # the documented limit
    assert result.passed and result.upstream == 1000


def _pool_windows(x):  # (1, 1, 4, 4) -> (2, 2, 4): each 2 x 2 window, flat
    return x.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(2, 2, 4)


def _pool_backward(route):
    """A max-pool backward giving each window's gradient to the elements `route(window)`."""

    def backward(dout, cache):
        x = cache
        wins = _pool_windows(x)
        chosen = np.stack([[route(w) for w in row] for row in wins])  # (2, 2, 4) weights
        dx = chosen * dout[0, 0][..., None]
        return dx.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(1, 1, 4, 4)

    return backward


def _tied_pool(backward):
    x = np.array([[[[1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 2.0, 0.0],
                    [3.0, 0.5, 0.1, 0.2], [0.4, 0.3, 0.0, 0.6]]]])  # fmt: skip
    forward = lambda x: (ops.maxpool2d_forward(x, 2)[0], x)  # noqa: E731
    return check_op(forward, backward, torch.nn.MaxPool2d(2), inputs={"x": x})


def test_a_gradient_sent_to_every_tied_maximum_is_not_excused():
    every = _pool_backward(lambda w: (w == w.max()).astype(float))
    result = _tied_pool(every)
    m = result.first_mismatch
    assert not result.passed and m.cause == "tie" and m.index == (0, 0, 0, 1), str(result)
    assert "summing to" in m.explanation and m.fd_agrees_with == "torch"
    assert result.kinks == []


def test_ties_in_two_windows_at_one_value_cannot_cover_for_each_other():
    # The joint check moves every element equal to the tied value at once, across windows: a
    # backward that gives window A's gradient to both its tied maxima and window B's to none
    # has the same total as torch's only if the two windows' upstream gradients were equal,
    # which the op check's random upstream gradients make all but impossible.
    x = np.array([[[[1.0, 1.0, 0.0, 0.2], [0.0, 0.0, 0.3, 0.1],
                    [0.5, 0.4, 1.0, 1.0], [0.2, 0.1, 0.0, 0.05]]]])  # fmt: skip

    def route(w):  # a window is (top-left, top-right, bottom-left, bottom-right)
        tied = (w == w.max()).astype(float)
        if tied.sum() == 1:
            return tied
        return tied if w[3] == 0.0 else 0 * tied  # window A: both maxima; window B: none

    forward = lambda x: (ops.maxpool2d_forward(x, 2)[0], x)  # noqa: E731
    result = check_op(forward, _pool_backward(route), torch.nn.MaxPool2d(2), inputs={"x": x})
    assert not result.passed and result.first_mismatch.cause == "tie", str(result)


def test_a_gradient_dropped_at_a_tie_is_not_excused():
    unique_only = _pool_backward(lambda w: (w == w.max()) * float((w == w.max()).sum() == 1))
    result = _tied_pool(unique_only)
    assert not result.passed and result.first_mismatch.cause == "tie", str(result)


@pytest.mark.parametrize(
    "pick", [np.argmax, lambda w: 3 - np.argmax(w[::-1])], ids=["first max", "last max"]
)
def test_a_gradient_routed_to_one_tied_maximum_passes(pick):
    one = _pool_backward(lambda w: np.eye(4)[pick(w)])
    result = _tied_pool(one)
    assert result.passed, str(result)


def _uneven(k: int) -> np.ndarray:
    w = np.linspace(1, 3, k)
    return w / w.sum()


@pytest.mark.parametrize(
    "weights", [lambda k: np.full(k, 1 / k), _uneven], ids=["even split", "uneven split"]
)
def test_a_gradient_split_among_tied_maxima_passes(weights):
    # a convex combination of the tied maxima is a subgradient (torch's autograd notes take
    # the minimum-norm one, the even split, where a function is locally convex): the window's
    # sum is torch's, so it passes jointly though no element alone is a one-sided slope
    def route(w):
        tied = w == w.max()
        out = np.zeros(4)
        out[tied] = weights(int(tied.sum()))
        return out

    result = _tied_pool(_pool_backward(route))
    assert result.passed, str(result)


def test_relu_zeros_given_half_a_slope_each_are_reported():
    # relu's zeros are independent kinks: 0.5 at each is between the one-sided slopes element
    # by element, but moving the zeros together gives 0 or the whole upstream sum, never half
    def backward(dout, cache):
        _, z, _ = cache
        return np.where(z > 0, dout, np.where(z == 0, 0.5 * dout, 0))

    m = check_op(**_relu_case(backward)).first_mismatch
    assert m is not None and m.cause == "tie", str(m)
