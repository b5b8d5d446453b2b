"""Every example in a docstring runs (doctest), in every module of the package, the lab included.

An example is a ``>>>`` block; its printed output is compared with ELLIPSIS and NORMALIZE_WHITESPACE. Examples
that only show a call (no expected output) still have to run without raising.
"""

import doctest
import importlib
import pkgutil

import pytest

import jaxnorm

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names():
    """Every module of the package; the lab's marked ``lab`` (they need the [train] extra)."""
    names = ["jaxnorm"] + [info.name for info in pkgutil.walk_packages(jaxnorm.__path__, "jaxnorm.")]
    return [
        pytest.param(n, marks=pytest.mark.lab) if n.split(".")[:2] == ["jaxnorm", "lab"] else n for n in sorted(names)
    ]


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples_run(name, capsys):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        if test.examples and test.name.startswith(name):  # not the docstrings of names it imports
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {name} failed:\n" + capsys.readouterr().out
    )
