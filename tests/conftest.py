"""Test set-up, before jax is imported: fake four CPU devices so pmap/sharding tests run on CPU, and share one
persistent compilation cache between the tests and the train.py subprocesses they start (the same small programs
are compiled many times otherwise)."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags = (_flags + " --xla_force_host_platform_device_count=4").strip()
# LLVM at -O0 for the generated loops (XLA's HLO passes and the library kernels for convolutions and matmuls are
# unchanged): the suite compiles thousands of small programs and runs few of them for long, so compile time is
# most of it (measured on 2 cores: tests/test_norms.py 96 -> 66 s, the train.py/fault/sweep files 316 -> 293 s).
# Set XLA_FLAGS=--xla_backend_optimization_level=2 (any value) to test at XLA's default.
if "xla_backend_optimization_level" not in _flags:
    _flags = (_flags + " --xla_backend_optimization_level=0").strip()
# XLA:CPU's older elemental emitters instead of its MLIR fusion emitters: the same HLO, compiled about 40% faster
# (benchmarks/compile_time.py on 2 cores: a one-op program 33 -> 20 ms, batch norm's gradient 104 -> 75 ms;
# tests/test_numerics.py with tests/test_norms.py 159 -> 91 s). Set the flag (any value) in XLA_FLAGS to override.
if "xla_cpu_use_fusion_emitters" not in _flags:
    _flags = (_flags + " --xla_cpu_use_fusion_emitters=false").strip()
os.environ["XLA_FLAGS"] = _flags
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxnorm-test-xla-cache-"))
# every program, however quick to compile: the test processes repeat many small ones (measured: the core files
# on 2 workers 213 s at a 0.3 s threshold, 195 s at 0)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# train.py adds a measured XLA:CPU flag for 2-D CNNs (jaxnorm.xla_cpu); flags change rounding, so the train.py
# subprocesses the tests start keep XLA's defaults, as the in-process references do (tests/test_xla_cpu.py clears it)
os.environ.setdefault("JAXNORM_XLA_CPU", "off")


import pytest  # noqa: E402  (after the environment above)


@pytest.fixture
def highest_precision():
    """Full-precision matmuls and convolutions for parity tests (restored afterwards: the setting is global)."""
    import jax

    old = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    yield
    jax.config.update("jax_default_matmul_precision", old)


def pytest_addoption(parser):
    parser.addoption(
        "--one-case-per-test",
        action="store_true",
        help="run each test function once, with the first value of each of its parameters (the floor-venv run: "
        "every test function at the oldest jax/flax/optax, every case at the current ones)",
    )
    parser.addoption(
        "--floors",
        action="store_true",
        help="also run tests/test_install.py: the core install in a fresh venv at the oldest jax/flax/optax "
        "pyproject.toml admits, and the core tests there (needs the package index; about 4 minutes on 2 cores). "
        "CI runs it as its own step (.ci/run); the offline test command leaves it out",
    )


FLOOR_FILE = "test_install.py"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Without ``--floors`` the floor-venv tests are skipped, with the reason and the command that runs them (they
    download the floors from the package index, and the tests run offline). ``--one-case-per-test`` keeps the first
    case of each test function."""
    result = yield
    floors, one_case = config.getoption("floors"), config.getoption("one_case_per_test")
    if not floors:
        skip = pytest.mark.skip(
            reason="needs --floors: it downloads the oldest jax/flax/optax from the package index "
            "(python -m pytest --floors tests/test_install.py)"
        )
        for item in items:
            if item.path.name == FLOOR_FILE:
                item.add_marker(skip)

    def dropped(item) -> bool:
        return one_case and not _first_case(item)

    drop = [item for item in items if dropped(item)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if not dropped(item)]
    # the slowest files first, each kept whole and in pytest-randomly's order inside: with --dist loadfile xdist
    # hands out files in this order, so the long ones start at once and the short ones fill the gaps at the end
    # (longest-first scheduling; last in a shuffled order, one of them kept a worker busy alone for minutes)
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    return result


# slowest first, by worker-seconds on 2 cores (--durations=0 summed by file, 2026-12-07: 139 s down to 24 s)
SLOWEST_FILES = (
    "test_sweep.py",
    "test_parallel.py",
    "test_faults.py",
    "test_norms.py",
    "test_numerics.py",
    "test_models.py",
    "test_curvature_operators.py",
    "test_cli.py",
    "test_docs.py",
    "test_eval_splits.py",
    "test_train.py",
    "test_doctests.py",
    "test_benchmark_suite.py",
    "test_weight_spectral_dyt.py",
    "test_grain.py",
    "test_stopping.py",
    "test_options_effect.py",
    "test_nnx.py",
)


def _first_case(item) -> bool:
    """Whether every parameter of the test has its first value (callspec.indices: positions, not shuffled)."""
    callspec = getattr(item, "callspec", None)
    return callspec is None or not any(callspec.indices.values())
