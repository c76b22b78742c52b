"""What a new user reads first: the help texts, the progress bar, a failure's location, and how
long the command takes to start."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys

import numpy as np
import pytest
from nn_parity.torch_ref import assert_parity
from nn_parity.torch_ref.frontends.cli import build_parser, main
from nn_parity.torch_ref.frontends.cli_run import progress_bar


def subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def help_of(argv, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere


@pytest.mark.parametrize("argv", [[], ["run"], ["mutants"]], ids=["nn-parity", "run", "mutants"])
def test_help_shows_no_empty_or_misleading_defaults(argv, capsys, monkeypatch):
    text = help_of(argv, capsys, monkeypatch)
    assert "(default: None)" not in text
    assert "(default: True)" not in text and "(default: False)" not in text


def test_no_option_states_its_default_twice():
    parser = subparser("run")
    formatter = parser._get_formatter()
    for action in parser._actions:
        assert formatter._get_help_string(action).count("(default:") <= 1, action.option_strings


def test_help_says_flags_switch_things_off_and_shows_real_defaults(capsys, monkeypatch):
    text = help_of(["run"], capsys, monkeypatch)
    assert "--no-bias layers without bias terms (default: with biases)" in text
    assert "(default: figures and report.html are written)" in text
    assert "(default: the last)" in text and "--lr LR learning rate (default: 0.1)" in text


def test_every_option_has_a_help_line(capsys, monkeypatch):
    parser = subparser("run")
    text = help_of(["run"], capsys, monkeypatch)
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
        assert action.option_strings[-1] in text
    for name in ("--reduction", "--dtype"):
        action = next(a for a in parser._actions if name in a.option_strings)
        assert len(action.help) > 20, name


def test_the_help_check_sees_a_default_none(capsys, monkeypatch):
    # The checks above can fail: argparse's own formatter, which printed these, is caught.
    parser = subparser("run")
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    text = " ".join(parser.format_help().split())
    assert "(default: None)" in text and "(default: True)" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "stream,quiet,drawn",
    [(Terminal(), False, True), (io.StringIO(), False, False), (Terminal(), True, False)],
    ids=["terminal", "log", "quiet"],
)
def test_the_progress_bar_is_drawn_only_on_a_terminal(stream, quiet, drawn):
    bar = progress_bar(3, quiet=quiet, stream=stream)
    assert bar.disable is not drawn
    bar.update(3)
    bar.refresh()  # what a second of stepping would show
    assert ("lockstep" in stream.getvalue()) is drawn
    bar.close()


@pytest.mark.parametrize(
    "where,located",
    [
        ("step 0", "grad[layers.0.weight], step 0"),
        (" at step 3", "grad[layers.0.weight] at step 3"),
    ],
    ids=["bare", "own-separator"],
)
def test_assert_parity_separates_the_location(where, located):
    with pytest.raises(AssertionError) as err:
        assert_parity(
            {"layers.0.weight": np.ones(2)}, {"layers.0.weight": np.zeros(2)}, quantity="grad",
            where=where,
        )  # fmt: skip
    assert str(err.value).startswith(located)


def test_help_and_the_data_loaders_do_not_import_torch():
    # `nn-parity --help` answers without the second that importing torch takes
    code = (
        "import sys\n"
        "from nn_parity.torch_ref.frontends.cli import main\n"
        "from nn_parity.torch_ref.frontends.datasets import load_dataset\n"
        "load_dataset('exam', seed=0)\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_lazy_public_names_resolve():
    import nn_parity.torch_ref as tr

    for name in tr.__all__:
        value = getattr(tr, name)
        assert name == "TOLERANCES" or value.__name__ == name
    assert set(tr.__all__) <= set(dir(tr))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tr.nope  # noqa: B018
