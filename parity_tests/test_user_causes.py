"""Causes in user code: each planted bug of `user_code/derivative_bugs.py` is located in the
user's names and gets its cause; the same derivatives written another valid way pass."""

from __future__ import annotations

import pytest

from .test_user_styles import expected_label, run
from .user_code.derivative_bugs import BUGS, EQUIVALENTS


@pytest.mark.parametrize("name", list(BUGS))
def test_each_bug_gets_its_cause_in_the_users_names(name):
    factory, where, kind, cause, _ = BUGS[name]
    div = run("dict", factory, 5).first_divergence
    assert div is not None, f"{name} went unnoticed"
    assert div.label == expected_label(where, kind), str(div)
    assert div.diagnosis is not None and div.diagnosis["cause"] == cause, div.diagnosis
    assert where in div.diagnosis["explanation"], div.diagnosis["explanation"]


@pytest.mark.parametrize("name", list(EQUIVALENTS))
def test_each_equivalent_derivative_passes(name):
    factory, _ = EQUIVALENTS[name]
    result = run("dict", factory, 100)
    assert result.passed, str(result.first_divergence)
