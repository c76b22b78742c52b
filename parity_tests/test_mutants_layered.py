"""The layered catalogue: each bug between layers caught where it enters, each control clean."""

from __future__ import annotations

import pytest
from nn_parity.torch_ref.mutation.layered import (
    LAYERED_MUTANTS,
    caught_where,
    run_layered_mutant,
)

IDS = [m.name for m in LAYERED_MUTANTS]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("m", LAYERED_MUTANTS, ids=IDS)
def test_each_layered_bug_is_caught_and_located(m, dtype):
    assert caught_where(run_layered_mutant(m, dtype=dtype)) == m.expected


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("m", LAYERED_MUTANTS, ids=IDS)
def test_each_network_passes_without_its_bug(m, dtype):
    result = run_layered_mutant(m, plant=False, dtype=dtype)
    assert result.passed, result.first_divergence


def test_the_layered_score_is_what_nn_parity_mutants_prints(capsys):
    from nn_parity.torch_ref.frontends.cli import main

    assert main(["mutants"]) == 0
    out = capsys.readouterr().out
    assert "bugs between layers, through the lockstep of a layered network" in out
    for m in LAYERED_MUTANTS:
        assert m.name in out
    assert "caught 4/4 (100%), located 4/4 (100%)" in out
