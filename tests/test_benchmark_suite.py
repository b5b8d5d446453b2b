"""benchmarks/suite.py end to end on CPU (``--small``): every case's JSON line is there, its figures are positive
and finite, its checks agree; the time budget skips cases with a line that says so; the full-size networks (jaxnorm's
ResNet-18, its plain-Flax twin, the torch peer) have equal parameter counts. Benchmarks never assert on time: these
tests check the lines, not the speed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "benchmarks", "suite.py")
HAS_TORCH = importlib.util.find_spec("torch") is not None

NORM_CASES = ("batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm", "batch_renorm", "lp_batch_norm_p2")
DTYPES = ("float32", "bfloat16")
RESNET_IMPLS = ("jaxnorm", "flax", "torch_eager", "torch_compile")


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # one device and no persistent compilation cache (compile_s is a compile), but the suite's other XLA flags (LLVM
    # at -O0, tests/conftest.py): these tests check the lines and the checks, never the speed
    for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        env.pop(k, None)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _run(out, *args, timeout=600):
    return subprocess.run(
        [sys.executable, SUITE, "--small", "--out", str(out), *args],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _parse(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "results.jsonl"
    out.write_text(json.dumps({"earlier": "run"}) + "\n")  # --out appends
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


@pytest.fixture(scope="module")
def records(small):
    proc, _ = small
    recs = _parse(proc.stdout)
    return {r["case"]: r for r in recs}


def test_lines_go_to_stdout_and_are_appended_to_out(small):
    proc, out = small
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": "run"}
    assert [json.loads(x) for x in lines[1:]] == _parse(proc.stdout)
    for r in _parse(proc.stdout):
        assert r["suite"] == "jaxnorm-bench-suite" and r["small"] is True and r["backend"] == "cpu"
        assert r["section"] in ("suite", "resnet", "norms") and r["t_s"] >= 0 and "case" in r, r
        assert "non_finite" not in r and "error" not in r, r


def test_every_case_is_present(records):
    expected = {"environment", "summary"}
    for norm in ("batch", "group"):
        for dt in DTYPES:
            expected |= {f"resnet:{norm}:{dt}:{impl}" for impl in RESNET_IMPLS} | {f"resnet:{norm}:{dt}:ratios"}
    expected |= {f"norms:memory_floor:{dt}" for dt in DTYPES} | {"norms:summary:fixed"}
    expected |= {f"norms:{n}:{dt}:fixed" for n in NORM_CASES for dt in DTYPES}
    assert expected <= set(records), sorted(expected - set(records))


def _positive(r, *keys):
    for k in keys:
        v = r[k]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (r["case"], k, v)


def test_resnet_figures_and_checks(records):
    for norm in ("batch", "group"):
        counts = set()
        for dt in DTYPES:
            for impl in ("jaxnorm", "flax"):
                r = records[f"resnet:{norm}:{dt}:{impl}"]
                assert not r.get("skipped"), r
                _positive(
                    r,
                    "images_per_s",
                    "step_ms",
                    "step_min_ms",
                    "compile_s",
                    "first_call_s",
                    "step_memory_bytes",
                    "first_loss",
                    "first_grad_norm",
                )
                assert r["first_call_s"] >= r["compile_s"]
                assert r["agree"] is True, r
                assert r["param_counts_equal"] is True and r["param_count"] == r["param_count_flax"], r
                assert r["peak_memory_bytes"] is None  # no allocator statistics on CPU
                assert r["dtype"] == dt and r["batch"] == 16 and r["image"] == [16, 16, 3]
                counts.add(r["param_count"])
                if dt == "float32":  # the plain-Flax twin on jaxnorm's parameters: the same loss
                    assert r["check_loss_rel_diff"] <= 1e-5, r
            j = records[f"resnet:{norm}:{dt}:jaxnorm"]
            _positive(j, "ratio_vs_flax")
            _positive(records[f"resnet:{norm}:{dt}:ratios"], "jaxnorm_images_per_s", "jaxnorm_over_flax_images_per_s")
        assert len(counts) == 1  # the dtype changes no parameter


@pytest.mark.skipif(HAS_TORCH, reason="torch is installed: test_torch_lines_with_torch checks its lines instead")
def test_torch_lines_without_torch(records):
    """Without torch (CI): a line per torch case that says torch is missing."""
    for norm in ("batch", "group"):
        for dt in DTYPES:
            r = records[f"resnet:{norm}:{dt}:torch_eager"]
            assert r["skipped"] is True and "torch" in r["reason"], r


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install torch): the PyTorch peer is not checked")
def test_torch_lines_with_torch(records):
    """With torch: eager figures, equal parameter counts and jaxnorm's loss on its parameters."""
    for norm in ("batch", "group"):
        jn_count = records[f"resnet:{norm}:float32:jaxnorm"]["param_count"]
        for dt in DTYPES:
            r = records[f"resnet:{norm}:{dt}:torch_eager"]
            assert not r.get("skipped") and "error" not in r, r
            _positive(r, "images_per_s", "step_ms", "first_call_s")
            assert r["param_count"] == jn_count, r
            assert records[f"resnet:{norm}:{dt}:torch_eager:param_count"]["param_counts_equal"] is True
            assert r["autocast"] == ("bfloat16" if dt == "bfloat16" else None)
            c = records[f"resnet:{norm}:{dt}:torch_compile"]  # skipped on CPU by default, saying why
            assert c["skipped"] is True and "CPU" in c["reason"], c
            _positive(records[f"resnet:{norm}:{dt}:ratios"], "jaxnorm_over_torch_eager_images_per_s")
        # the torch twin ('SAME' padding) on jaxnorm's parameters computes jaxnorm's float32 loss
        r = records[f"resnet:{norm}:float32:torch_eager"]
        assert r["loss_agree"] is True and r["check_loss_rel_diff"] <= 1e-5, r


