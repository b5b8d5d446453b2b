"""The house style is checked, not hoped for: ruff (lint and format) over the whole tree and mypy over the library
modules, both configured in pyproject.toml (the ``[lint]`` extra installs them)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
    res = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT)
    return res.returncode, (res.stdout + res.stderr)[-6000:]


@pytest.mark.parametrize("command", [("ruff", "check", "."), ("ruff", "format", "--check", ".")], ids=" ".join)
def test_ruff_is_clean(command):
    code, out = _run(*command)
    assert code == 0, out


def test_mypy_is_clean_on_the_library():
    code, out = _run("mypy")  # files and exclusions: [tool.mypy] in pyproject.toml
    assert code == 0, out
