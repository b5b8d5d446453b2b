"""The documentation builds and covers the library; every example in it runs.

* The Sphinx build of ``docs/`` (``python -m sphinx -W --keep-going -b html docs OUT``) succeeds with warnings as
  errors (nitpicky off), once per session.
* Every public name of ``jaxnorm``, ``jaxnorm.nn``, ``jaxnorm.nnx``, ``jaxnorm.eqx``, ``jaxnorm.probes`` and
  ``jaxnorm.stats`` (the module's ``__all__``, else what it defines: see ``public_names`` in docs/conf.py) is in the
  built reference (``objects.inv``), and each public function and class has a docstring of its own.
* Every ```python block of a docs page runs, in order, in one namespace per page (a page's later blocks use what its
  earlier blocks defined); every ```bash block names real things (:func:`check_shell_block`).
  Docstring examples are tested by tests/test_doctests.py; docs/results.md is generated and has no code blocks.

The shell-block checks are shared with tests/test_readme.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def code_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """The fenced blocks of ``lang`` in a Markdown text: ``[(line number of the fence, code), ...]``."""
    return [(text[: m.start()].count("\n") + 1, m.group(2)) for m in _FENCE.finditer(text) if m.group(1) == lang]


def _docs_conf():
    spec = importlib.util.spec_from_file_location("jaxnorm_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


# ---- shell blocks ----------------------------------------------------------------------------------------------------


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def _config_has(config, key: str) -> bool:
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False
    return True


def _load_config(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _check_config_keys(config, overrides: list[str], name: str, where: str, model_fields: bool = False) -> None:
    """Every ``--config.KEY`` of ``overrides`` is a key of ``config``; ``model_fields``: or (train.py) a field of the
    selected model under ``model_kwargs``."""
    from jaxnorm.lab import cli

    model = cli.selected_model(config, overrides)
    for a in overrides:
        key = a[len("--config.") :].split("=", 1)[0]
        if model_fields and key.startswith("model_kwargs.") and not _config_has(config, key):
            field = key.split(".")[1]
            assert field in _model_fields(model), f"{where}: the model {model} has no field {field}"
            continue
        assert _config_has(config, key), f"{where}: {name} has no config key {key}"


def _model_fields(model: str) -> dict:
    from jaxnorm.lab.models import model_fields

    return model_fields(model) or {}


def _check_flags(args: list[str], source: str, where: str) -> None:
    """Every ``--flag`` in ``args`` is an option that ``source`` (an argparse script) defines."""
    for a in args:
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            assert f'"{flag}"' in source or f"'{flag}'" in source, f"{where}: {flag} is not an option of the script"


def check_command(cmd: str, where: str) -> None:
    """One shell command of a docs or README block names only things that exist: the extras of a ``pip install``,
    the config file and every ``--config.KEY`` of ``python train.py``, the module and options of ``python -m``, the
    script and options of ``python benchmarks/...``; ``python -c`` code compiles. Anything else is an error, so a
    block cannot hold a command this check does not understand."""
    words = shlex.split(cmd)
    if words[:2] == ["pip", "install"]:
        for w in words[2:]:
            if w in ("-e", "-q", "--upgrade"):
                continue
            m = re.fullmatch(r"(\.|jaxnorm)(?:\[([\w,]+)\])?", w)
            assert m, f"{where}: pip install {w}: expected . or jaxnorm, with extras"
            for extra in (m.group(2) or "").split(","):
                assert not extra or extra in _extras(), f"{where}: pyproject.toml has no extra [{extra}]"
        return
    assert words[0] == "python", f"{where}: {cmd!r}: not a command the docs tests know how to check"
    if words[1] == "-c":
        compile(words[2], where, "exec")
        return
    if words[1] == "-m":
        spec = importlib.util.find_spec(words[2])
        assert spec is not None and spec.origin, f"{where}: no module {words[2]}"
        args = words[3:]
        if words[2] == "sphinx":
            assert args[-2] == "docs", f"{where}: sphinx should build docs/"
            return
        if words[2] == "pytest":
            for prev, a in zip(["", *args], args):
                takes_value = prev in ("-n", "-k", "-m", "-p")  # pytest's and pytest-xdist's options with a value
                assert a.startswith("-") or takes_value or (ROOT / a.split("::")[0]).exists(), f"{where}: no file {a}"
            return
        source = pathlib.Path(spec.origin).read_text()
        files = [a for a in args if not a.startswith("-") and a.endswith(".py")]
        for a in files:
            assert (ROOT / a).exists(), f"{where}: no file {a}"
        overrides = [a for a in args if a.startswith("--config.")]
        if overrides:  # the sweep's overrides of its experiment file's config
            _check_config_keys(_load_config(ROOT / files[0]), overrides, files[0], where)
        _check_flags([a for a in args if a not in overrides], source, where)
        return
    script = ROOT / words[1]
    assert script.exists(), f"{where}: no script {words[1]}"
    args = words[2:]
    if words[1] != "train.py":
        _check_flags(args, script.read_text(), where)
        return
    config_path = ROOT / "configs" / "default.py"
    for i, a in enumerate(args):
        if a == "--config":
            config_path = ROOT / args[i + 1]
        elif a.startswith("--config="):
            config_path = ROOT / a.split("=", 1)[1]
    assert config_path.exists(), f"{where}: no config file {config_path.relative_to(ROOT)}"
    overrides = [a for a in args if a.startswith("--config.")]
    _check_config_keys(_load_config(config_path), overrides, config_path.name, where, model_fields=True)
    for a in args:
        if (
            a.startswith("--")
            and a not in overrides
            and a not in ("--config", "--workdir", "--list", "--help")
            and not a.startswith("--workdir=")
        ):
            raise AssertionError(f"{where}: train.py has no flag {a}")


def check_shell_block(code: str, where: str) -> None:
    """Every command of a ```bash block (comments dropped, ``&&`` chains split) passes :func:`check_command`."""
    for line in code.splitlines():
        line = re.split(r"\s+#\s", " " + line, maxsplit=1)[0].strip()
        if line and not line.startswith("#"):
            for cmd in line.split("&&"):
                check_command(cmd.strip(), where)


# ---- the build -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("docs_html")
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, f"the docs build failed (warnings are errors):\n{r.stderr}\n{r.stdout[-3000:]}"
    return out


def test_the_docs_build_without_warnings(built_docs):
    assert (built_docs / "index.html").exists() and (built_docs / "api" / "jaxnorm.html").exists()


def test_every_public_name_is_in_the_reference(built_docs):
    from sphinx.util.inventory import InventoryFile

    with open(built_docs / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", lambda *parts: "/".join(parts))
    documented = (
        {name for kind, entries in inventory.data.items() if kind.startswith("py:") for name in entries}
        if hasattr(inventory, "data")
        else {name for kind, entries in inventory.items() if kind.startswith("py:") for name in entries}
    )
    conf = _docs_conf()
    missing, undocumented = [], []
    for module_name in conf.PUBLIC_MODULES:
        assert module_name in documented, f"{module_name} has no page in the reference"
        module = importlib.import_module(module_name)
        for name in conf.public_names(module_name):
            if f"{module_name}.{name}" not in documented:
                missing.append(f"{module_name}.{name}")
            obj = getattr(module, name)
            if (inspect.isclass(obj) and not obj.__dict__.get("__doc__")) or (
                inspect.isfunction(obj) and not obj.__doc__
            ):
                undocumented.append(f"{module_name}.{name}")
    assert not missing, f"public names not in the built reference: {missing}"
    assert not undocumented, f"public functions and classes without a docstring: {undocumented}"


# ---- the examples ----------------------------------------------------------------------------------------------------

PAGES = sorted(p for p in DOCS.glob("*.md") if p.name != "results.md")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_example_of_a_page_runs(page):
    text = page.read_text()
    for line, code in code_blocks(text, "bash"):
        check_shell_block(code, f"docs/{page.name}:{line}")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code in code_blocks(text, "python"):
        exec(compile("\n" * line + code, f"docs/{page.name}", "exec"), namespace)
    assert not code_blocks(text, "py") and not code_blocks(text, "sh"), f"docs/{page.name}: use ```python / ```bash"


def test_results_page_is_generated_and_has_no_code():
    text = (DOCS / "results.md").read_text()
    assert not code_blocks(text, "python")
