"""Every code block in README.md runs as written, or names only real things.

* ```python blocks: each follows a marker ``<!-- example: NAME (fresh namespace) -->`` (run in a namespace of its
  own) or ``<!-- example: NAME (continues OTHER) -->`` (run in OTHER's namespace, after it); all run in README order,
  with assertions on what they produce.
* ```bash blocks: every command passes ``check_shell_block`` of tests/test_docs.py (the extras, config files,
  ``--config.KEY`` overrides, modules, scripts and options it names exist). The two commands after ``<!-- run -->``
  and ``<!-- test -->`` are the ones .ci/run and users run.
"""

import math
import pathlib
import re

import numpy as np
import pytest
from test_docs import check_shell_block, code_blocks

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_MARKED = re.compile(
    r"<!-- example: (\w+) \((fresh namespace|continues (\w+))\) -->\s*```python\n(.*?)^```", re.S | re.M
)


def _examples() -> list[tuple[str, str | None, str]]:
    """``[(name, the name it continues or None, code), ...]`` in README order."""
    text = README.read_text()
    marked = [(m.group(1), m.group(3), m.group(4)) for m in _MARKED.finditer(text)]
    assert len(marked) == len(code_blocks(text, "python")), "every ```python block in README.md needs a marker"
    return marked


def _run_examples() -> dict[str, dict]:
    namespaces: dict[str, dict] = {}
    for name, continues, code in _examples():
        ns = namespaces[continues] if continues else {"__name__": f"readme_{name}"}
        exec(compile(code, f"README.md:{name}", "exec"), ns)
        namespaces[name] = ns
    return namespaces


@pytest.fixture(scope="module")
def examples():
    return _run_examples()


def test_the_first_screen_has_the_run_and_test_commands():
    text = README.read_text()
    head = "\n".join(text.splitlines()[:30])
    assert re.search(r'<!-- run -->\s*```bash\npip install -e "\.\[train\]" && python train\.py\n```', head)
    assert re.search(r'<!-- test -->\s*```bash\npip install -e "\.\[test\]" && python -m pytest -n auto\n```', head)


@pytest.mark.lab  # the commands name lab modules and configs: checked with the [train] extra
def test_every_shell_command_names_real_things():
    text = README.read_text()
    for line, code in code_blocks(text, "bash"):
        check_shell_block(code, f"README.md:{line}")


def test_every_python_block_runs(examples):
    assert set(examples) == {"pure", "linen", "nnx", "equinox", "probes"}


def test_the_pure_example(examples):
    ns = examples["pure"]
    assert ns["y"].shape == (8, 4, 4, 16) and abs(float(ns["y"].mean())) < 1e-5
    assert abs(float(ns["y"].std()) - 1.0) < 1e-2  # normalized with the batch's statistics
    assert int(ns["stats"]["count"]) == 1 and not np.allclose(np.asarray(ns["stats"]["mean"]), 0.0)
    assert ns["g"].shape == ns["d"].shape == ns["x"].shape
    kept = np.asarray(ns["d"]) != 0
    assert 0.3 < kept.mean() < 0.7 and np.allclose(np.asarray(ns["d"])[kept], 2 * np.asarray(ns["x"])[kept])


def test_the_layer_examples(examples):
    linen = examples["linen"]
    assert linen["logits"].shape == (8, 10) and "batch_stats" in linen["variables"]
    nnx_ns = examples["nnx"]
    assert nnx_ns["logits"].shape == (8, 10) and int(nnx_ns["model"].bn.count[...]) == 1
    eqx_ns = examples["equinox"]
    st = eqx_ns["state"].get(eqx_ns["bn"].state_index)
    assert eqx_ns["y"].shape == (8, 16, 4, 4) and int(st["count"]) == 1
    assert abs(float(eqx_ns["y"].mean())) < 1e-5


def test_the_probes_example(examples):
    ns = examples["probes"]
    s, vals = ns["s"], ns["vals"]
    assert math.isfinite(float(s["loss_min"])) and float(s["loss_min"]) <= float(s["loss_max"])
    assert np.all(np.isfinite(np.asarray(s["losses"]))) and vals.shape == (2,)
    assert float(vals[0]) >= float(vals[1]) - 1e-6  # the top eigenvalues, largest first