def test_norm_figures_and_checks(records):
    for dt in DTYPES:
        _positive(records[f"norms:memory_floor:{dt}"], "floor_ms")
        for n in NORM_CASES:
            r = records[f"norms:{n}:{dt}:fixed"]
            _positive(r, "jaxnorm_ms", "flax_ms", "floor_ms", "ratio_vs_flax", "ratio_vs_floor", "jaxnorm_compile_s")
            assert r["agree"] is True, r
    assert records["norms:summary:fixed"]["all_agree"] is True


def test_summary(records):
    s = records["summary"]
    assert s["goals"]["all_checks_agree"] is True and s["goals"]["param_counts_equal"] is True
    assert s["goals"]["no_errors"] is True and s["errors"] == {}
    for dt in DTYPES:  # measured (whatever the answer on this CPU), not unknown
        assert isinstance(s["goals"][f"resnet18_bn_{dt}_within_1.05x_flax"], bool)
        assert isinstance(s["goals"][f"resnet18_bn_{dt}_ge_1.0x_torch_eager"], bool) == HAS_TORCH
    assert set(s["met"]) | set(s["not_met"]) | set(s["unknown"]) == set(s["goals"])
    # only torch.compile on CPU is skipped; without torch, its eager cases too (each with a line saying why)
    allowed = ("torch_compile",) if HAS_TORCH else ("torch_compile", "torch_eager")
    assert s["skipped"] == [c for c in s["skipped"] if c.endswith(allowed)]
    _positive(s, "total_s")


def test_time_budget_skips_cases_with_a_line(tmp_path):
    out = tmp_path / "budget.jsonl"
    proc = _run(out, "--time-budget", "0", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = {r["case"]: r for r in _parse(out.read_text())}
    for norm in ("batch", "group"):
        for dt in DTYPES:
            for impl in RESNET_IMPLS:
                r = recs[f"resnet:{norm}:{dt}:{impl}"]
                why = "torch" if impl.startswith("torch") and not HAS_TORCH else "time budget"
                assert r["skipped"] is True and why in r["reason"], r
    for n in NORM_CASES:
        assert recs[f"norms:{n}:float32:fixed"]["skipped"] is True
    assert set(recs["summary"]["unknown"]) >= {"resnet18_bn_float32_within_1.05x_flax"}


def test_full_size_networks_have_equal_parameter_counts():
    """ResNet-18 at 32×32×3: jaxnorm's (as the suite builds it), the plain-Flax twin and the torch peer."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import suite

    shapes = suite.resnet_shapes(small=False)
    x = jnp.zeros((2, 32, 32, 3))
    expected = {"batch": 11_173_962, "group": 11_173_962 + 4_800}  # + the conv biases before group norm
    for norm in ("batch", "group"):
        model, *_ = suite.build_jaxnorm(norm, "bfloat16", shapes)
        flax = suite.PlainResNet(tuple(shapes["stage_sizes"]), suite._channels(shapes), norm, 10, jnp.bfloat16)
        pj = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))["params"]
        pf = jax.eval_shape(lambda k: flax.init(k, x, train=False), jax.random.key(0))["params"]
        assert jax.tree.map(lambda v: v.shape, pj) == jax.tree.map(lambda v: v.shape, pf)
        assert suite._count(pj) == suite._count(pf) == expected[norm], (norm, suite._count(pj))


def test_the_torch_peer_has_resnet18s_parameter_count():
    pytest.importorskip("torch", reason="torch is not installed (pip install torch): the PyTorch peer is not checked")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import _torch_resnet
    import suite

    shapes = suite.resnet_shapes(small=False)
    for norm, expected in {"batch": 11_173_962, "group": 11_173_962 + 4_800}.items():
        t = _torch_resnet.ResNet(shapes["stage_sizes"], suite._channels(shapes), 10, norm, suite.NUM_GROUPS)
        assert _torch_resnet.param_count(t) == expected
