"""`nn-parity run`'s declarations (frontends/cli_conventions.py): the flags build the same loss
and optimizer description as the Python calls, the run trains on them, and the record says so.
Bad values: rows 531 onwards of docs/bad-inputs.md."""

from __future__ import annotations

import json

import pytest
from nn_parity.scratch import get_loss
from nn_parity.torch_ref.engine.setup import _declared
from nn_parity.torch_ref.frontends.cli import build_parser, main
from nn_parity.torch_ref.frontends.cli_conventions import loss_for
from nn_parity.torch_ref.frontends.cli_run import optimizer_spec

from .test_cli_model import write_model

FLAGS = [
    (["--scale", "0.5"], "mse", {"scale": 0.5}),
    (["--reduction", "samples", "--scale", "2"], "mse", {"scale": 2.0}),
    (["--l2", "0.1"], "bce", {"l2": 0.1}),
    (["--l2", "0.1", "--l2-form", "full", "--l2-n", "16", "--l2-on", "all"], "bce",
     {"l2": 0.1, "l2_form": "full", "l2_n": 16, "l2_on": "all"}),
    (["--l2", "0.1", "--l2-on", "layers.0.weight,layers.1.bias"], "ce",
     {"l2": 0.1, "l2_on": ["layers.0.weight", "layers.1.bias"]}),
    (["--clip", "1e-7"], "bce", {"clip": 1e-7}),
]  # fmt: skip


@pytest.mark.parametrize("flags,name,opts", FLAGS, ids=[" ".join(f) for f, _, _ in FLAGS])
def test_the_flags_build_the_python_declaration(flags, name, opts):
    args = build_parser().parse_args(["run", *flags])
    expected = get_loss(name, args.reduction, **opts)
    assert _declared(loss_for(args, name)) == _declared(expected)
    assert loss_for(args, name).options == expected.options


SCHEDULES = [
    ("inverse-time:decay=0.1", {"name": "inverse_time", "decay": 0.1}),
    ("step:step_size=3,gamma=0.5", {"name": "step", "step_size": 3, "gamma": 0.5}),
    ("exponential:gamma=0.9", {"name": "exponential", "gamma": 0.9}),
]


@pytest.mark.parametrize("text,spec", SCHEDULES, ids=[t for t, _ in SCHEDULES])
def test_the_schedule_flag_builds_the_optimizer_description(text, spec):
    args = build_parser().parse_args(
        ["run", "--schedule", text, "--weight-decay", "0.01", "--decay-on", "weights"]
    )
    assert optimizer_spec(args) == {
        "name": "sgd", "weight_decay": 0.01, "schedule": spec, "decay": "weights",
    }  # fmt: skip


def test_a_run_trains_on_the_declared_cost_and_records_it(tmp_path):
    out = tmp_path / "r"
    code = main(
        ["run", "--data", "diabetes", "--scale", "0.5", "--reduction", "samples", "--l2", "0.01",
         "--l2-n", "442", "--l2-on", "all", "--schedule", "step:step_size=5,gamma=0.5",
         "--optimizer", "sgd", "--momentum", "0.9", "--weight-decay", "0.01", "--decay-on",
         "weights", "--steps", "12", "--no-figures", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    text = json.dumps(summary)
    assert "samples, scale=0.5, l2=0.01, l2_n=442, l2_on='all'" in text
    assert '"schedule": {"name": "step", "step_size": 5, "gamma": 0.5}' in text
    assert '"decay": "weights"' in text


def test_adapted_code_declares_its_cost_in_its_own_call(tmp_path, capsys):
    path = write_model(tmp_path)
    code = main(
        ["run", "--data", "moons", "--model", f"{path}:make", "--l2", "0.1", "--quiet",
         "--no-figures", "--out", str(tmp_path / "r")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--l2 does not apply with --model returning adapted code" in err
