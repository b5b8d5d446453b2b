"""The persistent compilation cache: on by default in its own directory, off on request, never fatal."""

import os
import subprocess
import sys

import jax
from test_train import ROOT, load_config

from jaxnorm.lab.train import loop


def _train(workdir, *flags):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config",
        os.path.join(ROOT, "configs", "smoke.py"),
        "--workdir",
        str(workdir),
        "--config.num_steps=2",
        "--config.eval_every=2",
        "--config.checkpoint_every=2",
        "--config.dropout=dropout",
        "--config.dropout_rate=0.2",
        *flags,
    ]
    # every program is written whatever its compile time: a time threshold near a small program's compile time
    # made the comparison of two runs' entries depend on the machine's load
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _entries(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_the_cache_fills_on_the_first_run_is_reused_by_the_next_and_can_be_turned_off(tmp_path):
    cache = tmp_path / "cache"
    first = _train(tmp_path / "a", f"--config.compilation_cache_dir={cache}")
    assert first.returncode == 0, first.stderr[-2000:]
    entries = _entries(cache)
    assert entries, "the first run wrote no compiled program to the cache"
    second = _train(tmp_path / "b", f"--config.compilation_cache_dir={cache}", "--config.seed=1")
    assert second.returncode == 0, second.stderr[-2000:]
    # another seed: the same programs (the seed's keys are inputs of the step), read back, nothing new written
    assert _entries(cache) == entries
    off = tmp_path / "off"
    loop.compilation_cache(load_config(compilation_cache=False, compilation_cache_dir=str(off)))
    assert not os.path.exists(off)  # turned off: nothing created, JAX's settings untouched


def test_an_unwritable_cache_directory_is_a_warning_not_a_failure(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = load_config(compilation_cache_dir=str(blocker / "cache"))
    before = jax.config.jax_compilation_cache_dir
    loop.compilation_cache(config)  # returns without touching JAX's settings
    assert "warning: compilation cache off: cannot create" in capsys.readouterr().err
    assert jax.config.jax_compilation_cache_dir == before
