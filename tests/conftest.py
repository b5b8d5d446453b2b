"""Test set-up, before jax is imported: fake four CPU devices so pmap/sharding tests run on CPU, and share one
persistent compilation cache between the tests and the train.py subprocesses they start (the same small programs
are compiled many times otherwise)."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
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


# a tryfirst wrapper is outermost, so its code after the yield runs after pytest-randomly's shuffle (also a wrapper)
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The floor-venv run (tests/test_install.py, about 7 minutes of the suite) goes first: with ``-n`` its worker
    starts it at once instead of leaving it for the end while the other workers idle. Its tests build their own venv,
    so their place in the order changes nothing else."""
    result = yield
    items.sort(key=lambda item: item.path.name != "test_install.py")
    if config.getoption("one_case_per_test"):
        keep = [item for item in items if _first_case(item)]
        config.hook.pytest_deselected(items=[item for item in items if not _first_case(item)])
        items[:] = keep
    return result


def _first_case(item) -> bool:
    """Whether every parameter of the test has its first value (callspec.indices: positions, not shuffled)."""
    callspec = getattr(item, "callspec", None)
    return callspec is None or not any(callspec.indices.values())
