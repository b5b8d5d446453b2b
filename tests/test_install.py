"""The core install at the declared floors: a fresh venv with ``pip install <repo>`` alone and jax, jaxlib, flax and
optax pinned to the oldest versions pyproject.toml admits.

- it holds none of the lab's packages (tensorflow-datasets, grain, orbax, tensorboardX, matplotlib, scikit-learn,
  mnist1d, pyarrow, ...) except what flax itself requires (flax's own metadata, read in the venv);
- a researcher's script (tests/_core_script.py) runs on it: pure batch norm at a large mean, group norm, dropout, a
  linen model with BatchNorm + Dropout, an NNX model with BatchNorm, ``jp.hvp`` on a quadratic, and the extras' errors;
- the core tests (every test file that needs no extra beyond the test tools) pass at the floors: every test function
  once, with the first value of each parameter (``--one-case-per-test``, tests/conftest.py); every case runs at the
  current versions in the main suite.

Needs the package index (pip downloads the floors); about 2 minutes for the venv, then the core tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOORED = ("jax", "flax", "optax")  # jaxlib is pinned with jax
LAB_PACKAGES = (
    "tensorflow-datasets",
    "grain",
    "orbax-checkpoint",
    "tensorboardx",
    "matplotlib",
    "scikit-learn",
    "mnist1d",
    "pyarrow",
    "ml-collections",
    "array-record",
    "equinox",
)
# what marks a test file as needing more than the core install and the test tools
_NEEDS_EXTRA = re.compile(
    r"^\s*(from|import) jaxnorm\.lab|^\s*(from|import) (ml_collections|tensorflow_datasets|grain"
    r"|matplotlib)|train\.py|sphinx|ruff|mypy|benchmarks|_core_script",
    re.M,
)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", dep.split(";")[0].strip())
        if m and m.group(1) in FLOORED:
            out[m.group(1)] = m.group(2)
    assert set(out) == set(FLOORED), f"pyproject.toml must declare a floor (name>=X) for each of {FLOORED}: {deps}"
    return out


def core_test_files() -> list[str]:
    files = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name != pathlib.Path(__file__).name and not _NEEDS_EXTRA.search(path.read_text()):
            files.append(str(path.relative_to(ROOT)))
    return files


def _run(cmd, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "JAX_COMPILATION_CACHE", "PYTHON"))}
    env["JAX_PLATFORMS"] = "cpu"
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    assert res.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    )
    return res.stdout


def _pins() -> list[str]:
    f = floors()
    return [f"jax=={f['jax']}", f"jaxlib=={f['jax']}", f"flax=={f['flax']}", f"optax=={f['optax']}"]


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("core") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT), *_pins()])
    installed = {
        _normalize(p["name"]): p["version"]
        for p in json.loads(_run([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"]))
    }
    closure = json.loads(_run([python, "-c", _FLAX_CLOSURE]))
    return python, installed, set(closure)


# flax's dependency closure, from the installed metadata: what a core install holds whatever jaxnorm declares.
# Environment markers are evaluated (orbax-checkpoint needs nest_asyncio on Windows only) with pip's own packaging.
_FLAX_CLOSURE = """
import json
from importlib import metadata
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
seen, todo = set(), ["flax"]
while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
        continue
    seen.add(name)
    for spec in metadata.requires(name) or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
print(json.dumps(sorted(seen)))
"""


def test_core_install_holds_no_lab_package_of_its_own(core_venv):
    _, installed, flax_closure = core_venv
    lab = [p for p in LAB_PACKAGES if p in installed and p not in flax_closure]
    assert not lab, f"the core install pulls lab packages: {lab}"
    assert "jaxnorm" in installed and installed["jaxnorm"] == __import__("jaxnorm").__version__
    for name, version in floors().items():
        assert installed[name] == version, (name, installed[name], version)


def test_a_researchers_script_runs_on_the_core_install_at_the_floors(core_venv, tmp_path):
    python, _, _ = core_venv
    out = _run([python, str(ROOT / "tests" / "_core_script.py")], cwd=tmp_path)  # cwd: the installed jaxnorm
    got = json.loads(out.strip().splitlines()[-1])
    assert got["ok"] and {k: got[k] for k in FLOORED} == floors()


def test_the_core_tests_pass_at_the_floors(core_venv):
    python, _, _ = core_venv
    files = core_test_files()
    assert "tests/test_norms.py" in files and "tests/test_nnx.py" in files and len(files) >= 8, files
    # the test tools, at versions pip finds compatible with the floors (they must not lift jax, flax or optax)
    tools = ("pytest", "pytest-xdist", "pytest-randomly", "pytest-timeout", "chex", "equinox")  # pyproject's addopts
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *tools, *_pins()])
    try:
        out = _run(
            [python, "-m", "pytest", "-x", "-p", "no:cacheprovider", "-m", "not lab", "--one-case-per-test", *files],
            cwd=ROOT,
        )
        passed = int(re.search(r"(\d+) passed", out).group(1))
        assert passed >= 10 * len(files) and " deselected" in out, out[-2000:]
    finally:
        # the venv is shared by this file's tests, in any order: the researcher's script checks that jaxnorm.eqx
        # says to install [equinox], so the core install must not keep the test tools' equinox
        _run([python, "-m", "pip", "uninstall", "-q", "-y", "--disable-pip-version-check", "equinox"])
