"""The comparison helper and the tolerance table: every check can fail, and says where."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nn_parity.torch_ref.compare import (
    TOLERANCES,
    assert_parity,
    compare_segments,
    first_mismatch,
    segment_starts,
    tolerance,
)


def test_every_tolerance_sets_rtol_and_atol_and_gives_a_reason():
    for quantity, by_dtype in TOLERANCES.items():
        assert set(by_dtype) == {"float64", "float32"}, quantity
        for tol in by_dtype.values():
            assert tol.rtol > 0 and tol.atol > 0 and len(tol.reason) > 20


def test_float32_tolerances_are_the_float64_ones_in_units_of_epsilon():
    ratio = np.finfo(np.float32).eps / np.finfo(np.float64).eps
    for by_dtype in TOLERANCES.values():
        assert by_dtype["float32"].rtol == pytest.approx(by_dtype["float64"].rtol * ratio)
        assert by_dtype["float32"].atol == pytest.approx(by_dtype["float64"].atol * ratio)


def test_float64_tolerances_are_near_machine_precision():
    for by_dtype in TOLERANCES.values():
        assert by_dtype["float64"].rtol <= 1e-12 and by_dtype["float64"].atol <= 1e-12


def test_first_mismatch_finds_the_first_bad_element_and_counts_them():
    t = np.linspace(-1, 1, 12).reshape(3, 4)
    s = t.copy()
    s[1, 2] *= 1 + 1e-6
    s[2, 3] += 1e-3
    m = first_mismatch(s, t, rtol=1e-9, atol=1e-12)
    assert m is not None
    assert m.index == (1, 2) and m.count == 2 and m.total == 12
    assert m.scratch == s[1, 2] and m.torch == t[1, 2]
    assert first_mismatch(t.copy(), t, rtol=1e-9, atol=1e-12) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values_never_agree(bad):
    t = np.ones(5)
    s = t.copy()
    s[3] = bad
    m = first_mismatch(s, t, rtol=1.0, atol=1.0)
    assert m is not None and m.index == (3,)
    _, _, ok = compare_segments(s, t, segment_starts([2, 3]), np.ones(2), np.ones(2))
    assert ok.tolist() == [True, False]


def test_compare_segments_reports_each_segment_separately():
    t = np.arange(1.0, 10.0)
    s = t.copy()
    s[4] += 0.5  # second segment: elements 3..5
    starts = segment_starts([3, 3, 3])
    max_abs, rel, ok = compare_segments(s, t, starts, np.full(3, 1e-12), np.full(3, 1e-12))
    assert ok.tolist() == [True, False, True]
    assert max_abs.tolist() == [0.0, 0.5, 0.0]
    assert rel[1] == pytest.approx(0.5 / np.linalg.norm(t[3:6]))


def test_compare_segments_passes_within_the_relative_bound_only():
    # |d| = 1e-9 exceeds atol but is within rtol * |t|: the elementwise pass must accept it.
    t = np.full(4, 1000.0)
    s = t + 1e-9
    _, _, ok = compare_segments(s, t, segment_starts([4]), np.array([1e-11]), np.array([1e-12]))
    assert ok.all()
    _, _, ok = compare_segments(s, t, segment_starts([4]), np.array([1e-13]), np.array([1e-12]))
    assert not ok.any()


def test_assert_parity_names_the_key_index_and_both_values():
    expected = {"layers.0.weight": torch.ones(2, 3, dtype=torch.float64)}
    actual = {"layers.0.weight": np.ones((2, 3))}
    assert_parity(actual, expected, quantity="grad")
    actual["layers.0.weight"][1, 2] = 1 + 1e-9
    with pytest.raises(AssertionError) as err:
        assert_parity(actual, expected, quantity="grad", where=" at step 3")
    msg = str(err.value)
    assert "grad[layers.0.weight] at step 3" in msg
    assert "1 / 6 elements differ" in msg and "index (1, 2)" in msg
    assert "1.000000001" in msg and "greatest absolute difference" in msg


def test_assert_parity_checks_shape_dtype_and_keys_before_values():
    with pytest.raises(AssertionError, match="shape"):
        assert_parity(np.ones(3), torch.ones(4, dtype=torch.float64), quantity="z")
    with pytest.raises(AssertionError, match="dtype"):
        assert_parity(np.ones(3), torch.ones(3, dtype=torch.float32), quantity="z")
    with pytest.raises(AssertionError, match="keys differ"):
        assert_parity({"a": np.ones(1)}, {"b": torch.ones(1)}, quantity="grad")


def test_assert_parity_wants_rtol_and_atol_together():
    with pytest.raises(ValueError, match="together"):
        assert_parity(np.ones(1), np.ones(1), quantity="z", rtol=1e-3)


def test_tolerance_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown quantity"):
        tolerance("logits", "float64")
    with pytest.raises(ValueError, match="float16"):
        tolerance("z", "float16")
