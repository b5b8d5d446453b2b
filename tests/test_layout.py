"""The package's two halves: the library (``import jaxnorm``) never imports the lab, the lab and the Equinox layers
say which extra they need when it is missing, the names are unambiguous, and the private internals of other packages
that the lab reaches for are still where it reaches."""

import importlib
import pathlib
import subprocess
import sys

import pytest
import tomllib
from _forked import run_forked

import jaxnorm

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_import_jaxnorm_never_imports_the_lab():
    res = _python(
        "import sys, jaxnorm, jaxnorm.nn, jaxnorm.nnx, jaxnorm.probes, jaxnorm.stats\n"
        "bad = sorted(m for m in sys.modules if m.startswith('jaxnorm.lab') or m.split('.')[0] in "
        "('tensorflow_datasets', 'grain', 'orbax', 'tensorboardX', 'matplotlib', 'sklearn', 'mnist1d', "
        "'ml_collections', 'equinox'))\nprint(bad)"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


MISSING = ["tensorflow_datasets", "grain", "ml_collections", "matplotlib"]
LAB_MODULES = ["jaxnorm.lab", "jaxnorm.lab.train.loop", "jaxnorm.lab.data"]
CASES = [(m, name) for m in LAB_MODULES for name in MISSING] + [("jaxnorm.eqx", "equinox")]

_BLOCK = """
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):  # as if {name} were not installed
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] == {name!r}:
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
sys.meta_path.insert(0, Block())
assert not any(m.split(".")[0] == {name!r} or m.startswith("jaxnorm.lab") for m in sys.modules)
try:
    importlib.import_module({module!r})
except ImportError as e:
    print(type(e).__name__, "|", e)
else:
    print("imported")
"""


@pytest.fixture(scope="module")
def blocked_imports() -> dict:
    """Each case in its own child, forked from an interpreter that imported the core library only (which imports
    none of the blocked packages: test_import_jaxnorm_never_imports_the_lab)."""
    results = run_forked([(_BLOCK.format(name=name, module=m), {}) for m, name in CASES], prelude="import jaxnorm")
    assert all(r["rc"] == 0 for r in results), results
    return {f"{m}|{name}": r["out"].strip() for (m, name), r in zip(CASES, results)}


@pytest.mark.parametrize("missing", MISSING)
@pytest.mark.parametrize("module", LAB_MODULES)
def test_a_lab_module_without_its_extra_is_one_import_error_naming_it(blocked_imports, module, missing):
    out = blocked_imports[f"{module}|{missing}"]
    assert out.startswith("ImportError |"), out  # ours, not a ModuleNotFoundError from deep inside
    assert "pip install 'jaxnorm[train]'" in out and missing in out


def test_the_equinox_layers_without_equinox_name_the_extra(blocked_imports):
    out = blocked_imports["jaxnorm.eqx|equinox"]
    assert out.startswith("ImportError |") and "jaxnorm[equinox]" in out, out


def test_module_and_function_names_are_unambiguous():
    import jaxnorm.dropouts as d  # the module, whatever was imported before

    assert d.__name__ == "jaxnorm.dropouts" and callable(d.dropout)
    assert jaxnorm.dropout is d.dropout
    for name in jaxnorm.__all__:  # no public function shadows a submodule of the same name
        assert importlib.util.find_spec(f"jaxnorm.{name}") is None or not callable(getattr(jaxnorm, name)), name


@pytest.mark.parametrize("name", ["jaxnorm.nn", "jaxnorm.nnx", "jaxnorm.eqx", "jaxnorm.probes", "jaxnorm.stats"])
def test_public_modules_declare_every_public_name(name):
    """``from jaxnorm.X import *`` and the API reference see exactly the module's public names: its ``__all__``
    lists every public class and function it defines, and nothing it lacks."""
    pytest.importorskip("equinox") if name == "jaxnorm.eqx" else None
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    defined = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_") and getattr(obj, "__module__", None) == name and callable(obj)
    }
    assert defined <= set(module.__all__), f"{name}: public but not in __all__: {sorted(defined - set(module.__all__))}"
    assert all(hasattr(module, n) for n in module.__all__), [n for n in module.__all__ if not hasattr(module, n)]


def test_version_is_one_number():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert jaxnorm.__version__ == meta["version"]
    assert f"## {meta['version']}" in (ROOT / "CHANGELOG.md").read_text()
    assert (ROOT / "jaxnorm" / "py.typed").exists()


def test_private_internals_the_lab_relies_on_are_still_there():
    # jaxnorm.lab.train.parallel.Watchdog reads the coordination-service client (no public handle exists);
    # without it the multi-host watchdog silently turns off.
    from jax._src import distributed

    assert hasattr(distributed, "global_state") and hasattr(distributed.global_state, "client")
    # jaxnorm.lab.data.grain_pipeline waits on Grain's shared-memory deletion pool (no public API); without it, a
    # program exiting right after close() gets resource_tracker warnings.
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    assert hasattr(SharedMemoryArray, "_del_thread_pool")
    # jaxnorm.xla_cpu asks whether the backends have started (then XLA_FLAGS is read already and left alone)
    from jax._src import xla_bridge

    assert callable(xla_bridge.backends_are_initialized)
