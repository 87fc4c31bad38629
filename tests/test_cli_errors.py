"""What ``python -m pspnet`` prints when something goes wrong: bad input in one line (exit 2), a
bug with its traceback (exit 1); run in a subprocess, as a user meets it."""

from __future__ import annotations

import pytest

from pspnet.errors import MissingDependency, UserError, user_input
from tests.cli_run import one_error_line, run_cli


def test_input_error_is_one_line_and_debug_adds_the_traceback():
    r = run_cli("train", "--amp", "fp8")
    assert "amp must be none, bf16 or fp16, got 'fp8'" in one_error_line(r, "train")
    for words in (["--debug", "train", "--amp", "fp8"], ["train", "--amp", "fp8", "--debug"]):
        r = run_cli(*words)
        assert r.returncode == 2 and "Traceback" in r.stderr and "UserError" in r.stderr
        assert "pspnet train: error: amp must be" in r.stderr


def test_a_bug_shows_its_traceback():
    bug = (
        "import pspnet.train as T\n"
        "def train(cfg, log=print):\n"
        "    raise ValueError('a bug')\n"
        "T.train = train\n"
    )
    r = run_cli("train", "--epochs", "1", code=bug)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" in r.stderr and "ValueError: a bug" in r.stderr
    assert "error: a bug" not in r.stderr  # not dressed up as the user's mistake


def test_error_types():
    assert issubclass(UserError, ValueError)  # pytest.raises(ValueError) keeps working
    assert issubclass(MissingDependency, ImportError)
    with pytest.raises(UserError, match="the thing: bad value") as info:
        with user_input("the thing"):
            raise ValueError("bad value")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(TypeError):  # only ValueError is the user's
        with user_input("the thing"):
            raise TypeError("a bug")
