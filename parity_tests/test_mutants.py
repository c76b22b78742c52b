"""Detection power: every catalogued hand-derivation bug is caught, located and diagnosed."""

from __future__ import annotations

import pytest
from nn_parity.torch_ref.mutation.cause_score import causes
from nn_parity.torch_ref.mutation.mutants import CAUSES, MUTANTS, REWRITES
from nn_parity.torch_ref.mutation.score import run_mutant, score

BY_NAME = {m.name: m for m in MUTANTS}


def test_the_catalogue_covers_the_bugs_the_issue_names():
    assert len(MUTANTS) >= 15
    required = {
        "missing-1/N", "1/N-twice", "dW-transposed", "sigmoid'-at-z", "f'-dropped",
        "db-not-summed", "update-sign", "lr-twice", "wrong-cache", "updated-weights",
        "bce-clip-1e-7", "relu'(0)=1",
    }  # fmt: skip
    assert required <= set(BY_NAME)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_is_caught_at_the_right_step_quantity_and_layer(mutant):
    div = run_mutant(mutant).first_divergence
    assert div is not None, f"{mutant.name} ({mutant.bug}) went unnoticed"
    assert (div.step, div.quantity, div.layer) == mutant.expect, str(div)


@pytest.mark.parametrize(
    "name,cause,words",
    [
        ("missing-1/N", "reduction", "N = 16 times"),
        ("1/N-twice", "reduction", "1/N = 1/16"),
        ("bce-grad-sign", "sign", "-1 times"),
        ("update-sign", "sign", "update is -1 times"),
        ("lr-twice", "scale", "learning rate is applied twice"),
        ("dW-transposed", "layout", "transpose"),
        ("sigmoid'-at-z", "derivative-at-z", "layer 1's sigmoid derivative"),
        ("tanh'-at-z", "derivative-at-z", "layer 0's tanh derivative"),
        ("bce-clip-1e-7", "saturation", "saturated"),
        ("weight-decay", "update-rule", "extra term"),
        ("momentum", "update-rule", "carries state"),
        ("no-zero-grad", "carried-state", "carries over between steps"),
    ],
)
def test_each_diagnosis_class_names_its_mutant(name, cause, words):
    div = run_mutant(BY_NAME[name]).first_divergence
    assert div.diagnosis is not None, str(div)
    assert div.diagnosis["cause"] == cause, div.diagnosis
    assert words in div.diagnosis["explanation"]


@pytest.mark.parametrize("name", [n for n, c in CAUSES.items() if c is None])
def test_no_fingerprint_is_claimed_where_none_fits(name):
    # these bugs leave no mark a recomputation confirms: the diagnosis must not invent one
    div = run_mutant(BY_NAME[name]).first_divergence
    assert div.diagnosis is None, div.diagnosis


@pytest.mark.parametrize(
    "name,cause,words",
    [
        ("f'-dropped", "derivative-form", "layer 1's tanh derivative is left out"),
        (
            "sigmoid'-for-tanh",
            "derivative-form",
            "layer 0, a tanh layer, is differentiated with sigmoid's",
        ),
        ("ce-delta-under-mse", "derivative-form", "the cross-entropy delta"),
        ("mse-missing-2", "derivative-form", "factor 2"),
        ("log-softmax'-dropped", "derivative-form", "softmax term"),
        ("relu-mask-on-input", "kink-mask", "layer 1's relu mask is taken at the layer's input"),
        ("relu'(0)=1", "kink-mask", "z >= 0"),
        ("float32-in-chain", "precision", "float32"),
        ("dx-transposed", "layout", "layer 1's backward passes the gradient down as dz W^T"),
        ("targets-sorted", "targets", "targets sorted"),
        ("one-hot-off-by-one", "targets", "one class over"),
        ("own-shuffle", "data-order", "another order"),
        ("bias-never-updated", "no-update", "did not move at step 0"),
        ("last-batch-dropped", "no-update", "did not move at step 2"),
        ("updated-weights", "stale-weights", "already updated"),
        ("wrong-cache", "wrong-cache", "layer 0's forward cache"),
        ("last-sample-dropped", "sample-dropped", "leaves out the last sample"),
        ("db-missing", "gradient-missing", "zero everywhere"),
        ("db-not-summed", "not-summed", "sample 0's dz alone"),
        ("sigmoid-twice", "double-activation", "sigmoid(sigmoid(z)) - y"),
        ("ce-grad-missing-1", "derivative-form", "the -1 at the target class is missing"),
    ],
)
def test_each_recomputed_cause_names_its_mutant(name, cause, words):
    div = run_mutant(BY_NAME[name]).first_divergence
    assert div.diagnosis is not None, str(div)
    # where a declared loss convention fits the same numbers it is named first, the bug beside
    # it (`also`): a missing factor 2 of MSE is exactly the convention "mse, scale 0.5"
    named = (div.diagnosis["cause"], *div.diagnosis.get("also", ()))
    assert cause in named, div.diagnosis
    assert words in div.diagnosis["explanation"], div.diagnosis["explanation"]


@pytest.mark.parametrize("rewrite", REWRITES, ids=[m.name for m in REWRITES])
def test_a_correct_rewrite_passes_and_gets_no_cause(rewrite):
    result = run_mutant(rewrite)
    assert result.passed, str(result.first_divergence)


def test_no_catalogued_bug_gets_a_wrong_cause():
    # every fingerprint is tried on every other catalogued bug (network and op): a cause is
    # named only where its recomputation fits, so none may name a bug it does not describe
    table = causes()
    wrong = [r for r in table.rows if r["verdict"] == "wrong"]
    assert not wrong, table.table()
    assert table.count("right") >= 0.8 * len(table.rows), table.table()


@pytest.mark.parametrize("name", ["tanh'-at-z", "dW-transposed", "missing-1/N"])
def test_finite_differences_side_with_torch_on_gradient_bugs(name):
    div = run_mutant(BY_NAME[name]).first_divergence
    assert div.fd_agrees_with == "torch", str(div)


def test_resync_tells_a_one_step_error_from_drift():
    # With resync every step restarts from torch's weights: a bug carried by state shows at the
    # step it acts, and the update-sign mutant fails at every step rather than only at the first.
    result = run_mutant(BY_NAME["update-sign"], resync=True)
    assert not result.passed
    param = [k for k, it in enumerate(result.items) if it.quantity == "param"]
    forward = [k for k, it in enumerate(result.items) if it.quantity in ("z", "a", "prob")]
    assert not result.within[:, param].all(axis=1).any()  # the update is wrong at every step
    assert result.within[:, forward].all()  # but each step starts from identical weights
    drifting = run_mutant(BY_NAME["update-sign"])
    assert not drifting.within[1:, forward].all()  # without resync the error is carried forward


def test_score_reports_every_mutant_caught_and_located():
    s = score()
    assert s.caught == len(MUTANTS) and s.located == len(MUTANTS)
    n = len(MUTANTS)
    assert f"caught {n}/{n} (100%), located {n}/{n} (100%)" in s.table()
