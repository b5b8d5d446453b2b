"""Sphinx configuration of jaxnorm's documentation.

Build: ``pip install -e ".[docs]" && python -m sphinx -W -b html docs docs/_build/html`` (tests/test_docs.py builds
it with warnings as errors and runs every example of the pages).
"""

import ast
import importlib
import inspect
import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # the checkout's jaxnorm, also without an installed copy
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jaxnorm

project = "jaxnorm"
author = "the jaxnorm authors"
copyright = "the jaxnorm authors"
release = version = jaxnorm.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Google-style docstrings (napoleon); members in source order; the signature carries the type hints.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autosummary_generate = False  # the summary tables link to the entries below them; no stub files are written
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
suppress_warnings = ["myst.header"]  # docs/results.md (generated) starts its sections at any level

html_theme = "alabaster"
html_title = f"jaxnorm {release}"
html_theme_options = {"description": "Normalization and dropout for JAX/Flax", "fixed_sidebar": True}

# The API pages say ``.. jaxnorm-api:: MODULE``: replaced, as the page is read, by an autosummary table of the module's
# public names and one autodoc entry per name (its ``__all__``, else the functions, classes and constants it defines),
# so a new public name is in the reference without editing a page.
PUBLIC_MODULES = ["jaxnorm", "jaxnorm.nn", "jaxnorm.nnx", "jaxnorm.eqx", "jaxnorm.probes", "jaxnorm.stats"]
_DATA = (tuple, list, dict, str, int, float, frozenset)


def public_names(module_name: str) -> list[str]:
    """The public names of a module: ``__all__`` (less submodules, which have their own page), else the functions,
    classes and constants (tuples, dicts, strings, numbers) that its source defines at top level, not starting with
    ``_``."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        tree = ast.parse(inspect.getsource(module))
        names = []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names += [t.id for t in targets if isinstance(t, ast.Name) and isinstance(vars(module)[t.id], _DATA)]
        names = [n for n in names if not n.startswith("_")]
    return [n for n in names if not inspect.ismodule(getattr(module, n))]


def _entries(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = public_names(module_name)
    lines = [f".. currentmodule:: {module_name}", "", ".. autosummary::", "   :nosignatures:", ""]
    lines += [f"   {n}" for n in names] + [""]
    for n in names:
        obj = getattr(module, n)
        if inspect.isclass(obj):
            lines += [f".. autoclass:: {n}", "   :members:", "   :special-members: __call__", ""]
        elif callable(obj):
            lines += [f".. autofunction:: {n}", ""]
        else:
            lines += [f".. autodata:: {n}", f"   :annotation: = {obj!r}", ""]
    return lines


def _api_pages(app, docname, source):
    lines = []
    for line in source[0].splitlines():
        if line.startswith(".. jaxnorm-api:: "):
            lines += _entries(line.split("::", 1)[1].strip())
        else:
            lines.append(line)
    source[0] = "\n".join(lines) + "\n"


def setup(app):
    app.connect("source-read", _api_pages)
