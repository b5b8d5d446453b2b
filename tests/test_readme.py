"""The README's NNX and Equinox examples run as written (the blocks after ``<!-- example: … -->``)."""

import math
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _example(name: str) -> str:
    m = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert m, f"README.md has no block after <!-- example: {name} -->"
    return m.group(1)


def test_the_nnx_and_equinox_examples_run_and_train():
    ns: dict = {}
    exec(compile(_example("nnx"), "README.md:nnx", "exec"), ns)  # noqa: S102
    assert math.isfinite(float(ns["loss"])) and ns["logits"].shape == (32, 10)
    assert int(ns["model"].bn.count[...]) == 2  # population statistics over the two batches
    assert np.all(np.isfinite(np.asarray(ns["probe"]["losses"])))
    nnx_loss = float(ns["loss"])
    exec(compile(_example("eqx"), "README.md:eqx", "exec"), ns)  # noqa: S102 (the Equinox block reuses x, y)
    assert math.isfinite(float(ns["loss"])) and ns["logits"].shape == (32, 10)
    st = ns["state"].get(ns["model"].bn.state_index)
    assert int(st["count"]) == 1 and not np.allclose(np.asarray(st["mean"]), 0.0)
    assert np.all(np.isfinite(np.asarray(ns["probe"]["losses"])))
    assert abs(nnx_loss - math.log(10)) < 1.5 and abs(float(ns["loss"]) - math.log(10)) < 1.5
