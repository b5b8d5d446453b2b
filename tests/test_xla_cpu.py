"""jaxnorm's XLA:CPU setting (jaxnorm.xla_cpu): added only where the rule says (2-D CNNs on x86-64), never over the
user's own choice, never too late, and known to the installed jaxlib (an unknown flag would abort XLA at start-up)."""

import importlib.util
import mmap
import os
import subprocess
import sys

import pytest
from _forked import run_forked

from jaxnorm import xla_cpu

YNN = "--xla_cpu_experimental_ynn_fusion_type"


def test_the_rule_is_2d_convolutions_on_x86_64():
    assert xla_cpu.recommended_flags(2, "x86_64") == (f"{YNN}=reduce,eltwise",)
    assert xla_cpu.recommended_flags(2, "AMD64") == xla_cpu.X86_64_CONV2D_FLAGS
    assert xla_cpu.recommended_flags(2, "aarch64") == ()
    assert xla_cpu.recommended_flags(2, "arm64") == ()
    assert xla_cpu.recommended_flags(1, "x86_64") == ()  # the default 1-D CNN run is faster with XLA's defaults
    assert xla_cpu.recommended_flags(None, "x86_64") == ()


def test_apply_appends_to_the_users_flags_and_keeps_them():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_cpu.apply(2, env, machine="x86_64") == xla_cpu.X86_64_CONV2D_FLAGS
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", f"{YNN}=reduce,eltwise"]
    assert xla_cpu.apply(2, env, machine="x86_64") == ()  # idempotent: the option is named now
    assert env["XLA_FLAGS"].count(YNN) == 1
    empty: dict[str, str] = {}
    xla_cpu.apply(2, empty, machine="x86_64")
    assert empty["XLA_FLAGS"] == f"{YNN}=reduce,eltwise"


@pytest.mark.parametrize(
    "env",
    [
        {"XLA_FLAGS": f"{YNN}="},  # the user's own setting, even an empty list, wins
        {"XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {YNN}=dot"},
        {"XLA_FLAGS": "--xla_cpu_experimental_xnn_fusion_type=dot"},
        {"JAXNORM_XLA_CPU": "off"},
        {"JAXNORM_XLA_CPU": "0", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    ],
)
def test_apply_leaves_a_users_choice_alone(env):
    before = dict(env)
    assert xla_cpu.apply(2, env, machine="x86_64") == ()
    assert env == before


def test_apply_adds_nothing_on_another_architecture():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_cpu.apply(2, env, machine="aarch64") == ()
    assert env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


@pytest.mark.lab
def test_the_run_applies_it_for_its_model_before_the_backend_starts():
    expected = xla_cpu.recommended_flags(2)
    show = "import os; print(repr(os.environ.get('XLA_FLAGS', '')))"
    apply = "from jaxnorm.lab import cli; line = cli.apply_xla_cpu({!r}); "
    conv = (  # XLA accepts the flag (an unknown one aborts the process) and computes a 2-D convolution with it
        "import jax, jax.numpy as jnp; x = jnp.ones((2, 8, 8, 3)); w = jnp.ones((3, 3, 3, 4)); "
        "print(float(jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID', "
        "dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum()))"
    )
    cases = [  # (code, its environment, what it prints)
        ("import jaxnorm.lab.train; " + show, {}, "''"),  # importing never changes the flags
        (apply.format("simple_cnn") + show, {}, repr(" ".join(expected))),
        (apply.format("resnet18") + show, {}, repr(" ".join(expected))),
        (apply.format("cnn1d") + show, {}, "''"),
        (apply.format("mlp") + show, {}, "''"),
        (apply.format("simple_cnn") + show, {"JAXNORM_XLA_CPU": "off"}, "''"),
        # too late: the backend has read its flags, so nothing is changed (subprocesses would otherwise differ)
        ("import jax; jax.devices(); " + apply.format("simple_cnn") + show, {}, "''"),
        (apply.format("simple_cnn") + conv, {}, str(2 * 6 * 6 * 4 * 27.0)),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXNORM_XLA_CPU")}
    # each case in a child forked from one interpreter that imported jaxnorm (JAX, its backend not started)
    results = run_forked([(code, e) for code, e, _ in cases], prelude="import jaxnorm", env=env)
    for (code, _, want), r in zip(cases, results):
        assert r["rc"] == 0, r["out"]
        assert r["out"].strip() == want, code


@pytest.mark.lab
def test_train_py_says_it_applied_the_setting(tmp_path):
    from test_train import ROOT

    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "smoke.py")]
    cmd += ["--workdir", str(tmp_path / "wd"), "--config.num_steps=2", "--config.eval_every=2"]
    env = {k: v for k, v in os.environ.items() if k != "JAXNORM_XLA_CPU"}  # the tests' conftest turns it off
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(xla_cpu.OPTIONS))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("XLA:CPU:")]
    if xla_cpu.recommended_flags(2):
        assert lines == [
            f"XLA:CPU: {YNN}=reduce,eltwise (measured faster for 2-D CNNs on x86-64; JAXNORM_XLA_CPU=off keeps "
            "XLA's defaults)"
        ]
    else:
        assert lines == []
    off = subprocess.run(cmd, capture_output=True, text=True, env=env | {"JAXNORM_XLA_CPU": "off"}, timeout=300)
    assert off.returncode == 0 and "XLA:CPU:" not in off.stdout


def test_the_installed_jaxlib_knows_the_flags():
    # XLA aborts at start-up on an unknown XLA_FLAGS entry: an upgrade that drops the experimental option must fail
    # here, loudly, before it fails every run (then change X86_64_FLAGS, or remove the rule)
    root = os.path.dirname(importlib.util.find_spec("jaxlib").origin)
    libraries = [os.path.join(root, f) for f in os.listdir(root) if f.endswith(".so")]
    names = {flag.split("=")[0].lstrip("-").encode() for flag in xla_cpu.X86_64_CONV2D_FLAGS}
    found = set()
    for path in libraries:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            found |= {n for n in names if m.find(n) >= 0}
    assert found == names, f"jaxlib at {root} does not define {sorted(names - found)}"
